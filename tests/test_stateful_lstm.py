"""A stateful LSTM declared in PyTorch's own convention: forward(x, h0, c0) -> (y, hn, cn)
with h0/c0/hn/cn of shape (num_layers, batch, hidden), i.e. `batch_axis: 1`. The lab keeps
every array sample-first (.npz, batches, metrics) and moves the axis only at the model
boundary. A small real model built here (nn.LSTM, 2 layers, batch_first, and a Linear head)
on synthetic sine sequences with real next-step targets and nonzero initial states from the
data: it loads (model.py + weights.pt, TorchScript, the converted .mlpackage), its Core ML
program matches eager PyTorch per output (states included), it is palettized and pruned while
fine-tuned in a sweep with a user metric on its state output, the Results page budgets its
MAE, and a bad batch_axis or a state array of the wrong shape is refused by name."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_lab.errors import ConfigError, DataError, ModelLoadError
from compress_lab.evaluate import evaluate_model, named_coreml_predictor, named_torch_predictor
from compress_lab.mil import COMPRESSED_OPS
from compress_lab.models import load_model
from compress_lab.models.io_spec import OutputSpec, TensorSpec, from_model_layout, to_model_layout
from compress_lab.models.metadata import ModelMetadata
from compress_lab.techniques import _training
from tests.test_tasks import make_model, runs_by_technique, swept_store

ROOT = Path(__file__).resolve().parents[1]
LAYERS, HIDDEN, STEPS, FEATURES = 2, 16, 12, 8

LSTM = textwrap.dedent('''
    import torch
    from torch import nn

    class StatefulLSTM(nn.Module):
        """(x (B, T, 8), h0 (2, B, 16), c0 (2, B, 16)) -> (y (B, T), hn (2, B, 16), cn (2, B, 16))."""
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(input_size=8, hidden_size=16, num_layers=2, batch_first=True)
            self.head = nn.Linear(16, 1)

        def forward(self, x, h0, c0):
            out, (hn, cn) = self.lstm(x, (h0, c0))
            return self.head(out).squeeze(-1), hn, cn

    def build_model():
        return StatefulLSTM()
''')
STATE = {"shape": [LAYERS, HIDDEN], "batch_axis": 1}
META = {"name": "stateful_lstm", "task": "regression",
        "inputs": [{"name": "x", "shape": [STEPS, FEATURES]}, {"name": "h0", **STATE}, {"name": "c0", **STATE}],
        "outputs": [{"name": "y", "meaning": "values", "shape": [STEPS]},
                    {"name": "hn", "meaning": "state", **STATE}, {"name": "cn", "meaning": "state", **STATE}]}
METRIC = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"state_drift": "lower"}

    def metric(outputs, targets):
        """How far the final hidden state moved from the initial one (outputs and targets sample-first)."""
        hn = outputs["hn"]
        assert hn.shape[1:] == (2, 16), hn.shape
        return {"state_drift": float(np.abs(hn - targets["h_start"]).mean())}
''')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sequences(path: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """n sine sequences: x = 8 channels (the signal and 7 harmonics of its phase), y = the signal's
    next value at each of the 12 steps, nonzero initial states h0/c0 (every array sample-first)."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS + 1)[None, :] * 0.5 + rng.uniform(0, 2 * np.pi, (n, 1))
    signal = np.sin(t) * rng.uniform(0.5, 1.5, (n, 1))
    harmonics = [np.cos(k * t[:, :STEPS]) for k in range(1, FEATURES)]
    x = np.stack([signal[:, :STEPS], *harmonics], axis=-1).astype(np.float32)
    h0 = rng.normal(0, 0.5, (n, LAYERS, HIDDEN)).astype(np.float32)
    arrays = {"x": x, "h0": h0, "c0": rng.normal(0, 0.5, (n, LAYERS, HIDDEN)).astype(np.float32),
              "y": signal[:, 1:].astype(np.float32), "h_start": h0}
    np.savez(path, **arrays)
    return arrays


@pytest.fixture(scope="module")
def lstm(tmp_path_factory) -> Path:
    """The model folder (model.py, weights.pt, metadata.json) with val.npz, train.npz and metric.py."""
    root = tmp_path_factory.mktemp("lstm")
    model = make_model(root / "model", LSTM, META)
    sequences(model / "train.npz", 96, seed=1)
    sequences(model / "val.npz", 24, seed=2)
    (root / "metric.py").write_text(METRIC)
    return model


@pytest.fixture(scope="module")
def package(lstm, tmp_path_factory) -> Path:
    from compress_lab.models.convert import convert_module
    handle = load_model(lstm)
    return convert_module(handle.module, handle.metadata, tmp_path_factory.mktemp("lstm-fp32") / "lstm.mlpackage",
                          precision="fp32")


