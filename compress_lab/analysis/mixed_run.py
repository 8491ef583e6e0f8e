"""Search a mixed-precision assignment, then compress it for real and measure it
on the whole validation folder, next to the uncompressed float package."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress_lab.analysis.mixed import Budget, search_mixed
from compress_lab.analysis.subset import Measurement, SubsetEvaluator


def search_config(handle, data_dir: str | Path, family: str, budget: Budget, *, workdir: str | Path,
                  max_images: int = 2000, precision: str = "fp16", progress=None):
    """The mixed-precision search on a validation subset: (technique config dict, MixedResult)."""
    from compress_lab.techniques import CompressContext, config_from_dict

    ctx = CompressContext(handle=handle, workdir=Path(workdir))
    evaluator = SubsetEvaluator(ctx.float_package(precision), data_dir, handle.metadata, max_images=max_images)
    result = search_mixed(evaluator, family, budget, progress=progress)
    config = config_from_dict(result.technique_config({"precision": precision})).to_dict()
    return config, result


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
    return {
        "path": str(outcome.path),
        "config": config,
        "search": result.to_dict(),
        "verified": {"top1": measured.top1, "baseline_top1": reference.top1, "agreement": measured.agreement,
                     "snr_db": measured.snr_db, "bytes": size["package_bytes"], "meets_budget": budget.met(full, full_baseline),
                     "images": measured.n},
        "metrics": measured.to_dict(),
        "sizes": size,
        "timings": {"search_s": result.elapsed_s, **outcome.timings, "total_s": time.perf_counter() - started},
    }
