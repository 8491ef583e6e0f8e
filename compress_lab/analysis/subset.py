"""A fixed, deterministic subset of a validation source held in memory, with the
uncompressed program's outputs on it, for the many quick evaluations of a
sensitivity analysis or a mixed-precision search.

Every measurement goes through the lab's one evaluation path (`evaluate` with the
model's task), so the metrics, their directions, the fidelity measures and the
preprocessing overrides are the ones a sweep run uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress_lab.errors import DataError
from compress_lab.models.metadata import ModelMetadata
from compress_lab.tasks.base import SNR_CAP_DB, metric_value


@dataclass
class Measurement:
    """One measurement on the subset: top-1 (classifiers on labelled data, else None),
    top-1 agreement with the uncompressed model (outputs that are class scores, else None),
    the worst output SNR (dB), and every metric of the task by name with its direction."""

    top1: float | None
    agreement: float | None
    snr_db: float
    values: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def score(self, metric: str) -> float:
        value = getattr(self, metric) if metric in ("top1", "agreement", "snr_db") else self.values.get(metric)
        if value is None:
            raise DataError(f"metric {metric!r} was not measured on this data"
                            + (" (it needs a labelled validation folder, <class>/<image>)" if metric == "top1" else ""))
        return float(value)

    def worsening(self, metric: str, baseline: "Measurement", relative: bool = False) -> float:
        """How much worse than `baseline` on `metric`, in its direction (> 0: worse); in
        percent of the baseline's value when `relative`."""
        ours, theirs = self.score(metric), baseline.score(metric)
        worse = (theirs - ours) if self.higher_is_better.get(metric, True) else (ours - theirs)
        if relative:
            if theirs == 0:
                raise DataError(f"a relative budget on {metric!r} needs a non-zero baseline value (it is 0)")
            return 100.0 * worse / abs(theirs)
        return worse


BATCH_ELEMENTS = 2 ** 20  # input elements per batch the subset is run in (see batch_size_for)


RESUME_BYTES = 1 << 30  # most memory an anchor's (or a kept run's) checkpoints may take


