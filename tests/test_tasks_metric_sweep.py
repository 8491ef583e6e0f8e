"""A user metric in a sweep spec (`[data] metric = "metric.py[:function]"`): its
values are stored with every run; when it raises, that is each run's recorded
error (naming the file and the line) and the sweep goes on to the end."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compress_lab.errors import ConfigError
from compress_lab.sweep.runner import run_sweep
from compress_lab.sweep.spec import load_spec

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"

METRIC = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"top1_again": "higher", "mean_margin": "higher"}

    def metric(outputs, targets):
        logits = outputs["logits"]
        top2 = np.sort(logits, axis=1)[:, -2:]
        return {"top1_again": float((logits.argmax(1) == targets["label"]).mean()),
                "mean_margin": float((top2[:, 1] - top2[:, 0]).mean())}

    def broken(outputs, targets):
        scale = 0
        return {"top1_again": 1 / scale}
''')


def _spec(folder: Path, metric: str) -> Path:
    val = folder / "val"
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            shutil.copy2(image, val / class_dir.name / image.name)
    (folder / "metric.py").write_text(METRIC)
    spec = folder / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{SAMPLES / 'mnist_cnn'}"
        [data]
        validation = "val"
        metric = "{metric}"
        [run]
        name = "metric"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = 4
    """))
    return spec


@pytest.mark.slow
def test_a_sweeps_user_metric_is_stored_with_every_run(tmp_path, mnist_dir):
    result = run_sweep(load_spec(_spec(tmp_path, "metric.py")), tmp_path / "store")
    assert result.ok, [(r.label, r.error) for r in result.runs]
    for run in result.runs:
        values = run.metrics["values"]
        assert values["top1_again"] == pytest.approx(run.metrics["top1"]) and np.isfinite(values["mean_margin"])
    assert load_spec(tmp_path / "spec.toml").data.metric == str(tmp_path / "metric.py")


@pytest.mark.slow
def test_a_metric_that_raises_fails_each_run_with_the_file_and_line_and_the_sweep_goes_on(tmp_path, mnist_dir):
    result = run_sweep(load_spec(_spec(tmp_path, "metric.py:broken")), tmp_path / "store")
    assert result.status == "done" and result.counts["PENDING"] == 0
    assert {r.state for r in result.runs} == {"FAILED"} and len(result.runs) == 4
    for run in result.runs:
        assert "metric.py:broken raised ZeroDivisionError" in run.error and "line 14" in run.error, run.error
    assert (tmp_path / "store" / "reference").is_dir()   # the reference was still computed and kept


def test_a_spec_naming_a_missing_metric_file_is_refused_at_load(tmp_path):
    (tmp_path / "val").mkdir()
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[model]\nsource = "{SAMPLES / "mnist_cnn"}"\n[data]\nvalidation = "val"\nmetric = "nope.py:m"\n'
                    '[[grid]]\ntechnique = "palettize"\nnbits = 4\n')
    with pytest.raises(ConfigError, match=r"\[data\] metric = .*nope.py:m.*does not exist"):
        load_spec(spec)
