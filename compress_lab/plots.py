"""Plots are data then figure: pure functions build what is plotted (tested),
others draw the plotly figures. Static images (PNG, SVG) come from plotly's own
export (kaleido), which renders in a Chromium-based browser: see `figure_images`."""

from __future__ import annotations

import math
from typing import Any, Sequence

from compress_lab.analysis.budgets import better, fits, lower_is_better
from compress_lab.analysis.pareto import pareto_front
from compress_lab.analysis.table import AXIS_LABELS, axis_label  # noqa: F401
from compress_lab.store.base import is_baseline

FAMILY_NAMES = {"post_training": "post-training", "training_time": "training-time", "mixed": "mixed precision",
                "baseline": "baseline"}
TECHNIQUE_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon",
                     "triangle-down", "hourglass", "bowtie"]
# Core ML Tools' guide draws data-free compression dotted and training-time compression solid.
# Colours: Okabe-Ito (distinguishable with the common colour-vision deficiencies).
WORKFLOW_STYLES = {
    "post_training": {"colour": "#D55E00", "dash": "dot", "legend": "post-training (data-free): dotted"},
    "training_time": {"colour": "#0072B2", "dash": "solid", "legend": "training-time: solid"},
    "mixed": {"colour": "#009E73", "dash": "dashdot", "legend": "mixed precision (data-free): dash-dot"},
}
OTHER_STYLE = {"colour": "#7F7F7F", "dash": "dash", "legend": "other"}
SIZE_AXES = ("bytes", "weight_bytes")


def workflow_style(family: str) -> dict[str, str]:
    style = WORKFLOW_STYLES.get(family)
    if style is None:
        return dict(OTHER_STYLE, legend=FAMILY_NAMES.get(family, family))
    return style


def tradeoff_data(rows: Sequence[dict[str, Any]], x: str, y: str) -> dict[str, Any]:
    """What the trade-off plot shows, for any pair of columns: per workflow its completed runs
    (sorted by x) and its own Pareto frontier, the baselines, the frontier over every run, a
    marker symbol per technique and a style per workflow. Directions (is lower better?) come
    from the columns, so a lower-is-better metric such as a loss flips the frontiers."""
    usable = [r for r in rows if r.get("state") == "COMPLETE" and r.get(x) is not None and r.get(y) is not None]
    series: dict[str, list[dict[str, Any]]] = {}
    for r in usable:
        if not is_baseline(r):
            series.setdefault(r.get("family") or "other", []).append(r)
    series = {name: sorted(points, key=lambda r: r[x]) for name, points in sorted(series.items(), key=_family_order)}
    baselines = [r for r in usable if is_baseline(r)]
    compressed = [r for points in series.values() for r in points]
    techniques = sorted({r.get("technique") or "?" for r in compressed})
    return {
        "x": x, "y": y,
        "x_label": axis_label(x), "y_label": axis_label(y),
        "x_lower_better": lower_is_better(x), "y_lower_better": lower_is_better(y),
        "series": series,
        "frontiers": {name: pareto_front(points, x, y) for name, points in series.items()},
        "baselines": baselines,
        "overall_frontier": pareto_front(compressed + baselines, x, y),
        "symbols": {t: TECHNIQUE_SYMBOLS[i % len(TECHNIQUE_SYMBOLS)] for i, t in enumerate(techniques)},
        "styles": {name: workflow_style(name) for name in series},
    }


def _family_order(item) -> tuple[int, str]:
    order = {"post_training": 0, "training_time": 1, "mixed": 2}
    return order.get(item[0], 9), item[0]


def best_at_size(points: Sequence[dict[str, Any]], x: str, y: str, size: float) -> dict[str, Any] | None:
    """The run with the best y among those at least as small as `size` on x (for a ratio
    axis: at least as compressed): what a workflow offers within that size."""
    ok = [p for p in points if fits(p[x], size, x)]
    if not ok:
        return None
    best = ok[0]
    for p in ok[1:]:
        if better(p[y], best[y], y) or (p[y] == best[y] and better(p[x], best[x], x)):
            best = p
    return best