def val_inputs(lstm: Path) -> dict[str, np.ndarray]:
    with np.load(lstm / "val.npz") as stored:
        return {name: stored[name] for name in ("x", "h0", "c0")}


def test_batch_axis_round_trips_only_when_set_and_moves_only_at_the_boundary():
    meta = ModelMetadata.from_dict(META)
    h0, hn = meta.io.input("h0"), meta.io.output("hn")
    assert (meta.io.input("x").batch_axis, h0.batch_axis, hn.batch_axis) == (0, 1, 1)
    assert meta.to_dict()["inputs"][1]["batch_axis"] == 1 and "batch_axis" not in meta.to_dict()["inputs"][0]
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    assert "batch_axis" not in TensorSpec("x", (8,)).to_dict() and "batch_axis" not in OutputSpec("y").to_dict()

    samples = np.arange(3 * 2 * 16, dtype=np.float32).reshape(3, 2, 16)     # 3 samples, sample-first
    model_side = to_model_layout(samples, h0)
    assert model_side.shape == (2, 3, 16) and np.array_equal(model_side[:, 1], samples[1])
    assert np.array_equal(from_model_layout(model_side, hn), samples)
    tensor = to_model_layout(torch.from_numpy(samples), h0)
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (2, 3, 16) and tensor.is_contiguous()
    x = np.zeros((3, 12, 8), np.float32)
    assert to_model_layout(x, meta.io.input("x")) is x                      # batch first: untouched

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from compress_lab_app.task_panels import io_rows
    shapes = [row["shape"] for row in io_rows(meta.io.to_dict())]         # the Model page shows the model's layout
    assert shapes == ["N × 12 × 8", "2 × N × 16", "2 × N × 16", "N × 12", "2 × N × 16", "2 × N × 16"]


@pytest.mark.parametrize("where,value,words", [
    ("inputs", 5, ["inputs[1].batch_axis = 5", "out of range for shape [2, 16]", "0..2", "LSTM"]),
    ("inputs", -1, ["inputs[1].batch_axis = -1", "0..2"]),
    ("inputs", "1", ["inputs[1].batch_axis = '1'", "integer 0..2"]),
    ("outputs", 3, ["outputs[1].batch_axis = 3", "out of range for shape [2, 16]", "0..2"]),
])
def test_a_bad_batch_axis_is_refused_naming_the_field_the_value_and_the_fix(where, value, words):
    data = {**META, where: [dict(s) for s in META[where]]}
    data[where][1]["batch_axis"] = value
    with pytest.raises(ConfigError) as raised:
        ModelMetadata.from_dict(data)
    for word in words:
        assert word in str(raised.value), str(raised.value)


def test_the_model_folder_and_torchscript_load_and_the_declaration_is_checked(lstm, tmp_path):
    handle = load_model(lstm)
    assert handle.kind == "torch" and handle.metadata.io.input("c0").batch_axis == 1
    eager = named_torch_predictor(handle.module, handle.metadata.io)(val_inputs(lstm))
    assert {k: v.shape for k, v in eager.items()} == {"y": (24, STEPS), "hn": (24, LAYERS, HIDDEN),
                                                      "cn": (24, LAYERS, HIDDEN)}   # sample-first

    scripted = tmp_path / "scripted"
    scripted.mkdir()
    (scripted / "metadata.json").write_text((lstm / "metadata.json").read_text())
    example = (torch.zeros(3, STEPS, FEATURES), torch.zeros(LAYERS, 3, HIDDEN), torch.zeros(LAYERS, 3, HIDDEN))
    torch.jit.trace(handle.module.eval(), example).save(str(scripted / "lstm.pt"))
    again = named_torch_predictor(load_model(scripted / "lstm.pt").module, handle.metadata.io)(val_inputs(lstm))
    assert all(np.allclose(again[k], eager[k], atol=1e-6) for k in eager)

    import json
    batch_first = {**META, "inputs": [META["inputs"][0], {"name": "h0", "shape": [2, 16]}, META["inputs"][2]]}
    wrong = make_model(tmp_path / "batch_first", LSTM, batch_first)     # h0 declared batch first: the LSTM refuses it
    with pytest.raises(ModelLoadError, match=r"cannot run on blank inputs .*'h0': \[1, 2, 16\]"):
        load_model(wrong)
    (wrong / "metadata.json").write_text(json.dumps(
        {**META, "outputs": [META["outputs"][0], {"name": "hn", "meaning": "state", "shape": [16], "batch_axis": 1},
                             META["outputs"][2]]}))
    with pytest.raises(ModelLoadError, match=r"output 'hn' .*has shape \[1, 2, 16\] but metadata.json declares \[16\]"):
        load_model(wrong)


