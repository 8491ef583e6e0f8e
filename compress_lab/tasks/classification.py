"""The `classification` task: one image input (N, C, H, W), one output of class
scores (N, K). Validation data is an ImageFolder (`<root>/<class>/<image>`,
labelled) or a flat folder of images (unlabelled: fidelity only). Metrics: top-1,
top-5, cross-entropy; fidelity: top-1 agreement and output SNR (plus PSNR,
cosine and max abs error) against the reference model's logits."""

from __future__ import annotations

import dataclasses

import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from compress_lab.data import Batch, ImageFolder, TensorCache, iter_batches, scan_folder
from compress_lab.errors import ConfigError, DataError, ModelLoadError
from compress_lab.tasks import register_task
from compress_lab.tasks.base import SNR_CAP_DB, FidelityAccumulator, Metric, Task, TaskBatch

MAX_SKIPPED_LISTED = 100


class ClassificationData:
    """Batches of one classification source, as TaskBatches ({input: x}, {"label": labels})."""

    def __init__(self, batches: Iterable[Batch], num_classes: int, classes: Sequence[str],
                 folder: ImageFolder | None, input_name: str, output_name: str):
        self._batches = batches
        self.num_classes = int(num_classes)
        self.classes = list(classes)
        self.folder = folder
        self.input_name = input_name
        self.output_name = output_name

    @property
    def labelled(self) -> bool:
        return self.folder.labelled if self.folder is not None else True

    def __iter__(self) -> Iterator[TaskBatch]:
        for batch in self._batches:
            yield TaskBatch(inputs={self.input_name: batch.x}, targets={"label": np.asarray(batch.labels, dtype=np.int64)},
                            ids=list(batch.paths))


class ClassificationAccumulator:
    """Top-1/top-5/cross-entropy/confusion against labels, agreement and SNR against
    the reference logits (the arithmetic the lab has always used, unchanged)."""

    def __init__(self, data: ClassificationData, reference: np.ndarray | None):
        k = data.num_classes
        if k <= 0:
            raise ConfigError(f"num_classes {k!r} must be a positive integer")
        self.data = data
        self.k = k
        rows = max(len(data.classes), k) if data.folder is None else max(len(data.classes), 1)
        self.confusion = np.zeros((rows, k), dtype=np.int64)
        self.top5_hits = 0
        self.loss_sum = 0.0
        self.labelled = 0
        self.reference = reference
        self.fidelity = FidelityAccumulator(class_scores=True) if reference is not None else None
        self.n = 0
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, batch: TaskBatch, outputs: dict[str, np.ndarray]) -> None:
        n = len(batch)
        k = self.k
        logits = np.asarray(outputs[self.data.output_name] if self.data.output_name in outputs
                            else next(iter(outputs.values())))
        if logits.ndim != 2 or logits.shape != (n, k):
            raise ModelLoadError(
                f"the model returned outputs of shape {tuple(logits.shape)} for a batch of {n} images; "
                f"expected ({n}, {k}) logits. Check the model's class count and output.")
        labels = np.asarray(batch.targets["label"], dtype=np.int64)
        if labels.size and labels.max() >= self.confusion.shape[0]:
            raise DataError(f"label {int(labels.max())} is out of range for {self.confusion.shape[0]} classes")
        if self.reference is not None and self.n + n > len(self.reference):
            raise DataError(
                f"reference logits cover {len(self.reference)} images but this evaluation has more; the reference "
                "must come from the same folder (same images, same order, same unreadable files)")
        logits = logits.astype(np.float32, copy=False)
        pred = logits.argmax(axis=1)
        known = labels >= 0
        if known.any():
            y, out = labels[known], logits[known].astype(np.float64)
            np.add.at(self.confusion, (y, pred[known]), 1)
            if k >= 5:
                top5 = np.argpartition(-out, 4, axis=1)[:, :5]
                self.top5_hits += int((top5 == y[:, None]).any(axis=1).sum())
            shifted = out - out.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            self.loss_sum += float(-log_probs[np.arange(len(y)), y].sum())
            self.labelled += len(y)
        if self.fidelity is not None:
            self.fidelity.add(self.reference[self.n:self.n + n], logits)
        self.n += n
        self.logits.append(logits)
        self.labels.append(labels)

    def result(self) -> dict:
        """EvalResult fields (plus `logits` and `labels`)."""
        if self.reference is not None and self.n != len(self.reference):
            raise DataError(
                f"reference logits cover {len(self.reference)} images but {self.n} were evaluated; the reference "
                "must come from the same folder (same images, same order, same unreadable files)")
        folder, classes = self.data.folder, self.data.classes
        logits = np.concatenate(self.logits) if self.logits else np.zeros((0, self.k), dtype=np.float32)
        labels = np.concatenate(self.labels) if self.labels else np.zeros((0,), dtype=np.int64)
        result: dict = {"n": self.n, "logits": logits, "labels": labels}
        if folder is not None:
            result["skipped"] = len(folder.skipped)
            result["skipped_files"] = [[str(p), r] for p, r in folder.skipped[:MAX_SKIPPED_LISTED]]
            result["warnings"] = list(folder.warnings)
        if self.labelled:
            confusion = self.confusion
            result["top1"] = float(np.trace(confusion[:, :min(confusion.shape)])) / self.labelled
            result["top5"] = self.top5_hits / self.labelled if self.k >= 5 else None
            result["loss"] = self.loss_sum / self.labelled
            totals = confusion.sum(axis=1)
            result["per_class"] = {classes[i] if i < len(classes) else str(i): float(confusion[i, i] / totals[i])
                                   for i in range(confusion.shape[0]) if totals[i] > 0}
            result["confusion"] = confusion.tolist()
        if self.fidelity is not None:
            measures = self.fidelity.result()
            result["agreement"] = measures.get("agreement") if self.n else None
            result["snr_db"] = self.fidelity.snr_db()
            if self.n:
                result["fidelity"] = {self.data.output_name: measures}
        return result

    def outputs(self) -> dict[str, np.ndarray]:
        return {self.data.output_name: np.concatenate(self.logits) if self.logits
                else np.zeros((0, self.k), dtype=np.float32)}