def payoff_data(data: dict[str, Any], budget: tuple[str, float] | None = None,
                first: str = "post_training", second: str = "training_time") -> dict[str, Any]:
    """'Where training-time pays off': at each size where both workflows have a point (each
    frontier point of either workflow that the other can also reach), the best metric of each
    within that size and the gap (second minus first; `second_better_by` is the gap signed so
    that positive means the second workflow is better). With `budget` (metric, value a run must
    reach on it, e.g. ("top1", 0.98); the metric's direction decides), each workflow's smallest
    run (on x) within it."""
    x, y = data["x"], data["y"]
    a, b = data["series"].get(first, []), data["series"].get(second, [])
    rows = []
    if a and b:
        sizes = sorted({p[x] for p in data["frontiers"].get(first, []) + data["frontiers"].get(second, [])},
                       key=lambda v: v if lower_is_better(x) else -v)
        for size in sizes:
            pa, pb = best_at_size(a, x, y, size), best_at_size(b, x, y, size)
            if pa is None or pb is None:
                continue
            gap = pb[y] - pa[y]
            rows.append({"size": size, first: pa, second: pb, "gap": gap,
                         "second_better_by": -gap if lower_is_better(y) else gap})
    smallest: dict[str, dict[str, Any] | None] = {}
    if budget is not None:
        metric, threshold = budget
        for family in (first, second):
            ok = [p for p in data["series"].get(family, []) if p.get(metric) is not None
                  and fits(p[metric], threshold, metric)]
            smallest[family] = min(ok, key=lambda p: (p[x] if lower_is_better(x) else -p[x])) if ok else None
    return {"x": x, "y": y, "first": first, "second": second, "rows": rows, "budget": budget,
            "smallest": smallest}


FRACTION_METRICS = ("top1", "top5", "agreement")


def format_value(column: str, value: float | None) -> str:
    """A value as a person reads it: bytes in kB/MB, ratios as 4.0x, accuracies as percent."""
    if value is None:
        return "-"
    if column in SIZE_AXES:
        for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= size:
                return f"{value / size:.4g} {unit}"
        return f"{value:.0f} B"
    if column.startswith("ratio"):
        return f"{value:.2f}x"
    if column == "bits_per_weight":
        return f"{value:.2f} bits/weight"
    if column in FRACTION_METRICS:
        return f"{value:.2%}"
    if column == "snr_db":
        return f"{value:.1f} dB"
    return f"{value:.4g}"


def format_gap(column: str, gap: float) -> str:
    if column in FRACTION_METRICS:
        return f"{gap * 100:+.1f} points"
    return f"{gap:+.3g}" + (" dB" if column == "snr_db" else "")


def payoff_table(payoff: dict[str, Any]) -> list[dict[str, str]]:
    """The read-out's rows as text: size, each workflow's best within it, and the gap."""
    x, y, first, second = payoff["x"], payoff["y"], payoff["first"], payoff["second"]
    a, b = FAMILY_NAMES.get(first, first), FAMILY_NAMES.get(second, second)
    def size(value):  # bytes exactly: two packages a few bytes apart must not read as the same size
        return f"{int(value):,} B" if x == "bytes" else format_value(x, value)

    return [{"within size": size(row["size"]),
             a: f"{format_value(y, row[first][y])} ({row[first]['label']})",
             b: f"{format_value(y, row[second][y])} ({row[second]['label']})",
             f"{b} better by": format_gap(y, row["second_better_by"])} for row in payoff["rows"]]


def payoff_summary(payoff: dict[str, Any], budget_text: str) -> list[str]:
    """One sentence per workflow: its smallest run within the budget (or that none is)."""
    x, y = payoff["x"], payoff["y"]
    lines = []
    for family in (payoff["first"], payoff["second"]):
        name = FAMILY_NAMES.get(family, family)
        if family not in payoff["smallest"]:
            continue
        row = payoff["smallest"][family]
        if row is None:
            lines.append(f"{name}: no run stays within {budget_text}.")
        else:
            lines.append(f"{name}: smallest within {budget_text} is {row['label']}, {format_value(x, row[x])} "
                         f"({format_value(y, row[y])}).")
    if payoff["rows"]:
        best = max(payoff["rows"], key=lambda r: r["second_better_by"])
        lines.append(f"Largest gap: at {format_value(x, best['size'])}, {FAMILY_NAMES.get(payoff['second'])} is "
                     f"{format_gap(y, best['second_better_by'])} better.")
    return lines


MANTISSAS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,))