def test_the_core_ml_program_matches_eager_pytorch_per_output_states_included(lstm, package):
    import coremltools as ct

    handle, converted = load_model(lstm), load_model(package)
    assert converted.kind == "coreml" and converted.metadata == handle.metadata   # the declaration travels along
    h0 = next(i for i in ct.utils.load_spec(str(package)).description.input if i.name == "h0")
    ranges = h0.type.multiArrayType.shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in ranges] == [(2, 2), (1, 4096), (16, 16)]   # a flexible batch on axis 1

    inputs = val_inputs(lstm)
    eager = named_torch_predictor(handle.module, handle.metadata.io)(inputs)
    runtime = named_coreml_predictor(package, converted.metadata.io)(inputs)
    assert set(runtime) == {"y", "hn", "cn"}
    errors = {k: float(np.abs(runtime[k] - eager[k]).max()) for k in eager}
    print(f"\nLSTM fp32 max |Core ML runtime - eager PyTorch| per output: {errors}")
    assert all(runtime[k].shape == eager[k].shape for k in eager)
    assert max(errors.values()) < 1e-5, errors
    fresh = named_torch_predictor(handle.module, handle.metadata.io)(
        {**inputs, "h0": np.zeros_like(inputs["h0"]), "c0": np.zeros_like(inputs["c0"])})
    assert np.abs(fresh["y"] - eager["y"]).max() > 1e-2                 # the initial states matter
    one = named_coreml_predictor(package, converted.metadata.io)({k: v[5:6] for k, v in inputs.items()})
    assert all(np.allclose(one[k][0], eager[k][5], atol=1e-5) for k in eager)   # sample 5 alone: its own state

    scored = evaluate_model(package, lstm / "val.npz", reference=lstm, metric=lstm.parent / "metric.py")
    assert scored.task == "regression" and set(scored.fidelity) == {"y", "hn", "cn"}
    assert min(f["snr_db"] for f in scored.fidelity.values()) > 80
    baseline = evaluate_model(lstm, lstm / "val.npz", metric=lstm.parent / "metric.py")
    assert scored.values["mae"] == pytest.approx(baseline.values["mae"], rel=1e-5)
    assert scored.values["state_drift"] == pytest.approx(baseline.values["state_drift"], rel=1e-5)
    assert scored.higher_is_better["state_drift"] is False


def test_fine_tuning_batches_states_sample_first_and_calls_the_model_with_batch_on_axis_1(lstm, tmp_path):
    from compress_lab.techniques import CompressContext
    handle = load_model(lstm)
    ctx = CompressContext(handle=handle, workdir=tmp_path, train_dir=lstm / "train.npz")
    data = _training.load_training_data(ctx)
    assert len(data) == 96 and tuple(data.inputs["h0"].shape) == (96, LAYERS, HIDDEN)
    inputs, targets = data.batch(torch.tensor([4, 7, 9]))
    x, h0, c0 = _training.model_args(handle.metadata, inputs)
    assert tuple(x.shape) == (3, STEPS, FEATURES) and tuple(h0.shape) == (LAYERS, 3, HIDDEN) == tuple(c0.shape)
    assert torch.equal(h0[:, 1], data.inputs["h0"][7])
    outputs = _training.named_outputs(handle.module(x, h0, c0), handle.metadata)
    assert tuple(outputs["hn"].shape) == (3, LAYERS, HIDDEN) and tuple(targets["y"].shape) == (3, STEPS)
    assert [tuple(a.shape) for a in data.example()] == [(1, STEPS, FEATURES), (LAYERS, 1, HIDDEN), (LAYERS, 1, HIDDEN)]


@pytest.fixture(scope="module")
def lstm_store(lstm, tmp_path_factory) -> Path:
    """A real sweep: baselines, 4-bit palettized weights (post-training) and magnitude pruning while
    fine-tuned from train.npz with the regression loss, measured with a user metric on the state hn."""
    return swept_store(tmp_path_factory.mktemp("lstm-store"), f"""
        [model]
        source = "{lstm}"
        [data]
        validation = "{lstm / 'val.npz'}"
        train = "{lstm / 'train.npz'}"
        metric = "{lstm.parent / 'metric.py'}"
        [run]
        name = "stateful-lstm"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = 4
        weight_threshold = 0
        [[grid]]
        technique = "magnitude_pruning"
        target_sparsity = 0.5
        steps = 40
        batch_size = 16
        learning_rate = 0.01
    """)


