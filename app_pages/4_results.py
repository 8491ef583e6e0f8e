"""Results: accuracy against size for every run of a sweep, one curve per workflow
(post-training dotted, training-time solid), budgets of accuracy and of size, where
training-time pays off, and each run's details."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from compress_lab.analysis.budgets import SizeBudget, accuracy_threshold, best_within_size, smallest_within_accuracy
from compress_lab.analysis.table import axis_label, lower_is_better, metric_columns, run_row, runs_table
from compress_lab.store.base import REFERENCE_FORMATS, is_baseline, reference_baseline
from compress_lab.plots import (NO_BROWSER, bar_data, bar_figure, confusion_data, confusion_figure, export_browser,
                                figure_images, format_value, payoff_data, payoff_summary, payoff_table, tradeoff_data,
                                tradeoff_figure)
from compress_lab_app.edge import error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.fmt import family_name, human_bytes, human_seconds
from compress_lab_app.sweeps import choose_sweep, open_lab_store

X_AXES = ("bytes", "ratio_fp16", "ratio_fp32", "bits_per_weight")
Y_AXES = ("top1", "top5", "agreement", "snr_db")
FRACTION_AXES = ("top1", "top5", "agreement")
TABLE_COLUMNS = ("label", "family", "state", "top1", "top5", "agreement", "snr_db", "bytes", "ratio_fp16",
                 "ratio_fp32", "bits_per_weight", "total_s", "error", "run_id")


def y_axes(rows: list[dict]) -> list[str]:
    """The task's metrics and fidelity measures the runs have (top-1 first for a classifier)."""
    return metric_columns(rows) or list(Y_AXES)


def tradeoff(rows: list[dict], runs: dict) -> str | None:
    left, right, layout, extra = st.columns([3, 3, 2, 2])
    x = left.selectbox("x axis", X_AXES, format_func=axis_label, key="results.x")
    y = right.selectbox("y axis", y_axes(rows), format_func=axis_label, key="results.y")
    side_by_side = layout.radio("Curves", ("one plot", "side by side"), horizontal=True,
                                key="results.layout") == "side by side"
    overall = extra.checkbox("Overall Pareto frontier", value=False, key="results.overall",
                             help="The frontier over every run, both workflows together (dashed grey).")
    data = tradeoff_data(rows, x, y)
    if not data["series"] and not data["baselines"]:
        st.info(f"No finished run has both {x} and {y} yet.")
        return None
    best, accuracy_budget, budget_text = budget_answer(rows, y)
    within_size = size_answer(rows, y)
    highlights = [(within_size["run_id"], "most accurate within size budget", "#009E73")] if within_size else []
    figure = tradeoff_figure(data, highlight_run_id=best and best["run_id"], overall=overall,
                             side_by_side=side_by_side, highlights=highlights)
    figure = with_config_hover(figure, runs)
    if y in FRACTION_AXES:  # accuracies: never above 1, and a flat line of 1.0 does not stretch to 2
        values = [r[y] for pts in data["series"].values() for r in pts] + [r[y] for r in data["baselines"]]
        low = min(values)
        figure.update_yaxes(range=[max(0.0, low - max(0.005, (1 - low) * 0.5)), 1.005])
    event = st.plotly_chart(figure, key="results.plot", on_select="rerun", selection_mode="points")
    st.caption("Each workflow's curve is its own Pareto frontier: post-training (data-free) dotted, training-time "
               "solid, as in Core ML Tools' guide. "
               + ", ".join(f"{family_name(f)}: {len(p)} runs" for f, p in data["series"].items())
               + " · marker shape = technique. Click a point for its details.")
    payoff_readout(data, accuracy_budget, budget_text)
    downloads(figure, x, y)
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    for point in points:
        run_id = point.get("customdata")
        if isinstance(run_id, list):
            run_id = run_id[0] if run_id else None
        if run_id in runs:
            return run_id
    return None