class Classification(Task):
    name = "classification"
    label = "image classification"
    description = "one image input, class scores out; top-1 / top-5 on an ImageFolder, agreement and SNR to the float model"

    def metrics(self, meta) -> list[Metric]:
        return [Metric("top1", "top-1 accuracy", "", True, primary=True),
                Metric("top5", "top-5 accuracy", "", True),
                Metric("loss", "cross-entropy", "nats", False)]

    def open_source(self, source, meta):
        """An ImageFolder, or (for an `.npz` file or a folder of `.npz` files) an array
        source whose input array is named after the model's input and whose `label`
        array holds class indices."""
        from compress_lab.arrays import ArraySource, read_arrays
        if isinstance(source, (ImageFolder, ArraySource)):
            return source
        path = Path(source)
        if path.suffix == ".npz" or (path.is_dir() and any(path.glob("*.npz")) and not _has_images(path)):
            arrays = read_arrays(path, meta.io)
            _check_labels(arrays, meta)
            return arrays
        return scan_folder(path, class_names=meta.class_names)

    def subset_source(self, source, meta, max_samples: int):
        """Evenly spaced over the folder's sorted samples, so every class is represented."""
        from compress_lab.arrays import evenly_spaced
        source = self.open_source(source, meta)
        if isinstance(source, ImageFolder):
            keep = evenly_spaced(len(source.samples), max_samples)
            return dataclasses.replace(source, samples=[source.samples[i] for i in keep], skipped=[],
                                       warnings=list(source.warnings))
        return super().subset_source(source, meta, max_samples)

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache: TensorCache | None = None, progress=None, preprocessing=None) -> ClassificationData:
        """`source` is a folder path, an already scanned ImageFolder or an array source."""
        from compress_lab.arrays import ArraySource
        source = self.open_source(source, meta)
        if isinstance(source, ArraySource):
            io = meta.io
            name = io.inputs[0].name
            batches = (Batch(x=np.asarray(b.inputs[name], dtype=np.float32),
                             labels=np.asarray(b.targets["label"], dtype=np.int64) if "label" in b.targets
                             else np.full(len(b), -1, dtype=np.int64), paths=list(b.ids))
                       for b in source.batches(batch_size))
            return ClassificationData(batches, meta.num_classes, list(meta.class_names), None, name, io.outputs[0].name)
        folder = source
        k = meta.num_classes
        if folder.labelled and len(folder.classes) > k:
            raise DataError(
                f"the data folder {folder.root} has {len(folder.classes)} classes but the model has {k} outputs; "
                "scan the folder with the model's class names (scan_folder(path, class_names=...)) or use a matching folder")
        preprocessing = preprocessing or meta.preprocessing.with_overrides(preprocessing_overrides)
        io = meta.io
        batches = iter_batches(folder, preprocessing, meta.input_shape, batch_size, cache, progress)
        return ClassificationData(batches, k, folder.classes, folder, io.inputs[0].name, io.outputs[0].name)

    def batches_dataset(self, batches: Iterable[Batch], num_classes: int, class_names: Sequence[str] | None = None,
                        meta=None) -> ClassificationData:
        """Batches made elsewhere (e.g. a subset of a folder)."""
        classes = list(class_names) if class_names is not None else [str(i) for i in range(int(num_classes))]
        io = meta.io if meta is not None else None
        return ClassificationData(batches, num_classes, classes, None,
                                  io.inputs[0].name if io else "input", io.outputs[0].name if io else "logits")

    def accumulator(self, meta, data: ClassificationData, reference) -> ClassificationAccumulator:
        if isinstance(reference, dict):
            reference = reference.get(data.output_name, next(iter(reference.values()), None))
        if reference is not None:
            reference = np.asarray(reference) if not isinstance(reference, np.memmap) else reference
            if reference.ndim != 2 or reference.shape[1] != data.num_classes:
                raise DataError(f"reference logits have shape {reference.shape}; expected (images, {data.num_classes})")
        return ClassificationAccumulator(data, reference)

    def loss(self, meta):
        import torch
        import torch.nn.functional as F

        def cross_entropy(outputs, targets):
            logits = outputs if not isinstance(outputs, dict) else next(iter(outputs.values()))
            if isinstance(logits, (tuple, list)) and logits and isinstance(logits[0], torch.Tensor):
                logits = logits[0]
            name = getattr(meta, "name", "the model")
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ConfigError(
                    f"model {name} must return logits of shape (batch, classes) to be fine-tuned; "
                    f"it returned {type(logits).__name__}{tuple(getattr(logits, 'shape', ()))}")
            if meta is not None and logits.shape[1] != meta.num_classes:
                raise ConfigError(
                    f"model {name} returns {logits.shape[1]} logits but its metadata names "
                    f"{meta.num_classes} classes; fix class_names in metadata.json")
            return F.cross_entropy(logits, targets["label"] if isinstance(targets, dict) else targets)
        return cross_entropy

    def source_refusal(self, meta, source) -> str | None:
        from compress_lab.arrays import ArraySource
        if isinstance(source, ArraySource):
            names = source.targets if source.inputs is not None else source._folder_targets
            if "label" not in names:
                return (f"training source {source.root} has no array 'label', so there is nothing to fine-tune the "
                        "classifier towards; save one class index per sample (numpy.savez(..., label=labels))")
            return None
        if not source.labelled:
            return (f"training folder {source.root} has no class sub-folders: fine-tuning needs labelled images "
                    f"({source.root}/<class>/<image>, class folders named after the model's classes)")
        return None


def _has_images(path: Path) -> bool:
    from compress_lab.data import IMAGE_EXTENSIONS
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))


def _check_labels(arrays, meta) -> None:
    labels = arrays.targets.get("label") if arrays.inputs is not None else None
    if labels is None:
        return
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"array 'label' in {arrays.root} has shape {list(labels.shape)} and dtype {labels.dtype}; "
                        "give one integer class index per sample (-1 for unlabelled)")
    if labels.size and (labels.max() >= meta.num_classes or labels.min() < -1):
        raise DataError(f"array 'label' in {arrays.root} holds {int(labels.min())}..{int(labels.max())} but the model "
                        f"has {meta.num_classes} classes; labels are class indices 0..{meta.num_classes - 1} in "
                        "class_names order (-1 for unlabelled)")


register_task(Classification())

__all__ = ["Classification", "ClassificationData", "ClassificationAccumulator", "SNR_CAP_DB", "math"]
