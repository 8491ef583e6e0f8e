"""A self-contained report of a sweep: HTML (interactive plots, table, configs,
environment), CSV and JSON. Also the `compress-lab report` command."""

from __future__ import annotations

import html
import json
import platform
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from compress_lab.analysis.pareto import pareto_front
from compress_lab.analysis.table import runs_table
from compress_lab.analysis.budgets import accuracy_threshold
from compress_lab.store.base import is_baseline
from compress_lab.plots import (figure_images, payoff_data, payoff_summary, payoff_table,
                                tradeoff_data, tradeoff_figure)

VERSIONED_PACKAGES = ["compress-lab", "coremltools", "torch", "numpy", "scikit-learn", "streamlit", "plotly", "pillow"]


def environment() -> dict[str, str]:
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            env[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            env[name] = "not installed"
    return env


def results_csv(runs) -> str:
    """The runs of a sweep as CSV (one row per run, the columns of export.CSV_COLUMNS first)."""
    from compress_lab.export import results_csv as rows_csv
    return rows_csv(runs_table(runs))


def results_json(sweep, runs) -> str:
    return json.dumps({"sweep": sweep.to_dict(), "runs": [r.to_dict() for r in runs], "environment": environment()},
                      indent=2, default=str)


def _accuracy_axis(rows: list[dict[str, Any]]) -> str:
    labelled = [r for r in rows if r.get("state") == "COMPLETE" and r.get("top1") is not None]
    return "top1" if labelled else "agreement"


def report_budget(rows: list[dict[str, Any]], y: str) -> tuple[tuple[str, float] | None, str]:
    """The read-out's budget: a top-1 drop of 1 point, or (unlabelled data) agreement 0.99."""
    if y == "top1":
        threshold = accuracy_threshold(rows, "top1", drop=0.01)
        return (None if threshold is None else ("top1", threshold - 1e-12)), "a top-1 drop of 1 point"
    return ("agreement", 0.99), "agreement 0.99"


def tradeoff_figures(rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The Results page's figure (one curve per workflow) against bytes and bits per weight."""
    y = _accuracy_axis(rows)
    return [(x, tradeoff_figure(tradeoff_data(rows, x, y))) for x in ("bytes", "bits_per_weight")]


def payoff_html(rows: list[dict[str, Any]]) -> str:
    y = _accuracy_axis(rows)
    data = tradeoff_data(rows, "bytes", y)
    if not {"post_training", "training_time"} <= set(data["series"]):
        return "<p>The sweep has runs of one workflow only: no comparison of the two.</p>"
    budget, text = report_budget(rows, y)
    payoff = payoff_data(data, budget)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in payoff_summary(payoff, text))
    table = payoff_table(payoff)
    if not table:
        return f"<ul>{lines}</ul><p>The two workflows have no size in common.</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>" for row in table)
    return f"<ul>{lines}</ul><table><tr>{head}</tr>{body}</table>"


