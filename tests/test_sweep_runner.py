"""Running a sweep for real: the real sample MNIST model, real images, real
coremltools, real worker processes. One sweep holds good points, a point that
raises, a point whose worker is killed and a point that times out; then the
same sweep again must recompute nothing."""

from __future__ import annotations

import argparse
import shutil
import textwrap
import threading
from pathlib import Path

import pytest

from compress_lab.store import open_store
from compress_lab.cli import sweep as cli
from compress_lab.sweep.runner import request_cancel, run_sweep
from compress_lab.sweep.spec import load_spec

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
TIMEOUT_S = 15

# A real (tiny) technique: it naps, optionally fails or kills its own process, then
# really quantizes the model with coremltools. Loaded by the sweep as a plugin file.
PLUGIN = textwrap.dedent('''
    import os, signal, time
    from dataclasses import dataclass
    from compress_lab.techniques.base import REGISTRY, CompressOutcome, TechniqueConfig, register

    @dataclass(frozen=True)
    class SleepyQuantConfig(TechniqueConfig):
        name = "test_sleepy_quant"
        family = "post_training"
        seconds: float = 0.0
        crash: bool = False
        fail: bool = False

    def quantize_after_a_nap(config, ctx, out):
        import coremltools as ct
        from compress_lab.models.convert import save_mlmodel
        time.sleep(config.seconds)
        if config.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        if config.fail:
            raise RuntimeError("test_sleepy_quant was asked to fail")
        started = time.perf_counter()
        model = ct.models.MLModel(str(ctx.float_package("fp16")), skip_model_load=True)
        op = ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric")
        config = ct.optimize.coreml.OptimizationConfig(global_config=op)
        save_mlmodel(ct.optimize.coreml.linear_quantize_weights(model, config), out)
        return CompressOutcome(out, {"compress_s": time.perf_counter() - started})

    if "test_sleepy_quant" not in REGISTRY.names():
        register(SleepyQuantConfig)(quantize_after_a_nap)
''')


def make_val(folder: Path, per_class: int) -> Path:
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        target = folder / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(image, target / image.name)
    return folder


def write_spec(folder: Path, grid: str, name: str, workers: int = 2, timeout_s: float | None = None) -> Path:
    (folder / "plugin.py").write_text(PLUGIN)
    timeout = f"timeout_s = {timeout_s}" if timeout_s else ""
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        [model]
        source = "{SAMPLES / 'mnist_cnn'}"
        [data]
        validation = "val"
        [run]
        name = "{name}"
        workers = {workers}
        {timeout}
        plugins = ["plugin.py"]
    """) + grid)
    return path


GRID = """
[[grid]]
technique = "palettize"
nbits = 4
[[grid]]
technique = "quantize"
[[grid]]
technique = "test_sleepy_quant"
fail = [false, true]
[[grid]]
technique = "test_sleepy_quant"
crash = true
[[grid]]
technique = "test_sleepy_quant"
seconds = 600
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    make_val(folder / "val", per_class=10)
    spec_path = write_spec(folder, GRID, "mixed", workers=2, timeout_s=TIMEOUT_S)
    calls = []
    result = run_sweep(load_spec(spec_path), folder / "store", progress=lambda d, t, r: calls.append((d, t, r.label)))
    return spec_path, folder / "store", result, calls


def by_label(runs):
    return {r.label: r for r in runs}


