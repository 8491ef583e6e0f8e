"""`compress-lab results [--store DIR] [--sweep ID] [--json]`: one row per run of a sweep, and
with a budget the answer: `--budget-top1-drop POINTS` / `--budget-agreement FRACTION` (the
smallest run within that accuracy) or `--budget-bytes N` / `--budget-ratio X` /
`--budget-bits-per-weight B` (the most accurate run within that size)."""

from __future__ import annotations

import json
import sys

from compress_lab.analysis.table import run_row
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
    }


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "run_id":
        return value[:12]
    if column in ("top1", "top5", "agreement"):
        return f"{value:.4f}"
    if column == "size_bytes":
        return f"{value:,}"
    if column == "compression_ratio":
        return f"{value:.2f}x"
    if column == "seconds":
        return f"{value:.1f}"
    if column == "artifact":
        return str(value)  # the full path: it is what a user copies
    return str(value)[:60]


def _settings(row: dict) -> str:
    """The config as the run's label shows it: only the settings that differ from the defaults."""
    label, technique = row.get("label") or "", row.get("technique") or ""
    return (label[len(technique):].strip() if label.startswith(technique) else label) or "(defaults)"


def text_table(rows: list[dict]) -> str:
    cells = [[_settings(r) if c == "config" else _cell(c, r.get(c)) for c in TEXT_COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(TEXT_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(TEXT_COLUMNS, widths))]
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
    budget.add_argument("--budget-bytes", type=int, metavar="BYTES",
                        help="answer: the most accurate run of at most BYTES on disk")
    budget.add_argument("--budget-ratio", type=float, metavar="X",
                        help="answer: the most accurate run at least X times smaller than the fp16 package")
    budget.add_argument("--budget-bits-per-weight", type=float, metavar="BITS",
                        help="answer: the most accurate run of at most BITS bits per weight")
    parser.add_argument("--metric", choices=("top1", "top5", "agreement", "snr_db"),
                        help="what 'most accurate' means for a size budget (default: top1 when the data is "
                             "labelled, else agreement)")


def budget_answer(args, table_rows: list[dict]) -> dict | None:
    """The run that answers the budget given on the command line (None when none was given):
    {"budget": words, "kind": "accuracy" | "size", "run": row or None}."""
    from compress_lab.analysis.budgets import SizeBudget, accuracy_threshold, best_within_size, smallest_within_accuracy
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
    for key, value in (("bytes", args.budget_bytes), ("ratio_fp16", args.budget_ratio),
                       ("bits_per_weight", args.budget_bits_per_weight)):
        if value is not None:
            budget = SizeBudget(key, value)
            labelled = any(r.get("top1") is not None for r in table_rows if r.get("state") == "COMPLETE")
            metric = args.metric or ("top1" if labelled else "agreement")
            best = best_within_size(table_rows, budget, metric)
            return {"budget": budget.describe(), "kind": "size", "metric": metric, "run": best}
    return None


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
               "columns": list(COLUMNS), "runs": [{c: r[c] for c in COLUMNS} for r in rows]}
        if answer is not None:
            run = answer["run"]
            out["answer"] = dict(answer, run=None if run is None else {c: by_id[run["run_id"]][c] for c in COLUMNS})
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
    values = ", ".join(f"{c} {_cell(c, row[c])}" for c in ("top1", "agreement") if row[c] is not None)
    return (f"{what} within {answer['budget']}: {row['run_id'][:12]} {row['label']}, {row['size_bytes']:,} bytes, "
            f"{_cell('compression_ratio', row['compression_ratio'])} vs fp16, {values}; artifact {row['artifact']}")
