"""One trade-off curve per workflow, the 'where training-time pays off' read-out, size
budgets, readable log ticks, and the static (PNG/SVG) export of the figure."""

from __future__ import annotations

import shutil

import pytest

from compress_lab.analysis.budgets import (SizeBudget, accuracy_threshold, best_within_size,
                                           smallest_within_accuracy)
from compress_lab.analysis.table import runs_table
from compress_lab.errors import ConfigError
from compress_lab.plots import (StaticExportUnavailable, figure_images, nice_log_ticks, payoff_data, payoff_summary,
                                payoff_table, tradeoff_data, tradeoff_figure)


def _run(run_id, family, technique, top1, nbytes, loss=None):
    return {"run_id": run_id, "label": f"{technique} {run_id}", "technique": technique, "family": family,
            "state": "COMPLETE", "metrics": {"top1": top1, "agreement": top1, "loss": loss},
            "sizes": {"bytes": nbytes, "ratio_fp16": 1000 / nbytes, "bits_per_weight": 16 * nbytes / 1000},
            "timings": {}, "error": None}


# As in the issue: training-time 1-bit keeps its accuracy where data-free 1-bit collapses.
RUNS = runs_table([
    _run("fp16", "baseline", "baseline_fp16", 0.93, 1000, loss=0.20),
    _run("p8", "post_training", "palettize", 0.93, 520, loss=0.21),
    _run("p4", "post_training", "palettize", 0.92, 270, loss=0.25),
    _run("q8", "post_training", "quantize", 0.925, 530, loss=0.22),   # dominated by p8 (smaller and better)
    _run("p1", "post_training", "palettize", 0.386, 80, loss=2.10),
    _run("d4", "training_time", "dkm", 0.925, 270, loss=0.22),
    _run("d1", "training_time", "dkm", 0.918, 80, loss=0.28),
    _run("m9", "training_time", "magnitude_pruning", 0.85, 150, loss=0.50),  # dominated by d1
])


def ids(rows):
    return [r["run_id"] for r in rows]


def test_each_workflow_has_its_own_frontier_and_style():
    data = tradeoff_data(RUNS, "bytes", "top1")
    assert ids(data["frontiers"]["post_training"]) == ["p1", "p4", "p8"]
    assert ids(data["frontiers"]["training_time"]) == ["d1", "d4"]
    assert ids(data["overall_frontier"]) == ["d1", "d4", "p8"]  # p8 ties fp16 on top-1 and is smaller
    assert data["styles"]["post_training"]["dash"] == "dot" and data["styles"]["training_time"]["dash"] == "solid"
    assert data["styles"]["post_training"]["colour"] != data["styles"]["training_time"]["colour"]
    assert set(data["symbols"]) == {"palettize", "quantize", "dkm", "magnitude_pruning"}
    assert len(set(data["symbols"].values())) == 4


def test_lower_is_better_metric_flips_the_frontier():
    data = tradeoff_data(RUNS, "bytes", "loss")
    assert data["y_lower_better"]
    # lower loss is better: p8 (0.21) beats q8 (0.22), p4 (0.25) is kept as smaller
    assert ids(data["frontiers"]["post_training"]) == ["p1", "p4", "p8"]
    assert ids(data["frontiers"]["training_time"]) == ["d1", "d4"]
    payoff = payoff_data(data, budget=("loss", 0.30))
    at_80 = next(r for r in payoff["rows"] if r["size"] == 80)
    assert at_80["gap"] == pytest.approx(0.28 - 2.10) and at_80["second_better_by"] == pytest.approx(2.10 - 0.28)
    assert payoff["smallest"]["training_time"]["run_id"] == "d1" and payoff["smallest"]["post_training"]["run_id"] == "p4"


def test_ratio_axis_is_larger_is_better():
    data = tradeoff_data(RUNS, "ratio_fp16", "top1")
    assert not data["x_lower_better"]
    assert ids(data["frontiers"]["training_time"]) == ["d4", "d1"]  # sorted by ratio, ascending
    payoff = payoff_data(data, budget=("top1", 0.91))
    assert payoff["smallest"]["training_time"]["run_id"] == "d1"  # the most compressed within budget


