"""`compress-lab mixed MODEL --data DIR --compression palettize --budget-top1-drop 1` (or --budget-agreement 0.99):
the smallest per-op mix within an accuracy budget; or `--budget-bytes N` / `--budget-bits-per-weight B`:
the most accurate mix within a size budget (checked on the real package, in bytes on disk); or
`--budget-metric NAME=VALUE[%]`: any metric of the model's task at most VALUE (or VALUE percent) worse than
the uncompressed model, in the metric's own direction (`--budget-metric perplexity=5%`, `--budget-metric mrr=0.01`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from compress_lab.analysis.compressors import SEARCH_COMPRESSIONS


def add_arguments(parser) -> None:
    from compress_lab.cli import add_model_arguments
    add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True,
                        help="validation data: what the model's task reads (an image folder, an .npz source)")
    parser.add_argument("--compression", "--family", dest="compression", choices=SEARCH_COMPRESSIONS,
                        default="palettize", help="how the ops are compressed (--family: the name before 2026-12)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-top1-drop", type=float, metavar="POINTS", help="max top-1 drop in percentage points")
    budget.add_argument("--budget-agreement", type=float, metavar="FRACTION", help="min top-1 agreement, e.g. 0.99")
    budget.add_argument("--budget-metric", metavar="NAME=VALUE[%]",
                        help="a metric of the model's task (or a user metric) at most VALUE worse than the uncompressed "
                             "model, in its own direction and unit; VALUE% means percent of the baseline, e.g. "
                             "perplexity=5%% or mrr=0.01")
    budget.add_argument("--budget-bytes", type=int, metavar="BYTES",
                        help="size budget: the most accurate mix of at most BYTES on disk (the .mlpackage)")
    budget.add_argument("--budget-bits-per-weight", type=float, metavar="BITS",
                        help="size budget: the most accurate mix of at most BITS bits per weight (weights file)")
    parser.add_argument("--max-images", type=int, default=2000, help="samples used by the search (evenly spaced)")
    parser.add_argument("--search", choices=("fast", "exact"), default="fast",
                        help="fast (default): the lab's exact k-means and two measurements per op, its other levels "
                             "predicted from their weight error, trials screened on the most fragile samples; exact: "
                             "every op measured alone at every level with coremltools' k-means (the first algorithm)")
    parser.add_argument("--single-op-samples", type=int, metavar="N",
                        help="fast search: measure single ops on at most N of the search's samples (default: all)")
    parser.add_argument("--out", type=Path, help="where to write the chosen .mlpackage (default: WORKDIR/mixed.mlpackage)")
    parser.add_argument("--workdir", type=Path, default=Path(".lab-work"))
    parser.add_argument("--sweep", type=Path, metavar="SPEC.toml",
                        help="add the answer to this sweep as a 'mixed' point (measured like its other points)")
    parser.add_argument("--store", type=Path, help="the sweep's store folder (default: the sweep's default)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="measure the single-op stage again even if WORKDIR holds one of an earlier search on the "
                             "same model, data and levels (today's behaviour before reuse)")
    parser.add_argument("--export-config", type=Path, metavar="FILE.yaml",
                        help="also write the chosen assignment as a coremltools OptimizationConfig (.yaml or .json, "
                             "with op_name_configs) to apply with ct.optimize.coreml.* in your own pipeline")
    parser.add_argument("--json", action="store_true")


def budget_from_args(args):
    from compress_lab.analysis.mixed import Budget
    from compress_lab.errors import ConfigError
    if getattr(args, "budget_metric", None):
        name, sep, value = args.budget_metric.partition("=")
        relative = value.strip().endswith("%")
        try:
            number = float(value.strip().rstrip("%"))
        except ValueError:
            number = None
        if not sep or number is None:
            raise ConfigError(f"--budget-metric {args.budget_metric!r} must be NAME=VALUE or NAME=VALUE%, e.g. "
                              "perplexity=5% (at most 5% above the uncompressed model) or mrr=0.01")
        return Budget(name.strip(), number, relative=relative)
    for metric, value in (("top1_drop", args.budget_top1_drop), ("agreement", args.budget_agreement),
                          ("bytes", args.budget_bytes), ("bits_per_weight", args.budget_bits_per_weight)):
        if value is not None:
            return Budget(metric, value)
    raise AssertionError("argparse requires one budget")


def run(args) -> int:
    from compress_lab.analysis.mixed import Budget
    from compress_lab.analysis.mixed_run import run_mixed
    from compress_lab.cli import load_model_from_args

    handle = load_model_from_args(args)
    budget = budget_from_args(args)
    if args.sweep:
        return _add_to_sweep(args, handle, budget)
    out = args.out or args.workdir / "mixed.mlpackage"
    outcome = run_mixed(handle, args.data, args.compression, budget, out, workdir=args.workdir, max_images=args.max_images,
                        progress=_progress, reuse=not args.no_reuse, search=args.search,
                        single_op_samples=args.single_op_samples)
    if args.export_config:
        _write_config(outcome["coreml_config"], args.export_config)
    if args.json:
        print(json.dumps(outcome, indent=2, default=str))
        return 0
    print()
    verified = outcome["verified"]
    print(f"budget: {budget.describe()}; search chose {outcome['search']['chosen']} "
          f"({outcome['search']['search']} search, {outcome['search']['evaluations']} evaluations, "
          f"{outcome['search']['elapsed_s']:.1f}s"
          + (", single-op stage reused from an earlier search" if outcome['search']['reused_single_op'] else "") + ")")
    print(f"config: {json.dumps(outcome['config'])}")
    print(f"wrote {outcome['path']}: {verified['bytes']:,} bytes, {verified['bits_per_weight']:.2f} bits per weight; "
          f"full validation: {_measured(verified)}, meets budget: {verified['meets_budget']}")
    return 0


def _measured(verified: dict) -> str:
    if verified.get("top1") is not None or verified.get("agreement") is not None:
        return f"top-1 {verified['top1']}, agreement {verified['agreement']}"
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted((verified.get("values") or {}).items()))


def _add_to_sweep(args, handle, budget) -> int:
    from compress_lab.analysis.mixed_run import search_config
    from compress_lab.sweep.add_point import add_point
    from compress_lab.sweep.runner import default_store_folder
    from compress_lab.sweep.spec import load_spec

    spec = load_spec(args.sweep)
    store = args.store or default_store_folder(args.sweep, spec)
    config, result = search_config(handle, args.data, args.compression, budget, workdir=args.workdir,
                                   max_images=args.max_images, progress=_progress, reuse=not args.no_reuse,
                                   search=args.search, single_op_samples=args.single_op_samples)
    if args.export_config:
        from compress_lab.analysis.mixed_run import coreml_config_of
        _write_config(coreml_config_of(handle, config, workdir=args.workdir), args.export_config)
    run = add_point(spec, store, config, family="mixed" if result.chosen == "mixed" else "post_training",
                    label=f"mixed {args.compression} ({budget.describe()})" if result.chosen == "mixed" else None)
    if args.json:
        print(json.dumps({"search": result.to_dict(), "run": run.to_dict()}, indent=2, default=str))
        return 0
    print()
    print(f"search chose {result.chosen} in {result.elapsed_s:.1f}s; added run {run.run_id} ({run.state}) to {store}")
    if run.state == "COMPLETE":
        print(f"top-1 {run.metrics.get('top1')}, agreement {run.metrics.get('agreement')}, {run.sizes.get('bytes'):,} bytes")
    else:
        print(f"error: {run.error}")
    return 0 if run.state == "COMPLETE" else 1


def _write_config(config_dict: dict, path: Path) -> None:
    from compress_lab.analysis.coreml_config import usage, write_config
    write_config(config_dict, path)
    print(f"\nwrote the coremltools optimization config {path}; apply it with:\n{usage(config_dict, path)}",
          file=sys.stderr)


def _progress(stage: str, done: int, total: int) -> None:
    print(f"\r{stage}: {done}/{total}        ", end="", file=sys.stderr, flush=True)
