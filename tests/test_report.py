"""The sweep report contains every run, with measured values, in HTML, CSV and JSON."""

import csv
import io
import json
import os
import shutil

import pytest

from compress_lab.cli import main
from compress_lab.report import write_report
from compress_lab.store import RunSpec, open_store


def _store_with_runs(folder):
    store = open_store(folder)
    store.create_sweep("s1", "demo sweep", {"grid": [{"technique": "palettize", "nbits": [2, 4]}]}, "f" * 64)
    specs = [
        RunSpec("a" * 16, "baseline_fp16", "baseline", {"technique": "baseline_fp16"}, "fp16 baseline"),
        RunSpec("b" * 16, "palettize", "post_training", {"technique": "palettize", "nbits": 4}, "palettize nbits=4"),
        RunSpec("c" * 16, "dkm", "training_time", {"technique": "dkm", "n_bits": 2}, "dkm n_bits=2"),
        RunSpec("d" * 16, "palettize", "post_training", {"technique": "palettize", "nbits": 1}, "palettize nbits=1"),
    ]
    store.add_runs("s1", specs)
    values = {"a": (0.99, 800_000), "b": (0.985, 210_000), "c": (0.97, 110_000)}
    for key, (top1, nbytes) in values.items():
        run_id = key * 16
        assert store.claim_run(run_id, "test:1")
        store.complete_run(run_id, {"top1": top1, "agreement": top1, "snr_db": 30.0},
                           {"bytes": nbytes, "ratio_fp16": 800_000 / nbytes, "bits_per_weight": 16 * nbytes / 800_000},
                           {"total_s": 1.5}, None)
    assert store.claim_run("d" * 16, "test:1")
    store.fail_run("d" * 16, "ConfigError: nbits 1 refused", "Traceback (most recent call last): ...")
    return store


def test_report_contains_every_run(tmp_path):
    store = _store_with_runs(tmp_path / "store")
    paths = write_report(store, None, tmp_path / "report", images=False)
    text = paths["html"].read_text()
    for label in ("fp16 baseline", "palettize nbits=4", "dkm n_bits=2", "palettize nbits=1"):
        assert label in text
    assert "nbits 1 refused" in text and "coremltools" in text and "plotly" in text.lower()
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == 4
    assert {r["state"] for r in rows} == {"COMPLETE", "FAILED"}
    assert [r for r in rows if r["label"] == "dkm n_bits=2"][0]["bytes"] == "110000"
    data = json.loads(paths["json"].read_text())
    assert len(data["runs"]) == 4 and data["environment"]["coremltools"] == "9.0"
    # the Results page's figure: one curve per workflow, and where training-time pays off
    assert "post-training (data-free): dotted" in text and "training-time: solid" in text
    assert "Where training-time pays off" in text
    assert "training-time better by" in text and "-1.5 points" in text  # within 210 kB: dkm 0.97 vs palettize 0.985
    assert "smallest within a top-1 drop of 1 point is palettize nbits=4" in text
    assert not (tmp_path / "report" / "tradeoff_bytes.png").exists()


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("BROWSER_PATH"),
                    reason="static export needs a Chromium (bash test.sh installs Debian's)")
def test_report_writes_the_figures_as_png_and_svg(tmp_path):
    store = _store_with_runs(tmp_path / "store")
    paths = write_report(store, None, tmp_path / "report")
    for x in ("bytes", "bits_per_weight"):
        assert paths[f"tradeoff_{x}.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = paths[f"tradeoff_{x}.svg"].read_text()
        assert svg.startswith("<svg") and "training-time: solid" in svg


def test_report_cli(tmp_path, capsys):
    _store_with_runs(tmp_path / "store")
    assert main(["report", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--no-images"]) == 0
    assert (tmp_path / "out" / "report.html").is_file()
    assert main(["report", "--store", str(tmp_path / "nowhere")]) == 2
    assert "no results store" in capsys.readouterr().err
