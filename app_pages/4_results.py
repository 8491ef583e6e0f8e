"""Results: accuracy against size for every run of a sweep, post-training and
training-time side by side, with the Pareto frontier and each run's details."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from compress_lab.analysis.pareto import smallest_meeting_budget
from compress_lab.analysis.table import AXIS_LABELS, runs_table
from compress_lab.plots import bar_data, bar_figure, confusion_data, confusion_figure, tradeoff_data, tradeoff_figure
from compress_lab_app.edge import error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.fmt import family_name, human_bytes, human_seconds
from compress_lab_app.sweeps import choose_sweep, open_lab_store

X_AXES = ("bytes", "ratio_fp16", "ratio_fp32", "bits_per_weight")
Y_AXES = ("top1", "top5", "agreement", "snr_db")
FRACTION_AXES = ("top1", "top5", "agreement")
TABLE_COLUMNS = ("label", "family", "state", "top1", "top5", "agreement", "snr_db", "bytes", "ratio_fp16",
                 "ratio_fp32", "bits_per_weight", "total_s", "error", "run_id")


def tradeoff(rows: list[dict], runs: dict) -> str | None:
    left, right = st.columns(2)
    x = left.selectbox("x axis", X_AXES, format_func=lambda a: AXIS_LABELS.get(a, a), key="results.x")
    y = right.selectbox("y axis", Y_AXES, format_func=lambda a: AXIS_LABELS.get(a, a), key="results.y")
    data = tradeoff_data(rows, x, y)
    if not data["series"] and not data["baselines"]:
        st.info(f"No finished run has both {x} and {y} yet.")
        return None
    best = budget_answer(rows)
    figure = with_config_hover(tradeoff_figure(data, highlight_run_id=best and best["run_id"]), runs)
    if y in FRACTION_AXES:  # accuracies: never above 1, and a flat line of 1.0 does not stretch to 2
        values = [r[y] for pts in data["series"].values() for r in pts] + [r[y] for r in data["baselines"]]
        low = min(values)
        figure.update_yaxes(range=[max(0.0, low - max(0.005, (1 - low) * 0.5)), 1.005])
    if x in ("bytes", "weight_bytes"):
        figure.update_xaxes(tickformat="~s")
    event = st.plotly_chart(figure, key="results.plot", on_select="rerun", selection_mode="points")
    names = {"post_training": "post-training", "training_time": "training-time"}
    st.caption("Series: " + ", ".join(f"{names.get(f, f)} ({len(p)} runs)" for f, p in data["series"].items())
               + f" · Pareto frontier: {len(data['frontier'])} runs · marker shape = technique. Click a point for its details.")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    for point in points:
        run_id = point.get("customdata")
        if isinstance(run_id, list):
            run_id = run_id[0] if run_id else None
        if run_id in runs:
            return run_id
    return None


def budget_answer(rows: list[dict]) -> dict | None:
    """The smallest run within the user's accuracy budget, highlighted on the plot."""
    left, right, answer = st.columns([2, 1, 3])
    kind = left.selectbox("Accuracy budget", ("top-1 drop at most (points)", "agreement at least"),
                          key="results.budget_kind")
    if kind.startswith("top-1"):
        value = right.number_input("points", min_value=0.0, max_value=100.0, value=1.0, step=0.5, key="results.budget_top1")
        best = smallest_meeting_budget(rows, "top1_drop", value)
    else:
        value = right.number_input("fraction", min_value=0.0, max_value=1.0, value=0.99, step=0.005, format="%.3f",
                                   key="results.budget_agreement")
        best = smallest_meeting_budget(rows, "agreement", value)
    if best is None:
        answer.info("No finished compressed run meets this budget.")
    else:
        answer.success(f"Smallest within budget: **{best['label']}**, {human_bytes(best['bytes'])}"
                       + (f", top-1 {best['top1']:.2%}" if best.get("top1") is not None else "")
                       + (f", agreement {best['agreement']:.2%}" if best.get("agreement") is not None else ""))
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
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
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
        compressed = [i for i in ids if runs[i].family != "baseline"]
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