def nice_log_ticks(low: float, high: float, max_ticks: int = 8) -> list[float]:
    """Tick values for a log axis from low to high: the densest of 1-2-...-9, 1-2-3-5-7, 1-2-5,
    1-3, 1 per decade whose neighbouring ticks sit at least 1/max_ticks of the axis apart
    (plotly's own log ticks label 500k 600k 700k800k900k on top of each other)."""
    if not (low > 0 and high > 0) or not all(map(math.isfinite, (low, high))):
        return []
    low, high = min(low, high), max(low, high)
    span = max(math.log10(high) - math.log10(low), 1e-9)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in MANTISSAS:
        ticks = [m * 10 ** e for e in range(first, last + 1) for m in mantissas]
        inside = [t for t in ticks if low <= t <= high]
        gaps = [math.log10(b / a) for a, b in zip(inside, inside[1:])]
        if len(inside) >= 2 and min(gaps) >= span / max_ticks:
            return inside
        if len(inside) < 2 and mantissas == MANTISSAS[0]:
            return sorted({float(f"{low:.2g}"), float(f"{high:.2g}")})  # under one step of 1-9: its two ends
    step = max(1, math.ceil((last - first) / max_ticks))
    return [10.0 ** e for e in range(first, last + 1, step) if low <= 10.0 ** e <= high] or [low, high]


def human_count(value: float) -> str:
    """1200 -> '1.2k', 2_000_000 -> '2M' (axis labels)."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def tradeoff_figure(data: dict[str, Any], highlight_run_id: str | None = None, *, overall: bool = False,
                    side_by_side: bool = False, highlight_name: str = "smallest within budget",
                    highlights: Sequence[tuple[str, str, str]] = ()):
    """One curve per workflow (its own frontier: post-training dotted, training-time solid), its
    points in its colour, marker shape per technique. `overall` adds the frontier over every
    run; `side_by_side` draws one panel per workflow, sharing both axes. `highlights` are
    (run_id, legend name, colour) rings drawn around runs (highlight_run_id: a red one)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x, y = data["x"], data["y"]
    families = list(data["series"])
    panels = side_by_side and len(families) > 1
    if panels:
        fig = make_subplots(rows=1, cols=len(families), shared_xaxes="all", shared_yaxes="all",
                            horizontal_spacing=0.03,
                            subplot_titles=[workflow_style(f)["legend"].split(":")[0] for f in families])
    else:
        fig = go.Figure()

    def add(trace, family: str | None = None) -> None:
        """Into the workflow's panel, or (family None) into every panel, in the legend once."""
        if not panels:
            fig.add_trace(trace)
            return
        for col, f in enumerate(families, start=1):
            if family is None:
                fig.add_trace(go.Scatter(trace, showlegend=trace.showlegend is not False and col == 1), row=1, col=col)
            elif f == family:
                fig.add_trace(trace, row=1, col=col)

    symbols = data["symbols"]
    for family, points in data["series"].items():
        style, name = data["styles"][family], FAMILY_NAMES.get(family, family)
        frontier = data["frontiers"][family]
        add(go.Scatter(x=[p[x] for p in frontier], y=[p[y] for p in frontier], mode="lines", name=style["legend"],
                       legendgroup=family, line=dict(color=style["colour"], dash=style["dash"], width=2.5),
                       hoverinfo="skip", legendrank=1), family)
        add(go.Scatter(
            x=[p[x] for p in points], y=[p[y] for p in points], mode="markers", name=name, legendgroup=family,
            showlegend=False,
            marker=dict(size=11, color=style["colour"], symbol=[symbols[p.get("technique") or "?"] for p in points],
                        line=dict(width=1, color="white")),
            text=[p["label"] for p in points], customdata=[p["run_id"] for p in points],
            hovertemplate="<b>%{text}</b><br>" + f"{x}=%{{x}}<br>{y}=%{{y}}<extra>{name}</extra>"), family)
    if data["baselines"]:
        b = data["baselines"]
        add(go.Scatter(
            x=[p[x] for p in b], y=[p[y] for p in b], mode="markers+text", name="baseline (uncompressed)",
            legendgroup="baseline", legendrank=2, cliponaxis=False,
            marker=dict(size=14, symbol="star", color="black"), text=[p["label"] for p in b], textposition="top center",
            hovertemplate="<b>%{text}</b><br>" + f"{x}=%{{x}}<br>{y}=%{{y}}<extra>baseline</extra>"))
    if overall and len(data["overall_frontier"]) > 1:
        f = data["overall_frontier"]
        add(go.Scatter(x=[p[x] for p in f], y=[p[y] for p in f], mode="lines", name="Pareto frontier (all runs)",
                       legendrank=3, line=dict(dash="dash", color="gray", width=1.5), hoverinfo="skip"))
    for technique, symbol in symbols.items():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=technique, legendgroup="techniques",
                                 legendgrouptitle_text="marker = technique", legendrank=4,
                                 marker=dict(size=10, symbol=symbol, color="#555555"), hoverinfo="skip"))
    marks = ([(highlight_run_id, highlight_name, "red")] if highlight_run_id else []) + list(highlights)
    for n, (run_id, name, colour) in enumerate(marks):
        for family, points in data["series"].items():
            hits = [p for p in points if p["run_id"] == run_id]
            if hits:
                add(go.Scatter(x=[hits[0][x]], y=[hits[0][y]], mode="markers", name=name, legendrank=0,
                               marker=dict(size=22 + 8 * n, symbol="circle-open", color=colour,
                                           line=dict(width=3, color=colour))),
                    family if panels else None)
                break
    fig.update_layout(legend_title_text="", legend=dict(groupclick="toggleitem", tracegroupgap=8),
                      margin=dict(l=10, r=10, t=40 if panels else 30, b=10), height=500,
                      plot_bgcolor="white")
    fig.update_xaxes(showgrid=True, gridcolor="#e6e6e6", zeroline=False, linecolor="#999")
    fig.update_yaxes(showgrid=True, gridcolor="#e6e6e6", zeroline=False, linecolor="#999")
    fig.update_xaxes(title_text=data["x_label"], row=1, col=1) if panels else fig.update_xaxes(title_text=data["x_label"])
    fig.update_yaxes(title_text=data["y_label"], row=1, col=1) if panels else fig.update_yaxes(title_text=data["y_label"])
    if panels:
        for col in range(2, len(families) + 1):
            fig.update_xaxes(title_text=data["x_label"], row=1, col=col)
    if x in SIZE_AXES:
        values = [p[x] for pts in data["series"].values() for p in pts] + [p[x] for p in data["baselines"]]
        values = [v for v in values if v and v > 0]
        ticks = nice_log_ticks(min(values) / 1.15, max(values) * 1.15) if values else []
        fig.update_xaxes(type="log", tickvals=ticks or None, ticktext=[human_count(t) for t in ticks] or None)
    return fig


