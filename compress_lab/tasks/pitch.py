"""The `pitch` task: audio frames in, pitch-bin activations out, decoded to a pitch
the way CREPE decodes it, and scored against each frame's true fundamental frequency.

Activations are one value per pitch bin on CREPE's grid: bin b is
CENTS_OFFSET + CENTS_PER_BIN * b cents, where cents = 1200 * log2(f / 10 Hz) (360 bins
of 20 cents: 31.7 Hz to 2005.5 Hz). Decoding ("local average", CREPE's
`to_local_average_cents`, torchcrepe's `weighted_argmax`): the activation-weighted mean
of the bins' cents over the peak bin +- DECODE_RADIUS bins. (torchcrepe additionally
re-applies a sigmoid and dithers the bin cents with random noise; the lab decodes
deterministically, as CREPE does.)

Validation data is an array source (compress_lab/arrays.py): one `.npz` with the input
frames (e.g. `frames`, N x 1024) and a target `f0_hz` (N,), or a folder of one-sample
`.npz` files holding the same names. Frames with f0_hz <= 0 are unvoiced and not
scored. A source without `f0_hz` is measured by fidelity only.

Metrics: raw pitch accuracy (the share of scored frames whose decoded pitch is within
RPA_CENTS of the target; primary) and the median absolute error in cents.

Loss (for training-time techniques): CREPE's own training target, each bin's Gaussian
of the distance to the true pitch (std TARGET_STD_CENTS), and binary cross-entropy on
the activations. The model outputs sigmoid probabilities, so they are clipped to
[BCE_EPS, 1 - BCE_EPS] and turned back into logits for a stable
binary_cross_entropy_with_logits (what Keras, which CREPE was trained with, does)."""

from __future__ import annotations

import numpy as np

from compress_lab.arrays import ArraySource, read_arrays
from compress_lab.errors import DataError, ModelLoadError
from compress_lab.tasks import register_task
from compress_lab.tasks.base import Metric, Task, TaskBatch, check_batch_outputs
from compress_lab.tasks.tensors import ArrayData, TensorsAccumulator

TARGET = "f0_hz"
PITCH_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191     # bin 0 (31.70 Hz)
DECODE_RADIUS = 4                     # bins each side of the peak in the local average
RPA_CENTS = 50.0
TARGET_STD_CENTS = 25.0
BCE_EPS = 1e-7

BIN_CENTS = CENTS_OFFSET + CENTS_PER_BIN * np.arange(PITCH_BINS, dtype=np.float64)


def hz_to_cents(hz) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(hz, dtype=np.float64) / 10.0)


def cents_to_hz(cents) -> np.ndarray:
    return 10.0 * 2.0 ** (np.asarray(cents, dtype=np.float64) / 1200.0)


def decode_cents(activations) -> np.ndarray:
    """(N, 360) activations -> (N,) cents: weighted mean of the bins' cents over the peak
    bin +- DECODE_RADIUS (clipped at the ends of the grid)."""
    a = np.asarray(activations, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != PITCH_BINS:
        raise DataError(f"pitch activations have shape {list(a.shape)}; expected (frames, {PITCH_BINS})")
    peak = a.argmax(axis=1)
    offsets = np.arange(-DECODE_RADIUS, DECODE_RADIUS + 1)
    index = peak[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < PITCH_BINS)
    index = np.clip(index, 0, PITCH_BINS - 1)
    weights = np.where(inside, np.take_along_axis(a, index, axis=1), 0.0)
    total = weights.sum(axis=1)
    weighted = (weights * BIN_CENTS[index]).sum(axis=1)
    return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), BIN_CENTS[peak])


def decode_hz(activations) -> np.ndarray:
    return cents_to_hz(decode_cents(activations))


class PitchErrors:
    """Streams the absolute cents error of each voiced frame (f0_hz > 0)."""

    def __init__(self) -> None:
        self.errors: list[np.ndarray] = []

    def add(self, activations, f0_hz) -> None:
        f0 = np.asarray(f0_hz, dtype=np.float64).reshape(-1)
        voiced = f0 > 0
        if voiced.any():
            cents = decode_cents(np.asarray(activations)[voiced])
            self.errors.append(np.abs(cents - hz_to_cents(f0[voiced])))

    def result(self) -> dict[str, float]:
        if not self.errors:
            return {}
        errors = np.concatenate(self.errors)
        return {"raw_pitch_accuracy": float((errors <= RPA_CENTS).mean()),
                "median_cents_error": float(np.median(errors))}


def activation_output(io) -> str:
    """The output holding the pitch-bin activations: `activations`, else the only output."""
    if "activations" in io.output_names:
        return "activations"
    if len(io.outputs) == 1:
        return io.outputs[0].name
    raise ModelLoadError(f"task 'pitch' needs to know which output holds the {PITCH_BINS} pitch-bin activations; "
                         f"metadata.json declares {list(io.output_names)}; name that output \"activations\"")


def _check_targets(f0: np.ndarray, n: int, where: str, ids=None) -> np.ndarray:
    f0 = np.asarray(f0)
    if f0.dtype.kind not in "fiu":
        raise DataError(f"array {TARGET!r} in {where} holds {f0.dtype} values; give each frame's fundamental "
                        "frequency in Hz (0 for an unvoiced frame)")
    if f0.size != n:
        raise DataError(f"array {TARGET!r} in {where} holds {f0.size} values for {n} frames; give one frequency "
                        "per frame (shape (frames,))")
    f0 = f0.reshape(n).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(f0))
    if bad.size:
        at = ids[int(bad[0])] if ids else int(bad[0])
        raise DataError(f"array {TARGET!r} in {where} has a NaN or infinite frequency (frame {at}); use 0 for an "
                        "unvoiced frame, or drop it")
    return f0


