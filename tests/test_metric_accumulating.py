"""An accumulating user metric (a class, an object or a marked factory with
`update(outputs, targets)` per batch and `result()` at the end): it measures
the same values as the equivalent function metric over batches of different
sizes, with a fresh state for every evaluation (and every run of a sweep);
evaluate keeps no batch for it; an exception in update names the file and the
line, and a NaN from result is refused."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from compress_lab.evaluate import evaluate_model
from compress_lab.metrics import MetricError, load_metric
from test_tasks import TWO_OUTPUT_META, TWO_OUTPUT_MODEL, make_model

N, BATCH = 23, 5          # batches of 5, 5, 5, 5 and 3 samples

METRIC = textwrap.dedent('''
    import copy
    import gc
    import weakref

    import numpy as np

    DIRECTIONS = {"dense_mae": "lower", "scores_top1": "higher"}

    def metric(outputs, targets):
        return {"dense_mae": float(np.abs(outputs["dense"] - targets["dense_target"]).mean()),
                "scores_top1": float((outputs["scores"].argmax(1) == targets["label"]).mean())}

    class Streamed:
        directions = {**DIRECTIONS, "samples": "higher"}
        made = []                       # every instance fed a batch, for the test to look at

        def __init__(self):
            self.abs_sum, self.cells, self.right, self.n = 0.0, 0, 0, 0
            self.sizes, self.seen, self.alive_at_result = [], [], None

        def update(self, outputs, targets):
            if not self.sizes:
                Streamed.made.append(self)
            error = np.abs(outputs["dense"] - targets["dense_target"])
            self.abs_sum += float(error.sum())
            self.cells += error.size
            self.right += int((outputs["scores"].argmax(1) == targets["label"]).sum())
            self.n += len(targets["label"])
            self.sizes.append(len(targets["label"]))
            self.seen.append(weakref.ref(targets["dense_target"]))   # does anyone keep this batch?

        def result(self):
            gc.collect()
            self.alive_at_result = sum(ref() is not None for ref in self.seen)
            return {"dense_mae": self.abs_sum / self.cells, "scores_top1": self.right / self.n, "samples": self.n}

    streamed = Streamed()               # an object: deep-copied for each evaluation

    def make():                         # a factory: called for each evaluation
        return Streamed()

    make.accumulating = True
    make.directions = Streamed.directions

    class BrokenUpdate(Streamed):
        def update(self, outputs, targets):
            self.n += len(outputs["no_such_output"])

    class GivesNan(Streamed):
        def result(self):
            return {"dense_mae": float("nan")}

    class GivesAList(Streamed):
        def result(self):
            return [self.n]
''')
LINE_OF_THE_BAD_UPDATE = METRIC.splitlines().index('        self.n += len(outputs["no_such_output"])') + 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accumulating")
    model = make_model(folder / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META)
    rng = np.random.default_rng(5)
    np.savez(folder / "val.npz", x=rng.normal(size=(N, 6)).astype(np.float32), label=rng.integers(0, 3, N),
             dense_target=rng.normal(size=(N, 4)).astype(np.float32))
    (folder / "metric.py").write_text(METRIC)
    return folder, model


@pytest.mark.parametrize("name", ["Streamed", "streamed", "make"])
def test_an_accumulating_metric_measures_what_the_function_does_over_batches_of_different_sizes(setup, name):
    folder, model = setup
    whole = evaluate_model(model, folder / "val.npz", batch_size=BATCH, metric=folder / "metric.py").values
    metric = load_metric(f"{folder / 'metric.py'}:{name}")
    assert metric.accumulating and metric.directions == {"dense_mae": False, "scores_top1": True, "samples": True}
    made = (metric.fn if name == "Streamed" else type(metric.fn) if name == "streamed" else type(metric.fn())).made
    streamed = evaluate_model(model, folder / "val.npz", batch_size=BATCH, metric=metric)
    assert streamed.values["dense_mae"] == pytest.approx(whole["dense_mae"], rel=1e-6)
    assert streamed.values["scores_top1"] == pytest.approx(whole["scores_top1"])
    assert streamed.values["samples"] == N and streamed.higher_is_better["dense_mae"] is False
    (instance,) = made
    assert instance.sizes == [5, 5, 5, 5, 3]
    # no batch is kept for the metric: only the last one (still the loop's) is alive when result is asked
    assert instance.alive_at_result <= 1 < len(instance.seen)
    if name == "streamed":
        assert metric.fn.n == 0                                # the given object itself is never fed


def test_each_evaluation_starts_from_a_fresh_state(setup):
    folder, model = setup
    metric = load_metric(f"{folder / 'metric.py'}:Streamed")
    first = evaluate_model(model, folder / "val.npz", batch_size=BATCH, metric=metric).values
    second = evaluate_model(model, folder / "val.npz", batch_size=7, metric=metric).values
    assert first == pytest.approx(second) and first["samples"] == second["samples"] == N
    assert len(metric.fn.made) == 2 and metric.fn.made[0] is not metric.fn.made[1]


@pytest.mark.parametrize("name,words", [
    ("BrokenUpdate", ["metric.py:BrokenUpdate raised KeyError", "'no_such_output'", "in update",
                      f"metric.py line {LINE_OF_THE_BAD_UPDATE}"]),
    ("GivesNan", ["metric.py:GivesNan", "'dense_mae'", "nan", "not finite"]),
    ("GivesAList", ["metric.py:GivesAList", "list", "not a dict"]),
])
def test_an_accumulating_metric_that_raises_gives_nan_or_no_dict_is_a_clear_error(setup, name, words):
    folder, model = setup
    with pytest.raises(MetricError) as err:
        evaluate_model(model, folder / "val.npz", batch_size=BATCH, metric=f"{folder / 'metric.py'}:{name}")
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_a_kept_metric_error_leaves_the_rest_of_the_evaluation_standing(setup):
    from compress_lab.evaluate import evaluate, predictor_for
    from compress_lab.tasks import task_for
    folder, model = setup
    predictor, meta = predictor_for(model)
    task = task_for(meta)
    data = task.dataset(task.open_source(folder / "val.npz", meta), meta, batch_size=BATCH)
    result = evaluate(predictor, data, task, None, meta=meta, metric=f"{folder / 'metric.py'}:BrokenUpdate",
                      metric_errors="keep")
    assert result.n == N and "BrokenUpdate raised KeyError" in result.metric_error and "dense_mae" not in result.values


def _sweep(folder, model, tmp_path, name):
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{model}"
        [data]
        validation = "{folder / 'val.npz'}"
        metric = "{folder / 'metric.py'}:{name}"
        batch_size = {BATCH}
        [run]
        name = "accumulating"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = [2, 8]
    """))
    return run_sweep(load_spec(spec), tmp_path / "store")


