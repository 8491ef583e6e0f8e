"""Mixed-precision search: today's algorithm (`search="exact"`) vs the fast cold search (the default).

For each model, in one run, on the same subset, budget and levels (nbits 8/6/4/3/2/1): (1) today's
search as it shipped: the exact search (every op measured alone at every level, coremltools'
k-means) with the subset run in batches of 128, nothing reused; (2) the exact search with the
subset run in batches sized to the samples (the default now, subset.batch_size_for), which tells
how much of the speed-up is the batching alone; (3) the fast search, cold (an empty work folder,
nothing reused: the lab's exact k-means for the single-op stage, one measurement per op, trials
screened on the most fragile samples); (4) optionally the fast search again, reading the single-op
stage (3) stored. Each answer is compressed for real and its bytes on disk measured; the fast
answer must be within the budget (on the subset, and on the whole folder) and no larger than
today's.

    .venv/bin/python benchmarks/mixed_speed.py [--models mnist_cnn,dog_mobilenetv2] [--max-images N] [--quick]

Writes benchmarks/results/mixed_speed.json (or --out). The issue-14 target: the fast cold search in
<= 1/10 of the exact search's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

BUDGETS = {"mnist_cnn": ("top1_drop", 1.0), "dog_mobilenetv2": ("agreement", 0.99)}
MAX_IMAGES = {"mnist_cnn": 300, "dog_mobilenetv2": 2000}  # dog's val folder holds 75 images: all of them
TODAY_BATCH = 128  # how the subset ran before batch_size_for


def _bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench(model: str, max_images: int, with_again: bool = True) -> dict:
    from compress_lab.analysis.mixed import Budget
    from compress_lab.analysis.mixed_run import evaluate_package, search_config, _FullMeasure
    from compress_lab.models import load_model
    from compress_lab.techniques import CompressContext, compress, config_from_dict

    handle = load_model(model)
    data = ROOT / "sample_models" / model / "val"
    budget = Budget(*BUDGETS[model])
    out: dict = {"model": model, "budget": budget.describe(), "max_images": max_images}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shared = tmp / "float"  # the float package is converted once, outside the timings
        float_package = CompressContext(handle=handle, workdir=shared).float_package("fp16")
        full = _FullMeasure(handle.metadata)
        reference = evaluate_package(handle, float_package, data)
        full_baseline = full.measurement(reference, baseline=True)
        runs = {}
        plan = [("today", "exact", "work-today", TODAY_BATCH), ("exact", "exact", "work-exact", None),
                ("fast", "fast", "work-fast", None)]
        if with_again:
            plan.append(("fast_again", "fast", "work-fast", None))
        for name, search, folder, batch_size in plan:
            work = tmp / folder
            if not work.exists():
                shutil.copytree(shared, work)
            load = os.getloadavg()[0]
            t = time.perf_counter()
            config, result = search_config(handle, data, "palettize", budget, workdir=work, max_images=max_images,
                                           reuse=search == "fast", search=search,  # the cold one stores its stage
                                           batch_size=batch_size)
            seconds = time.perf_counter() - t
            package = tmp / f"{name}.mlpackage"
            compress(handle, config_from_dict(config), package, context=CompressContext(handle=handle, workdir=work))
            measured = evaluate_package(handle, package, data, reference=reference.reference_outputs())
            runs[name] = {"seconds": round(seconds, 2), "evaluations": result.evaluations, "chosen": result.chosen,
                          "batch_size": batch_size or "auto",
                          "search": result.search, "reused_single_op": result.reused_single_op,
                          "bytes": _bytes_on_disk(package), "subset_meets_budget": result.subset["meets_budget"],
                          "subset_images": result.subset["images"],
                          "single_op_images": result.subset.get("single_op_images"),
                          "part_evaluations": result.subset.get("part_evaluations", 0),
                          "subset_measured": {k: result.subset["measured"][k] for k in ("top1", "agreement", "snr_db")},
                          "full_top1": measured.top1, "full_agreement": measured.agreement,
                          "full_meets_budget": budget.met(full.measurement(measured), full_baseline),
                          "load_at_start": round(load, 2), "config": config}
            print(f"{model} {name}: {seconds:.1f} s, {result.evaluations} evaluations, {runs[name]['bytes']:,} B, "
                  f"{result.chosen}, subset meets budget {result.subset['meets_budget']}, "
                  f"full meets budget {runs[name]['full_meets_budget']}", file=sys.stderr, flush=True)
    out["runs"] = runs
    out["ratio_fast_vs_today"] = runs["fast"]["seconds"] / runs["today"]["seconds"]
    out["ratio_fast_vs_exact"] = runs["fast"]["seconds"] / runs["exact"]["seconds"]
    out["ratio_exact_vs_today"] = runs["exact"]["seconds"] / runs["today"]["seconds"]
    if with_again:
        out["ratio_again_vs_today"] = runs["fast_again"]["seconds"] / runs["today"]["seconds"]
    out["fast_no_larger"] = runs["fast"]["bytes"] <= runs["today"]["bytes"]
    out["fast_within_budget"] = runs["fast"]["subset_meets_budget"] and runs["fast"]["full_meets_budget"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist_cnn,dog_mobilenetv2")
    parser.add_argument("--max-images", type=int, help="search subset (default: mnist_cnn 300, dog_mobilenetv2 2000, "
                                                       "i.e. all its 75 images)")
    parser.add_argument("--quick", action="store_true", help="mnist_cnn only, 300 images")
    parser.add_argument("--no-again", action="store_true", help="skip the fast re-run reading the stored stage")
    parser.add_argument("--out", type=Path, default=RESULTS / "mixed_speed.json")
    args = parser.parse_args(argv)
    models = ["mnist_cnn"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = []
    for m in models:
        images = 300 if args.quick else (args.max_images or MAX_IMAGES.get(m, 2000))
        results.append(bench(m, images, with_again=not args.no_again))
        args.out.parent.mkdir(parents=True, exist_ok=True)  # written after each model, so a long run keeps its rows
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "started": started,
                                        "platform": platform.platform(), "cpus": os.cpu_count(),
                                        "results": results}, indent=2) + "\n")
    for r in results:
        runs = r["runs"]
        print(f"{r['model']}: fast cold search {r['ratio_fast_vs_today']:.3f}x of today's search's time "
              f"({runs['fast']['seconds']} vs {runs['today']['seconds']} s; {runs['fast']['evaluations']} vs "
              f"{runs['today']['evaluations']} evaluations), {r['ratio_fast_vs_exact']:.3f}x of the exact search "
              f"with the new batching ({runs['exact']['seconds']} s); answer no larger: {r['fast_no_larger']} "
              f"({runs['fast']['bytes']:,} vs {runs['today']['bytes']:,} B); within budget: {r['fast_within_budget']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