def report_html(sweep, runs) -> str:
    rows = runs_table(runs)
    y = _accuracy_axis(rows)
    figures = []
    for _, figure in tradeoff_figures(rows):
        figures.append(figure.to_html(full_html=False, include_plotlyjs=not figures))
    front_ids = {r["run_id"] for r in pareto_front([r for r in rows if r["state"] == "COMPLETE"], "bytes", y)}
    table_rows = []
    for row in sorted(rows, key=lambda r: (not is_baseline(r), r.get("bytes") or 0)):
        cells = [row["label"], row["family"], row["state"], _fmt(row.get("top1")), _fmt(row.get("agreement")),
                 _fmt(row.get("snr_db"), 1), _fmt_int(row.get("bytes")), _fmt(row.get("ratio_fp16"), 2),
                 _fmt(row.get("bits_per_weight"), 2), _fmt(row.get("total_s"), 1),
                 "yes" if row["run_id"] in front_ids else "", row.get("error") or ""]
        table_rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    configs = "".join(
        f"<details><summary>{html.escape(r.label or r.technique)} <code>{r.run_id}</code> ({r.state})</summary>"
        f"<pre>{html.escape(json.dumps({'config': r.config, 'metrics': _short_metrics(r.metrics), 'sizes': _short_sizes(r.sizes), 'timings': r.timings, 'error': r.error}, indent=2, default=str))}</pre></details>"
        for r in runs)
    env_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in environment().items())
    headers = ["run", "family", "state", "top-1", "agreement", "SNR dB", "bytes", "ratio vs fp16", "bits/weight",
               "time s", "Pareto", "error"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>compress lab report: {html.escape(sweep.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}th{{background:#f4f4f4}}pre{{background:#f8f8f8;padding:8px;overflow:auto}}</style>
</head><body>
<h1>compress lab report: {html.escape(sweep.name)}</h1>
<p>Sweep <code>{html.escape(sweep.sweep_id)}</code>, created {time.strftime('%Y-%m-%d %H:%M', time.localtime(sweep.created_at))},
status {html.escape(sweep.status)}; {len(runs)} runs. Every accuracy and size below was measured: sizes are bytes on disk of the
<code>.mlpackage</code>, accuracy and fidelity were measured by running the Core ML program on the validation folder.</p>
<h2>Accuracy vs size</h2><p>One curve per workflow, each its own Pareto frontier: post-training (data-free)
dotted, training-time solid. Marker shape = technique.</p>{''.join(figures)}
<h2>Where training-time pays off</h2>{payoff_html(rows)}
<h2>Runs</h2><table><tr>{''.join(f'<th>{h}</th>' for h in headers)}</tr>{''.join(table_rows)}</table>
<h2>Configurations</h2>{configs}
<h2>Sweep spec</h2><pre>{html.escape(json.dumps(sweep.spec, indent=2, default=str))}</pre>
<h2>Environment</h2><table>{env_rows}</table>
</body></html>"""


def _short_metrics(metrics: dict | None) -> dict | None:
    if not metrics:
        return metrics
    return {k: v for k, v in metrics.items() if k not in ("confusion", "logits")}


def _short_sizes(sizes: dict | None) -> dict | None:
    if not sizes:
        return sizes
    return {k: v for k, v in sizes.items() if k != "per_op"}


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _fmt_int(value) -> str:
    return "" if value is None else f"{int(value):,}"


def write_report(store, sweep_id: str | None, out_dir: str | Path, images: bool = True) -> dict[str, Path]:
    """Write report.html, results.csv and results.json of a sweep into out_dir, and with `images`
    the trade-off figures as PNG and SVG (when a Chromium-based browser is available: see
    plots.figure_images); return the paths written."""
    from compress_lab.store.locate import pick_sweep
    sweep = pick_sweep(store, sweep_id)
    runs = store.list_runs(sweep.sweep_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "report.html", "csv": out_dir / "results.csv", "json": out_dir / "results.json"}
    paths["html"].write_text(report_html(sweep, runs), encoding="utf-8")
    paths["csv"].write_text(results_csv(runs), encoding="utf-8")
    paths["json"].write_text(results_json(sweep, runs), encoding="utf-8")
    if images:
        figures = tradeoff_figures(runs_table(runs))
        jobs = [(figure, fmt) for _, figure in figures for fmt in ("png", "svg")]
        names = [f"tradeoff_{x}.{fmt}" for x, _ in figures for fmt in ("png", "svg")]
        for name, data in zip(names, figure_images(jobs)):
            paths[name] = out_dir / name
            paths[name].write_bytes(data)
    return paths


def add_arguments(parser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="the sweep's store folder (holds results.sqlite)")
    parser.add_argument("--sweep", help="sweep id (default: the newest sweep in the store)")
    parser.add_argument("--out", type=Path, help="output folder (default: STORE/report)")
    parser.add_argument("--no-images", action="store_true",
                        help="skip the PNG/SVG figures (they need a Chromium-based browser)")


def run(args) -> int:
    from compress_lab.plots import export_browser
    from compress_lab.store import open_store
    from compress_lab.store.locate import find_store_folder
    store = open_store(find_store_folder(args.store))
    images = not args.no_images and export_browser() is not None
    paths = write_report(store, args.sweep, args.out or Path(args.store) / "report", images=images)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if not args.no_images and not images:
        from compress_lab.plots import NO_BROWSER
        print(f"no PNG/SVG figures: {NO_BROWSER}", file=sys.stderr)
    return 0
