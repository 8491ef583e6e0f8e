"""A fixed, deterministic subset of a validation folder held in memory, with the
uncompressed program's outputs on it, for the many quick evaluations of a
sensitivity analysis or a mixed-precision search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress_lab.data import iter_batches, scan_folder
from compress_lab.errors import DataError
from compress_lab.models.metadata import ModelMetadata


@dataclass
class Measurement:
    top1: float | None
    agreement: float
    snr_db: float

    def score(self, metric: str) -> float:
        value = getattr(self, metric)
        if value is None:
            raise DataError(f"metric {metric!r} needs a labelled validation folder (<class>/<image>)")
        return value


class SubsetEvaluator:
    def __init__(self, float_package: str | Path, data_dir: str | Path, metadata: ModelMetadata,
                 max_images: int = 512, compute_precision: str = "fp32"):
        from compress_lab.runtime import load_program

        folder = scan_folder(data_dir, metadata.class_names)
        if len(folder.samples) > max_images:  # evenly spaced, so every class is represented
            keep = np.linspace(0, len(folder.samples) - 1, max_images).round().astype(int)
            folder.samples = [folder.samples[i] for i in sorted(set(keep.tolist()))]
        xs, labels = [], []
        for batch in iter_batches(folder, metadata.preprocessing, metadata.input_shape, batch_size=128):
            xs.append(batch.x)
            labels.append(batch.labels)
        if not xs:
            raise DataError(f"no readable images in {data_dir}")
        self.x = np.concatenate(xs)
        self.labels = np.concatenate(labels)
        self.labelled = bool((self.labels >= 0).all())
        self.base = load_program(float_package, compute_precision=compute_precision)
        self.reference = self.base.predict(self.x)
        self.baseline = self.measure_logits(self.reference)
        self.evaluations = 0

    def measure_logits(self, logits: np.ndarray) -> Measurement:
        top1 = float((logits.argmax(1) == self.labels).mean()) if self.labelled else None
        agreement = float((logits.argmax(1) == self.reference.argmax(1)).mean())
        noise = float(((logits - self.reference) ** 2).sum())
        signal = float((self.reference ** 2).sum())
        snr = 10 * np.log10(signal / noise) if noise > 0 else 200.0
        return Measurement(top1=top1, agreement=agreement, snr_db=float(min(snr, 200.0)))

    def measure(self, overrides: dict[str, np.ndarray]) -> Measurement:
        """The program with some weights replaced (already compressed + decompressed)."""
        self.evaluations += 1
        program = self.base.with_constants(overrides) if overrides else self.base
        return self.measure_logits(program.predict(self.x))
