"""`compress-lab results [--store DIR] [--sweep ID] [--json]`: one row per run of a sweep, and
with a budget the answer: `--budget-top1-drop POINTS` / `--budget-agreement FRACTION` /
`--budget-metric NAME=VALUE[%]` (the smallest run within that accuracy) or `--budget-bytes N` / `--budget-ratio X` /
`--budget-bits-per-weight B` (the most accurate run within that size)."""

from __future__ import annotations

import json
import sys

from compress_lab.analysis.table import metric_columns, run_row
from compress_lab.errors import ConfigError
from compress_lab.export import find_mlpackage

COLUMNS = ("run_id", "workflow", "technique", "config", "status", "top1", "top5", "agreement", "size_bytes",
           "compression_ratio", "compression_ratio_fp32", "seconds", "error", "artifact")
TEXT_COLUMNS = ("run_id", "workflow", "technique", "config", "status", "top1", "top5", "agreement", "size_bytes",
                "compression_ratio", "seconds", "error", "artifact")


def result_row(store_folder, run) -> dict:
    row = run_row(run)
    artifact = None
    if run.state == "COMPLETE" and run.artifact_path:
        try:
            artifact = str(find_mlpackage(store_folder, run.artifact_path).resolve())
        except Exception:  # a package deleted by hand: the row says so rather than failing the listing
            artifact = None
    return {
        "run_id": run.run_id, "workflow": run.family, "technique": run.technique, "config": run.config,
        "status": run.state, "top1": row["top1"], "top5": row["top5"], "agreement": row["agreement"],
        "size_bytes": row["bytes"], "compression_ratio": row["ratio_fp16"], "compression_ratio_fp32": row["ratio_fp32"],
        "seconds": row["total_s"], "error": row["error"], "artifact": artifact, "label": row["label"],
        # the task's own and a user metric's values (mae, retrieval_top1, raw_pitch_accuracy, ...) and the
        # fidelity per output (cosine, psnr_db, ...), by column name
        "metrics": {c: row.get(c) for c in row.get("_metric_columns", ())},
        "_value_columns": list(row.get("_value_columns", ())),
    }


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "run_id":
        return value[:12]
    if column == "size_bytes":
        return f"{value:,}"
    if column == "compression_ratio":
        return f"{value:.2f}x"
    if column == "seconds":
        return f"{value:.1f}"
    if column == "artifact":
        return str(value)  # the full path: it is what a user copies
    if column in ("top1", "top5", "agreement") or isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)[:60]


def _settings(row: dict) -> str:
    """The config as the run's label shows it: only the settings that differ from the defaults."""
    label, technique = row.get("label") or "", row.get("technique") or ""
    return (label[len(technique):].strip() if label.startswith(technique) else label) or "(defaults)"


