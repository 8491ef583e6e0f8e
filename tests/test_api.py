"""The Python API (compress_lab.api, re-exported as `import compress_lab as lab`) on a real sweep of the
sample MNIST model: it runs what `compress-lab sweep` runs, into the same store, and reads it back with
the CLI's own rows, the app's figure and budget pick, and the CLI's export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import compress_lab as lab
from compress_lab import cli
from compress_lab.errors import ConfigError, StoreError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
GRID = [{"technique": "palettize", "nbits": [2, 4]}, {"technique": "prune", "target_sparsity": 0.75}]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, mnist_dir):
    folder = tmp_path_factory.mktemp("api")
    for class_dir in sorted((mnist_dir / "val").iterdir()):  # 3 images per class: quick, still real digits
        (folder / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            shutil.copy2(image, folder / "val" / class_dir.name / image.name)
    spec = lab.sweep_spec({"model": "mnist_cnn", "data": "val", "run": {"name": "api", "workers": 1}, "grid": GRID},
                          base_dir=folder)
    results = lab.run(spec, progress=False)
    return folder, spec, results


def test_run_fills_the_store_the_cli_reads(swept):
    folder, spec, results = swept
    assert results.store_folder == folder / ".lab" / "api"        # <spec folder>/.lab/<name>, as the CLI
    assert results.status == "done" and results.counts["COMPLETE"] == 6 and results.counts["FAILED"] == 0
    assert results.outcome.executed == 6 and results.outcome.reused == 0
    labels = {r.label for r in results.runs}
    assert labels == {"baseline PyTorch", "baseline fp32", "baseline fp16", "palettize nbits=2", "palettize nbits=4",
                      "prune target_sparsity=0.75"}


def test_table_is_the_cli_results_listing(swept, capsys):
    from compress_lab.cli.results import COLUMNS

    _, _, results = swept
    table = results.table()
    assert list(table.columns) == list(COLUMNS)
    assert cli.main(["results", "--store", str(results.store_folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["columns"] == list(table.columns)
    by_id = {r["run_id"]: r for r in listed["runs"]}
    assert sorted(by_id) == sorted(table["run_id"])
    for row in table.to_dict("records"):
        cli_row = by_id[row["run_id"]]
        for column in ("workflow", "technique", "status", "top1", "agreement", "size_bytes", "compression_ratio",
                       "artifact"):
            assert _none(row[column]) == cli_row[column], (row["run_id"], column)
        assert row["config"] == cli_row["config"]
    p2 = table[table["config"].map(lambda c: c.get("nbits") == 2)].iloc[0]
    assert p2["workflow"] == "post_training" and p2["compression_ratio"] > 6 and Path(p2["artifact"]).is_dir()


def _none(value):
    """pandas keeps a missing value as NaN where the JSON listing has null."""
    import pandas as pd
    return None if not isinstance(value, (dict, list)) and pd.isna(value) else value


def test_running_again_resumes_from_the_store_and_a_toml_spec_is_the_same_sweep(swept):
    folder, spec, results = swept
    (folder / "spec.toml").write_text(textwrap.dedent("""
        [model]
        source = "mnist_cnn"
        [data]
        validation = "val"
        [run]
        name = "api"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = [2, 4]
        [[grid]]
        technique = "prune"
        target_sparsity = 0.75
    """))
    from_toml = lab.sweep_spec(folder / "spec.toml")
    assert from_toml.to_dict() == spec.to_dict()
    again = lab.run(folder / "spec.toml", progress=False)
    assert again.store_folder == results.store_folder and again.sweep_id == results.sweep_id
    assert again.outcome.executed == 0 and again.outcome.reused == 6
    opened = lab.open_results(results.store_folder)
    assert opened.sweep_id == results.sweep_id and len(opened.table()) == 6


def test_figure_is_the_apps_tradeoff_figure(swept):
    from compress_lab.analysis.pareto import smallest_meeting_budget
    from compress_lab.analysis.table import runs_table
    from compress_lab.plots import tradeoff_data, tradeoff_figure

    _, _, results = swept
    figure = results.figure()
    rows = runs_table(results.runs)
    best = smallest_meeting_budget(rows, "top1_drop", 1.0)
    app = tradeoff_figure(tradeoff_data(rows, "bytes", "top1"), highlight_run_id=best["run_id"])
    assert [t.name for t in figure.data] == [t.name for t in app.data]
    for ours, theirs in zip(figure.data, app.data):
        assert list(ours.x) == list(theirs.x) and list(ours.y) == list(theirs.y)
    assert "smallest within budget" in [t.name for t in figure.data]
    post = next(t for t in figure.data if t.name == "post-training")   # hover: the run's config, as the app's
    assert any("nbits = 2" in text for text in post.text)
    baselines = next(t for t in figure.data if t.name == "baseline (uncompressed)")
    assert list(baselines.textposition) == ["top center", "bottom center", "top center"]
    assert figure.layout.xaxis.type == "log" and figure.layout.yaxis.range[1] == pytest.approx(1.005)
    plain = results.figure(x="ratio_fp16", y="agreement", top1_drop=None)
    assert "smallest within budget" not in [t.name for t in plain.data]
    assert plain.layout.xaxis.title.text == "compression ratio vs fp16"
    with pytest.raises(ConfigError, match="x='top1'.*one of"):
        results.figure(x="top1")


def test_best_is_the_apps_pick_within_the_budget(swept):
    from compress_lab.analysis.pareto import smallest_meeting_budget
    from compress_lab.analysis.table import runs_table

    _, _, results = swept
    rows = runs_table(results.runs)
    for kwargs, metric, value in (({}, "top1_drop", 1.0), ({"top1_drop": 40.0}, "top1_drop", 40.0),
                                  ({"agreement": 0.9}, "agreement", 0.9)):
        best = results.best(**kwargs)
        expected = smallest_meeting_budget(rows, metric, value)
        assert best is not None and best.run_id == expected["run_id"]
        assert best["workflow"] != "baseline" and best["size_bytes"] == expected["bytes"]
    assert results.best(agreement=1.01) is None          # no run agrees more than always
    with pytest.raises(ConfigError, match="one budget"):
        results.best(top1_drop=1, agreement=0.9)
    with pytest.raises(ConfigError, match="non-negative"):
        results.best(top1_drop=-1)


def test_export_writes_the_run_with_its_metadata(swept, tmp_path):
    import coremltools as ct

    _, _, results = swept
    best = results.best(top1_drop=40.0)
    out = results.export(best, tmp_path / "best.mlpackage")
    assert (out / "Manifest.json").is_file()
    meta = ct.models.MLModel(str(out), skip_model_load=True).user_defined_metadata
    assert meta["com.compress_lab.run_id"] == best.run_id
    assert json.loads(meta["com.compress_lab.metrics"])["top1"] == best["top1"]
    by_prefix = results.export(best.run_id[:10], tmp_path / "again.mlpackage")
    assert (by_prefix / "Manifest.json").is_file()
    with pytest.raises(StoreError, match="already exists.*force"):
        results.export(best, tmp_path / "best.mlpackage")
    with pytest.raises(StoreError, match="best\\(\\) returns None"):
        results.export(None, tmp_path / "none.mlpackage")


def test_results_and_an_evaluation_render_as_html_tables(swept, tmp_path):
    folder, _, results = swept
    page = results._repr_html_()
    assert page.count("<tr>") == 1 + 6 and "<th>compression_ratio</th>" in page and "nbits=2" in page
    for run in results.runs:
        assert run.run_id[:12] in page
    assert "sweep api" in repr(results) and "palettize" in repr(results)
    best = results.best(top1_drop=40.0)
    assert best.run_id[:12] in best._repr_html_()
    evaluation = lab.evaluate_model(results.export(best, tmp_path / "e.mlpackage"), folder / "val")
    assert evaluation.n == 30 and evaluation.top1 is not None
    table = evaluation._repr_html_()
    assert "<table>" in table and f"{evaluation.top1:.4f}" in table and "per-class accuracy (10 classes)" in table


def test_progress_outside_jupyter_is_the_clis_terminal_bar(swept, capsys):
    import tqdm.std

    from compress_lab.api import _auto_tqdm
    from compress_lab.cli.sweep import _Reporter

    _, _, results = swept
    import tqdm.notebook

    bar = _auto_tqdm()                               # tqdm.auto: a widget only inside a Jupyter kernel
    assert issubclass(bar, tqdm.std.tqdm) and not issubclass(bar, tqdm.notebook.tqdm_notebook)
    reporter = _Reporter(quiet=False, bar_class=_auto_tqdm())
    run = next(r for r in results.runs if r.label == "palettize nbits=2")
    reporter.progress(4, 6, run)
    assert isinstance(reporter.bar, tqdm.std.tqdm) and reporter.bar.n == 4
    reporter.close()
    assert "[4/6] COMPLETE palettize nbits=2" in capsys.readouterr().err


def test_compress_takes_a_dict_config(mnist_handle, tmp_path):
    outcome = lab.compress(mnist_handle, {"technique": "quantize", "dtype": "int8"}, tmp_path / "q.mlpackage")
    assert (outcome.path / "Manifest.json").is_file() and outcome.timings["total_s"] > 0


def test_spec_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"needs a \[data\] table"):
        lab.sweep_spec({"model": "mnist_cnn", "grid": GRID})
    with pytest.raises(ConfigError, match="TOML file's path or a dict"):
        lab.sweep_spec(42)
    with pytest.raises(ConfigError, match="does not exist"):
        lab.sweep_spec(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="no valid point.*invalid point"):
        lab.run({"model": "mnist_cnn", "data": "val", "grid": {"technique": "palettize", "nbits": 5}},
                store=tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_importing_the_package_stays_light():
    code = "import sys, compress_lab, compress_lab.errors; print('compress_lab.api' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert {"run", "sweep_spec", "open_results", "load_model"} <= set(dir(lab))