def payoff_readout(data: dict, accuracy_budget: tuple[str, float] | None, budget_text: str) -> None:
    """Where training-time pays off: the gap at each size both workflows reach, and each
    workflow's smallest run within the accuracy budget."""
    if not {"post_training", "training_time"} <= set(data["series"]):
        return
    payoff = payoff_data(data, accuracy_budget)
    st.markdown("**Where training-time pays off**")
    for line in payoff_summary(payoff, budget_text):
        st.markdown(f"- {line}")
    table_rows = payoff_table(payoff)
    if table_rows:
        st.dataframe(pd.DataFrame(table_rows), hide_index=True, width="stretch", key="results.payoff")
    else:
        st.caption("The two workflows have no size in common yet (every training-time run is smaller than every "
                   "post-training run, or the other way round).")


def downloads(figure, x: str, y: str) -> None:
    """The figure as PNG and SVG (plotly's static export, rendered when clicked) and as HTML."""
    name = f"tradeoff_{y}_vs_{x}"
    left, middle, right, note = st.columns([1, 1, 1, 4])
    right.download_button("HTML", data=figure.to_html(include_plotlyjs="cdn"), file_name=f"{name}.html",
                          mime="text/html", key="results.download_html", on_click="ignore")
    if export_browser() is None:
        note.caption(NO_BROWSER)
        return

    def image(fmt: str):
        return lambda: figure_images([(figure, fmt)])[0]
    left.download_button("PNG", data=image("png"), file_name=f"{name}.png", mime="image/png",
                         key="results.download_png", on_click="ignore")
    middle.download_button("SVG", data=image("svg"), file_name=f"{name}.svg", mime="image/svg+xml",
                           key="results.download_svg", on_click="ignore")


def budget_kinds(rows: list[dict], y: str) -> list[str]:
    """The accuracy budgets the runs can answer: top-1 drop, agreement, and the plotted metric's
    change from the uncompressed model (in its own direction)."""
    kinds = [k for k, column in (("top-1 drop at most (points)", "top1"), ("agreement at least", "agreement"))
             if any(r.get(column) is not None for r in rows)]
    if y not in ("top1", "agreement"):
        kinds.append(RELATIVE_BUDGET)
    return kinds or ["top-1 drop at most (points)"]


RELATIVE_BUDGET = "plotted metric at most % worse than the uncompressed"


def budget_answer(rows: list[dict], y: str = "top1") -> tuple[dict | None, tuple[str, float] | None, str]:
    """The smallest run within the user's accuracy budget, highlighted on the plot; also the
    budget as (metric, threshold) and in words, for the read-out."""
    left, right, answer = st.columns([2, 1, 3])
    kind = left.selectbox("Accuracy budget", budget_kinds(rows, y), key="results.budget_kind")
    if kind == RELATIVE_BUDGET:
        value = right.number_input(f"percent ({axis_label(y)} {'up' if lower_is_better(y) else 'down'})",
                                   min_value=0.0, max_value=1000.0, value=5.0, step=1.0,
                                   key="results.budget_relative")
        reference = reference_baseline(rows) or {}
        base = reference.get(y)
        threshold = None if base is None else accuracy_threshold(rows, y, drop=abs(base) * value / 100)
        budget = None if threshold is None else (y, threshold + (1e-12 if lower_is_better(y) else -1e-12))
        text = f"{axis_label(y)} {'above' if lower_is_better(y) else 'below'} the uncompressed by at most {value:g}%"
    elif kind.startswith("top-1"):
        value = right.number_input("points", min_value=0.0, max_value=100.0, value=1.0, step=0.5, key="results.budget_top1")
        threshold = accuracy_threshold(rows, "top1", drop=value / 100)
        budget = None if threshold is None else ("top1", threshold - 1e-12)
        text = f"a top-1 drop of {value:g} point" + ("" if value == 1 else "s")
    else:
        value = right.number_input("fraction", min_value=0.0, max_value=1.0, value=0.99, step=0.005, format="%.3f",
                                   key="results.budget_agreement")
        budget, text = ("agreement", value), f"agreement {value:g}"
    best = None if budget is None else smallest_within_accuracy(rows, *budget)
    if best is None:
        answer.info("No finished compressed run meets this budget.")
    else:
        answer.success(f"Smallest within budget: **{best['label']}**, {human_bytes(best['bytes'])}"
                       + (f", top-1 {best['top1']:.2%}" if best.get("top1") is not None else "")
                       + (f", agreement {best['agreement']:.2%}" if best.get("agreement") is not None else "")
                       + (f", {axis_label(y)} {format_value(y, best[y])}"
                          if y not in ("top1", "agreement") and best.get(y) is not None else ""))
    return best, budget, text


