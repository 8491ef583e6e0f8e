"""Search a mixed-precision assignment, then compress it for real and measure it
on the whole validation folder, next to the uncompressed float package."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress_lab.analysis.mixed import Budget, search_levels, search_mixed
from compress_lab.analysis.subset import Measurement, SubsetEvaluator


def single_op_key(evaluator: SubsetEvaluator, compression: str, levels: list[dict[str, Any]] | None,
                  search: str = "exact", single_op_samples: int | None = None) -> str:
    """What the single-op stage depends on: the float program (its files), the subset (its input
    arrays and targets), the compression and its levels, and how the stage was taken (the fast
    search's predicted noise is never read as an exact search's measured one)."""
    import hashlib
    import json

    import numpy as np

    digest = hashlib.sha256()
    package = Path(evaluator.base.origin)
    for path in sorted(p for p in package.rglob("*") if p.is_file() and p.name != "Manifest.json"):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    for arrays in (evaluator.source.inputs, evaluator.source.targets):
        for name in sorted(arrays):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    digest.update(json.dumps([compression, search_levels(compression, levels, search)], sort_keys=True).encode())
    if search != "exact":
        digest.update(json.dumps([search, single_op_samples]).encode())
    return digest.hexdigest()[:32]


def stored_single_op(workdir: str | Path, key: str) -> tuple[dict[str, list[float]] | None, dict]:
    """(noise per op and level, weight variants per op and level) of an earlier search; (None, {}) if none."""
    import json
    import numpy as np
    folder = Path(workdir) / SINGLE_OP_DIR
    try:
        noise = json.loads((folder / f"{key}.json").read_text())["noise"]
    except (OSError, ValueError, KeyError):
        return None, {}
    variants: dict[str, list] = {}
    try:
        with np.load(folder / f"{key}.npz", allow_pickle=False) as arrays:
            for name in arrays.files:  # "<op>@<level>"
                op, level = name.rsplit("@", 1)
                variants.setdefault(op, {})[int(level)] = arrays[name]
        variants = {op: [by_level[i] for i in sorted(by_level)] for op, by_level in variants.items()}
    except (OSError, ValueError, KeyError):
        variants = {}
    return noise, variants


def store_single_op(workdir: str | Path, key: str, noise: dict[str, list[float]], variants: dict) -> Path:
    import json
    import numpy as np
    folder = Path(workdir) / SINGLE_OP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    with open(folder / f"{key}.tmp.npz", "wb") as f:
        np.savez(f, **{f"{op}@{i}": v for op, levels in variants.items() for i, v in enumerate(levels)})
    (folder / f"{key}.tmp.npz").replace(folder / f"{key}.npz")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "noise": noise}))
    tmp.replace(path)
    return path


SINGLE_OP_DIR = "mixed-single-op"


def search_config(handle, data_dir: str | Path, compression: str, budget: Budget, *, workdir: str | Path,
                  max_images: int = 2000, precision: str = "fp16", progress=None, levels=None, reuse: bool = True,
                  preprocessing_overrides: dict | None = None, search: str = "fast",
                  single_op_samples: int | None = None, batch_size: int | None = None):
    """The mixed-precision search on a validation subset: (technique config dict, MixedResult).
    `batch_size`: samples the subset runs in at once (default: from their size, see subset.batch_size_for).
    `search`: "fast" (default) or "exact" (today's first algorithm: every op measured at every
    level, coremltools' k-means); see compress_lab.analysis.mixed.
    With `reuse`, the single-op stage (each op alone at each level: most of the search's
    evaluations, and every op's weight compressed at every level) of an earlier search on the
    same float program, subset and levels is read from WORKDIR/mixed-single-op/ instead of
    computed again, and a new one is stored there."""
    from compress_lab.techniques import CompressContext, config_from_dict

    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    evaluator = SubsetEvaluator(ctx.float_package(precision), data_dir, handle.metadata, max_images=max_images,
                                preprocessing_overrides=preprocessing_overrides, batch_size=batch_size)
    from compress_lab.analysis.mixed import check_search
    check_search(search)
    key = single_op_key(evaluator, compression, levels, search, single_op_samples) if reuse else None
    noise, variants = stored_single_op(workdir, key) if reuse else (None, {})
    result = search_mixed(evaluator, compression, budget, levels=levels, progress=progress, noise=noise, variants=variants,
                          search=search, single_op_samples=single_op_samples)
    result.reused_single_op = noise is not None and result.noise == noise
    if reuse and not result.reused_single_op:
        store_single_op(workdir, key, result.noise, variants)
    config = config_from_dict(result.technique_config({"precision": precision})).to_dict()
    if budget.is_size:
        reused = result.reused_single_op
        config, result = _fit_size(ctx, evaluator, compression, budget, result, config, precision, progress, variants)
        result.reused_single_op = reused
    return config, result


def _fit_size(ctx, evaluator, compression, budget, result, config, precision, progress, variants=None, attempts: int = 4):
    """A size budget is met by the real package: compress the answer, measure it on disk, and
    while it is larger than the budget (the search estimates each op's payload), search again
    with the excess kept free (reusing the single-op stage, so only the candidates are measured)."""
    from compress_lab.errors import ConfigError
    from compress_lab.models.size import package_size
    from compress_lab.techniques import compress, config_from_dict

    margin = 0.0
    for attempt in range(attempts):
        out = Path(ctx.workdir) / f"mixed-size-check-{attempt}.mlpackage"
        compress(ctx.handle, config_from_dict(config), out, context=ctx)
        sizes = package_size(out).to_dict()
        real = sizes["package_bytes"] if budget.metric == "bytes" else sizes["bits_per_weight"]
        result.size_target = dict(result.size_target, checked_package_bytes=sizes["package_bytes"],
                                  checked_bits_per_weight=sizes["bits_per_weight"], checks=attempt + 1)
        if budget.size_met(sizes):
            return config, result
        excess = (real - budget.value) if budget.metric == "bytes" else (real - budget.value) * sizes["n_weights"] / 8
        margin += excess + 64
        result = search_mixed(evaluator, compression, budget, levels=result.levels, noise=result.noise, variants=variants,
                              margin_bytes=margin, progress=progress, search=result.search)
        config = config_from_dict(result.technique_config({"precision": precision})).to_dict()
    raise ConfigError(f"the mixed answer stays above {budget.describe()} after {attempts} tries "
                      f"({real:,} measured); raise the budget")


def run_mixed(handle, data_dir: str | Path, compression: str, budget: Budget, out_path: str | Path, *,
              workdir: str | Path, max_images: int = 2000, precision: str = "fp16", progress=None,
              reuse: bool = True, preprocessing_overrides: dict | None = None, search: str = "fast",
              single_op_samples: int | None = None) -> dict[str, Any]:
    """Search (`search`: "fast" or "exact", see search_config), then compress the chosen config
    for real and measure it on the whole folder."""
    from compress_lab.models.size import package_size
    from compress_lab.techniques import CompressContext, compress, config_from_dict

    started = time.perf_counter()
    config, result = search_config(handle, data_dir, compression, budget, workdir=workdir, max_images=max_images,
                                   precision=precision, progress=progress, reuse=reuse,
                                   preprocessing_overrides=preprocessing_overrides, search=search,
                                   single_op_samples=single_op_samples)
    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    outcome = compress(handle, config_from_dict(config), out_path, context=ctx)

    reference = evaluate_package(handle, ctx.float_package(precision), data_dir, preprocessing_overrides)
    measured = evaluate_package(handle, outcome.path, data_dir, preprocessing_overrides,
                                reference=reference.reference_outputs())
    full_evaluator = _FullMeasure(handle.metadata)
    full_baseline, full = full_evaluator.measurement(reference, baseline=True), full_evaluator.measurement(measured)
    size = package_size(outcome.path).to_dict()
    from compress_lab.analysis.coreml_config import optimization_config_dict
    return {
        "path": str(outcome.path),
        "config": config,
        "coreml_config": optimization_config_dict(outcome.details),
        "search": result.to_dict(),
        "verified": {"top1": measured.top1, "baseline_top1": reference.top1, "agreement": measured.agreement,
                     "snr_db": measured.snr_db, "values": full.values, "baseline_values": full_baseline.values,
                     "bytes": size["package_bytes"],
                     "bits_per_weight": size["bits_per_weight"],
                     "meets_budget": budget.size_met(size) if budget.is_size else budget.met(full, full_baseline),
                     "images": measured.n},
        "metrics": measured.to_dict(),
        "sizes": size,
        "timings": {"search_s": result.elapsed_s, **outcome.timings, "total_s": time.perf_counter() - started},
    }


def evaluate_package(handle, package: str | Path, data_dir, preprocessing_overrides: dict | None = None,
                     reference=None):
    """A Core ML package of `handle`'s model measured on the whole source by its task (the one evaluator)."""
    from compress_lab.evaluate import evaluate
    from compress_lab.sweep.task import predictor_of
    from compress_lab.tasks import task_for
    meta = handle.metadata
    task = task_for(meta)
    dataset = task.dataset(task.open_source(data_dir, meta), meta, preprocessing_overrides=preprocessing_overrides)
    return evaluate(predictor_of(handle, Path(package)), dataset, task, reference, meta=meta)


class _FullMeasure(SubsetEvaluator):
    """The Measurement of a whole-source evaluation result (the budget check of the answer)."""

    def __init__(self, meta):  # noqa: D107 (no subset: only the metric bookkeeping)
        from compress_lab.tasks import task_for
        self.meta, self.task = meta, task_for(meta)
        self.metrics = {m.name: m for m in self.task.metrics(meta) + self.task.fidelity_metrics(meta)}
        self.labelled = True

    def measurement(self, result, baseline: bool = False) -> Measurement:
        measured = self._measurement(result, baseline)
        if measured.top1 is None and result.top1 is not None:
            measured.top1 = result.top1
        return measured


def coreml_config_of(handle, config: dict[str, Any], *, workdir: str | Path, precision: str = "fp16") -> dict[str, Any]:
    """The coremltools OptimizationConfig dict of a lab config, from compressing it once."""
    from compress_lab.analysis.coreml_config import optimization_config_dict
    from compress_lab.techniques import CompressContext, compress, config_from_dict
    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    outcome = compress(handle, config_from_dict(config), Path(workdir) / "mixed-export.mlpackage", context=ctx)
    return optimization_config_dict(outcome.details)