def test_a_sweep_with_an_accumulating_metric_records_its_values_with_every_run(setup, tmp_path):
    folder, model = setup
    result = _sweep(folder, model, tmp_path, "Streamed")
    assert result.ok, [(r.label, r.error) for r in result.runs]
    runs = {r.label: r for r in result.runs}
    assert {"baseline PyTorch", "palettize nbits=2", "palettize nbits=8"} <= set(runs)
    whole = evaluate_model(model, folder / "val.npz", metric=folder / "metric.py").values
    for run in result.runs:   # a fresh state each run: every run counts the N samples once
        assert run.metrics["values"]["samples"] == N and np.isfinite(run.metrics["values"]["dense_mae"]), run.label
    assert runs["baseline PyTorch"].metrics["values"]["dense_mae"] == pytest.approx(whole["dense_mae"], rel=1e-6)
    assert runs["palettize nbits=2"].metrics["values"]["dense_mae"] != whole["dense_mae"]


def test_a_sweep_whose_accumulating_metric_raises_in_update_fails_each_run_with_the_line_and_goes_on(setup, tmp_path):
    folder, model = setup
    result = _sweep(folder, model, tmp_path, "BrokenUpdate")
    assert result.status == "done" and result.counts["PENDING"] == 0 and len(result.runs) >= 3
    assert {r.state for r in result.runs} == {"FAILED"}
    for run in result.runs:
        assert "metric.py:BrokenUpdate raised KeyError" in run.error, run.error
        assert f"line {LINE_OF_THE_BAD_UPDATE}" in run.error, run.error
