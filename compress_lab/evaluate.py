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

from compress_lab.data import Batch, ImageFolder, Progress, TensorCache, iter_batches, scan_folder
from compress_lab.errors import ConfigError, DataError, ModelLoadError
from compress_lab.models.metadata import ModelMetadata, Preprocessing

Predictor = Callable[[np.ndarray], np.ndarray]  # float32 (N, C, H, W) -> logits (N, K)

SNR_CAP_DB = 200.0  # SNR reported for outputs identical to the reference (the true value is +inf)
MAX_SKIPPED_LISTED = 100


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
    logits: np.ndarray | None = field(default=None, repr=False, compare=False)  # float32 (n, K)
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)  # int64 (n,), -1 unlabelled

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self) if f.name not in ("logits", "labels")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        allowed = {f.name for f in fields(cls)} - {"logits", "labels"}
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

def torch_predictor(module) -> Predictor:
    """Predict with a PyTorch module in eval mode without gradients. A module in
    training mode is copied first, so the caller's module is never changed."""
    import torch

    if any(m.training for m in module.modules()):
        module = copy.deepcopy(module).eval()
    try:
        param = next(module.parameters())
        device, dtype = param.device, param.dtype if param.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32

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


def predictor_for(model_source, compute_precision: str = "fp32") -> tuple[Predictor, ModelMetadata]:
    """A predictor and the metadata for a ModelHandle or a model path/sample name."""
    from compress_lab.models.handle import ModelHandle, load_model

    handle = model_source if isinstance(model_source, ModelHandle) else load_model(model_source)
    if handle.kind == "coreml":
        return coreml_predictor(handle.mlpackage, compute_precision=compute_precision), handle.metadata
    return torch_predictor(handle.module), handle.metadata


# ---------------------------------------------------------------- evaluation

class _Accumulator:
    def __init__(self, num_classes: int, num_rows: int, reference: np.ndarray | None):
        self.k = num_classes
        self.confusion = np.zeros((num_rows, num_classes), dtype=np.int64)
        self.top5_hits = 0
        self.loss_sum = 0.0
        self.labelled = 0
        self.reference = reference
        self.agree = 0
        self.signal = 0.0
        self.noise = 0.0
        self.n = 0
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        n = len(labels)
        pred = logits.argmax(axis=1)
        known = labels >= 0
        if known.any():
            y, out = labels[known], logits[known].astype(np.float64)
            np.add.at(self.confusion, (y, pred[known]), 1)
            if self.k >= 5:
                top5 = np.argpartition(-out, 4, axis=1)[:, :5]
                self.top5_hits += int((top5 == y[:, None]).any(axis=1).sum())
            shifted = out - out.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            self.loss_sum += float(-log_probs[np.arange(len(y)), y].sum())
            self.labelled += len(y)
        if self.reference is not None:
            ref = np.asarray(self.reference[self.n:self.n + n], dtype=np.float64)
            self.agree += int((ref.argmax(axis=1) == pred).sum())
            self.signal += float((ref ** 2).sum())
            self.noise += float(((ref - logits.astype(np.float64)) ** 2).sum())
        self.n += n
        self.logits.append(logits)
        self.labels.append(labels)

    def snr_db(self) -> float | None:
        if self.noise == 0.0:
            return SNR_CAP_DB if self.n else None
        if self.signal == 0.0:
            return None
        return min(SNR_CAP_DB, 10.0 * math.log10(self.signal / self.noise))


def evaluate(predictor: Predictor, folder_or_batches: ImageFolder | Iterable[Batch], num_classes: int,
             reference_logits: np.ndarray | None = None, batch_size: int = 64, cache: TensorCache | None = None,
             progress: Progress | None = None, *, preprocessing: Preprocessing | None = None,
             input_shape: Sequence[int] | None = None, class_names: Sequence[str] | None = None) -> EvalResult:
    """Run `predictor` over an ImageFolder (needs `preprocessing` and `input_shape`)
    or an iterable of Batches, and measure it. `reference_logits` are another
    model's logits on the same images in the same order (e.g. the baseline's
    `EvalResult.logits`); with them the result has agreement and SNR."""
    started = time.perf_counter()
    k = int(num_classes)
    if k <= 0:
        raise ConfigError(f"num_classes {num_classes!r} must be a positive integer")
    folder = folder_or_batches if isinstance(folder_or_batches, ImageFolder) else None
    if folder is not None:
        if preprocessing is None or input_shape is None:
            raise ConfigError("evaluating an ImageFolder needs its preprocessing and input_shape (the model's metadata)")
        classes = list(folder.classes)
        if folder.labelled and len(classes) > k:
            raise DataError(
                f"the data folder {folder.root} has {len(classes)} classes but the model has {k} outputs; "
                "scan the folder with the model's class names (scan_folder(path, class_names=...)) or use a matching folder")
        batches: Iterable[Batch] = iter_batches(folder, preprocessing, input_shape, batch_size, cache, progress)
    else:
        classes = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        batches = folder_or_batches
    if reference_logits is not None:
        reference_logits = np.asarray(reference_logits)
        if reference_logits.ndim != 2 or reference_logits.shape[1] != k:
            raise DataError(f"reference logits have shape {reference_logits.shape}; expected (images, {k})")

    acc = _Accumulator(k, max(len(classes), k) if folder is None else max(len(classes), 1), reference_logits)
    for batch in batches:
        logits = np.asarray(predictor(batch.x))
        if logits.ndim != 2 or logits.shape != (len(batch), k):
            raise ModelLoadError(
                f"the model returned outputs of shape {tuple(logits.shape)} for a batch of {len(batch)} images; "
                f"expected ({len(batch)}, {k}) logits. Check the model's class count and output.")
        labels = np.asarray(batch.labels, dtype=np.int64)
        if labels.size and labels.max() >= acc.confusion.shape[0]:
            raise DataError(f"label {int(labels.max())} is out of range for {acc.confusion.shape[0]} classes")
        if reference_logits is not None and acc.n + len(batch) > len(reference_logits):
            raise DataError(
                f"reference logits cover {len(reference_logits)} images but this evaluation has more; the reference "
                "must come from the same folder (same images, same order, same unreadable files)")
        acc.add(logits.astype(np.float32, copy=False), labels)
    if reference_logits is not None and acc.n != len(reference_logits):
        raise DataError(
            f"reference logits cover {len(reference_logits)} images but {acc.n} were evaluated; the reference "
            "must come from the same folder (same images, same order, same unreadable files)")
    return _result(acc, classes, folder, time.perf_counter() - started)