class StaticExportUnavailable(RuntimeError):
    """PNG/SVG export cannot run here (no kaleido, or no Chromium-based browser)."""


NO_BROWSER = ("PNG and SVG export renders the figure in a Chromium-based browser (plotly's kaleido), and none was "
              "found. Install one (Debian/Ubuntu: `sudo apt-get install chromium`; macOS: Google Chrome), or set "
              "BROWSER_PATH to one, or run `.venv/bin/kaleido_get_chrome` to download Chrome for Testing. "
              "The interactive HTML report works without it.")


def export_browser() -> str | None:
    """The browser kaleido will use: BROWSER_PATH, else the one choreographer finds (its own
    download, then chromium/chrome on PATH and the usual install paths). None if there is none."""
    import os
    path = os.environ.get("BROWSER_PATH")
    if path:
        return path if os.access(path, os.X_OK) else None
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def figure_images(figures: Sequence[tuple[Any, str]], *, width: int = 1100, height: int = 560,
                  scale: float = 2.0) -> list[bytes]:
    """Each (figure, format) rendered to bytes ('png' or 'svg') by plotly's kaleido engine in one
    browser session, fully offline: plotly.js comes from the installed plotly package and MathJax
    is off. Raises StaticExportUnavailable with the fix when it cannot run."""
    try:
        import kaleido
    except ImportError as exc:
        raise StaticExportUnavailable("PNG and SVG export needs kaleido: `.venv/bin/pip install 'kaleido>=1,<2'` "
                                      "(bash run.sh installs it).") from exc
    browser = export_browser()
    if browser is None:
        raise StaticExportUnavailable(NO_BROWSER)
    for _, fmt in figures:
        if fmt not in ("png", "svg"):
            raise ValueError(f"image format {fmt!r} is not supported; use 'png' or 'svg'")

    async def render() -> list[bytes]:
        out = []
        async with kaleido.Kaleido(n=1, mathjax=False, path=browser) as k:
            for fig, fmt in figures:
                page = fig.to_dict()  # room for the tick labels and titles the app's narrow margins leave out
                page.setdefault("layout", {})["margin"] = dict(l=80, r=30, t=70, b=70)
                out.append(await k.calc_fig(page, opts=dict(format=fmt, width=width, height=height,
                                                                      scale=scale if fmt == "png" else 1)))
        return out

    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from kaleido.errors import ChromeNotFoundError, JavascriptError
    with ThreadPoolExecutor(1) as pool:  # its own event loop, also when the caller runs one (Streamlit, Jupyter)
        for attempt in range(3):
            try:
                return pool.submit(asyncio.run, render()).result()
            except ChromeNotFoundError as exc:
                raise StaticExportUnavailable(f"{NO_BROWSER} ({exc})") from exc
            except JavascriptError:
                # on a loaded machine kaleido can call into its page before the page's scripts ran
                # ("kaleido_scopes is not defined"); a fresh browser session renders it
                if attempt == 2:
                    raise


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
