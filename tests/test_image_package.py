"""A Core ML package with an image input (`ct.ImageType`, grayscale, its normalisation as the
image's scale and bias): the trained MNIST sample converted in tests/test_model_kinds.py,
scored on real digits. Its class scores and the digits' labels reach a user metric file, the
expected calibration error of the softmax (lower is better). A sweep palettizes it to 2 and
4 bits, and refuses a training-time technique before any work (a package has no PyTorch
source to fine-tune); the Results page budgets the calibration error, whose budget keeps
the 4-bit run and not the smaller, less confident 2-bit one."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compress_lab.errors import ConfigError
from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.techniques import _training
from tests.test_model_kinds import mnist_image_package  # noqa: F401 - the package fixture, converted once here

ROOT = Path(__file__).resolve().parents[1]
ECE = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"ece": "lower"}

    def metric(outputs, targets):
        """Expected calibration error: |accuracy - mean confidence| over 10 confidence bins, weighted by their share."""
        scores = outputs["scores"]          # the package's own output name
        probabilities = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == targets["label"]
        bins = np.minimum((confidence * 10).astype(int), 9)
        return {"ece": float(sum(abs(right[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean()
                                 for b in np.unique(bins)))}
''')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ece_file(mnist_image_package) -> Path:
    package, _ = mnist_image_package
    path = package.parent / "ece.py"
    path.write_text(ECE)
    return path


def test_the_class_scores_and_labels_of_an_image_folder_reach_the_users_metric(mnist_image_package, ece_file):
    package, val = mnist_image_package
    assert load_model(package).metadata.io.output_names == ("scores",)   # as the package names its output
    result = evaluate_model(package, val, metric=ece_file)
    assert result.n == 40 and result.higher_is_better["ece"] is False
    assert result.labels.tolist() == [digit for digit in range(10) for _ in range(4)]   # sorted class folders
    logits = result.logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert result.top1 == 1.0                                    # every digit right: the ECE is 1 - mean confidence
    assert result.values["ece"] == pytest.approx(1 - probabilities.max(1).mean(), abs=1e-6)   # float32 softmax
    assert 0 < result.values["ece"] < 0.01


@pytest.fixture(scope="module")
def image_store(mnist_image_package, ece_file, tmp_path_factory) -> tuple[Path, object]:
    """A real sweep of the package: its Core ML baseline and 2- and 4-bit palettized weights; a
    training-time point in the grid is refused. (the store, the sweep's result)"""
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec

    package, val = mnist_image_package
    folder = tmp_path_factory.mktemp("image-store")
    spec = folder / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{package}"
        [data]
        validation = "{val}"
        train = "{val}"
        metric = "{ece_file}"
        [run]
        name = "image-package"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = [2, 4]
        [[grid]]
        technique = "magnitude_pruning"
        steps = 4
    """))
    result = run_sweep(load_spec(spec), folder / "store")
    assert result.status == "done" and all(r.state == "COMPLETE" for r in result.runs), \
        [(r.label, r.error) for r in result.runs]
    return folder / "store", result


def test_a_sweep_palettizes_the_package_keeping_its_image_input_and_refuses_fine_tuning_up_front(image_store):
    import coremltools as ct

    store, result = image_store
    (refused,) = result.invalid
    assert refused.settings["technique"] == "magnitude_pruning" and refused.grid_index == 1
    assert "fine-tunes the PyTorch model" in refused.error and "is a Core ML package" in refused.error
    assert "give the PyTorch model" in refused.error and "[model] source" in refused.error      # and the fix
    runs = {r.config.get("nbits", r.label): r for r in result.runs}
    assert set(runs) == {"baseline Core ML", 2, 4}                    # nothing was started for the refused point
    for run in runs.values():
        assert run.metrics["higher_is_better"]["ece"] is False and run.metrics["top1"] > 0.9
    for nbits in (2, 4):
        path = store / runs[nbits].artifact_path
        assert ct.utils.load_spec(str(path)).description.input[0].type.WhichOneof("Type") == "imageType"
        assert _training.op_counts(path).get("constexpr_lut_to_dense", 0) >= 2
    ece = {k: r.metrics["values"]["ece"] for k, r in runs.items()}
    assert ece["baseline Core ML"] < ece[4] < ece[2]                  # fewer bits, less confident
    assert runs[2].sizes["bytes"] < runs[4].sizes["bytes"]


def test_compress_refuses_a_training_time_technique_on_a_package_naming_the_reason(mnist_image_package, tmp_path):
    from compress_lab.techniques import compress, config_from_dict

    package, val = mnist_image_package
    with pytest.raises(ConfigError) as raised:
        compress(load_model(package), config_from_dict({"technique": "qat", "steps": 2}), tmp_path / "qat.mlpackage",
                 train_dir=val)
    message = str(raised.value)
    assert "'qat' fine-tunes the PyTorch model" in message and f"{package} is a Core ML package" in message
    assert "load the PyTorch model (definition + weights or TorchScript)" in message
    assert not (tmp_path / "qat.mlpackage").exists()


def test_results_budget_the_packages_calibration_error_keeping_the_4_bit_run(image_store, monkeypatch):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.test_app_tasks import results_budget_a_lower_is_better_metric

    store, result = image_store
    at = results_budget_a_lower_is_better_metric(store, monkeypatch, "ece", "ece", default="top1")
    (answer,) = [s.value for s in at.success if "Smallest within budget" in s.value]
    four = next(r for r in result.runs if r.config.get("nbits") == 4)
    assert four.label in answer              # 1000% above a near-zero ECE still leaves 2 bits out