def _result(acc: _Accumulator, classes: list[str], folder: ImageFolder | None, elapsed: float) -> EvalResult:
    logits = np.concatenate(acc.logits) if acc.logits else np.zeros((0, acc.k), dtype=np.float32)
    labels = np.concatenate(acc.labels) if acc.labels else np.zeros((0,), dtype=np.int64)
    result = EvalResult(n=acc.n, elapsed_s=elapsed, logits=logits, labels=labels)
    if folder is not None:
        result.skipped = len(folder.skipped)
        result.skipped_files = [[str(p), r] for p, r in folder.skipped[:MAX_SKIPPED_LISTED]]
        result.warnings = list(folder.warnings)
    if acc.labelled:
        confusion = acc.confusion
        result.top1 = float(np.trace(confusion[:, :min(confusion.shape)])) / acc.labelled
        result.top5 = acc.top5_hits / acc.labelled if acc.k >= 5 else None
        result.loss = acc.loss_sum / acc.labelled
        totals = confusion.sum(axis=1)
        result.per_class = {classes[i] if i < len(classes) else str(i): float(confusion[i, i] / totals[i])
                            for i in range(confusion.shape[0]) if totals[i] > 0}
        result.confusion = confusion.tolist()
    if acc.reference is not None:
        result.agreement = acc.agree / acc.n if acc.n else None
        result.snr_db = acc.snr_db()
    return result


def evaluate_model(model_source, data_dir: str | Path, *, batch_size: int = 64,
                   preprocessing_overrides: dict[str, Any] | None = None, reference=None,
                   cache_dir: str | Path | None = None, progress: Progress | None = None,
                   compute_precision: str = "fp32") -> EvalResult:
    """Evaluate a model (ModelHandle, path or sample name) on `data_dir`.
    `reference` is another model (handle/path), an EvalResult, logits, or a .npy of
    logits; the reference model is evaluated on the same folder first."""
    predictor, metadata = predictor_for(model_source, compute_precision=compute_precision)
    preprocessing = metadata.preprocessing.with_overrides(preprocessing_overrides)
    folder = scan_folder(data_dir, class_names=metadata.class_names)
    cache = TensorCache(cache_dir) if cache_dir is not None else None
    reference_logits = _reference_logits(reference, folder, preprocessing, metadata, batch_size, cache, compute_precision)
    return evaluate(predictor, folder, metadata.num_classes, reference_logits, batch_size, cache, progress,
                    preprocessing=preprocessing, input_shape=metadata.input_shape)


def _reference_logits(reference, folder, preprocessing, metadata, batch_size, cache, compute_precision):
    if reference is None:
        return None
    if isinstance(reference, EvalResult):
        if reference.logits is None:
            raise DataError("the reference evaluation result holds no logits (results loaded from JSON do not)")
        return reference.logits
    if isinstance(reference, np.ndarray):
        return reference
    if isinstance(reference, (str, Path)) and str(reference).endswith(".npy"):
        path = Path(reference)
        if not path.is_file():
            raise DataError(f"reference logits file {path} does not exist")
        return np.load(path, mmap_mode="r")
    ref_predictor, ref_meta = predictor_for(reference, compute_precision=compute_precision)
    if ref_meta.num_classes != metadata.num_classes:
        raise DataError(f"reference model has {ref_meta.num_classes} outputs but the model has {metadata.num_classes}")
    result = evaluate(ref_predictor, folder, ref_meta.num_classes, batch_size=batch_size, cache=cache,
                      preprocessing=preprocessing, input_shape=metadata.input_shape)
    return result.logits
