"""Mixed precision under an accuracy budget vs the best uniform setting of a standard sweep.

For each sample model: a sweep of uniform palettization (nbits 8/6/4/3/2/1, k-means) is
run and measured; the smallest uniform point within the budget is picked from it; then
the mixed-precision search runs and its answer is added to the same sweep as a
"mixed" point, measured by the same machinery. Both sizes are bytes on disk.

    .venv/bin/python benchmarks/mixed_vs_uniform.py [--models mnist_cnn,dog_mobilenetv2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGETS = {"mnist_cnn": ("top1_drop", 1.0), "dog_mobilenetv2": ("agreement", 0.99)}


def within(run_row: dict, baseline_top1: float | None, metric: str, value: float) -> bool:
    if metric == "agreement":
        return (run_row.get("agreement") or 0) >= value
    return run_row.get("top1") is not None and (baseline_top1 - run_row["top1"]) * 100 <= value + 1e-9


def bench(model: str, store: Path, workers: int) -> dict:
    from compress_lab.analysis.mixed import Budget
    from compress_lab.analysis.mixed_run import search_config
    from compress_lab.analysis.table import runs_table
    from compress_lab.store.base import reference_baseline
    from compress_lab.models import load_model
    from compress_lab.sweep.add_point import add_point
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import SweepSpec

    samples = ROOT / "sample_models" / model
    spec = SweepSpec.from_dict({
        "model": {"source": str(samples)},
        "data": {"validation": str(samples / "val")},
        "run": {"name": f"uniform-{model}", "workers": workers},
        "grid": [{"technique": "palettize", "nbits": [8, 6, 4, 3, 2, 1]}],
    })
    metric, value = BUDGETS[model]
    t = time.perf_counter()
    result = run_sweep(spec, store)
    sweep_s = time.perf_counter() - t
    from compress_lab.store import open_store
    rows = runs_table(open_store(store).list_runs(result.sweep_id))
    baseline = reference_baseline(rows, ("pytorch",))
    uniform = [r for r in rows if r["family"] == "post_training" and r["state"] == "COMPLETE"]
    passing = [r for r in uniform if within(r, baseline["top1"], metric, value)]
    best_uniform = min(passing, key=lambda r: r["bytes"]) if passing else None

    handle = load_model(model)
    t = time.perf_counter()
    config, search = search_config(handle, samples / "val", "palettize", Budget(metric, value),
                                   workdir=store / "mixed-work", max_images=2000)
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    run = add_point(spec, store, config, family="mixed" if search.chosen == "mixed" else "post_training",
                    label=f"mixed palettize ({Budget(metric, value).describe()})")
    point_s = time.perf_counter() - t
    mixed_row = runs_table([run])[0]
    return {
        "model": model, "budget": f"{metric} {value}", "baseline_top1": baseline["top1"],
        "uniform_points": [{k: r[k] for k in ("label", "bytes", "top1", "agreement")} for r in uniform],
        "best_uniform": best_uniform and {k: best_uniform[k] for k in ("label", "bytes", "top1", "agreement")},
        "mixed": {k: mixed_row[k] for k in ("label", "bytes", "top1", "agreement", "state")},
        "mixed_meets_budget": within(mixed_row, baseline["top1"], metric, value),
        "mixed_chosen": search.chosen, "search_evaluations": search.evaluations,
        "assignment_levels": {lvl: sum(1 for v in search.assignment.values() if v == lvl)
                              for lvl in sorted(set(search.assignment.values()))},
        "sweep_s": sweep_s, "search_s": search_s, "mixed_point_s": point_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist_cnn,dog_mobilenetv2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", type=Path, help="store folder (default: a temporary folder)")
    args = parser.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            store = (args.store or Path(tmp)) / model
            out.append(bench(model, store, args.workers))
            print(json.dumps(out[-1], indent=2), flush=True)
    print("\n| model | budget | best uniform (bytes, top-1, agreement) | mixed (bytes, top-1, agreement) | mixed <= uniform | search s |")
    print("|---|---|---|---|---|---:|")
    for r in out:
        u, m = r["best_uniform"], r["mixed"]
        ustr = f"{u['label']}: {u['bytes']:,}, {u['top1']}, {u['agreement']:.4f}" if u else "none within budget"
        mstr = f"{m['bytes']:,}, {m['top1']}, {m['agreement']:.4f}" if m["bytes"] else m["state"]
        ok = bool(u and m["bytes"] and m["bytes"] <= u["bytes"] and r["mixed_meets_budget"])
        print(f"| {r['model']} | {r['budget']} | {ustr} | {mstr} | {'yes' if ok else 'no'} | {r['search_s']:.1f} |")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "mixed_vs_uniform.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
