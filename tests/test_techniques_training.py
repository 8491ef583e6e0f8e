"""Training-time techniques on the real MNIST sample model and its real training
digits: a few fine-tuning steps each, converted with the real coremltools and run
through the lab's own Core ML runtime."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_lab.errors import CancelledError, ConfigError
from compress_lab.runtime import load_program
from compress_lab.techniques import REGISTRY, CompressContext, DataNeed, compress, config_from_dict
from compress_lab.techniques import _training, calibrated, dkm, magnitude_pruning, qat

TRAINING_TECHNIQUES = ("qat", "dkm", "magnitude_pruning", "prune_dkm", "prune_qat")
CALIBRATED_TECHNIQUES = ("skm", "gptq")
DATA_FREE_TECHNIQUES = ("torch_palettize", "torch_quantize")
TINY = {"steps": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def ctx(mnist_handle, mnist_dir, tmp_path_factory) -> CompressContext:
    return CompressContext(handle=mnist_handle, workdir=tmp_path_factory.mktemp("work"), train_dir=mnist_dir / "train")


@pytest.fixture(scope="module")
def original_state(mnist_handle) -> dict:
    return {k: v.clone() for k, v in mnist_handle.module.state_dict().items()}


@pytest.fixture(scope="module")
def val_subset(ctx, mnist_dir):
    data = _training.load_training_data(ctx, mnist_dir / "val")
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:200]
    return data.x[index], data.y[index]


@pytest.fixture(scope="module")
def fp16_size(ctx) -> int:
    return _training.package_bytes(ctx.float_package("fp16"))


def _torch_predictions(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).argmax(1).numpy()


def _package_predictions(path: Path, x: torch.Tensor) -> np.ndarray:
    return load_program(path, compute_precision="fp32").predict(x.numpy()).argmax(1)


def _assert_package_matches_torch(path: Path, model: torch.nn.Module, val_subset) -> float:
    x, y = val_subset
    torch_pred, package_pred = _torch_predictions(model, x), _package_predictions(path, x)
    torch_acc = float((torch_pred == y.numpy()).mean())
    package_acc = float((package_pred == y.numpy()).mean())
    assert abs(torch_acc - package_acc) <= 0.01, (torch_acc, package_acc)
    assert (torch_pred == package_pred).mean() >= 0.98
    return package_acc


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------- contract

def test_every_technique_is_registered_with_family_and_data_need():
    for name in TRAINING_TECHNIQUES:
        cls = REGISTRY.config_class(name)
        assert cls.family == "training_time" and cls.data_need is DataNeed.TRAINING and cls.summary
    for name in CALIBRATED_TECHNIQUES:
        assert REGISTRY.config_class(name).data_need is DataNeed.CALIBRATION
    for name in DATA_FREE_TECHNIQUES:
        cls = REGISTRY.config_class(name)
        assert cls.data_need is DataNeed.NONE and cls.family == "training_time" and "PyTorch" in cls.summary


@pytest.mark.parametrize("data", [
    {"technique": "qat", "weight_dtype": "int4", "activations": "int8", "scheme": "affine", "milestones": [0, 1, 5, 5]},
    {"technique": "dkm", "n_bits": 3, "granularity": "per_grouped_channel", "group_size": 8, "steps": 7},
    {"technique": "magnitude_pruning", "target_sparsity": 0.8, "schedule": "constant", "optimizer": "sgd"},
    {"technique": "magnitude_pruning", "n_m": [3, 4], "epochs": 2},
    {"technique": "prune_dkm", "n_bits": 2, "target_sparsity": 0.6, "learning_rate": 0.001},
    {"technique": "prune_qat", "weight_dtype": "int4", "block_size": 4},
    {"technique": "gptq", "weight_dtype": "uint8", "granularity": "per_block", "block_size": 16},
    {"technique": "skm", "n_bits": 6, "calibration_samples": 16},
])
def test_configs_round_trip_as_plain_data(data):
    config = config_from_dict(data)
    again = config_from_dict(config.to_dict())
    assert again == config
    for key, value in data.items():
        if key != "technique":
            assert config.to_dict()[key] == value


@pytest.mark.parametrize("data, words", [
    ({"technique": "qat", "weight_dtype": "int3"}, ["int3", "int8", "int4"]),
    ({"technique": "qat", "milestones": [0, 1]}, ["milestones", "4"]),
    ({"technique": "dkm", "n_bits": 5}, ["5", "[1, 2, 3, 4, 6, 8]"]),
    ({"technique": "dkm", "group_size": 8}, ["group_size", "per_grouped_channel"]),
    ({"technique": "dkm", "granularity": "per_grouped_channel"}, ["group_size"]),
    ({"technique": "magnitude_pruning", "target_sparsity": 1.5}, ["1.5", "(0, 1)"]),
    ({"technique": "magnitude_pruning", "n_m": [4, 2]}, ["n_m", "0 < n < m"]),
    ({"technique": "magnitude_pruning", "n_m": [1, 2], "block_size": 4}, ["n_m", "block_size"]),
    ({"technique": "qat", "optimizer": "rmsprop"}, ["rmsprop", "sgd", "adam"]),
    ({"technique": "dkm", "steps": 0}, ["steps", "0"]),
    ({"technique": "dkm", "batch_size": 0}, ["batch_size"]),
    ({"technique": "qat", "learning_rate": -1}, ["learning_rate", "-1"]),
    ({"technique": "gptq", "weight_dtype": "int4"}, ["int4", "uint4"]),
    ({"technique": "skm", "calibration_samples": 0}, ["calibration_samples"]),
    ({"technique": "qat", "epoch": 3}, ["epoch", "epochs"]),
])
def test_bad_configs_name_the_value_and_the_fix(data, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_training_technique_without_training_folder_is_refused(mnist_handle, tmp_path):
    with pytest.raises(ConfigError, match="needs training data"):
        compress(mnist_handle, qat.QATConfig(**TINY), tmp_path / "out.mlpackage")
    with pytest.raises(ConfigError, match="calibration"):
        compress(mnist_handle, calibrated.GPTQConfig(), tmp_path / "out.mlpackage")


def test_epochs_and_steps():
    assert qat.QATConfig(epochs=2, batch_size=100).total_steps(4000) == 80
    assert qat.QATConfig(epochs=2, steps=5).total_steps(4000) == 5  # steps wins
    assert magnitude_pruning.update_steps(1) == [1]
    assert magnitude_pruning.update_steps(40)[-1] == 30


# --------------------------------------------------------------------------- fine-tuning

def test_qat_is_reproducible_exports_int8_weights_and_matches_torch(ctx, tmp_path, val_subset, fp16_size, original_state):
    config = qat.QATConfig(steps=3, batch_size=16, seed=3)
    events = []
    ctx.progress = events.append
    try:
        outcome = compress(ctx.handle, config, tmp_path / "qat.mlpackage", context=ctx)
    finally:
        ctx.progress = None
    again = qat.finetune(config, ctx)
    counts = _training.op_counts(outcome.path)
    assert counts.get("constexpr_blockwise_shift_scale", 0) == 5
    assert outcome.details["size_bytes"] < 0.6 * fp16_size
    assert set(outcome.timings) >= {"finetune_s", "convert_s", "compress_s"}
    assert outcome.details["steps"] == 3 and outcome.details["final_loss"] == pytest.approx(np.mean(again.losses))
    steps = [e for e in events if e.stage == "finetune" and e.done > 0]
    assert steps[-1].done == steps[-1].total == 3 and steps[-1].loss is not None and steps[-1].eta_s == 0
    assert any(e.stage == "convert" and e.done == 1 for e in events)
    accuracy = _assert_package_matches_torch(outcome.path, again.model, val_subset)
    assert accuracy > 0.95
    for key, value in ctx.handle.module.state_dict().items():  # the loaded model is untouched
        assert torch.equal(value, original_state[key])


def test_dkm_two_bit_is_reproducible_and_exports_lookup_tables(ctx, tmp_path, val_subset, fp16_size):
    config = dkm.DKMConfig(n_bits=2, **TINY)
    outcome = compress(ctx.handle, config, tmp_path / "dkm.mlpackage", context=ctx)
    again = dkm.finetune(config, ctx)
    assert _training.op_counts(outcome.path).get("constexpr_lut_to_dense", 0) == 4  # first conv: below threshold
    assert outcome.details["size_bytes"] < 0.2 * fp16_size
    fc = again.model.state_dict()["fc_layers.0.weight"]
    assert len(torch.unique(fc)) <= 4
    assert outcome.details["final_loss"] == pytest.approx(np.mean(again.losses))
    _assert_package_matches_torch(outcome.path, again.model, val_subset)


def test_same_seed_gives_identical_weights_and_other_seed_differs(ctx):
    config = magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.75, **TINY)
    first, second = magnitude_pruning.finetune(config, ctx), magnitude_pruning.finetune(config, ctx)
    _assert_same_weights(first.model, second.model)
    assert first.losses == second.losses
    other = magnitude_pruning.finetune(magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.75, seed=1, **TINY), ctx)
    assert other.losses != first.losses


def test_magnitude_pruning_reaches_target_sparsity_and_exports_sparse_weights(ctx, tmp_path, val_subset, fp16_size):
    config = magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.75, steps=4, batch_size=8)
    outcome = compress(ctx.handle, config, tmp_path / "pruned.mlpackage", context=ctx)
    model = magnitude_pruning.finetune(config, ctx).model
    assert outcome.details["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert _training.op_counts(outcome.path).get("constexpr_sparse_to_dense", 0) == 5
    assert outcome.details["size_bytes"] < 0.4 * fp16_size
    _assert_package_matches_torch(outcome.path, model, val_subset)


@pytest.mark.parametrize("data, joint_op", [
    ({"technique": "prune_dkm", "n_bits": 2, "target_sparsity": 0.5}, "constexpr_lut_to_sparse"),
    ({"technique": "prune_qat", "weight_dtype": "int8", "target_sparsity": 0.5}, "constexpr_sparse_blockwise_shift_scale"),
])
def test_joint_pruning_exports_sparse_compressed_weights(ctx, tmp_path, fp16_size, data, joint_op):
    config = config_from_dict({**data, **TINY})
    outcome = compress(ctx.handle, config, tmp_path / "joint.mlpackage", context=ctx)
    assert _training.op_counts(outcome.path).get(joint_op, 0) >= 4
    assert outcome.details["sparsity"] >= 0.45
    assert outcome.details["size_bytes"] < 0.35 * fp16_size


@pytest.mark.parametrize("data, op", [
    ({"technique": "skm", "n_bits": 4, "calibration_samples": 8}, "constexpr_lut_to_dense"),
    ({"technique": "gptq", "weight_dtype": "uint4", "calibration_samples": 8}, "constexpr_blockwise_shift_scale"),
    ({"technique": "torch_palettize", "n_bits": 4}, "constexpr_lut_to_dense"),
    ({"technique": "torch_quantize", "weight_dtype": "int8"}, "constexpr_blockwise_shift_scale"),
])
def test_pytorch_side_compression_without_fine_tuning(ctx, tmp_path, val_subset, fp16_size, data, op):
    config = config_from_dict(data)
    outcome = compress(ctx.handle, config, tmp_path / "out.mlpackage", context=ctx)
    assert _training.op_counts(outcome.path).get(op, 0) == 5
    assert outcome.details["size_bytes"] < 0.6 * fp16_size
    model = calibrated.compressed_model(config, ctx)
    _assert_package_matches_torch(outcome.path, model, val_subset)


def test_cancel_stops_fine_tuning_between_steps(mnist_handle, mnist_dir, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(event):
        seen.append(event)
        if event.stage == "finetune" and event.done >= 1:
            cancel.set()

    context = CompressContext(handle=mnist_handle, workdir=tmp_path, train_dir=mnist_dir / "train",
                              progress=progress, cancel_event=cancel)
    with pytest.raises(CancelledError):
        compress(mnist_handle, magnitude_pruning.MagnitudePruningConfig(steps=50, batch_size=8), tmp_path / "x.mlpackage",
                 context=context)
    assert max(e.done for e in seen if e.stage == "finetune") == 1
    assert not (tmp_path / "x.mlpackage").exists()


def test_estimates_are_finite_and_scale_with_steps(mnist_handle):
    plain = _training.estimate_seconds(magnitude_pruning.MagnitudePruningConfig(steps=200, batch_size=8), mnist_handle, 4000)
    palettized = _training.estimate_seconds(dkm.DKMConfig(n_bits=2, steps=200, batch_size=8), mnist_handle, 4000)
    data_free = _training.estimate_seconds(calibrated.TorchQuantizeConfig(), mnist_handle, 0)
    for value in (plain, palettized, data_free):
        assert math.isfinite(value) and value > 0
    longer = _training.estimate_seconds(dkm.DKMConfig(n_bits=2, steps=400, batch_size=8), mnist_handle, 4000)
    assert longer > palettized  # measured once, then scaled by the steps
