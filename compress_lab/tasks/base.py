"""The Task protocol and what every task shares: metric descriptions, batches of
named arrays, and the fidelity measures against the uncompressed model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from compress_lab.errors import ConfigError, ModelLoadError
from compress_lab.models.io_spec import IOSpec, format_shape, shape_matches

SNR_CAP_DB = 200.0  # SNR/PSNR reported for outputs identical to the reference (the true value is +inf)


@dataclass(frozen=True)
class Metric:
    """One measured value: `name` is its key in a run's metrics, `label` what a
    person reads, `unit` ("" for a fraction or a plain number)."""

    name: str
    label: str
    unit: str = ""
    higher_is_better: bool = True
    primary: bool = False
    fidelity: bool = False       # measured against the uncompressed model, not against targets

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "unit": self.unit, "higher_is_better": self.higher_is_better,
                "primary": self.primary, "fidelity": self.fidelity}


# Fidelity of one output to the reference (uncompressed) model's output.
FIDELITY_METRICS = (
    Metric("snr_db", "output SNR", "dB", True, fidelity=True),
    Metric("psnr_db", "output PSNR", "dB", True, fidelity=True),
    Metric("cosine", "cosine similarity", "", True, fidelity=True),
    Metric("max_abs_error", "max abs error", "", False, fidelity=True),
)
AGREEMENT = Metric("agreement", "top-1 agreement", "", True, fidelity=True)


@dataclass
class TaskBatch:
    """A batch: named input arrays (first axis = sample), named target arrays (may
    be empty) and what identifies each sample (file paths or indices)."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids) if self.ids else len(next(iter(self.inputs.values())))


class FidelityAccumulator:
    """Streams one output's fidelity to the reference: SNR = 10 log10(sum ref^2 /
    sum (ref - out)^2); PSNR = 10 log10(peak^2 / MSE) with peak = max |ref|; mean
    per-sample cosine similarity; max absolute error; and, for class scores, top-1
    agreement (argmax over the last axis). SNR and PSNR are capped at SNR_CAP_DB."""

    def __init__(self, class_scores: bool = False):
        self.class_scores = class_scores
        self.signal = 0.0
        self.noise = 0.0
        self.count = 0          # elements
        self.n = 0              # samples
        self.peak = 0.0
        self.cos_sum = 0.0
        self.max_abs = 0.0
        self.agree = 0
        self.positions = 0

    def add(self, reference: np.ndarray, output: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        out = np.asarray(output)
        if self.class_scores:
            pred = out.argmax(axis=-1)
            self.agree += int((ref.argmax(axis=-1) == pred).sum())
            self.positions += int(pred.size)
        out = out.astype(np.float64)
        diff = ref - out
        self.signal += float((ref ** 2).sum())
        self.noise += float((diff ** 2).sum())
        self.count += int(ref.size)
        n = ref.shape[0] if ref.ndim else 1
        self.n += n
        if ref.size:
            self.peak = max(self.peak, float(np.abs(ref).max()))
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
            r, o = ref.reshape(n, -1), out.reshape(n, -1)
            norms = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
            dots = (r * o).sum(axis=1)
            same = (norms == 0) & (np.abs(r - o).sum(axis=1) == 0)
            cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same, 1.0, 0.0))
            self.cos_sum += float(cos.sum())

    def snr_db(self) -> float | None:
        if self.noise == 0.0:
            return SNR_CAP_DB if self.n else None
        if self.signal == 0.0:
            return None
        return min(SNR_CAP_DB, 10.0 * math.log10(self.signal / self.noise))

    def result(self) -> dict[str, float | None]:
        if not self.n:
            return {}
        mse = self.noise / self.count if self.count else 0.0
        if mse == 0.0:
            psnr = SNR_CAP_DB
        elif self.peak == 0.0:
            psnr = None
        else:
            psnr = min(SNR_CAP_DB, 10.0 * math.log10(self.peak ** 2 / mse))
        values: dict[str, float | None] = {"snr_db": self.snr_db(), "psnr_db": psnr,
                                           "cosine": self.cos_sum / self.n, "max_abs_error": self.max_abs}
        if self.class_scores:
            values["agreement"] = self.agree / self.positions if self.positions else None
        return values