class PitchAccumulator(TensorsAccumulator):
    def __init__(self, task: Task, meta, data: ArrayData, reference):
        super().__init__(task, meta, data, reference)
        self.output = activation_output(self.io)
        self.errors = PitchErrors()
        self.where = str(data.source.root)

    def add(self, batch: TaskBatch, outputs: dict[str, np.ndarray]) -> None:
        n = len(batch)
        outputs = check_batch_outputs(outputs, self.io, n)
        if TARGET in batch.targets:
            f0 = _check_targets(batch.targets[TARGET], n, self.where, batch.ids)
            self.errors.add(np.asarray(outputs[self.output]).reshape(n, -1), f0)
        super().add(batch, outputs)

    def result(self) -> dict:
        result = super().result()
        values = self.errors.result()
        if values:
            result["values"] = values
        return result


class Pitch(Task):
    name = "pitch"
    label = "pitch tracking"
    description = (f"audio frames in, {PITCH_BINS} pitch-bin activations out (CREPE's grid), decoded by the local "
                   "average around the peak; raw pitch accuracy (within 50 cents) and median cents error against "
                   "f0_hz; fidelity to the uncompressed activations")

    def metrics(self, meta) -> list[Metric]:
        return [Metric("raw_pitch_accuracy", "raw pitch accuracy (within 50 cents)", "", True, primary=True),
                Metric("median_cents_error", "median absolute pitch error", "cents", False)]

    def check_io(self, meta, inputs, outputs, source="the model") -> None:
        super().check_io(meta, inputs, outputs, source)
        io = self.io(meta)
        try:
            name = activation_output(io)
        except ModelLoadError as e:
            raise ModelLoadError(f"{source}: {e}") from None
        shape = outputs.get(name) if name in outputs else (list(outputs.values())[0] if len(outputs) == 1 else None)
        if shape is not None and tuple(shape)[1:] != (PITCH_BINS,):
            raise ModelLoadError(f"output {name!r} of {source} has shape {list(shape)}; task 'pitch' needs "
                                 f"(frames, {PITCH_BINS}) activations on CREPE's pitch grid (20 cents per bin from "
                                 f"{CENTS_OFFSET:.2f} cents)")

    def open_source(self, source, meta) -> ArraySource:
        if isinstance(source, ArraySource):
            return source
        arrays = read_arrays(source, self.io(meta))
        if arrays.inputs is not None and TARGET in arrays.targets:
            _check_targets(arrays.targets[TARGET], arrays.n, f"array file {arrays.root}")
        return arrays

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache=None, progress=None) -> ArrayData:
        return ArrayData(self.open_source(source, meta), int(batch_size))

    def accumulator(self, meta, data, reference) -> PitchAccumulator:
        return PitchAccumulator(self, meta, data, reference)

    def source_refusal(self, meta, source) -> str | None:
        """Why an (opened) training source cannot train the pitch loss (None: it can)."""
        names = source.targets if source.inputs is not None else source._folder_targets
        if TARGET not in names:
            return (f"training source {source.root} has no array {TARGET!r}, so task 'pitch' has no target to "
                    f"fine-tune with; add each frame's frequency in Hz (numpy.savez(..., {TARGET}=f0)), or use "
                    "post-training techniques")
        return None

    def loss(self, meta):
        io = self.io(meta)
        output = activation_output(io)
        names = io.output_names

        def crepe_bce(outputs, targets):
            """Binary cross-entropy of the activations against Gaussian-blurred pitch bins."""
            import torch
            import torch.nn.functional as F

            if isinstance(outputs, torch.Tensor):
                activations = outputs
            elif isinstance(outputs, (tuple, list)):
                activations = dict(zip(names, outputs))[output]
            else:
                activations = outputs[output]
            if TARGET not in targets:
                raise DataError(f"the training batch holds no {TARGET!r} target (it holds {sorted(targets)}); the "
                                "pitch loss needs each frame's frequency in Hz")
            activations = activations.reshape(len(activations), -1)
            blurred = gaussian_bins(torch.as_tensor(targets[TARGET]).reshape(-1), activations.dtype, activations.device)
            p = activations.clamp(BCE_EPS, 1.0 - BCE_EPS)
            logits = torch.log(p) - torch.log1p(-p)
            return F.binary_cross_entropy_with_logits(logits, blurred)
        return crepe_bce


def gaussian_bins(f0_hz, dtype=None, device=None):
    """CREPE's training target: (N, 360) with exp(-d^2 / (2 * 25^2)) for d the distance in
    cents from each bin to the frame's pitch; all zeros for an unvoiced frame (f0 <= 0)."""
    import torch

    f0 = torch.as_tensor(f0_hz, dtype=torch.float64, device=device).reshape(-1)
    voiced = f0 > 0
    cents = 1200.0 * torch.log2(torch.where(voiced, f0, torch.ones_like(f0)) / 10.0)
    bins = torch.as_tensor(BIN_CENTS, dtype=torch.float64, device=device)
    target = torch.exp(-((bins[None, :] - cents[:, None]) ** 2) / (2 * TARGET_STD_CENTS ** 2))
    target = torch.where(voiced[:, None], target, torch.zeros_like(target))
    return target.to(dtype or torch.float32)


register_task(Pitch())