def test_good_points_complete_with_metrics_sizes_timings_and_a_package(sweep):
    _, store, result, _ = sweep
    runs = by_label(result.runs)
    assert result.status == "done" and result.counts == {"PENDING": 0, "RUNNING": 0, "COMPLETE": 6, "FAILED": 3}
    assert set(runs) >= {"baseline PyTorch", "baseline fp32", "baseline fp16", "palettize nbits=4",
                         "quantize dtype=int8", "test_sleepy_quant"}
    for label in ("palettize nbits=4", "quantize dtype=int8", "test_sleepy_quant", "baseline fp16", "baseline fp32"):
        run = runs[label]
        assert run.state == "COMPLETE", (label, run.error)
        assert run.metrics["n"] == 100 and run.metrics["top1"] >= 0.95 and run.metrics["agreement"] >= 0.95
        assert "logits" not in run.metrics and run.metrics["snr_db"] > 10
        assert run.timings["evaluate_s"] > 0 and run.timings["total_s"] >= run.timings["evaluate_s"]
        package = store / run.artifact_path
        assert package.name == "model.mlpackage" and (package / "Manifest.json").is_file()
        assert run.sizes["bytes"] == sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    assert runs["baseline fp16"].sizes["ratio_fp16"] == pytest.approx(1.0)
    assert runs["baseline fp32"].sizes["ratio_fp16"] == pytest.approx(0.5, rel=0.05)
    assert 3.0 < runs["palettize nbits=4"].sizes["ratio_fp16"] < 4.5      # 4-bit LUT vs 16-bit weights
    assert 1.7 < runs["quantize dtype=int8"].sizes["ratio_fp16"] < 2.2       # int8 vs fp16
    assert runs["palettize nbits=4"].timings["compress_s"] > 0
    torch_run = runs["baseline PyTorch"]
    assert torch_run.state == "COMPLETE" and torch_run.metrics["agreement"] == 1.0 and torch_run.artifact_path is None
    assert torch_run.sizes["bytes"] == pytest.approx(runs["baseline fp32"].sizes["weights_bytes"], rel=0.05)
    assert open_store(store).get_sweep(result.sweep_id).status == "done"


def test_a_raising_point_is_recorded_with_its_error_and_traceback(sweep):
    run = by_label(sweep[2].runs)["test_sleepy_quant fail=True"]
    assert run.state == "FAILED"
    assert run.error == "RuntimeError: test_sleepy_quant was asked to fail"
    assert "quantize_after_a_nap" in run.traceback and run.metrics is None


def test_a_killed_worker_fails_its_run_with_the_signal_and_is_replaced(sweep):
    run = by_label(sweep[2].runs)["test_sleepy_quant crash=True"]
    assert run.state == "FAILED" and "SIGKILL" in run.error


def test_a_run_past_its_timeout_is_stopped_and_recorded(sweep):
    run = by_label(sweep[2].runs)["test_sleepy_quant seconds=600.0"]
    assert run.state == "FAILED" and run.error.startswith(f"timed out after {TIMEOUT_S} s")
    assert run.finished_at - run.started_at < TIMEOUT_S + 10


def test_progress_reports_every_recorded_run_in_order(sweep):
    _, _, result, calls = sweep
    assert [d for d, _, _ in calls] == list(range(1, 10)) and {t for _, t, _ in calls} == {9}
    assert {label for _, _, label in calls} == {r.label for r in result.runs}


def test_the_same_sweep_again_recomputes_nothing(sweep):
    spec_path, store, first, _ = sweep
    artifacts = {p: p.stat().st_mtime_ns for p in (store / "artifacts").rglob("*")}
    before = {r.run_id: (r.attempts, r.finished_at) for r in first.runs}
    again = run_sweep(load_spec(spec_path), store)
    assert again.executed == 0 and again.reused == 6 and again.sweep_id == first.sweep_id
    assert {r.run_id: (r.attempts, r.finished_at) for r in again.runs} == before
    assert {p: p.stat().st_mtime_ns for p in (store / "artifacts").rglob("*")} == artifacts
    assert again.elapsed_s < 0.05 * sum(r.timings["total_s"] for r in first.runs if r.timings) + 5


def test_the_cli_prints_a_summary_table_and_exits_1_when_runs_failed(sweep, capsys):
    spec_path, store, _, _ = sweep
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args([str(spec_path), "--store", str(store), "--quiet"])) == 1
    out = capsys.readouterr().out
    assert "baseline fp16" in out and "palettize" in out and "0 run(s) computed, 6 reused" in out
    assert "FAILED test_sleepy_quant fail=True: RuntimeError" in out


def test_the_cli_runs_failed_points_again_only_with_retry_failed(tmp_path):
    make_val(tmp_path / "val", per_class=1)
    spec_path = write_spec(tmp_path, "[[grid]]\ntechnique = 'test_sleepy_quant'\nfail = true\n", "retry", workers=1)
    store = tmp_path / "store"
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)

    def failed_attempts():
        runs = by_label(open_store(store).list_runs(open_store(store).list_sweeps()[0].sweep_id))
        run = runs["test_sleepy_quant fail=True"]
        assert run.state == "FAILED"
        return run.attempts

    assert cli.run(parser.parse_args([str(spec_path), "--store", str(store), "--quiet"])) == 1
    first = failed_attempts()
    assert cli.run(parser.parse_args([str(spec_path), "--store", str(store), "--quiet"])) == 1
    assert failed_attempts() == first  # a plain re-run resumes: failed points stay recorded as they were
    assert cli.run(parser.parse_args([str(spec_path), "--store", str(store), "--quiet", "--retry-failed"])) == 1
    assert failed_attempts() == first + 1


