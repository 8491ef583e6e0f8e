"""`compress-lab results [--store DIR] [--sweep ID] [--json]`: one row per run of a sweep."""

from __future__ import annotations

import json
import sys

from compress_lab.analysis.table import run_row
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


def run(args) -> int:
    from compress_lab.store import open_store
    from compress_lab.store_cli import find_store_folder, pick_sweep

    folder = find_store_folder(args.store)
    store = open_store(folder)
    sweep = pick_sweep(store, args.sweep)
    rows = [result_row(folder, r) for r in store.list_runs(sweep.sweep_id)]
    if args.json:
        print(json.dumps({"store": str(folder.resolve()), "sweep_id": sweep.sweep_id, "sweep": sweep.name,
                          "columns": list(COLUMNS), "runs": [{c: r[c] for c in COLUMNS} for r in rows]},
                         indent=2, default=str))
    else:
        print(f"sweep {sweep.name} ({sweep.sweep_id}) in {folder}: {len(rows)} runs", file=sys.stderr)
        print(text_table(rows))
    return 0
