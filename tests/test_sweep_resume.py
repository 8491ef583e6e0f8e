"""Kill a real sweep process (the CLI, started in the background as the app does)
with SIGKILL while runs are in progress, start it again: finished runs are not
redone, interrupted ones are, nothing is lost or duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import time
from pathlib import Path

from compress_lab.store import open_store, worker_alive
from compress_lab.sweep.background import SweepHandle, launch_background

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"

PLUGIN = textwrap.dedent('''
    import time
    from dataclasses import dataclass
    from compress_lab.techniques.base import REGISTRY, CompressOutcome, TechniqueConfig, register

    @dataclass(frozen=True)
    class NapQuantConfig(TechniqueConfig):
        name = "test_nap_quant"
        family = "post_training"
        seconds: float = 0.0

    def quantize_after_a_nap(config, ctx, out):
        import coremltools as ct
        from compress_lab.models.convert import save_mlmodel
        time.sleep(config.seconds)
        model = ct.models.MLModel(str(ctx.float_package("fp16")), skip_model_load=True)
        op = ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric")
        config = ct.optimize.coreml.OptimizationConfig(global_config=op)
        save_mlmodel(ct.optimize.coreml.linear_quantize_weights(model, config), out)
        return CompressOutcome(out, {})

    if "test_nap_quant" not in REGISTRY.names():
        register(NapQuantConfig)(quantize_after_a_nap)
''')

SECONDS = [2.0, 2.5, 3.0, 3.5, 4.0]


def make_spec(folder: Path) -> Path:
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        (folder / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:5]:
            shutil.copy2(image, folder / "val" / class_dir.name / image.name)
    (folder / "plugin.py").write_text(PLUGIN)
    spec = folder / "resume.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{SAMPLES / 'mnist_cnn'}"
        [data]
        validation = "val"
        [run]
        name = "resume"
        workers = 2
        plugins = ["plugin.py"]
        [[grid]]
        technique = "test_nap_quant"
        seconds = {SECONDS}
    """))
    return spec


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path):
    spec = make_spec(tmp_path)
    store_dir = tmp_path / "store"
    handle = launch_background(spec, store_dir, workers=2)
    assert SweepHandle.find(store_dir) == handle and handle.is_running()

    def mid_sweep():
        if not (store_dir / "results.sqlite").exists():
            return None
        store = open_store(store_dir)
        sweeps = store.list_sweeps()
        if not sweeps:
            return None
        runs = [r for r in store.list_runs(sweeps[0].sweep_id) if r.technique == "test_nap_quant"]
        done = [r for r in runs if r.state == "COMPLETE"]
        running = [r for r in runs if r.state == "RUNNING"]
        return (sweeps[0].sweep_id, done, running) if done and running else None

    sweep_id, done_before, running_before = wait_for(mid_sweep, 240, "a sweep with runs both finished and in progress:\n"
                                                     + handle.log_tail())
    os.kill(handle.pid, signal.SIGKILL)
    assert handle.wait(10)
    # its workers notice the driver is gone and stop (no orphan keeps writing artifacts)
    wait_for(lambda: all(worker_alive(r.worker) is False for r in running_before), 15, "orphan workers to exit")

    store = open_store(store_dir)
    assert store.get_sweep(sweep_id).status == "running"          # it never finished
    frozen = {r.run_id: (r.finished_at, r.attempts) for r in done_before}

    resumed = launch_background(spec, store_dir, workers=2)
    assert resumed.wait(240), resumed.log_tail()
    runs = store.list_runs(sweep_id)
    assert len(runs) == 3 + len(SECONDS) and len({r.run_id for r in runs}) == len(runs)
    assert all(r.state == "COMPLETE" for r in runs), [(r.label, r.state, r.error) for r in runs]
    now = {r.run_id: r for r in runs}
    for run_id, (finished_at, attempts) in frozen.items():      # finished before the kill: not redone
        assert (now[run_id].finished_at, now[run_id].attempts) == (finished_at, attempts)
    for run in running_before:                                  # interrupted: redone once more
        assert now[run.run_id].attempts == run.attempts + 1
    assert store.get_sweep(sweep_id).status == "done"
    assert len(store.list_sweeps()) == 1
    packages = sorted(p.parent.name for p in (store_dir / "artifacts").glob("*/model.mlpackage"))
    assert packages == sorted(r.run_id for r in runs if r.artifact_path)
    assert not list((store_dir / "artifacts").glob("*/*.tmp*"))
    assert "sweep resume-" in resumed.log_tail(5) and "reused" in resumed.log_tail(5)
