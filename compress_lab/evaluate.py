"""Evaluate a model (PyTorch or Core ML) on a validation folder: accuracy
metrics on labelled folders, and fidelity to a reference model's logits
(top-1 agreement, output SNR) on any folder.

An EvalResult keeps the model's logits (float32, N x K: 20k images x 1000
classes is 80 MB) so the uncompressed baseline's logits can be the reference
of every compressed run on the same folder. Logits are not part of `to_dict()`;
save them with `save_logits()`."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from compress_lab.data import Batch, ImageFolder, Progress, TensorCache, iter_batches, scan_folder  # noqa: F401
from compress_lab.errors import ConfigError, DataError, ModelLoadError
from compress_lab.models.metadata import ModelMetadata, Preprocessing

from compress_lab.tasks.base import SNR_CAP_DB  # noqa: E402 (re-exported: SNR reported for identical outputs)
from compress_lab.tasks.classification import MAX_SKIPPED_LISTED  # noqa: E402

Predictor = Callable[[np.ndarray], np.ndarray]  # float32 (N, C, H, W) -> logits (N, K)
NamedPredictor = Callable[[dict], dict]         # {input name: array} -> {output name: array}


@dataclass
class EvalResult:
    n: int                                   # images evaluated
    top1: float | None = None                # None on an unlabelled folder
    top5: float | None = None                # None when unlabelled or fewer than 5 classes
    loss: float | None = None                # mean cross-entropy over labelled images
    per_class: dict[str, float] = field(default_factory=dict)   # accuracy of each class with images
    confusion: list[list[int]] = field(default_factory=list)    # rows: true class, columns: predicted output
    agreement: float | None = None           # top-1 agreement with the reference logits
    snr_db: float | None = None              # 10 log10(sum ref^2 / sum (ref - out)^2), capped at SNR_CAP_DB
    skipped: int = 0                         # files left out (unreadable, not images, ...)
    elapsed_s: float = 0.0
    skipped_files: list[list[str]] = field(default_factory=list)  # [path, reason], first MAX_SKIPPED_LISTED
    warnings: list[str] = field(default_factory=list)
    task: str = "classification"             # the task that measured it
    fidelity: dict[str, dict[str, float | None]] = field(default_factory=dict)  # per output: snr_db, psnr_db, cosine, ...
    values: dict[str, float] = field(default_factory=dict)  # the task's own metrics (mae, perplexity, ...) and a user metric's values
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # the direction of each of `values`
    value_order: list[str] = field(default_factory=list)  # `values` in the task's order, its primary metric first
    logits: np.ndarray | None = field(default=None, repr=False, compare=False)  # float32 (n, K)
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)  # int64 (n,), -1 unlabelled
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)  # other tasks: every output
    metric_error: str | None = field(default=None, repr=False, compare=False)  # a user metric's failure (kept, not raised)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: _json_safe(getattr(self, f.name)) for f in fields(self) if f.name not in _ARRAYS}
        for key in ("fidelity", "values", "higher_is_better", "value_order"):  # today's stored metrics keep their keys
            if not d[key]:
                del d[key]
        if d["task"] == "classification":
            del d["task"]
        return d

    def reference_outputs(self) -> dict[str, np.ndarray] | None:
        """What a later run compares with: the outputs by name."""
        if self.outputs is not None:
            return self.outputs
        return None if self.logits is None else {"logits": self.logits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        allowed = {f.name for f in fields(cls)} - set(_ARRAYS)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown evaluation result key(s) {unknown}; allowed keys are {sorted(allowed)}")
        if "n" not in data:
            raise ConfigError("evaluation result dict has no 'n' (number of images evaluated)")
        return cls(**data)

    def _repr_html_(self) -> str:  # a table in a notebook
        from compress_lab.api import evaluation_html
        return evaluation_html(self)

    def save_logits(self, path: str | Path) -> Path:
        if self.logits is None:
            raise DataError("this evaluation result holds no logits to save")
        path = Path(path)
        np.save(path, self.logits)
        return path


_ARRAYS = ("logits", "labels", "outputs", "metric_error")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------- predictors

def _inference_module(module):
    """The module in eval mode (a copy if it was training: the caller's is never changed),
    with the device and float dtype its inputs must take."""
    import torch

    if any(m.training for m in module.modules()):
        module = copy.deepcopy(module).eval()
    try:
        param = next(module.parameters())
        device, dtype = param.device, param.dtype if param.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    return module, device, dtype


def torch_predictor(module) -> Predictor:
    """Predict with a PyTorch module in eval mode without gradients. A module in
    training mode is copied first, so the caller's module is never changed."""
    import torch

    module, device, dtype = _inference_module(module)

    def predict(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.array(x, dtype=np.float32, copy=not x.flags.writeable))
        with torch.no_grad():
            out = module(tensor.to(device=device, dtype=dtype))
        if isinstance(out, dict):
            out = out.get("logits", next(iter(out.values())))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().to("cpu", torch.float32).numpy()

    return predict


def coreml_predictor(path: str | Path, compute_precision: str = "fp32") -> Predictor:
    """Predict with a Core ML `.mlpackage` through the lab's runtime."""
    from compress_lab.runtime import load_program

    program = load_program(path, compute_precision=compute_precision)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(program.predict(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    return predict


def named_torch_predictor(module, io) -> NamedPredictor:
    """Predict named inputs -> named outputs with a PyTorch module: the inputs are
    passed positionally in declared order (float inputs in the module's dtype,
    int32 ones as int64 indices); a tuple/list of outputs is named in declared order.
    Inputs and outputs are sample-first; a declared `batch_axis` is applied at the call."""
    import torch

    from compress_lab.models.io_spec import to_model_layout

    module, device, dtype = _inference_module(module)
    names = io.output_names

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = []
        for spec in io.inputs:
            value = to_model_layout(np.asarray(inputs[spec.name]), spec)
            tensor = torch.from_numpy(np.array(value, copy=True))
            args.append(tensor.to(device=device, dtype=torch.int64 if spec.dtype == "int32" else dtype))
        with torch.no_grad():
            out = module(*args)
        return _sample_first(_name_outputs(out, names), io)

    predict.named = True  # type: ignore[attr-defined]
    return predict


def _name_outputs(out, names: Sequence[str]) -> dict[str, np.ndarray]:
    import torch

    def arr(t):
        return t.detach().to("cpu").numpy().astype(np.float32) if t.is_floating_point() else t.detach().cpu().numpy()

    if isinstance(out, torch.Tensor):
        return {names[0]: arr(out)}
    if isinstance(out, dict):
        return {str(k): arr(v) for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)):
        tensors = [t for t in out if isinstance(t, torch.Tensor)]
        return {(names[i] if i < len(names) else f"output_{i}"): arr(t) for i, t in enumerate(tensors)}
    raise ModelLoadError(f"the model returned {type(out).__name__}; return a tensor, a tuple of tensors or a dict of them")


def _sample_first(outputs: dict[str, np.ndarray], io) -> dict[str, np.ndarray]:
    """Named outputs in the model's layout -> sample-first (a declared output's batch_axis moved to the front)."""
    if io is None or not any(o.batch_axis for o in io.outputs):
        return outputs
    from compress_lab.models.io_spec import from_model_layout
    specs = {o.name: o for o in io.outputs}
    return {k: from_model_layout(v, specs[k]) if k in specs else v for k, v in outputs.items()}


def run_program(program, inputs: dict[str, np.ndarray], io=None) -> dict[str, np.ndarray]:
    """The lab's Core ML runtime on named sample-first inputs: every output by name, sample-first.
    A single input goes as an array (the runtime then batches it on axis 0) when it is float, batch
    first and fits the program's fixed shape; otherwise (int32 token ids, a flexible length) it goes
    as a dict, like several, which the runtime runs in one call. With the declaration `io`, an input
    or output whose `batch_axis` is not 0 is moved to and from the model's layout here."""
    from compress_lab.models.io_spec import to_model_layout

    specs = {s.name: s for s in io.inputs} if io is not None else {}
    moved = any(s.batch_axis for s in specs.values())
    if moved:
        inputs = {k: to_model_layout(v, specs[k]) if k in specs else v for k, v in inputs.items()}
    if len(inputs) == 1:
        (value,) = inputs.values()
        shape = getattr(program, "input_shape", None)
        if value.dtype.kind == "f" and not moved and (shape is None or tuple(shape[1:]) == tuple(value.shape[1:])):
            return _sample_first(program.predict_all(np.ascontiguousarray(value)), io)
        names = getattr(program, "input_names", None) or list(inputs)
        return _sample_first(program.predict_all({names[0]: value}), io)
    return _sample_first(program.predict_all(dict(inputs)), io)


def named_coreml_predictor(path: str | Path, io, compute_precision: str = "fp32") -> NamedPredictor:
    """Predict named inputs -> named outputs with a Core ML `.mlpackage` through the lab's runtime."""
    from compress_lab.models.io_spec import from_model_layout
    from compress_lab.runtime import load_program

    program = load_program(path, compute_precision=compute_precision)
    names = io.output_names

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {k: np.ascontiguousarray(v, dtype=np.int32 if v.dtype.kind in "iu" else np.float32)
                  for k, v in inputs.items()}
        out = run_program(program, arrays, io)
        if len(names) == 1 and names[0] not in out and len(out) >= 1:
            return {names[0]: np.asarray(from_model_layout(next(iter(out.values())), io.outputs[0]))}
        return {k: np.asarray(v) for k, v in out.items()}

    predict.named = True  # type: ignore[attr-defined]
    return predict


def predictor_for(model_source, compute_precision: str = "fp32") -> tuple[Predictor, ModelMetadata]:
    """A predictor and the metadata for a ModelHandle or a model path/sample name
    (a named predictor for tasks other than classification)."""
    from compress_lab.models.handle import ModelHandle, load_model

    handle = model_source if isinstance(model_source, ModelHandle) else load_model(model_source)
    meta = handle.metadata
    if meta.task != "classification":
        if handle.kind == "coreml":
            return named_coreml_predictor(handle.mlpackage, meta.io, compute_precision=compute_precision), meta
        return named_torch_predictor(handle.module, meta.io), meta
    if handle.kind == "coreml":
        return coreml_predictor(handle.mlpackage, compute_precision=compute_precision), meta
    return torch_predictor(handle.module), meta


# ---------------------------------------------------------------- evaluation

def as_named(predictor, input_names: Sequence[str], output_names: Sequence[str]) -> NamedPredictor:
    """A predictor of named arrays (dict -> dict). A predictor marked `named = True`
    is returned as it is; a single-array one (ndarray -> ndarray, or -> dict of
    outputs) takes the model's one input and names its output after the declaration."""
    if getattr(predictor, "named", False):
        return predictor
    first_output = output_names[0] if output_names else "output"

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs) != 1:
            raise ModelLoadError(
                f"this predictor takes one array but the data has {len(inputs)} inputs {sorted(inputs)}; "
                "give a named predictor (dict of arrays -> dict of arrays)")
        out = predictor(next(iter(inputs.values())))
        return dict(out) if isinstance(out, dict) else {first_output: out}

    predict.named = True  # type: ignore[attr-defined]
    return predict


def evaluate(predictor, dataset, task=None, reference=None, batch_size: int = 64, cache: TensorCache | None = None,
             progress: Progress | None = None, *, meta: ModelMetadata | None = None, metric=None,
             metric_errors: str = "raise",
             reference_logits: np.ndarray | None = None, preprocessing: Preprocessing | None = None,
             input_shape: Sequence[int] | None = None, class_names: Sequence[str] | None = None) -> EvalResult:
    """The one evaluation path: run `predictor` over `dataset` and measure it with `task`.

    - `task` is a Task (or its name) and `dataset` what `task.dataset(source, meta)`
      returned; `meta` is the model's metadata. `reference` holds the uncompressed
      model's outputs on the same samples in the same order (a dict by output name,
      or for a classifier its logits array, e.g. the baseline's EvalResult.logits).
    - Kept for existing callers: `evaluate(predictor, image_folder_or_batches, num_classes,
      reference_logits=..., preprocessing=..., input_shape=...)` is the classification
      task on that folder (an ImageFolder needs `preprocessing` and `input_shape`).

    `predictor` takes one array (single-input models) or, marked `named = True`, a
    dict of named arrays, and returns one array or a dict of named outputs. `metric` is a
    user metric (or its "path.py[:name]"): a function gets the whole source's outputs at the
    end, an accumulating metric each batch's (nothing is kept for it), with a fresh state
    for each call of evaluate (compress_lab.metrics). Its failure raises a MetricError, or with
    `metric_errors="keep"` is kept in `result.metric_error` (the rest of the result stands)."""
    from compress_lab.tasks import get_task
    from compress_lab.tasks.base import Task

    started = time.perf_counter()
    if reference is None:
        reference = reference_logits
    if task is None or (not isinstance(task, (Task, str)) and isinstance(task, (int, np.integer))):
        task, dataset = _classification_source(dataset, task, batch_size, cache, progress, preprocessing,
                                               input_shape, class_names, meta)
    elif isinstance(task, str):
        task = get_task(task)
    if isinstance(metric, (str, Path)):
        from compress_lab.metrics import load_metric
        metric = load_metric(metric)
    accumulator = task.accumulator(meta, dataset, reference)
    io = meta.io if meta is not None else None
    named = as_named(predictor, io.input_names if io else (getattr(dataset, "input_name", "input"),),
                     io.output_names if io else (getattr(dataset, "output_name", "logits"),))
    measuring = metric.start() if metric is not None else None  # a fresh state per evaluation
    for batch in dataset:
        outputs = named(batch.inputs)
        accumulator.add(batch, outputs)
        if measuring is not None:  # a function metric keeps every batch; an accumulating one keeps nothing
            measuring.update(outputs, batch.targets)
            if measuring.error is not None and metric_errors != "keep":
                raise measuring.error
    fields_ = accumulator.result()
    metric_error = None
    if measuring is not None:  # a function metric sees every output and target of the whole source, in sample order
        from compress_lab.metrics import MetricError
        try:
            fields_["values"] = {**fields_.get("values", {}),  # the task's own metrics stay beside the user's
                                 **measuring.result()}
        except MetricError as e:
            if metric_errors != "keep":
                raise
            metric_error = f"{type(e).__name__}: {e}"
    result = EvalResult(elapsed_s=0.0, task=task.name, **fields_)
    result.metric_error = metric_error
    result.higher_is_better = _directions(result.values, task, meta, metric)
    result.value_order = list(result.values)  # a store sorts a dict's keys: the order is kept here
    if result.logits is None and hasattr(accumulator, "outputs") and task.name != "classification":
        result.outputs = accumulator.outputs()
    result.elapsed_s = time.perf_counter() - started
    return result


def _directions(values: dict, task, meta, metric) -> dict[str, bool]:
    """Whether higher is better, for each measured value: the task's metrics, a user metric's DIRECTIONS."""
    if not values:
        return {}
    try:
        known = {m.name: m.higher_is_better for m in task.metrics(meta)}
    except Exception:  # a task that cannot list its metrics for this model: directions stay unknown
        known = {}
    known.update(getattr(metric, "directions", None) or {})
    return {name: bool(known[name]) for name in values if name in known}


def _classification_source(source, num_classes, batch_size, cache, progress, preprocessing, input_shape, class_names,
                           meta):
    """The classification task and its dataset for the legacy call form."""
    from compress_lab.tasks import get_task

    task = get_task("classification")
    if num_classes is None:
        if meta is None:
            raise ConfigError("evaluate needs a task (or, for a classifier, num_classes)")
        num_classes = meta.num_classes
    k = int(num_classes)
    if k <= 0:
        raise ConfigError(f"num_classes {num_classes!r} must be a positive integer")
    if not isinstance(source, ImageFolder):
        return task, task.batches_dataset(source, k, class_names, meta)
    if preprocessing is None or input_shape is None:
        raise ConfigError("evaluating an ImageFolder needs its preprocessing and input_shape (the model's metadata)")
    if source.labelled and len(source.classes) > k:
        raise DataError(
            f"the data folder {source.root} has {len(source.classes)} classes but the model has {k} outputs; "
            "scan the folder with the model's class names (scan_folder(path, class_names=...)) or use a matching folder")
    from compress_lab.tasks.classification import ClassificationData
    io = meta.io if meta is not None else None
    batches = iter_batches(source, preprocessing, input_shape, batch_size, cache, progress)
    return task, ClassificationData(batches, k, source.classes, source, io.inputs[0].name if io else "input",
                                    io.outputs[0].name if io else "logits")


def evaluate_model(model_source, data_dir: str | Path, *, batch_size: int = 64,
                   preprocessing_overrides: dict[str, Any] | None = None, reference=None,
                   cache_dir: str | Path | None = None, progress: Progress | None = None,
                   compute_precision: str = "fp32", metric=None) -> EvalResult:
    """Evaluate a model (ModelHandle, path or sample name) on `data_dir` (what its
    task reads: an image folder for a classifier, an .npz source for `tensors`).
    `reference` is another model (handle/path), an EvalResult, logits, or a .npy of
    logits / .npz of outputs; a reference model is evaluated on the same data first.
    `metric` is a user metric (compress_lab.metrics.load_metric) measured on the outputs."""
    from compress_lab.tasks import task_for

    predictor, metadata = predictor_for(model_source, compute_precision=compute_precision)
    task = task_for(metadata)
    source = task.open_source(data_dir, metadata)
    cache = TensorCache(cache_dir) if cache_dir is not None else None

    def data(with_progress: Progress | None = None):
        return task.dataset(source, metadata, batch_size=batch_size, preprocessing_overrides=preprocessing_overrides,
                            cache=cache, progress=with_progress)

    reference_outputs = _reference_outputs(reference, task, metadata, data, compute_precision)
    return evaluate(predictor, data(progress), task, reference_outputs, meta=metadata, metric=metric)


def _reference_outputs(reference, task, metadata, data, compute_precision):
    if reference is None:
        return None
    if isinstance(reference, EvalResult):
        outputs = reference.logits if task.name == "classification" else reference.outputs
        if outputs is None:
            raise DataError("the reference evaluation result holds no logits (results loaded from JSON do not)")
        return outputs
    if isinstance(reference, (np.ndarray, dict)):
        return reference
    if isinstance(reference, (str, Path)) and str(reference).endswith((".npy", ".npz")):
        path = Path(reference)
        if not path.is_file():
            raise DataError(f"reference logits file {path} does not exist")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as stored:
                return {k: stored[k] for k in stored.files}
        return np.load(path, mmap_mode="r")
    ref_predictor, ref_meta = predictor_for(reference, compute_precision=compute_precision)
    if task.name == "classification" and ref_meta.num_classes != metadata.num_classes:
        raise DataError(f"reference model has {ref_meta.num_classes} outputs but the model has {metadata.num_classes}")
    result = evaluate(ref_predictor, data(None), task, None, meta=metadata)
    return result.logits if task.name == "classification" else result.outputs