class Task:
    """A kind of model. Subclasses set `name`, `label`, `description` and implement
    `dataset` and `accumulator`; the rest has sensible defaults."""

    name = ""
    label = ""
    description = ""
    # -- declaration
    def io(self, meta) -> IOSpec:
        return meta.io

    def check_io(self, meta, inputs: dict[str, Sequence[int] | None], outputs: dict[str, Sequence[int] | None],
                 source: Any = "the model") -> None:
        """Compare the inputs/outputs a model has (name -> shape with the batch
        dimension, None where unknown) with the declaration; ModelLoadError names
        the input/output, the shape found and the fix."""
        io = self.io(meta)
        missing = [i.name for i in io.inputs if i.name not in inputs]
        if missing and len(inputs) == len(io.inputs) == 1:
            missing = []  # one input: the lab matches it whatever its name
        if missing:
            raise ModelLoadError(
                f"{source} has no input named {missing[0]!r}; its inputs are {sorted(inputs)}. Rename the input in "
                f"metadata.json 'inputs' to one of those (the declaration lists {list(io.input_names)})")
        extra = sorted(set(inputs) - set(io.input_names))
        if extra and not (len(inputs) == len(io.inputs) == 1):
            raise ModelLoadError(f"{source} has input(s) {extra} that metadata.json 'inputs' does not declare; declare "
                                 "every input (name, shape, dtype)")
        pairs = list(zip(io.inputs, inputs.values())) if len(inputs) == len(io.inputs) == 1 else \
            [(spec, inputs[spec.name]) for spec in io.inputs]
        for spec, shape in pairs:
            if shape is None:
                continue
            per_sample = tuple(shape)[1:]
            if not shape_matches(spec.shape, per_sample):
                raise ModelLoadError(
                    f"input {spec.name!r} of {source} has shape {list(shape)} (per sample {list(per_sample)}) but "
                    f"metadata.json declares {format_shape(spec.shape)}; fix 'inputs' (mark a flexible dimension null) "
                    "or give the model an input of the declared shape")
        if len(outputs) < len(io.outputs):
            raise ModelLoadError(
                f"{source} returns {len(outputs)} output(s) {sorted(outputs)} but metadata.json declares "
                f"{len(io.outputs)} {list(io.output_names)}; declare only the outputs the model returns")
        named = all(o.name in outputs for o in io.outputs)
        for index, spec in enumerate(io.outputs):
            shape = outputs[spec.name] if named else list(outputs.values())[index]
            if shape is None or spec.shape is None:
                continue
            if not shape_matches(spec.shape, tuple(shape)[1:]):
                raise ModelLoadError(
                    f"output {spec.name!r} of {source} has shape {list(shape)} but metadata.json declares "
                    f"{format_shape(spec.shape)} per sample; fix 'outputs' (or leave its shape out)")

    # -- data
    def open_source(self, source, meta):
        """`source` read once (scanned, opened), so several datasets can be made from it."""
        return source

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache=None, progress=None):
        raise NotImplementedError

    def subset_source(self, source, meta, max_samples: int):
        """At most `max_samples` samples of `source`, evenly spaced, for the many quick
        measurements of a sensitivity analysis or a mixed-precision search."""
        from compress_lab.arrays import ArraySource, evenly_spaced, take
        source = self.open_source(source, meta)
        if not isinstance(source, ArraySource):
            raise ConfigError(f"task {self.name!r} cannot take a subset of {type(source).__name__}; give an array "
                              "source (.npz)")
        return take(source, evenly_spaced(source.n, max_samples)) if source.n > max_samples else source

    # -- measures
    def metrics(self, meta) -> list[Metric]:
        """The task's own metrics (against targets); the first `primary` one leads."""
        return []

    def fidelity_metrics(self, meta) -> list[Metric]:
        class_scores = any(o.meaning in ("class_scores", "logits_per_position") for o in self.io(meta).outputs)
        return ([AGREEMENT] if class_scores else []) + list(FIDELITY_METRICS)

    def primary_metric(self, meta, labelled: bool = True) -> Metric:
        """The metric a sweep ranks by: the task's primary one when targets exist,
        else the first fidelity measure."""
        own = [m for m in self.metrics(meta) if m.primary] if labelled else []
        return own[0] if own else self.fidelity_metrics(meta)[0]

    def fidelity_accumulators(self, meta) -> dict[str, FidelityAccumulator]:
        return {o.name: FidelityAccumulator(class_scores=o.meaning in ("class_scores", "logits_per_position"))
                for o in self.io(meta).outputs}

    def accumulator(self, meta, data, reference: dict[str, np.ndarray] | None):
        raise NotImplementedError

    # -- training
    def loss(self, meta):
        """A callable (outputs: dict of tensors, targets: dict of tensors) -> scalar
        tensor that training-time techniques minimise, or None."""
        return None

    def training_count(self, meta, inputs: dict, targets: dict) -> int:
        """How many units one training epoch shuffles; default: the samples."""
        return int(len(next(iter(inputs.values()))))

    def training_batch(self, meta, inputs: dict, targets: dict, units):
        """(inputs, targets) of the training batch made of `units` (int64 indices below
        `training_count`); default: those samples of every array."""
        return {k: v[units] for k, v in inputs.items()}, {k: v[units] for k, v in targets.items()}

    # units per calibration sample of a loss-driven calibration (SKM): a loss that compares
    # samples with each other (contrastive) needs more than one
    calibration_units = 1

    def training_refusal(self, meta, source=None) -> str | None:
        """Why training-time techniques cannot run for this model (None: they can);
        `source` (a training source, optional) lets a task refuse data its loss cannot use."""
        if self.loss(meta) is None:
            return (f"task {self.name!r} defines no loss, so training-time techniques cannot fine-tune model "
                    f"{meta.name!r}; use post-training techniques, give your own loss (--loss loss.py / [data] "
                    "loss = \"loss.py\"), or declare a task that has a loss")
        if source is not None:
            return self.source_refusal(meta, self.open_source(source, meta))
        return None

    def source_refusal(self, meta, source) -> str | None:
        """Why this (opened) training source cannot train the task's loss (None: it can)."""
        return None

    def require_training(self, meta, source=None) -> None:
        reason = self.training_refusal(meta, source)
        if reason:
            raise ConfigError(reason)


