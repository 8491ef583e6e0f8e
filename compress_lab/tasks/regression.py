"""The `regression` task: any inputs, outputs of numbers scored against targets by
mean absolute error and root mean squared error (lower is better), plus the
fidelity to the uncompressed model per output (SNR, PSNR, cosine, max abs error).

Validation data is an array source (compress_lab/arrays.py): one `.npz` with one
stacked array per input and, for each scored output, a target array named after
that output (`np.savez("val.npz", x=x, value=y)`), or `target` when one output is
scored; or a folder of one-sample `.npz` files holding the same names. The scored
outputs are those declared with meaning "values" (else every output that is not a
state). A target has the output's shape per sample (or as many elements, e.g. (N,)
for an output of shape [1]). A source without targets is measured by fidelity only.
MAE and RMSE are over every element of every scored output; with several scored
outputs each also gets `mae_<output>` / `rmse_<output>`. Loss: mean squared error."""

from __future__ import annotations

import numpy as np

from compress_lab.arrays import ArraySource, read_arrays
from compress_lab.errors import DataError, ModelLoadError
from compress_lab.metrics.builtin import ErrorAccumulator
from compress_lab.tasks import register_task
from compress_lab.tasks.base import Metric, Task, TaskBatch, check_batch_outputs
from compress_lab.tasks.tensors import ArrayData, TensorsAccumulator


def scored_outputs(io) -> list[str]:
    values = [o.name for o in io.outputs if o.meaning == "values"]
    return values or [o.name for o in io.outputs if o.meaning != "state"]


def target_names(io, available) -> dict[str, str]:
    """Scored output -> the target array that scores it (only those present)."""
    scored = scored_outputs(io)
    found = {name: name for name in scored if name in available}
    if not found and len(scored) == 1 and "target" in available:
        found = {scored[0]: "target"}
    return found


def _missing_targets(io, available, where) -> None:
    scored = scored_outputs(io)
    found = target_names(io, available)
    if found and len(found) < len(scored):
        missing = [s for s in scored if s not in found]
        raise DataError(f"{where} holds targets for {sorted(found)} but none for output {missing[0]!r} (it holds "
                        f"{sorted(available)}); save one target array per scored output, named after it "
                        f"(numpy.savez(..., {', '.join(f'{s}=...' for s in scored)}))")


class RegressionAccumulator(TensorsAccumulator):
    def __init__(self, task: Task, meta, data: ArrayData, reference):
        super().__init__(task, meta, data, reference)
        self.scored = scored_outputs(self.io)
        self.errors = {name: ErrorAccumulator() for name in self.scored}
        self.where = str(data.source.root)

    def add(self, batch: TaskBatch, outputs: dict[str, np.ndarray]) -> None:
        n = len(batch)
        outputs = check_batch_outputs(outputs, self.io, n)
        names = target_names(self.io, batch.targets)
        _missing_targets(self.io, batch.targets, f"array source {self.where}")
        for output, target_name in names.items():
            out = np.asarray(outputs[output])
            target = np.asarray(batch.targets[target_name])
            if target.dtype.kind not in "fiub":
                raise DataError(f"array {target_name!r} in {self.where} holds {target.dtype} values; targets must be "
                                "numbers")
            if target.shape != out.shape:
                if target.size != out.size:
                    raise DataError(
                        f"array {target_name!r} in {self.where} has shape {list(target.shape)} for {n} samples but "
                        f"output {output!r} has shape {list(out.shape)}; save one target per output value "
                        f"({list(out.shape[1:])} per sample, first axis = sample)")
                target = target.reshape(out.shape)
            if not np.all(np.isfinite(target)):
                bad = int(np.flatnonzero(~np.isfinite(target.reshape(n, -1)).all(axis=1))[0])
                raise DataError(f"array {target_name!r} in {self.where} has a NaN or infinite target (sample "
                                f"{batch.ids[bad] if batch.ids else bad}); drop those samples or fill their targets")
            self.errors[output].add(out, target)
        super().add(batch, outputs)

    def result(self) -> dict:
        result = super().result()
        pooled = ErrorAccumulator()
        values: dict[str, float] = {}
        for name, acc in self.errors.items():
            pooled.abs_sum += acc.abs_sum
            pooled.sq_sum += acc.sq_sum
            pooled.count += acc.count
            if len(self.scored) > 1:
                values.update({f"{k}_{name}": v for k, v in acc.result().items()})
        values = {**pooled.result(), **values}
        if values:
            result["values"] = values
        return result


class Regression(Task):
    name = "regression"
    label = "regression"
    description = "numbers out, scored against targets by MAE / RMSE; fidelity to the uncompressed model per output"

    def metrics(self, meta) -> list[Metric]:
        metrics = [Metric("mae", "mean absolute error", "", False, primary=True),
                   Metric("rmse", "root mean squared error", "", False)]
        scored = scored_outputs(self.io(meta)) if meta is not None else []
        if len(scored) > 1:
            for name in scored:
                metrics += [Metric(f"mae_{name}", f"MAE of {name}", "", False),
                            Metric(f"rmse_{name}", f"RMSE of {name}", "", False)]
        return metrics

    def check_io(self, meta, inputs, outputs, source="the model") -> None:
        super().check_io(meta, inputs, outputs, source)
        if not scored_outputs(self.io(meta)):
            raise ModelLoadError(f"{source}: task 'regression' scores outputs of meaning \"values\" but metadata.json "
                                 "declares only state outputs; declare the predicted values as an output")

    def open_source(self, source, meta) -> ArraySource:
        if isinstance(source, ArraySource):
            return source
        arrays = read_arrays(source, self.io(meta))
        available = arrays.targets if arrays.inputs is not None else dict.fromkeys(arrays._folder_targets)
        _missing_targets(self.io(meta), available,
                         f"array file {arrays.root}" if arrays.inputs is not None else f"array file {arrays.files[0]}")
        return arrays

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache=None, progress=None) -> ArrayData:
        return ArrayData(self.open_source(source, meta), int(batch_size))

    def source_refusal(self, meta, source) -> str | None:
        io = self.io(meta)
        available = source.targets if source.inputs is not None else dict.fromkeys(source._folder_targets)
        if not target_names(io, available):
            scored = scored_outputs(io)
            return (f"training source {source.root} has no target array for the scored output(s) {scored} (it holds "
                    f"{sorted(available) or 'no targets'}), so task 'regression' has nothing to fine-tune towards; "
                    f"save one target array per scored output, named after it (numpy.savez(..., "
                    f"{', '.join(f'{s}=...' for s in scored)})), or use post-training techniques")
        return None

    def accumulator(self, meta, data, reference) -> RegressionAccumulator:
        return RegressionAccumulator(self, meta, data, reference)

    def loss(self, meta):
        import torch
        import torch.nn.functional as F

        io = self.io(meta)
        names = io.output_names
        scored = scored_outputs(io)

        def mse(outputs, targets):
            if isinstance(outputs, torch.Tensor):
                outputs = {names[0]: outputs}
            elif isinstance(outputs, (tuple, list)):
                outputs = dict(zip(names, outputs))
            found = target_names(io, targets)
            if not found:
                raise DataError(f"the training batch holds no targets for the scored outputs {scored} (it holds "
                                f"{sorted(targets)}); name each target array after its output")
            terms = [F.mse_loss(outputs[o], targets[t].to(outputs[o].dtype).reshape(outputs[o].shape))
                     for o, t in found.items()]
            return torch.stack(terms).mean()
        return mse


register_task(Regression())