SIZE_KINDS = {"bytes": "size on disk at most (kB)", "ratio_fp16": "times smaller than fp16, at least",
              "bits_per_weight": "bits per weight at most"}


def size_answer(rows: list[dict], metric: str) -> dict | None:
    """The most accurate run (on the plotted metric) within the user's size budget."""
    left, right, answer = st.columns([2, 1, 3])
    key = left.selectbox("Size budget", tuple(SIZE_KINDS), format_func=SIZE_KINDS.get, key="results.size_kind")
    if key == "bytes":
        reference = reference_baseline(rows, ("fp16", *REFERENCE_FORMATS)) or {}
        # 0.3 of the fp16 package: a 4-bit package with its look-up tables or scales fits
        default = round((reference.get("bytes") or 4_000_000) * 0.3 / 1000, 1)
        value = right.number_input("kB", min_value=0.1, value=float(default), step=10.0, key="results.size_kb")
        budget = SizeBudget("bytes", value * 1000)
    elif key == "ratio_fp16":
        budget = SizeBudget("ratio_fp16", right.number_input("x", min_value=1.0, value=4.0, step=0.5,
                                                             key="results.size_ratio"))
    else:
        budget = SizeBudget("bits_per_weight", right.number_input("bits", min_value=0.1, value=4.5, step=0.5,
                                                                  key="results.size_bits"))
    best = best_within_size(rows, budget, metric)
    if best is None:
        answer.info(f"No finished compressed run is {budget.describe()} (with {axis_label(metric)}).")
    else:
        answer.success(f"Most accurate {budget.describe()}: **{best['label']}**, {human_bytes(best['bytes'])}, "
                       f"{axis_label(metric)} {format_value(metric, best[metric])}")
    return best


def with_config_hover(figure, runs: dict):
    """Hover text with the run's full config, not only its label; baseline labels that
    would sit on top of each other alternate above and below their markers."""
    for trace in figure.data:
        if trace.name == "baseline (uncompressed)" and trace.x is not None:
            trace.textposition = ["top center" if i % 2 == 0 else "bottom center" for i in range(len(trace.x))]
        ids = trace.customdata
        if ids is None:
            continue
        texts = []
        for run_id in ids:
            run = runs.get(run_id[0] if isinstance(run_id, (list, tuple)) else run_id)
            if run is None:
                texts.append("")
                continue
            config = "<br>".join(f"{k} = {json.dumps(v)}" for k, v in (run.config or {}).items())
            texts.append(f"{run.label}<br>{config}")
        trace.text = texts
    return figure


def table(rows: list[dict]) -> None:
    measured = [c for c in metric_columns(rows) if c not in TABLE_COLUMNS]
    at = TABLE_COLUMNS.index("bytes")
    unmeasured = {c for c in ("top1", "top5", "agreement", "snr_db") if all(r.get(c) is None for r in rows)}
    columns = [c for c in (*TABLE_COLUMNS[:at], *measured, *TABLE_COLUMNS[at:]) if c not in unmeasured]
    frame = pd.DataFrame(rows, columns=columns)
    for column in measured:  # numbers (a measure a run lacks is blank, not "None")
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
        **{c: st.column_config.NumberColumn(axis_label(c), format="%.4f") for c in measured},
        "top1": st.column_config.NumberColumn("top-1", format="%.4f"),
        "top5": st.column_config.NumberColumn("top-5", format="%.4f"),
        "agreement": st.column_config.NumberColumn(format="%.4f"),
        "snr_db": st.column_config.NumberColumn("SNR (dB)", format="%.1f"),
        "bytes": st.column_config.NumberColumn("bytes on disk", format="%d"),
        "ratio_fp16": st.column_config.NumberColumn("x vs fp16", format="%.2f"),
        "ratio_fp32": st.column_config.NumberColumn("x vs fp32", format="%.2f"),
        "bits_per_weight": st.column_config.NumberColumn("bits/weight", format="%.2f"),
        "total_s": st.column_config.NumberColumn("time (s)", format="%.1f"),
    })