def text_table(rows: list[dict]) -> str:
    """One line per run. Beside top-1/agreement: the task's own metrics (and a user metric's
    values) and the cosine fidelity, for the sweeps that have them."""
    values = list(dict.fromkeys(c for r in rows for c in r.get("_value_columns", ())))
    fidelity = [c for c in ("cosine",) if any((r.get("metrics") or {}).get(c) is not None for r in rows)]
    extra = values[:6] + fidelity
    at = TEXT_COLUMNS.index("agreement") + 1
    columns = TEXT_COLUMNS[:at] + tuple(extra) + TEXT_COLUMNS[at:]
    unmeasured = {c for c in ("top1", "top5", "agreement") if all(r.get(c) is None for r in rows)}
    columns = tuple(c for c in columns if c not in unmeasured)  # e.g. no top-1 for a pitch tracker

    def value(r, c):
        return (r.get("metrics") or {}).get(c) if c in extra else r.get(c)

    cells = [[_settings(r) if c == "config" else _cell(c, value(r, c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--store", help="the sweep's store folder (default: the one store under the current folder)")
    parser.add_argument("--sweep", help="sweep id (default: the newest sweep in the store)")
    parser.add_argument("--json", action="store_true", help="print every column of every run as JSON")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-top1-drop", type=float, metavar="POINTS",
                        help="answer: the smallest run at most POINTS of top-1 below the uncompressed model")
    budget.add_argument("--budget-agreement", type=float, metavar="FRACTION",
                        help="answer: the smallest run with at least this top-1 agreement, e.g. 0.99")
    budget.add_argument("--budget-metric", metavar="NAME=VALUE[%]",
                        help="answer: the smallest run at most VALUE worse than the uncompressed model on a metric "
                             "of the sweep (the task's, a user metric's or a fidelity measure), in its own direction "
                             "and unit; VALUE%% means percent of the baseline, e.g. perplexity=5%% or mae=0.01")
    budget.add_argument("--budget-bytes", type=int, metavar="BYTES",
                        help="answer: the most accurate run of at most BYTES on disk")
    budget.add_argument("--budget-ratio", type=float, metavar="X",
                        help="answer: the most accurate run at least X times smaller than the fp16 package")
    budget.add_argument("--budget-bits-per-weight", type=float, metavar="BITS",
                        help="answer: the most accurate run of at most BITS bits per weight")
    parser.add_argument("--metric",
                        help="what 'most accurate' means for a size budget: top1, agreement, snr_db or any metric "
                             "of the sweep (e.g. mae, raw_pitch_accuracy, cosine; default: top1 when the data "
                             "is labelled, else the task's first metric, else agreement)")


def budget_answer(args, table_rows: list[dict]) -> dict | None:
    """The run that answers the budget given on the command line (None when none was given):
    {"budget": words, "kind": "accuracy" | "size", "run": row or None}."""
    from compress_lab.analysis.budgets import (SizeBudget, accuracy_threshold, best_within_size, lower_is_better,
                                               metric_threshold, parse_metric_budget, smallest_within_accuracy)
    if args.budget_top1_drop is not None:
        if not 0 <= args.budget_top1_drop <= 100:
            raise ConfigError(f"--budget-top1-drop {args.budget_top1_drop} must be between 0 and 100 points")
        threshold = accuracy_threshold(table_rows, "top1", drop=args.budget_top1_drop / 100)
        if threshold is None:
            raise ConfigError("--budget-top1-drop needs an uncompressed baseline with top-1 (a labelled validation "
                              "folder); use --budget-agreement instead")
        best = smallest_within_accuracy(table_rows, "top1", threshold - 1e-12)
        return {"budget": f"top-1 drop <= {args.budget_top1_drop:g} points", "kind": "accuracy", "run": best}
    if args.budget_agreement is not None:
        if not 0 < args.budget_agreement <= 1:
            raise ConfigError(f"--budget-agreement {args.budget_agreement} must be a fraction in (0, 1], e.g. 0.99")
        best = smallest_within_accuracy(table_rows, "agreement", args.budget_agreement)
        return {"budget": f"agreement >= {args.budget_agreement:g}", "kind": "accuracy", "run": best}
    if args.budget_metric is not None:
        name, value, relative = parse_metric_budget(args.budget_metric)
        _check_metric(name, table_rows, "--budget-metric")
        threshold = metric_threshold(table_rows, name, value, relative)
        if threshold is None:
            raise ConfigError(f"--budget-metric {args.budget_metric}: the sweep has no finished uncompressed baseline "
                              f"with {name} to measure the budget from; run the sweep's baselines first")
        worse = "above" if lower_is_better(name) else "below"
        amount = f"{value:g}%" if relative else f"{value:g}"
        best = smallest_within_accuracy(table_rows, name, threshold)
        return {"budget": f"{name} at most {amount} {worse} the uncompressed model ({threshold:.6g})",
                "kind": "accuracy", "metric": name, "run": best}
    for key, value in (("bytes", args.budget_bytes), ("ratio_fp16", args.budget_ratio),
                       ("bits_per_weight", args.budget_bits_per_weight)):
        if value is not None:
            budget = SizeBudget(key, value)
            metric = args.metric or _default_metric(table_rows)
            _check_metric(metric, table_rows, "--metric")
            best = best_within_size(table_rows, budget, metric)
            return {"budget": budget.describe(), "kind": "size", "metric": metric, "run": best}
    return None


def _default_metric(rows: list[dict]) -> str:
    if any(r.get("top1") is not None for r in rows if r.get("state") == "COMPLETE"):
        return "top1"
    values = [c for r in rows for c in r.get("_value_columns", ())]
    return values[0] if values else "agreement"  # the task's primary metric, else fidelity to the float model


def _check_metric(name: str, rows: list[dict], option: str) -> None:
    available = metric_columns(rows)
    if name not in available:
        raise ConfigError(f"{option}: the sweep has no metric {name!r}; its runs measure {available}")


def run(args) -> int:
    from compress_lab.store import open_store
    from compress_lab.store.locate import find_store_folder, pick_sweep

    folder = find_store_folder(args.store)
    store = open_store(folder)
    sweep = pick_sweep(store, args.sweep)
    runs = store.list_runs(sweep.sweep_id)
    rows = [result_row(folder, r) for r in runs]
    answer = budget_answer(args, [run_row(r) for r in runs])
    by_id = {r["run_id"]: r for r in rows}
    if args.json:
        out = {"store": str(folder.resolve()), "sweep_id": sweep.sweep_id, "sweep": sweep.name,
               "columns": list(COLUMNS), "runs": [{c: r[c] for c in (*COLUMNS, "metrics")} for r in rows]}
        if answer is not None:
            run = answer["run"]
            out["answer"] = dict(answer, run=None if run is None else {c: by_id[run["run_id"]][c] for c in (*COLUMNS, "metrics")})
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"sweep {sweep.name} ({sweep.sweep_id}) in {folder}: {len(rows)} runs", file=sys.stderr)
    print(text_table(rows))
    if answer is not None:
        print()
        print(answer_line(answer, by_id))
    return 0


def answer_line(answer: dict, by_id: dict) -> str:
    run = answer["run"]
    if run is None:
        return f"no finished compressed run within {answer['budget']}"
    row = by_id[run["run_id"]]
    what = "smallest run" if answer["kind"] == "accuracy" else f"most accurate run ({answer['metric']})"
    shown = [(c, row[c]) for c in ("top1", "agreement") if row[c] is not None]
    if answer.get("metric") not in (None, "top1", "agreement"):
        shown.insert(0, (answer["metric"], (row.get("metrics") or {}).get(answer["metric"], row.get(answer["metric"]))))
    values = ", ".join(f"{c} {_cell(c, v)}" for c, v in shown if v is not None)
    return (f"{what} within {answer['budget']}: {row['run_id'][:12]} {row['label']}, {row['size_bytes']:,} bytes, "
            f"{_cell('compression_ratio', row['compression_ratio'])} vs fp16, {values}; artifact {row['artifact']}")
