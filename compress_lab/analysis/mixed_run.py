"""Search a mixed-precision assignment, then compress it for real and measure it
on the whole validation folder, next to the uncompressed float package."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress_lab.analysis.mixed import Budget, search_mixed
from compress_lab.analysis.subset import Measurement, SubsetEvaluator


def search_config(handle, data_dir: str | Path, family: str, budget: Budget, *, workdir: str | Path,
                  max_images: int = 2000, precision: str = "fp16", progress=None, levels=None):
    """The mixed-precision search on a validation subset: (technique config dict, MixedResult)."""
    from compress_lab.techniques import CompressContext, config_from_dict

    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    evaluator = SubsetEvaluator(ctx.float_package(precision), data_dir, handle.metadata, max_images=max_images)
    result = search_mixed(evaluator, family, budget, levels=levels, progress=progress)
    config = config_from_dict(result.technique_config({"precision": precision})).to_dict()
    if budget.is_size:
        config, result = _fit_size(ctx, evaluator, family, budget, result, config, precision, progress)
    return config, result


def _fit_size(ctx, evaluator, family, budget, result, config, precision, progress, attempts: int = 4):
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
        result = search_mixed(evaluator, family, budget, levels=result.levels, noise=result.noise,
                              margin_bytes=margin, progress=progress)
        config = config_from_dict(result.technique_config({"precision": precision})).to_dict()
    raise ConfigError(f"the mixed answer stays above {budget.describe()} after {attempts} tries "
                      f"({real:,} measured); raise the budget")


def run_mixed(handle, data_dir: str | Path, family: str, budget: Budget, out_path: str | Path, *,
              workdir: str | Path, max_images: int = 2000, precision: str = "fp16", progress=None) -> dict[str, Any]:
    """Search, then compress the chosen config for real and measure it on the whole folder."""
    from compress_lab.data import scan_folder
    from compress_lab.evaluate import coreml_predictor, evaluate
    from compress_lab.models.size import package_size
    from compress_lab.techniques import CompressContext, compress, config_from_dict

    started = time.perf_counter()
    config, result = search_config(handle, data_dir, family, budget, workdir=workdir, max_images=max_images,
                                   precision=precision, progress=progress)
    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    outcome = compress(handle, config_from_dict(config), out_path, context=ctx)

    meta = handle.metadata
    kwargs = dict(preprocessing=meta.preprocessing, input_shape=meta.input_shape, class_names=meta.class_names)
    reference = evaluate(coreml_predictor(ctx.float_package(precision)), scan_folder(data_dir, meta.class_names),
                         meta.num_classes, **kwargs)
    measured = evaluate(coreml_predictor(outcome.path), scan_folder(data_dir, meta.class_names), meta.num_classes,
                        reference_logits=reference.logits, **kwargs)
    full_baseline = Measurement(top1=reference.top1, agreement=1.0, snr_db=200.0)
    full = Measurement(top1=measured.top1, agreement=measured.agreement, snr_db=measured.snr_db)
    size = package_size(outcome.path).to_dict()
    from compress_lab.analysis.coreml_config import optimization_config_dict
    return {
        "path": str(outcome.path),
        "config": config,
        "coreml_config": optimization_config_dict(outcome.details),
        "search": result.to_dict(),
        "verified": {"top1": measured.top1, "baseline_top1": reference.top1, "agreement": measured.agreement,
                     "snr_db": measured.snr_db, "bytes": size["package_bytes"],
                     "bits_per_weight": size["bits_per_weight"],
                     "meets_budget": budget.size_met(size) if budget.is_size else budget.met(full, full_baseline),
                     "images": measured.n},
        "metrics": measured.to_dict(),
        "sizes": size,
        "timings": {"search_s": result.elapsed_s, **outcome.timings, "total_s": time.perf_counter() - started},
    }


def coreml_config_of(handle, config: dict[str, Any], *, workdir: str | Path, precision: str = "fp16") -> dict[str, Any]:
    """The coremltools OptimizationConfig dict of a lab config, from compressing it once."""
    from compress_lab.analysis.coreml_config import optimization_config_dict
    from compress_lab.techniques import CompressContext, compress, config_from_dict
    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    outcome = compress(handle, config_from_dict(config), Path(workdir) / "mixed-export.mlpackage", context=ctx)
    return optimization_config_dict(outcome.details)