def detail(runs: dict, preselected: str | None) -> None:
    ids = list(runs)
    if preselected in ids:
        st.session_state["results.run"] = preselected
    elif "results.run" not in st.session_state or st.session_state["results.run"] not in ids:
        compressed = [i for i in ids if not is_baseline(runs[i])]
        st.session_state["results.run"] = (compressed or ids)[0]
    run_id = st.selectbox("Run (or click a point of the plot)", ids, key="results.run",
                          format_func=lambda i: f"{runs[i].label} · {family_name(runs[i].family)}"
                                                f" · {runs[i].state.lower()}")
    run = runs[run_id]
    if run.state == "FAILED":
        st.error(f"This run failed: {run.error}")
        if run.traceback:
            with st.expander("Traceback of the failed run"):
                st.code(run.traceback, language="text")
        return
    if run.state != "COMPLETE":
        st.info(f"This run is {run.state.lower()}.")
        return
    metrics, sizes, timings = run.metrics or {}, run.sizes or {}, run.timings or {}
    cols = st.columns(5)
    cols[0].metric("top-1", _pct(metrics.get("top1")))
    cols[1].metric("agreement", _pct(metrics.get("agreement")))
    cols[2].metric("size on disk", human_bytes(sizes.get("bytes")))
    cols[3].metric("x smaller than fp16", f"{sizes['ratio_fp16']:.2f}" if sizes.get("ratio_fp16") else "?")
    cols[4].metric("time", human_seconds(timings.get("total_s")))
    measured = {axis_label(k): v for k, v in run_row(run).items() if k in set(run_row(run).get("_metric_columns", ()))}
    if measured:
        st.dataframe(pd.DataFrame([{"measure": k, "value": v} for k, v in measured.items()]), hide_index=True,
                     key="results.measures")
    with st.expander("Config"):
        st.json(run.config)
    left, right = st.columns(2)
    per_class = metrics.get("per_class") or {}
    if per_class:
        left.markdown("**Per-class accuracy**")
        figure = bar_figure(bar_data(per_class, descending=False), "class (worst first)", "accuracy")
        figure.update_xaxes(type="category")
        left.plotly_chart(figure, key="results.per_class")
    confusion = metrics.get("confusion") or []
    if confusion:
        right.markdown("**Confusion matrix**")
        figure = confusion_figure(confusion_data(confusion, list(per_class)))
        figure.update_xaxes(type="category")
        figure.update_yaxes(type="category")
        right.plotly_chart(figure, key="results.confusion")


def _pct(value) -> str:
    return "?" if value is None else f"{value:.2%}"


page_setup("Results")
with error_edge("Reading the results"):
    sweep = choose_sweep("results.sweep")
    if sweep is not None:
        store = open_lab_store()
        run_list = store.list_runs(sweep.sweep_id)
        runs = {r.run_id: r for r in run_list}
        rows = runs_table(run_list)
        counts = store.counts(sweep.sweep_id)
        st.caption(" · ".join(f"{n} {state.lower()}" for state, n in counts.items() if n) or "no runs")
        if not rows:
            st.info("This sweep has no runs yet.")
        else:
            clicked = tradeoff(rows, runs)
            st.subheader("All runs")
            table(rows)
            st.subheader("Run details")
            detail(runs, clicked)
