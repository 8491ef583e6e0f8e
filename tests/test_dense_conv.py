"""A dense-output conv model, as segmenters and heatmap heads are: a small real encoder-decoder
(Conv2d, a strided Conv2d, ConvTranspose2d) built and trained here that maps a real MNIST digit
(1 x 28 x 28) to its foreground mask per pixel (1 x 28 x 28). Declared as a regression task
(MAE/RMSE per pixel, lower is better) with a user metric file (IoU of the thresholded mask, higher
is better). It loads and is checked against its declaration; its Core ML program matches eager
PyTorch on the map; it is palettized post-training and pruned while fine-tuned in a sweep scored
with both metrics; the Results page offers both and budgets the MAE; `compress-lab results`
answers a budget on the IoU."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress_lab.errors import ModelLoadError
from compress_lab.evaluate import evaluate_model
from compress_lab.mil import COMPRESSED_OPS
from compress_lab.models import load_model
from compress_lab.techniques import _training
from tests.test_tasks import make_model, swept_store

ROOT = Path(__file__).resolve().parents[1]

SEGMENTER = textwrap.dedent('''
    import torch
    from torch import nn

    class Segmenter(nn.Module):
        """(B, 1, 28, 28) digits -> (B, 1, 28, 28) foreground probability per pixel."""
        def __init__(self):
            super().__init__()
            self.encode = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.decode = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, stride=2), nn.ReLU(),
                                        nn.Conv2d(8, 1, 3, padding=1))

        def forward(self, image):
            return torch.sigmoid(self.decode(self.encode(image)))

    def build_model():
        return Segmenter()
''')
META = {"name": "digit_segmenter", "task": "regression",
        "inputs": [{"name": "image", "shape": [1, 28, 28]}],
        "outputs": [{"name": "mask", "meaning": "values", "shape": [1, 28, 28],
                     "description": "foreground probability per pixel"}]}
IOU = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"iou": "higher"}

    def metric(outputs, targets):
        """Intersection over union of the predicted and true foreground (probability > 0.5)."""
        predicted, true = outputs["mask"] > 0.5, targets["mask"] > 0.5
        return {"iou": float((predicted & true).sum() / max((predicted | true).sum(), 1))}
''')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digits(mnist_dir: Path, split: str, per_class: int) -> np.ndarray:
    images = []
    for class_dir in sorted((mnist_dir / split).iterdir()):
        for path in sorted(class_dir.iterdir())[:per_class]:
            images.append(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)
    return np.stack(images)[:, None]


def write_source(path: Path, images: np.ndarray) -> None:
    np.savez(path, image=images, mask=(images > 0.5).astype(np.float32))


@pytest.fixture(scope="module")
def segmenter(mnist_dir, tmp_path_factory) -> Path:
    """The model folder, trained here for a few hundred steps on real digits, with val.npz,
    train.npz and iou.py beside it."""
    root = tmp_path_factory.mktemp("segmenter")
    model = make_model(root / "model", SEGMENTER, META)
    train, val = digits(mnist_dir, "train", 40), digits(mnist_dir, "val", 10)
    write_source(model / "train.npz", train)
    write_source(model / "val.npz", val)
    (root / "iou.py").write_text(IOU)
    namespace: dict = {}
    exec(compile(SEGMENTER, "segmenter", "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["build_model"]()
    net.load_state_dict(torch.load(model / "weights.pt", weights_only=True))
    x, y = torch.from_numpy(train), torch.from_numpy((train > 0.5).astype(np.float32))
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for step in range(150):
        batch = torch.randint(0, len(x), (64,))
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    torch.save(net.state_dict(), model / "weights.pt")
    return model


def test_the_segmenter_loads_is_checked_and_scores_its_masks_with_both_metrics(segmenter, tmp_path):
    handle = load_model(segmenter)
    assert handle.metadata.task == "regression" and handle.metadata.io.output("mask").shape == (1, 28, 28)
    result = evaluate_model(segmenter, segmenter / "val.npz", metric=segmenter.parent / "iou.py")
    assert result.n == 100 and result.higher_is_better == {"mae": False, "rmse": False, "iou": True}
    assert result.values["iou"] > 0.8 and result.values["mae"] < 0.1   # it learned the digits' strokes

    wrong = make_model(tmp_path / "wrong", SEGMENTER, dict(META, outputs=[dict(META["outputs"][0], shape=[1, 14, 14])]))
    with pytest.raises(ModelLoadError, match=r"mask.*\[1, 14, 14\]|\[1, 14, 14\].*mask"):
        load_model(wrong)


def test_its_core_ml_program_matches_eager_pytorch_on_the_map(segmenter, tmp_path):
    from compress_lab.models.convert import convert_module

    handle = load_model(segmenter)
    package = convert_module(handle.module, handle.metadata, tmp_path / "segmenter.mlpackage", precision="fp32")
    scored = evaluate_model(package, segmenter / "val.npz", reference=segmenter, metric=segmenter.parent / "iou.py")
    eager = evaluate_model(segmenter, segmenter / "val.npz", metric=segmenter.parent / "iou.py")
    fidelity = scored.fidelity["mask"]
    assert fidelity["max_abs_error"] < 1e-4 and fidelity["psnr_db"] > 80
    assert scored.values["iou"] == pytest.approx(eager.values["iou"], abs=1e-3)


@pytest.fixture(scope="module")
def segmenter_store(segmenter, tmp_path_factory) -> Path:
    return swept_store(tmp_path_factory.mktemp("segmenter-store"), f"""
        [model]
        source = "{segmenter}"
        [data]
        validation = "{segmenter / 'val.npz'}"
        train = "{segmenter / 'train.npz'}"
        metric = "{segmenter.parent / 'iou.py'}"
        [run]
        name = "segmenter"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = [2, 4]
        weight_threshold = 0
        [[grid]]
        technique = "magnitude_pruning"
        target_sparsity = 0.75
        steps = 60
        batch_size = 32
        learning_rate = 0.003
    """)


def test_a_sweep_palettizes_and_prunes_while_fine_tuning_scored_on_the_map(segmenter_store):
    from compress_lab.store import open_store

    store = open_store(segmenter_store)
    runs = {r.label: r for r in store.list_runs(store.list_sweeps()[0].sweep_id)}
    float_iou = runs["baseline PyTorch"].metrics["values"]["iou"]
    for run in runs.values():
        assert run.state == "COMPLETE" and set(run.metrics["values"]) == {"mae", "rmse", "iou"}
    (four,) = [r for r in runs.values() if r.technique == "palettize" and r.config["nbits"] == 4]
    assert four.metrics["values"]["iou"] > float_iou - 0.05 and four.metrics["fidelity"]["mask"]["cosine"] > 0.99
    ops = _training.op_counts(segmenter_store / four.artifact_path)
    assert ops.get("constexpr_lut_to_dense", 0) >= 3                 # the convs and the transposed conv
    (pruned,) = [r for r in runs.values() if r.technique == "magnitude_pruning"]
    assert _training.op_counts(segmenter_store / pruned.artifact_path).get("constexpr_sparse_to_dense", 0) >= 1
    assert pruned.metrics["values"]["iou"] > 0.5                      # fine-tuned on the masks while pruned 75%
    assert {op for op in ops if op in COMPRESSED_OPS} == {"constexpr_lut_to_dense"}


def test_results_offer_both_metrics_and_budget_the_mae_and_the_cli_budgets_the_iou(segmenter_store, monkeypatch,
                                                                                   capsys):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from compress_lab.cli import main
    from tests.test_app_tasks import results_budget_a_lower_is_better_metric

    results_budget_a_lower_is_better_metric(segmenter_store, monkeypatch, "mae", "mean absolute error", also=("iou",))

    assert main(["results", "--store", str(segmenter_store), "--json", "--budget-metric", "iou=0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    reference = next(r for r in out["runs"] if r["config"].get("format") == "pytorch")
    answer = out["answer"]["run"]
    assert answer is not None and answer["metrics"]["iou"] >= reference["metrics"]["iou"] - 0.1 - 1e-9
    fits = [r for r in out["runs"] if r["workflow"] != "baseline" and r["metrics"]["iou"] >= reference["metrics"]["iou"] - 0.1]
    assert answer["size_bytes"] == min(r["size_bytes"] for r in fits)
