"""Plots are data then figure: pure functions build what is plotted (tested),
others draw the plotly figures."""

from __future__ import annotations

from typing import Any, Sequence

from compress_lab.analysis.pareto import pareto_front
from compress_lab.analysis.table import AXIS_LABELS

FAMILY_NAMES = {"post_training": "post-training", "training_time": "training-time", "mixed": "mixed precision",
                "baseline": "baseline"}
TECHNIQUE_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon",
                     "triangle-down", "hourglass", "bowtie"]


def tradeoff_data(rows: Sequence[dict[str, Any]], x: str, y: str) -> dict[str, Any]:
    """Series per family (completed runs with both values), the baselines, and the Pareto frontier."""
    usable = [r for r in rows if r.get("state") == "COMPLETE" and r.get(x) is not None and r.get(y) is not None]
    series: dict[str, list[dict[str, Any]]] = {}
    for r in usable:
        if r.get("family") != "baseline":
            series.setdefault(r.get("family") or "other", []).append(r)
    baselines = [r for r in usable if r.get("family") == "baseline"]
    compressed = [r for r in usable if r.get("family") != "baseline"]
    return {
        "x": x, "y": y,
        "x_label": AXIS_LABELS.get(x, x), "y_label": AXIS_LABELS.get(y, y),
        "series": {name: sorted(points, key=lambda r: r[x]) for name, points in sorted(series.items())},
        "baselines": baselines,
        "frontier": pareto_front(compressed + baselines, x, y),
    }


def tradeoff_figure(data: dict[str, Any], highlight_run_id: str | None = None):
    import plotly.graph_objects as go

    x, y = data["x"], data["y"]
    fig = go.Figure()
    techniques = sorted({r["technique"] for pts in data["series"].values() for r in pts})
    symbol = {t: TECHNIQUE_SYMBOLS[i % len(TECHNIQUE_SYMBOLS)] for i, t in enumerate(techniques)}
    for family, points in data["series"].items():
        fig.add_trace(go.Scatter(
            x=[p[x] for p in points], y=[p[y] for p in points], mode="markers",
            name=FAMILY_NAMES.get(family, family),
            marker=dict(size=11, symbol=[symbol[p["technique"]] for p in points], line=dict(width=1)),
            text=[p["label"] for p in points], customdata=[p["run_id"] for p in points],
            hovertemplate="<b>%{text}</b><br>" + f"{x}=%{{x}}<br>{y}=%{{y}}<extra>{FAMILY_NAMES.get(family, family)}</extra>"))
    if data["baselines"]:
        b = data["baselines"]
        fig.add_trace(go.Scatter(
            x=[p[x] for p in b], y=[p[y] for p in b], mode="markers+text", name="baseline (uncompressed)",
            marker=dict(size=14, symbol="star", color="black"), text=[p["label"] for p in b], textposition="top center",
            hovertemplate="<b>%{text}</b><br>" + f"{x}=%{{x}}<br>{y}=%{{y}}<extra>baseline</extra>"))
    if len(data["frontier"]) > 1:
        f = data["frontier"]
        fig.add_trace(go.Scatter(x=[p[x] for p in f], y=[p[y] for p in f], mode="lines", name="Pareto frontier",
                                 line=dict(dash="dash", color="gray"), hoverinfo="skip"))
    if highlight_run_id:
        hits = [p for pts in data["series"].values() for p in pts if p["run_id"] == highlight_run_id]
        if hits:
            fig.add_trace(go.Scatter(x=[hits[0][x]], y=[hits[0][y]], mode="markers", name="smallest within budget",
                                     marker=dict(size=22, symbol="circle-open", line=dict(width=3, color="red"))))
    fig.update_layout(xaxis_title=data["x_label"], yaxis_title=data["y_label"], legend_title_text="",
                      margin=dict(l=10, r=10, t=30, b=10), height=480)
    if x in ("bytes", "weight_bytes"):
        fig.update_xaxes(type="log")
    return fig


def confusion_data(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> dict[str, Any]:
    n_rows = len(confusion)
    n_cols = len(confusion[0]) if n_rows else 0
    return {"z": [list(map(int, row)) for row in confusion],
            "true": list(class_names)[:n_rows] or [str(i) for i in range(n_rows)],
            "predicted": list(class_names)[:n_cols] or [str(i) for i in range(n_cols)]}


def confusion_figure(data: dict[str, Any]):
    import plotly.graph_objects as go
    fig = go.Figure(go.Heatmap(z=data["z"], x=data["predicted"], y=data["true"], colorscale="Blues",
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", height=420,
                      margin=dict(l=10, r=10, t=30, b=10))
    return fig


def bar_data(values: dict[str, float], descending: bool = True) -> dict[str, list]:
    items = sorted(((k, v) for k, v in values.items() if v is not None), key=lambda kv: kv[1], reverse=descending)
    return {"names": [k for k, _ in items], "values": [v for _, v in items]}


def bar_figure(data: dict[str, list], x_label: str, y_label: str):
    import plotly.graph_objects as go
    fig = go.Figure(go.Bar(x=data["names"], y=data["values"]))
    fig.update_layout(xaxis_title=x_label, yaxis_title=y_label, height=380, margin=dict(l=10, r=10, t=30, b=10))
    return fig
