"""Per-layer sensitivity: compress one op at an aggressive setting, keep every
other op uncompressed, and measure how much the task's primary metric worsens
(top-1 for a labelled classifier; agreement or another fidelity measure without
targets) and the output SNR."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress_lab.analysis.compressors import AGGRESSIVE, check_compression, compressed_bits, simulate
from compress_lab.analysis.subset import SubsetEvaluator

DEFAULT_WEIGHT_THRESHOLD = 2048


@dataclass
class WeightOp:
    name: str
    shape: tuple[int, ...]
    numel: int


@dataclass
class LayerSensitivity:
    name: str
    shape: list[int]
    numel: int
    top1: float | None
    top1_drop: float | None
    agreement: float | None
    snr_db: float
    bits_saved: float
    drop: float | None = None                 # how much worse the primary metric got (its unit, its direction)
    values: dict[str, float] = field(default_factory=dict)   # every metric measured with this op compressed


@dataclass
class SensitivityResult:
    compression: str                          # palettize, quantize or prune (SEARCH_COMPRESSIONS)
    settings: dict[str, Any]
    images: int
    baseline_top1: float | None
    layers: list[LayerSensitivity] = field(default_factory=list)
    elapsed_s: float = 0.0
    metric: str = "top1"                      # the primary metric `drop` is measured on
    metric_label: str = "top-1 accuracy"
    higher_is_better: bool = True
    baseline_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ranking(self) -> list[LayerSensitivity]:
        """Most sensitive first (largest drop, then lowest agreement, then lowest SNR)."""
        return sorted(self.layers, key=lambda l: (-((l.drop if l.drop is not None else l.top1_drop) or 0.0),
                                                  l.agreement if l.agreement is not None else 1.0, l.snr_db))


def compressible_weights(weights: dict[str, np.ndarray], weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD) -> list[WeightOp]:
    """Float weight constants that coremltools' passes would compress (>= weight_threshold elements, rank >= 2)."""
    ops = []
    for name, value in weights.items():
        array = np.asarray(value)
        if array.dtype.kind == "f" and array.ndim >= 2 and array.size >= weight_threshold:
            ops.append(WeightOp(name=name, shape=tuple(array.shape), numel=int(array.size)))
    return sorted(ops, key=lambda op: op.name)


def measure_sensitivity(evaluator: SubsetEvaluator, compression: str, settings: dict[str, Any] | None = None,
                        weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
                        progress: Callable[[int, int, str], None] | None = None) -> SensitivityResult:
    check_compression(compression)
    settings = dict(settings or AGGRESSIVE[compression])
    started = time.perf_counter()
    weights = evaluator.base.weights()
    ops = compressible_weights(weights, weight_threshold)
    primary = evaluator.primary
    result = SensitivityResult(compression=compression, settings=settings, images=evaluator.count,
                               baseline_top1=evaluator.baseline.top1, metric=primary.name, metric_label=primary.label,
                               higher_is_better=primary.higher_is_better,
                               baseline_value=evaluator.baseline.values.get(primary.name))
    for i, op in enumerate(ops):
        if progress:
            progress(i, len(ops), op.name)
        original = np.asarray(weights[op.name])
        measured = evaluator.measure({op.name: simulate(original, compression, settings)})
        drop = None if measured.top1 is None else evaluator.baseline.top1 - measured.top1
        worse = measured.worsening(primary.name, evaluator.baseline) if primary.name in measured.values else None
        saved = original.size * 16 - compressed_bits(compression, settings, original.size, original.shape[0])
        result.layers.append(LayerSensitivity(
            name=op.name, shape=list(op.shape), numel=op.numel, top1=measured.top1, top1_drop=drop,
            agreement=measured.agreement, snr_db=measured.snr_db, bits_saved=float(saved), drop=worse,
            values=dict(measured.values)))
    if progress:
        progress(len(ops), len(ops), "done")
    result.elapsed_s = time.perf_counter() - started
    return result


def sensitivity_for_model(handle, data_dir: str | Path, compression: str, settings: dict[str, Any] | None = None, *,
                          workdir: str | Path, max_images: int = 512, precision: str = "fp16",
                          progress=None, preprocessing_overrides: dict | None = None) -> SensitivityResult:
    from compress_lab.techniques.base import CompressContext
    float_package = CompressContext(handle=handle, workdir=Path(workdir)).float_package(precision)
    evaluator = SubsetEvaluator(float_package, data_dir, handle.metadata, max_images=max_images,
                                preprocessing_overrides=preprocessing_overrides)
    return measure_sensitivity(evaluator, compression, settings, progress=progress)


def record_sensitivity(store_folder, handle, result) -> str:
    """Store a sensitivity analysis as a sweep whose runs are the per-op measurements."""
    from compress_lab.store import RunSpec, open_store

    import hashlib
    import json

    store = open_store(store_folder)
    key = json.dumps([handle.fingerprint, result.compression, result.settings, result.images], sort_keys=True)
    sweep_id = "sens-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    store.create_sweep(sweep_id, f"sensitivity {handle.name} {result.compression} {result.settings}",
                       {"kind": "sensitivity", "compression": result.compression, "settings": result.settings}, handle.fingerprint)
    specs = []
    for layer in result.layers:
        config = {"technique": "sensitivity", "compression": result.compression, "settings": result.settings,
                  "op": layer.name}  # run ids hash the values only: a store written before the rename keeps its runs
        run_id = hashlib.sha256((key + layer.name).encode()).hexdigest()[:32]
        specs.append(RunSpec(run_id, "sensitivity", "post_training", config, f"{layer.name} {result.compression}"))
    store.add_runs(sweep_id, specs)
    for spec, layer in zip(specs, result.layers):
        if store.claim_run(spec.run_id, "sensitivity"):
            store.complete_run(spec.run_id,
                               {"top1": layer.top1, "top1_drop": layer.top1_drop, "agreement": layer.agreement,
                                "snr_db": layer.snr_db, "n": result.images, "values": layer.values,
                                "drop": layer.drop, "drop_metric": result.metric},
                               {"numel": layer.numel, "bits_saved": layer.bits_saved}, {"total_s": result.elapsed_s / max(len(result.layers), 1)}, None)
    store.set_sweep_status(sweep_id, "done")
    return sweep_id