def test_payoff_gives_the_gap_at_each_common_size_and_the_smallest_within_budget():
    data = tradeoff_data(RUNS, "bytes", "top1")
    payoff = payoff_data(data, budget=("top1", accuracy_threshold(RUNS, "top1", drop=0.015)))
    gaps = {r["size"]: r["gap"] for r in payoff["rows"]}
    assert set(gaps) == {80, 270, 520}
    assert gaps[80] == pytest.approx(0.918 - 0.386)  # the 1-bit case
    assert gaps[520] == pytest.approx(0.925 - 0.93)  # within 520 bytes data-free is better
    assert payoff["smallest"]["post_training"]["run_id"] == "p4"  # 0.92 >= 0.915
    assert payoff["smallest"]["training_time"]["run_id"] == "d1"
    text = payoff_table(payoff)
    assert text[0]["training-time better by"] == "+53.2 points" and text[0]["within size"] == "80 B"
    summary = " ".join(payoff_summary(payoff, "a top-1 drop of 1.5 points"))
    assert "dkm d1" in summary and "palettize p4" in summary and "+53.2 points" in summary


def test_size_budgets_of_each_kind():
    assert best_within_size(RUNS, SizeBudget("bytes", 300), "top1")["run_id"] == "d4"  # p4 0.92 < d4 0.925
    assert best_within_size(RUNS, SizeBudget("bytes", 100), "top1")["run_id"] == "d1"
    assert best_within_size(RUNS, SizeBudget("bytes", 50), "top1") is None
    assert best_within_size(RUNS, SizeBudget("ratio_fp16", 3.0), "top1")["run_id"] == "d4"  # 1000/270 = 3.7
    assert best_within_size(RUNS, SizeBudget("ratio_fp16", 4.0), "top1")["run_id"] == "d1"
    assert best_within_size(RUNS, SizeBudget("bits_per_weight", 8.4), "top1")["run_id"] == "p8"  # 8.32 bits
    assert best_within_size(RUNS, SizeBudget("bits_per_weight", 8.4), "loss")["run_id"] == "p8"
    assert smallest_within_accuracy(RUNS, "top1", 0.92)["run_id"] == "d4"  # 270 B like p4, ties go to more top-1
    assert smallest_within_accuracy(RUNS, "loss", 0.3)["run_id"] == "d1"
    with pytest.raises(ConfigError, match="ratio_fp16"):
        SizeBudget("megabytes", 1)
    with pytest.raises(ConfigError, match="positive"):
        SizeBudget("bytes", 0)


def test_side_by_side_shares_axes_and_legend_explains_both():
    data = tradeoff_data(RUNS, "bytes", "top1")
    fig = tradeoff_figure(data, side_by_side=True, highlights=[("d1", "most accurate within size budget", "green")])
    assert fig.layout.xaxis2.matches == "x" and fig.layout.yaxis2.matches == "y"
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert "post-training (data-free): dotted" in legend and "training-time: solid" in legend
    assert {"palettize", "dkm", "quantize", "magnitude_pruning"} <= set(legend)
    assert legend.count("baseline (uncompressed)") == 1
    ring = next(t for t in fig.data if t.name == "most accurate within size budget")
    assert ring.xaxis == "x2" and list(ring.x) == [80]  # in the training-time panel


@pytest.mark.parametrize("low, high", [(450e3, 900e3), (50e3, 900e3), (60, 1200), (1e3, 1e8), (2.1e6, 2.3e6)])
def test_log_ticks_never_crowd(low, high):
    import math
    ticks = nice_log_ticks(low, high)
    assert 2 <= len(ticks) <= 9
    span = math.log10(high / low)
    assert all(math.log10(b / a) >= span / 8 - 1e-9 for a, b in zip(ticks, ticks[1:]))
    fig = tradeoff_figure(tradeoff_data(RUNS, "bytes", "top1"))
    assert list(fig.layout.xaxis.ticktext) == ["100", "200", "500", "1k"]


@pytest.mark.skipif(shutil.which("chromium") is None and not __import__("os").environ.get("BROWSER_PATH"),
                    reason="static export needs a Chromium (bash test.sh installs Debian's)")
def test_png_and_svg_export_renders_the_figure():
    fig = tradeoff_figure(tradeoff_data(RUNS, "bytes", "top1"), side_by_side=True)
    png, svg = figure_images([(fig, "png"), (fig, "svg")])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert svg.lstrip().startswith(b"<svg") and b"training-time: solid" in svg and b"dkm" in svg


def test_static_export_without_a_browser_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    with pytest.raises(StaticExportUnavailable, match="apt-get install chromium"):
        figure_images([(tradeoff_figure(tradeoff_data(RUNS, "bytes", "top1")), "png")])
