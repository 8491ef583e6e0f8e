"""The `pitch` task: CREPE's local-average decoding on synthetic activations (against a
direct loop transcription of CREPE's `to_local_average_cents`), raw pitch accuracy and
median cents error on known cents errors, the Gaussian-bin BCE loss (values, saturated
activations, and that it trains), and a small pitch model evaluated through the lab."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from compress_lab.errors import DataError, ModelLoadError
from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.tasks import get_task, task_names
from compress_lab.tasks.pitch import (BIN_CENTS, PITCH_BINS, PitchErrors, cents_to_hz, decode_cents, decode_hz,
                                      gaussian_bins, hz_to_cents)
from tests.test_tasks import make_model


def crepe_local_average(salience: np.ndarray) -> float:
    """CREPE's to_local_average_cents for one frame, as its source writes it."""
    mapping = np.linspace(0, 7180, 360) + 1997.3794084376191
    center = int(np.argmax(salience))
    start = max(0, center - 4)
    end = min(len(salience), center + 5)
    s = salience[start:end]
    return float(np.sum(s * mapping[start:end]) / np.sum(s))


def test_the_pitch_grid_is_crepes():
    assert PITCH_BINS == 360 and BIN_CENTS[1] - BIN_CENTS[0] == 20.0
    assert cents_to_hz(BIN_CENTS[0]) == pytest.approx(31.70, abs=1e-2)       # a little below C1
    assert cents_to_hz(BIN_CENTS[-1]) == pytest.approx(2005.50, abs=1e-2)    # a little above B6
    assert hz_to_cents(440.0) == pytest.approx(1200 * np.log2(44.0))
    assert "pitch" in task_names()


def test_decoding_is_the_weighted_mean_of_the_bins_around_the_peak():
    rng = np.random.default_rng(0)
    true = rng.uniform(BIN_CENTS[5], BIN_CENTS[-6], size=40)
    bump = np.exp(-(BIN_CENTS[None, :] - true[:, None]) ** 2 / (2 * 25.0 ** 2))   # symmetric around the pitch
    noise = bump + 0.02 * rng.random(bump.shape)
    edges = np.zeros((3, PITCH_BINS))
    edges[0, 0], edges[0, 1] = 1.0, 0.5          # peak at the first bin: window clipped
    edges[1, -1], edges[1, -3] = 0.8, 0.4         # and at the last
    edges[2, 100], edges[2, 104], edges[2, 105] = 1.0, 0.5, 0.9   # bin 105 is outside the +-4 window
    activations = np.concatenate([bump, noise, edges])
    decoded = decode_cents(activations)
    assert decoded == pytest.approx([crepe_local_average(a) for a in activations], abs=1e-9)
    assert np.abs(decode_cents(bump) - true).max() < 1.0            # a symmetric bump decodes to its centre
    assert decoded[-1] == pytest.approx((BIN_CENTS[100] + 0.5 * BIN_CENTS[104]) / 1.5)
    one_hot = np.eye(PITCH_BINS)[[0, 57, 359]]
    assert decode_cents(one_hot) == pytest.approx(BIN_CENTS[[0, 57, 359]])
    assert decode_hz(one_hot) == pytest.approx(cents_to_hz(BIN_CENTS[[0, 57, 359]]))
    assert np.isfinite(decode_cents(np.zeros((2, PITCH_BINS)))).all()  # all-zero activations: the peak bin
    with pytest.raises(DataError, match="expected \\(frames, 360\\)"):
        decode_cents(np.zeros((2, 100)))


def test_raw_pitch_accuracy_and_median_cents_error_on_known_errors():
    bins = np.array([50, 60, 70, 80, 90, 100, 110, 120])
    errors = np.array([0.0, 30.0, -49.0, 49.99, 50.01, -100.0, 1200.0, -10.0])   # cents, decoded - true
    activations = np.eye(PITCH_BINS)[bins]
    f0 = cents_to_hz(BIN_CENTS[bins] - errors)
    acc = PitchErrors()
    acc.add(activations[:3], f0[:3])                               # streamed in two batches
    acc.add(activations[3:], f0[3:])
    result = acc.result()
    assert result["raw_pitch_accuracy"] == pytest.approx(5 / 8)     # |e| <= 50: 0, 30, 49, 49.99, 10
    assert result["median_cents_error"] == pytest.approx(np.median(np.abs(errors)))

    unvoiced = PitchErrors()
    unvoiced.add(activations, np.where(np.arange(8) % 2 == 0, f0, 0.0))  # f0 = 0: not scored
    assert unvoiced.result()["raw_pitch_accuracy"] == pytest.approx(2 / 4)   # 0, -49 of 0, -49, 50.01, 1200
    assert unvoiced.result()["median_cents_error"] == pytest.approx(np.median(np.abs(errors[::2])))
    assert PitchErrors().result() == {}