def batch_size_for(inputs: dict[str, np.ndarray]) -> int:
    """How many samples run at once: about BATCH_ELEMENTS input elements, 8 to 128 samples.
    Large inputs run faster in small batches on a CPU (a 224x224 image CNN: 75 images take
    about a third of the time in batches of 8 as in one batch, its activations then fit the
    caches); small ones in large batches (less per-call work)."""
    per_sample = sum(int(np.prod(v.shape[1:], dtype=np.int64)) for v in inputs.values()) or 1
    return int(np.clip(BATCH_ELEMENTS // per_sample, 8, 128))


class SubsetEvaluator:
    def __init__(self, float_package: str | Path, data_dir, metadata: ModelMetadata,
                 max_images: int = 512, compute_precision: str = "fp32",
                 preprocessing_overrides: dict | None = None, batch_size: int | None = None):
        """`batch_size`: samples run at once (default: batch_size_for the subset's inputs)."""
        from compress_lab.arrays import ArraySource
        from compress_lab.runtime import load_program
        from compress_lab.tasks import task_for

        self.meta = metadata
        self.task = task_for(metadata)
        subset = self.task.subset_source(data_dir, metadata, int(max_images))
        if not isinstance(subset, ArraySource) or subset.inputs is None:  # decode once, then hold it in memory
            subset = _in_memory(self.task, subset, metadata, preprocessing_overrides)
        self.source = subset
        self.count = subset.n
        if not self.count:
            raise DataError(f"no readable samples in {data_dir}")
        self.batch_size = int(batch_size) if batch_size else batch_size_for(subset.inputs)
        self.metrics = {m.name: m for m in self.task.metrics(metadata) + self.task.fidelity_metrics(metadata)}
        self.labelled = subset.labelled and bool(self.task.metrics(metadata))
        self.primary = self.task.primary_metric(metadata, labelled=self.labelled)
        self.base = load_program(float_package, compute_precision=compute_precision)
        reference = self._evaluate(self.base, None)
        self.reference = reference.reference_outputs()
        self.baseline = self._measurement(reference, baseline=True)
        self.evaluations = 0
        self._anchor = self._last = None

    @property
    def x(self) -> np.ndarray:
        """The first input of the subset (kept for callers that count its samples)."""
        return next(iter(self.source.inputs.values()))

    def _evaluate(self, program, reference):
        from compress_lab.evaluate import evaluate, run_program
        from compress_lab.models.io_spec import from_model_layout

        def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            arrays = {k: np.ascontiguousarray(v, dtype=np.int32 if v.dtype.kind in "iu" else np.float32)
                      for k, v in inputs.items()}
            out = run_program(program, arrays, self.meta.io)
            names = self.meta.io.output_names
            if len(names) == 1 and names[0] not in out and out:
                return {names[0]: np.asarray(from_model_layout(next(iter(out.values())), self.meta.io.outputs[0]))}
            return {k: np.asarray(v) for k, v in out.items()}

        predict.named = True  # type: ignore[attr-defined]
        dataset = self.task.dataset(self.source, self.meta, batch_size=self.batch_size)
        return evaluate(predict, dataset, self.task, reference, meta=self.meta)

    def _measurement(self, result, baseline: bool = False) -> Measurement:
        data = result.to_dict()
        values, directions = {}, {}
        for name, metric in self.metrics.items():
            value = metric_value(data, name, metric.higher_is_better)
            if baseline and metric.fidelity:
                value = _identical(name)
            if value is not None:
                values[name], directions[name] = float(value), metric.higher_is_better
        agreement = values.get("agreement")
        snr = values.get("snr_db", SNR_CAP_DB)
        top1 = values.get("top1") if self.labelled else None
        return Measurement(top1=top1, agreement=agreement, snr_db=float(min(snr, SNR_CAP_DB)), values=values,
                           higher_is_better=directions)

    def measure_logits(self, logits: np.ndarray) -> Measurement:
        """The measurement of given outputs (a classifier's logits) on the subset."""
        from compress_lab.evaluate import evaluate
        logits = np.asarray(logits)
        outputs = iter(np.split(logits, range(self.batch_size, len(logits), self.batch_size)))

        def predict(inputs):
            return {self.meta.io.output_names[0]: next(outputs)}

        predict.named = True  # type: ignore[attr-defined]
        dataset = self.task.dataset(self.source, self.meta, batch_size=self.batch_size)
        return self._measurement(evaluate(predict, dataset, self.task, self.reference, meta=self.meta))

    def measure(self, overrides: dict[str, np.ndarray], keep: bool = False) -> Measurement:
        """The program with some weights replaced (already compressed + decompressed). After
        `anchor(...)`, the run starts at the first step whose weights differ from the anchor's
        (same outputs, less work when few weights differ: see runtime/interpreter.py). With `keep`,
        the run keeps checkpoints so that `anchor_on_last()` can make it the anchor."""
        self.evaluations += 1
        keep = keep and self.base.backend == "torch"
        if self._anchor is None and not keep:
            program = self.base.with_constants(overrides) if overrides else self.base
            return self._measurement(self._evaluate(program, self.reference))
        program = self.base.with_constants(overrides)
        if self._anchor is not None:
            program.resume_from(self._anchor)
        if keep:
            program.keep_checkpoints(max_bytes=RESUME_BYTES)
        measured = self._measurement(self._evaluate(program, self.reference))
        self._last = program if keep else None
        return measured

    def anchor(self, overrides: dict[str, np.ndarray]) -> Measurement:
        """Measures `overrides` and keeps their run as the anchor later measurements resume from
        (many measurements that each differ from it in a few weights)."""
        measured = self.measure(overrides, keep=True)
        self.anchor_on_last()
        return measured

    def anchor_on_last(self) -> None:
        """The last measurement made with `keep` becomes the anchor (when its checkpoints fit)."""
        if self._last is not None and self.base.backend == "torch" and self._last._interpreter.keeps_checkpoints:
            self._anchor = self._last
        self._last = None

    def part(self, max_samples: int) -> "SubsetEvaluator":
        """An evaluator of the same program on at most `max_samples` evenly spaced samples of this
        subset (itself when it holds no more), with the uncompressed outputs on them measured
        again (one run of the part): a cheaper probe for many single-op measurements."""
        from compress_lab.arrays import evenly_spaced
        if int(max_samples) >= self.count:
            return self
        if int(max_samples) < 1:
            raise DataError(f"a part of the subset needs at least 1 sample, not {max_samples!r}")
        return self.samples(evenly_spaced(self.count, int(max_samples)))

    def samples(self, indices) -> "SubsetEvaluator":
        """An evaluator of the same program on the samples `indices` of this subset."""
        from compress_lab.arrays import take
        part = object.__new__(SubsetEvaluator)
        part.__dict__.update(self.__dict__)
        part.source = take(self.source, [int(i) for i in indices])
        part.count = part.source.n
        reference = part._evaluate(part.base, None)
        part.reference = reference.reference_outputs()
        part.baseline = part._measurement(reference, baseline=True)
        part.evaluations = 0
        part._anchor = part._last = None
        return part

    def fragile_order(self) -> list[int] | None:
        """The subset's samples, those whose top class the uncompressed model holds by the smallest
        margin first (the first to flip under compression); None when no output is class scores."""
        if self.baseline.agreement is None or not self.reference:
            return None
        scores = next((np.asarray(v, dtype=np.float64) for v in self.reference.values()
                       if np.ndim(v) == 2 and np.shape(v)[0] == self.count and np.shape(v)[1] >= 2), None)
        if scores is None:
            return None
        top2 = np.sort(scores, axis=1)[:, -2:]
        return np.argsort(top2[:, 1] - top2[:, 0], kind="stable").tolist()

    def score(self, measured: Measurement) -> tuple:
        """Better is larger: the task's primary metric in its direction, then agreement, then SNR."""
        primary = measured.values.get(self.primary.name)
        oriented = 0.0 if primary is None else (primary if self.primary.higher_is_better else -primary)
        return (oriented, measured.agreement if measured.agreement is not None else 0.0, measured.snr_db)


def _identical(name: str) -> float | None:
    """A fidelity measure of the uncompressed model against itself."""
    return {"snr_db": SNR_CAP_DB, "psnr_db": SNR_CAP_DB, "cosine": 1.0, "max_abs_error": 0.0, "agreement": 1.0}.get(name)


def _in_memory(task, source, meta, preprocessing_overrides):
    """A decoded source (e.g. an image folder) as a stacked array source with the same targets."""
    from compress_lab.arrays import ArraySource
    inputs: dict[str, list] = {}
    targets: dict[str, list] = {}
    for batch in task.dataset(source, meta, batch_size=128, preprocessing_overrides=preprocessing_overrides):
        for store, values in ((inputs, batch.inputs), (targets, batch.targets)):
            for key, value in values.items():
                store.setdefault(key, []).append(np.asarray(value))
    if not inputs:
        raise DataError(f"no readable samples in {getattr(source, 'root', source)}")
    stacked_targets = {k: np.concatenate(v) for k, v in targets.items()}
    if "label" in stacked_targets and (stacked_targets["label"] < 0).all():
        del stacked_targets["label"]   # an unlabelled folder stays unlabelled
    return ArraySource(root=Path(getattr(source, "root", ".")), inputs={k: np.concatenate(v) for k, v in inputs.items()},
                       targets=stacked_targets, io=meta.io)