def test_a_sweep_palettizes_and_prunes_while_fine_tuning_with_a_user_metric_on_the_state(lstm_store):
    runs = runs_by_technique(lstm_store)
    assert {"baseline PyTorch", "baseline fp16", "palettize", "magnitude_pruning"} <= set(runs)
    untrained = runs["baseline PyTorch"].metrics["values"]
    for run in runs.values():
        assert run.metrics["task"] == "regression" and np.isfinite(run.metrics["values"]["state_drift"])
        assert run.metrics["higher_is_better"]["state_drift"] is False and run.metrics["higher_is_better"]["mae"] is False
    assert runs["baseline fp16"].metrics["values"]["state_drift"] == pytest.approx(untrained["state_drift"], rel=1e-3)

    palettized = runs["palettize"]
    ops = {op: n for op, n in _training.op_counts(lstm_store / palettized.artifact_path).items() if op in COMPRESSED_OPS}
    assert ops.get("constexpr_lut_to_dense", 0) >= 4                   # the LSTM's weight matrices
    assert palettized.sizes["weights_bytes"] < 0.5 * runs["baseline fp16"].sizes["weights_bytes"]
    fidelity = palettized.metrics["fidelity"]
    assert set(fidelity) == {"y", "hn", "cn"} and min(f["cosine"] for f in fidelity.values()) > 0.99

    pruned = runs["magnitude_pruning"]
    ops = _training.op_counts(lstm_store / pruned.artifact_path)
    assert ops.get("constexpr_sparse_to_dense", 0) >= 1
    assert pruned.metrics["values"]["mae"] < 0.8 * untrained["mae"]     # fine-tuned on the next-step targets


def test_results_budget_the_lstms_mae_lower_is_better(lstm_store, monkeypatch):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.test_app_tasks import results_budget_a_lower_is_better_metric

    results_budget_a_lower_is_better_metric(lstm_store, monkeypatch, "mae", "mean absolute error",
                                            also=("rmse", "state_drift"))


def test_a_state_array_of_the_wrong_per_sample_shape_is_refused_naming_the_file_and_input(lstm, tmp_path):
    arrays = dict(np.load(lstm / "val.npz"))
    bad = tmp_path / "model_layout.npz"
    np.savez(bad, **{**arrays, "h0": np.ascontiguousarray(arrays["h0"].transpose(1, 0, 2))})   # (2, 24, 16)
    with pytest.raises(DataError) as raised:
        evaluate_model(lstm, bad)
    message = str(raised.value)
    assert str(bad) in message and "different sample counts" in message, message
    assert "array 'h0' looks saved as the model takes it (batch on axis 1)" in message and "moveaxis(h0, 1, 0)" in message

    wrong = tmp_path / "wrong_hidden.npz"
    np.savez(wrong, **{**arrays, "c0": arrays["c0"][:, :, :8]})
    with pytest.raises(DataError, match=r"array 'c0' in .*wrong_hidden.npz has shape \[24, 2, 8\].*input 'c0' is "
                                        r"declared \[2, 16\]"):
        evaluate_model(lstm, wrong)


def test_calibration_and_sensitivity_feed_the_states_as_the_model_takes_them(lstm, package, tmp_path):
    """W8A8 calibrates the Core ML program, GPTQ runs the PyTorch model layer by layer, and a
    sensitivity analysis runs the program on a subset: each with h0/c0 batched on axis 1."""
    from compress_lab.analysis.sensitivity import measure_sensitivity
    from compress_lab.analysis.subset import SubsetEvaluator
    from compress_lab.techniques import compress, config_from_dict

    handle = load_model(lstm)
    w8a8 = compress(handle, config_from_dict({"technique": "w8a8", "calibration": "train", "calibration_samples": 40}),
                    tmp_path / "w8a8.mlpackage", train_dir=lstm / "train.npz")
    assert w8a8.details["activations"]["calibration_samples"] == 40            # two batches of up to 32
    assert _training.op_counts(w8a8.path).get("quantize", 0) >= 1
    gptq = compress(handle, config_from_dict({"technique": "gptq", "calibration_samples": 24}),
                    tmp_path / "gptq.mlpackage", train_dir=lstm / "train.npz")
    assert _training.op_counts(gptq.path).get("constexpr_blockwise_shift_scale", 0) == 1   # the Linear head
    for path in (w8a8.path, gptq.path):
        scored = evaluate_model(path, lstm / "val.npz", reference=handle)
        assert min(f["cosine"] for f in scored.fidelity.values()) > 0.99, scored.fidelity

    evaluator = SubsetEvaluator(package, lstm / "val.npz", handle.metadata, max_images=16)
    assert evaluator.count == 16 and evaluator.primary.name == "mae"
    result = measure_sensitivity(evaluator, "palettize", {"nbits": 2}, weight_threshold=0)
    assert len(result.layers) >= 5 and all(layer.drop is not None for layer in result.layers)
    assert max(layer.drop for layer in result.layers) > 0          # 2-bit weights in the recurrence move the MAE