def test_cancel_stops_the_sweep_and_leaves_the_unfinished_runs_pending(tmp_path):
    make_val(tmp_path / "val", per_class=2)
    spec_path = write_spec(tmp_path, "[[grid]]\ntechnique = 'test_sleepy_quant'\nseconds = [300, 301]\n", "cancel", workers=1)
    store = tmp_path / "store"
    started = threading.Event()

    def on_event(kind, task, data):
        if kind == "started" and task.config["technique"] == "test_sleepy_quant":
            started.set()
            request_cancel(store)

    result = run_sweep(load_spec(spec_path), store, on_event=on_event)
    assert started.is_set() and result.status == "cancelled"
    states = {r.label: r.state for r in result.runs}
    assert states["test_sleepy_quant seconds=300.0"] == "PENDING" and states["test_sleepy_quant seconds=301.0"] == "PENDING"
    assert states["baseline PyTorch"] == "COMPLETE"
    assert open_store(store).get_sweep(result.sweep_id).status == "cancelled"
    assert result.elapsed_s < 120


def test_the_driver_evaluates_the_baselines_and_the_workers_the_techniques(tmp_path):
    make_val(tmp_path / "val", per_class=2)
    spec_path = write_spec(tmp_path, "[[grid]]\ntechnique = 'quantize'\n", "warm", workers=1)
    result = run_sweep(load_spec(spec_path), tmp_path / "store")
    runs = by_label(result.runs)
    assert result.ok and result.executed == 4
    for label in ("baseline PyTorch", "baseline fp32", "baseline fp16"):
        assert runs[label].worker.endswith(":driver"), (label, runs[label].worker)
        assert runs[label].metrics["top1"] == runs["baseline PyTorch"].metrics["top1"]
    assert ":sweep-w0" in runs["quantize dtype=int8"].worker
    assert (tmp_path / "store" / runs["baseline fp32"].artifact_path / "Manifest.json").is_file()


def test_workers_that_cannot_start_stop_the_sweep_with_the_reason(tmp_path, monkeypatch):
    from compress_lab.errors import LabError
    from compress_lab.sweep.executors import LocalExecutor

    def no_processes(self, index):
        raise OSError("Resource temporarily unavailable")
    monkeypatch.setattr(LocalExecutor, "_spawn", no_processes)
    make_val(tmp_path / "val", per_class=1)
    spec_path = write_spec(tmp_path, "[[grid]]\ntechnique = 'quantize'\n", "nostart", workers=1)
    with pytest.raises(LabError, match="could not start the sweep's worker processes: OSError: Resource temporarily"):
        run_sweep(load_spec(spec_path), tmp_path / "store")
    store = open_store(tmp_path / "store")
    runs = store.list_runs(store.list_sweeps()[0].sweep_id)
    assert {r.label: r.state for r in runs}["quantize dtype=int8"] == "PENDING"  # nothing lost: a re-run picks it up


def test_a_validation_folder_with_no_readable_image_stops_the_sweep_before_any_point(tmp_path):
    from compress_lab.errors import DataError
    for digit in range(10):
        (tmp_path / "val" / str(digit)).mkdir(parents=True)
        (tmp_path / "val" / str(digit) / "scan.png").write_bytes(b"not a png")
    spec_path = write_spec(tmp_path, "[[grid]]\ntechnique = 'quantize'\n", "unreadable", workers=1)
    with pytest.raises(DataError, match=r"no image in .*val could be read \(10 file\(s\) skipped, e.g. .*scan.png"):
        run_sweep(load_spec(spec_path), tmp_path / "store")
    store = open_store(tmp_path / "store")
    runs = store.list_runs(store.list_sweeps()[0].sweep_id)
    assert {r.state for r in runs} == {"PENDING"}  # nothing recorded as if measured