def test_crepe_loss_is_bce_against_gaussian_bins_stable_at_saturation_and_trains():
    loss = get_task("pitch").loss(_meta())
    f0 = torch.tensor([110.0, 440.0, 0.0])
    target = gaussian_bins(f0)
    assert target.shape == (3, PITCH_BINS)
    peak = np.argmin(np.abs(BIN_CENTS - hz_to_cents(440.0)))
    assert int(target[1].argmax()) == peak and float(target[2].abs().sum()) == 0.0   # unvoiced: no bin on
    exact = torch.tensor([cents_to_hz(BIN_CENTS[200])])
    assert float(gaussian_bins(exact)[0, 200]) == pytest.approx(1.0)
    assert float(gaussian_bins(exact)[0, 201]) == pytest.approx(np.exp(-20.0 ** 2 / (2 * 25.0 ** 2)))

    p = torch.rand(3, PITCH_BINS) * 0.98 + 0.01
    manual = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert float(loss({"activations": p}, {"f0_hz": f0})) == pytest.approx(float(manual), rel=1e-5)
    assert float(loss(target.clamp(0.01, 0.99), {"f0_hz": f0})) < float(manual)    # a tensor output works too

    saturated = torch.tensor([[0.0, 1.0] * 180] * 3, requires_grad=True)
    value = loss({"activations": saturated}, {"f0_hz": f0})
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(saturated.grad).all()
    with pytest.raises(DataError, match="no 'f0_hz' target"):
        loss({"activations": p}, {"pitch": f0})

    torch.manual_seed(0)                   # a one-hot note class -> activations model learns its pitches
    notes = torch.arange(12)
    f0 = torch.from_numpy(440.0 * 2 ** ((notes.numpy() * 3 - 12) / 12)).float()
    model = torch.nn.Sequential(torch.nn.Embedding(12, 32), torch.nn.Linear(32, PITCH_BINS), torch.nn.Sigmoid())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)               # a model this small runs slower on several threads of a busy machine
    try:
        for _ in range(60):
            optimizer.zero_grad()
            value = loss(model(notes), {"f0_hz": f0})
            value.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    acc = PitchErrors()
    acc.add(model(notes).detach().numpy(), f0.numpy())
    assert acc.result()["raw_pitch_accuracy"] == 1.0 and acc.result()["median_cents_error"] < 10


TINY_PITCH = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyPitch(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 360), nn.Sigmoid())

        def forward(self, frames):
            return self.net(frames)

    def build_model():
        return TinyPitch()
''')
TINY_META = {"name": "tiny_pitch", "task": "pitch", "inputs": [{"name": "frames", "shape": [16]}],
             "outputs": [{"name": "activations", "meaning": "values", "shape": [360]}]}


def _meta():
    from compress_lab.models.metadata import ModelMetadata
    return ModelMetadata.from_dict(TINY_META)


def test_a_pitch_model_is_scored_through_the_lab_as_numpy_scores_its_outputs(tmp_path):
    handle = load_model(make_model(tmp_path / "tiny", TINY_PITCH, TINY_META))
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(50, 16)).astype(np.float32)
    with torch.no_grad():
        eager = handle.module(torch.from_numpy(frames)).numpy()
    f0 = cents_to_hz(decode_cents(eager) + rng.normal(0, 60, size=50)).astype(np.float32)
    f0[:5] = 0.0                                                     # unvoiced frames
    np.savez(tmp_path / "val.npz", frames=frames, f0_hz=f0)
    result = evaluate_model(handle, tmp_path / "val.npz", batch_size=16)
    errors = np.abs(decode_cents(eager[5:]) - hz_to_cents(f0[5:]))
    assert result.task == "pitch" and result.n == 50
    assert result.values["raw_pitch_accuracy"] == pytest.approx((errors <= 50).mean())
    assert result.values["median_cents_error"] == pytest.approx(np.median(errors), rel=1e-5)
    task = get_task("pitch")
    assert [m.name for m in task.metrics(handle.metadata) if m.primary] == ["raw_pitch_accuracy"]
    assert {m.name for m in task.metrics(handle.metadata) if not m.higher_is_better} == {"median_cents_error"}

    fidelity_only = evaluate_model(handle, _saved(tmp_path / "nof0.npz", frames=frames), reference=handle)
    assert not fidelity_only.values and fidelity_only.fidelity["activations"]["snr_db"] >= 100

    bad = f0.copy()
    bad[7] = np.nan
    with pytest.raises(DataError, match="f0_hz.*NaN"):
        evaluate_model(handle, _saved(tmp_path / "nan.npz", frames=frames, f0_hz=bad))
    with pytest.raises(DataError, match="holds 49 values for 50 frames|different sample counts"):
        evaluate_model(handle, _saved(tmp_path / "short.npz", frames=frames, f0_hz=f0[:49]))
    assert "has no array 'f0_hz'" in task.training_refusal(handle.metadata, tmp_path / "nof0.npz")
    from compress_lab.models.metadata import ModelMetadata
    unshaped = ModelMetadata.from_dict(dict(TINY_META, outputs=[{"name": "activations"}]))
    with pytest.raises(ModelLoadError, match="needs \\(frames, 360\\)"):
        task.check_io(unshaped, {"frames": [1, 16]}, {"activations": [1, 100]})


def _saved(path, **arrays):
    np.savez(path, **arrays)
    return path
