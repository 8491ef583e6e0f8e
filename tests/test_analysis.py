"""Pareto frontier, budgets, run rows and the plotted data."""

import math

from compress_lab.analysis.pareto import pareto_front, smallest_within_budget
from compress_lab.analysis.table import metric_columns, run_row, runs_table
from compress_lab.plots import bar_data, confusion_data, confusion_figure, tradeoff_data, tradeoff_figure
from compress_lab.store.base import Run, baseline_format, compressed_runs, is_baseline, reference_baseline


def _run(run_id, family, technique, top1, nbytes, state="COMPLETE"):
    return {"run_id": run_id, "label": f"{technique} {run_id}", "technique": technique, "family": family, "state": state,
            "metrics": {"top1": top1, "agreement": top1}, "sizes": {"bytes": nbytes, "ratio_fp16": 1000 / nbytes},
            "timings": {"total_s": 1.0}, "error": None}


RUNS = [
    _run("b16", "baseline", "fp16", 0.99, 1000),
    _run("a", "post_training", "palettize", 0.98, 250),
    _run("b", "post_training", "palettize", 0.90, 130),
    _run("c", "post_training", "quantize", 0.97, 500),  # dominated by a and d; a is dominated by d
    _run("d", "training_time", "dkm", 0.985, 130),
    _run("e", "training_time", "dkm", 0.5, 60),
    _run("f", "post_training", "prune", None, 100, state="FAILED"),
]


def test_pareto_front_keeps_only_undominated():
    rows = runs_table(RUNS)
    front = pareto_front(rows, "bytes", "top1")
    assert [r["run_id"] for r in front] == ["e", "d", "b16"]
    # higher compression ratio is better: same frontier, by ratio
    front_ratio = pareto_front(rows, "ratio_fp16", "top1")
    assert {r["run_id"] for r in front_ratio} == {"e", "d", "b16"}


def test_smallest_within_budget():
    rows = runs_table(RUNS)
    assert smallest_within_budget(rows, "top1", 0.98)["run_id"] == "d"
    assert smallest_within_budget(rows, "top1", 0.999) is None


def test_run_row_flattens_and_shortens_errors():
    failed = dict(RUNS[-1], error="Traceback...\nValueError: bad nbits")
    row = run_row(failed)
    assert row["error"] == "ValueError: bad nbits" and row["top1"] is None and row["bytes"] == 100
    nan = run_row(dict(RUNS[1], metrics={"top1": math.nan}))
    assert nan["top1"] is None


def test_tradeoff_data_has_two_series_baseline_and_frontier():
    data = tradeoff_data(runs_table(RUNS), "bytes", "top1")
    assert set(data["series"]) == {"post_training", "training_time"}
    assert [r["run_id"] for r in data["series"]["post_training"]] == ["b", "a", "c"]
    assert [r["run_id"] for r in data["baselines"]] == ["b16"]
    assert [r["run_id"] for r in data["overall_frontier"]] == ["e", "d", "b16"]
    fig = tradeoff_figure(data, highlight_run_id="d")
    names = [t.name for t in fig.data]
    assert "post-training" in names and "training-time" in names and "Pareto frontier (all runs)" not in names
    assert "smallest within budget" in names
    assert "Pareto frontier (all runs)" in [t.name for t in tradeoff_figure(data, overall=True).data]


def test_confusion_and_bars():
    data = confusion_data([[5, 1], [0, 4]], ["cat", "dog"])
    assert data["true"] == ["cat", "dog"] and data["z"][0][1] == 1
    assert confusion_figure(data).data[0].z is not None
    bars = bar_data({"a": 0.1, "b": 0.5, "c": None})
    assert bars == {"names": ["b", "a"], "values": [0.5, 0.1]}


def test_baselines_are_told_apart_in_one_place_for_runs_rows_and_old_stores():
    runs = [
        Run(run_id="aa000001", technique="baseline", family="baseline", config={"technique": "baseline", "format": "fp16"},
            label="baseline fp16", state="COMPLETE", attempts=1, worker=None, heartbeat_at=None, started_at=None,
            finished_at=None, error=None, traceback=None, metrics={"top1": 0.9}, sizes={}, timings={},
            artifact_path=None, created_at=0.0),
        Run(run_id="aa000002", technique="baseline", family="baseline", config={}, label="baseline PyTorch",
            state="COMPLETE", attempts=1, worker=None, heartbeat_at=None, started_at=None, finished_at=None,
            error=None, traceback=None, metrics={"top1": 0.91}, sizes={}, timings={}, artifact_path=None,
            created_at=0.0),
        Run(run_id="aa000003", technique="palettize", family="post_training", config={"technique": "palettize"},
            label="palettize 4-bit", state="COMPLETE", attempts=1, worker=None, heartbeat_at=None, started_at=None,
            finished_at=None, error=None, traceback=None, metrics={"top1": 0.8}, sizes={}, timings={},
            artifact_path=None, created_at=0.0),
    ]
    assert [is_baseline(r) for r in runs] == [True, True, False]
    # a run's config names its format; a row (or a store older than the format key) goes by its label
    assert [baseline_format(r) for r in runs] == ["fp16", "pytorch", None]
    rows = runs_table(runs)
    rows[0]["label"] = "renamed"  # a row keeps its run's format, whatever its label says
    assert [baseline_format(r) for r in rows] == ["fp16", "pytorch", None]
    assert reference_baseline(runs).run_id == reference_baseline(rows)["run_id"] == "aa000002"  # PyTorch first
    assert reference_baseline(rows, ("fp16",))["run_id"] == "aa000001"
    assert [r["run_id"] for r in compressed_runs(rows)] == ["aa000003"]


def test_smallest_meeting_budget_uses_the_uncompressed_reference():
    from compress_lab.analysis.pareto import smallest_meeting_budget
    rows = runs_table(RUNS)
    assert reference_baseline(rows)["run_id"] == "b16"
    # 0.99 baseline: within 1 point -> >= 0.98: a (250 B) and d (130 B) qualify; d is smaller
    assert smallest_meeting_budget(rows, "top1_drop", 1.0)["run_id"] == "d"
    assert smallest_meeting_budget(rows, "top1_drop", 0.1) is None
    assert smallest_meeting_budget(rows, "agreement", 0.95)["run_id"] == "d"


def test_a_tasks_primary_metric_stays_first_through_the_stores_sorted_json():
    from compress_lab.evaluate import EvalResult
    from compress_lab.store.base import dumps, loads

    result = EvalResult(n=3, task="pitch", values={"raw_pitch_accuracy": 0.99, "median_cents_error": 3.7},
                        higher_is_better={"raw_pitch_accuracy": True, "median_cents_error": False},
                        value_order=["raw_pitch_accuracy", "median_cents_error"])
    stored = loads(dumps(result.to_dict()))  # the store writes keys sorted: median_... would come first
    assert list(stored["values"]) == ["median_cents_error", "raw_pitch_accuracy"]
    assert EvalResult.from_dict(stored).value_order == ["raw_pitch_accuracy", "median_cents_error"]
    row = run_row({"run_id": "r1", "family": "post_training", "state": "COMPLETE", "metrics": stored})
    assert row["_value_columns"] == ["raw_pitch_accuracy", "median_cents_error"]
    assert metric_columns([row])[0] == "raw_pitch_accuracy"