def check_batch_outputs(outputs: dict[str, np.ndarray], io: IOSpec, n: int) -> dict[str, np.ndarray]:
    """The model's outputs by declared name (a single unnamed output takes the
    declared name); errors name the output and the shape found."""
    if len(io.outputs) == 1 and len(outputs) >= 1 and io.outputs[0].name not in outputs:
        outputs = {io.outputs[0].name: next(iter(outputs.values()))}
    result = {}
    for spec in io.outputs:
        if spec.name not in outputs:
            raise ModelLoadError(f"the model returned outputs {sorted(outputs)} but metadata.json declares "
                                 f"{spec.name!r}; fix 'outputs' to the model's output names")
        value = np.asarray(outputs[spec.name])
        if value.ndim == 0 or value.shape[0] != n:
            raise ModelLoadError(f"output {spec.name!r} has shape {list(value.shape)} for a batch of {n} samples; "
                                 "its first axis must be the sample axis")
        if not shape_matches(spec.shape, value.shape[1:]):
            raise ModelLoadError(f"output {spec.name!r} has shape {list(value.shape)} but metadata.json declares "
                                 f"{format_shape(spec.shape)} per sample; fix 'outputs' (or leave its shape out)")
        result[spec.name] = value
    return result


def iter_task_batches(data: Iterable[TaskBatch]) -> Iterator[TaskBatch]:
    yield from data


def metric_value(result, name: str, higher_is_better: bool = True) -> float | None:
    """A metric's value in an evaluation result (an EvalResult or its `to_dict()`):
    a top-level field (`top1`, `snr_db`, ...), else a task or user metric in `values`
    (`mae`, `perplexity`, ...), else a fidelity measure: the worst over the outputs
    (lowest when higher is better). None where the result does not hold it."""
    data = result if isinstance(result, dict) else result.to_dict()
    value = data.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    values = data.get("values") or {}
    if name in values and values[name] is not None:
        return float(values[name])
    found = [float(m[name]) for m in (data.get("fidelity") or {}).values() if m.get(name) is not None]
    if found:
        return min(found) if higher_is_better else max(found)
    return None
