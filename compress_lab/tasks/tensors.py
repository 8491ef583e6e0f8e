"""The `tensors` task: any model, declared by its named inputs and outputs.
Validation data is an array source (compress_lab/arrays.py: one `.npz` with one
stacked array per input, or a folder of one-sample `.npz` files). With no metric
given, a run is measured by its fidelity to the uncompressed model, per output
(SNR, PSNR, cosine, max abs error; top-1 agreement for class scores). The run's
top-level `snr_db` / `agreement` are the worst over its outputs, so sweeps,
Pareto fronts and budgets work on them unchanged. No loss is defined, so
training-time techniques are refused for it."""

from __future__ import annotations

import numpy as np

from compress_lab.arrays import ArraySource, read_arrays
from compress_lab.errors import DataError
from compress_lab.tasks import register_task
from compress_lab.tasks.base import Task, TaskBatch, check_batch_outputs


class ArrayData:
    def __init__(self, source, batch_size: int):
        self.source = source
        self.batch_size = batch_size
        self.folder = None
        self.warnings = source.warnings

    @property
    def labelled(self) -> bool:
        return self.source.labelled

    def __iter__(self):
        return self.source.batches(self.batch_size)


class TensorsAccumulator:
    def __init__(self, task: Task, meta, data: ArrayData, reference: dict | None):
        self.io = task.io(meta)
        self.data = data
        self.reference = reference
        self.fidelity = task.fidelity_accumulators(meta) if reference is not None else {}
        self.n = 0
        self.kept: dict[str, list[np.ndarray]] = {o.name: [] for o in self.io.outputs}
        if reference is not None:
            missing = [o for o in self.io.output_names if o not in reference]
            if missing:
                raise DataError(f"the reference outputs hold {sorted(reference)} but not {missing[0]!r}; the reference "
                                "must come from the same model declaration")

    def add(self, batch: TaskBatch, outputs: dict[str, np.ndarray]) -> None:
        n = len(batch)
        outputs = check_batch_outputs(outputs, self.io, n)
        if self.reference is not None:
            for name, acc in self.fidelity.items():
                ref = self.reference[name]
                if self.n + n > len(ref):
                    raise DataError(f"the reference outputs cover {len(ref)} samples but this evaluation has more; the "
                                    "reference must come from the same array source")
                acc.add(ref[self.n:self.n + n], outputs[name])
        for name, value in outputs.items():
            self.kept[name].append(np.asarray(value))
        self.n += n

    def outputs(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in self.kept.items()}

    def result(self) -> dict:
        if self.reference is not None:
            for name in self.io.output_names:
                if len(self.reference[name]) != self.n:
                    raise DataError(f"the reference outputs cover {len(self.reference[name])} samples but {self.n} were "
                                    "evaluated; the reference must come from the same array source")
        result: dict = {"n": self.n, "warnings": list(self.data.warnings)}
        if self.fidelity:
            per_output = {name: acc.result() for name, acc in self.fidelity.items()}
            result["fidelity"] = per_output
            snrs = [v["snr_db"] for v in per_output.values() if v.get("snr_db") is not None]
            result["snr_db"] = min(snrs) if snrs else None
            agreements = [v["agreement"] for v in per_output.values() if v.get("agreement") is not None]
            result["agreement"] = min(agreements) if agreements else None
        return result


class Tensors(Task):
    name = "tensors"
    label = "any model (named tensors)"
    description = "any inputs and outputs from .npz arrays; fidelity to the uncompressed model per output, or a user metric"

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache=None, progress=None) -> ArrayData:
        return ArrayData(self.open_source(source, meta), int(batch_size))

    def open_source(self, source, meta) -> ArraySource:
        return source if isinstance(source, ArraySource) else read_arrays(source, self.io(meta))

    def accumulator(self, meta, data, reference) -> TensorsAccumulator:
        return TensorsAccumulator(self, meta, data, reference)


register_task(Tensors())
