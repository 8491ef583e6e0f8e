"""A multi-output model (task `tensors`: a feature vector -> class scores and a dense map),
the small real "two_heads" model of tests/test_tasks.py. Its task has no targets and no loss,
so it is measured by fidelity per output and by a user metric file: the MAE of the dense head
against a target array (lower is better). A sweep palettizes it post-training and, with a
user loss file (`[data] loss`), prunes it while fine-tuning the dense head towards that
target; the Results page budgets the MAE; `compress-lab results` answers a budget on it."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compress_lab.evaluate import evaluate_model
from compress_lab.mil import COMPRESSED_OPS
from compress_lab.techniques import _training
from tests.test_tasks import TWO_OUTPUT_META, TWO_OUTPUT_MODEL, make_model, runs_by_technique, swept_store

ROOT = Path(__file__).resolve().parents[1]
DENSE_MAE = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"dense_mae": "lower"}

    def metric(outputs, targets):
        """Mean absolute error of the dense head against the wanted map."""
        assert outputs["dense"].shape == targets["wanted"].shape, (outputs["dense"].shape, targets["wanted"].shape)
        return {"dense_mae": float(np.abs(outputs["dense"] - targets["wanted"]).mean())}
''')
LOSS = textwrap.dedent('''
    import torch.nn.functional as F

    def loss(outputs, targets):
        return F.mse_loss(outputs["dense"], targets["wanted"])
''')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def features(path: Path, n: int, seed: int) -> None:
    """n feature vectors x and the dense map wanted from them, tanh(x[:4])."""
    x = np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)
    np.savez(path, x=x, wanted=np.tanh(x[:, :4]))


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory) -> Path:
    """The model folder (untrained weights) with train.npz, val.npz, dense_mae.py and loss.py beside it."""
    root = tmp_path_factory.mktemp("two-heads")
    model = make_model(root / "model", TWO_OUTPUT_MODEL, TWO_OUTPUT_META)
    features(model / "train.npz", 128, seed=1)
    features(model / "val.npz", 64, seed=2)
    (root / "dense_mae.py").write_text(DENSE_MAE)
    (root / "loss.py").write_text(LOSS)
    return model


def test_the_users_metric_scores_one_head_of_the_two_beside_fidelity_per_output(two_heads):
    result = evaluate_model(two_heads, two_heads / "val.npz", reference=two_heads,
                            metric=two_heads.parent / "dense_mae.py")
    assert result.task == "tensors" and result.higher_is_better == {"dense_mae": False}
    wanted = np.tanh(np.load(two_heads / "val.npz")["x"][:, :4])
    assert result.values["dense_mae"] == pytest.approx(np.abs(result.outputs["dense"] - wanted).mean(), rel=1e-6)
    assert set(result.fidelity) == {"scores", "dense"} and result.fidelity["scores"]["agreement"] == 1.0


@pytest.fixture(scope="module")
def two_heads_store(two_heads, tmp_path_factory) -> Path:
    """A real sweep: baselines, 4-bit palettized weights, and magnitude pruning fine-tuned with the user's loss."""
    return swept_store(tmp_path_factory.mktemp("two-heads-store"), f"""
        [model]
        source = "{two_heads}"
        [data]
        validation = "{two_heads / 'val.npz'}"
        train = "{two_heads / 'train.npz'}"
        metric = "{two_heads.parent / 'dense_mae.py'}"
        loss = "{two_heads.parent / 'loss.py'}"
        [run]
        name = "two-heads"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = 4
        weight_threshold = 0
        [[grid]]
        technique = "magnitude_pruning"
        target_sparsity = 0.5
        schedule = "constant"
        steps = 40
        batch_size = 32
        learning_rate = 0.01
    """)


def test_a_sweep_palettizes_and_prunes_while_fine_tuning_with_a_users_loss_scored_per_head(two_heads_store):
    runs = runs_by_technique(two_heads_store)
    assert {"baseline PyTorch", "baseline fp16", "palettize", "magnitude_pruning"} <= set(runs)
    for run in runs.values():
        assert run.state == "COMPLETE" and run.metrics["task"] == "tensors"
        assert run.metrics["values"].keys() == {"dense_mae"} and run.metrics["higher_is_better"] == {"dense_mae": False}
    untrained = runs["baseline PyTorch"].metrics["values"]["dense_mae"]
    assert runs["baseline fp16"].metrics["values"]["dense_mae"] == pytest.approx(untrained, rel=1e-2)

    palettized = runs["palettize"]
    ops = _training.op_counts(two_heads_store / palettized.artifact_path)
    assert {op: n for op, n in ops.items() if op in COMPRESSED_OPS} == {"constexpr_lut_to_dense": 4}   # 4 Linears
    fidelity = palettized.metrics["fidelity"]
    assert set(fidelity) == {"scores", "dense"} and min(f["cosine"] for f in fidelity.values()) > 0.99
    assert "agreement" in fidelity["scores"] and "agreement" not in fidelity["dense"]    # class scores, a map
    assert palettized.metrics["values"]["dense_mae"] == pytest.approx(untrained, abs=0.02)

    pruned = runs["magnitude_pruning"]
    assert pruned.family == "training_time"
    assert _training.op_counts(two_heads_store / pruned.artifact_path).get("constexpr_sparse_to_dense", 0) >= 1
    assert pruned.metrics["values"]["dense_mae"] < 0.5 * untrained      # the user's loss trained the dense head


def test_results_budget_the_dense_heads_mae_and_the_cli_answers_a_budget_on_it(two_heads_store, monkeypatch, capsys):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from compress_lab.cli import main
    from tests.test_app_tasks import results_budget_a_lower_is_better_metric

    results_budget_a_lower_is_better_metric(two_heads_store, monkeypatch, "dense_mae", "dense_mae")

    assert main(["results", "--store", str(two_heads_store), "--json", "--budget-metric", "dense_mae=10%"]) == 0
    out = json.loads(capsys.readouterr().out)
    reference = next(r for r in out["runs"] if r["config"].get("format") == "pytorch")["metrics"]["dense_mae"]
    answer = out["answer"]["run"]
    assert answer is not None and answer["metrics"]["dense_mae"] <= reference * 1.1 + 1e-9
    fits = [r for r in out["runs"] if r["workflow"] != "baseline" and r["metrics"]["dense_mae"] <= reference * 1.1]
    assert answer["size_bytes"] == min(r["size_bytes"] for r in fits)
    assert answer["technique"] == "palettize"          # 4-bit weights are smaller than half of them kept in fp16
