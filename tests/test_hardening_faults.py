"""Faults during a sweep, beyond tests/test_sweep_runner.py (raise, SIGKILL, timeout)
and tests/test_store.py (store-level disk full, SIGKILL mid-write): a worker that
runs out of address space, exits, is interrupted, hits a file-size limit, or
returns garbage; a real full disk under the store; an unusable store folder; and
two real `compress-lab sweep` processes sharing one store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress_lab.store import COMPLETE, FAILED, RUNNING, open_store
from compress_lab.sweep.runner import run_sweep
from compress_lab.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "compress_lab.cli.sweep"]

# A real technique (linear quantization with coremltools) that can be told to fail in one way.
PLUGIN = textwrap.dedent('''
    import os, resource, signal, time
    from dataclasses import dataclass
    from compress_lab.techniques.base import REGISTRY, CompressOutcome, TechniqueConfig, register

    @dataclass(frozen=True)
    class FaultConfig(TechniqueConfig):
        name = "test_fault"
        family = "post_training"
        fault: str = "none"
        tag: int = 0          # distinct points that compute the same thing
        seconds: float = 0.0  # a nap before compressing
        hold_until: str = ""  # wait until this file exists (at most 120 s)

    def _vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        return 0

    def quantize(config, ctx, out):
        import coremltools as ct
        from compress_lab.models.convert import save_mlmodel
        time.sleep(config.seconds)
        deadline = time.monotonic() + 120
        while config.hold_until and not os.path.exists(config.hold_until) and time.monotonic() < deadline:
            time.sleep(0.1)
        source = ctx.float_package("fp16")
        if config.fault == "memory":   # a technique that allocates until the address-space limit stops it
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + (256 << 20), hard))
            try:
                blocks = []
                while True:
                    blocks.append(bytearray(32 << 20))
            finally:
                blocks = None
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        if config.fault == "exit":
            os._exit(1)
        if config.fault == "interrupt":
            raise KeyboardInterrupt
        if config.fault == "kill":     # what the kernel's OOM killer does
            os.kill(os.getpid(), signal.SIGKILL)
        if config.fault == "garbage":
            return None
        model = ct.models.MLModel(str(source), skip_model_load=True)
        op = ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)
        mlmodel = ct.optimize.coreml.linear_quantize_weights(model, ct.optimize.coreml.OptimizationConfig(global_config=op))
        if config.fault == "fsize":    # the disk refuses the artifact (EFBIG, as ENOSPC would)
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))
            try:
                save_mlmodel(mlmodel, out)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        else:
            save_mlmodel(mlmodel, out)
        return CompressOutcome(out, {})

    if "test_fault" not in REGISTRY.names():
        register(FaultConfig)(quantize)
''')


def make_tiny_model(folder: Path) -> Path:
    """A 2-layer classifier of 8x8 gray images (model.py + weights.pt + metadata.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent("""
        from torch import nn

        def build_model():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    """))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "metadata.json").write_text(json.dumps({
        "name": "tiny", "input_shape": [1, 8, 8], "class_names": [str(i) for i in range(10)],
        "preprocessing": {"color": "L", "scale": 1 / 255}}))
    return folder


def make_val(folder: Path, per_class: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / str(c) / f"{i}.png")
    return folder


def write_spec(folder: Path, name: str, grid: str, workers: int = 2, extra_run: str = "") -> Path:
    if not (folder / "tiny").exists():
        make_tiny_model(folder / "tiny")
        make_val(folder / "val")
        (folder / "plugin.py").write_text(PLUGIN)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        [model]
        source = "tiny"
        [data]
        validation = "val"
        [run]
        name = "{name}"
        workers = {workers}
        plugins = ["plugin.py"]
        {extra_run}
    """) + textwrap.dedent(grid))
    return path


def by_label(runs) -> dict:
    return {r.label: r for r in runs}


# ------------------------------------------------------------------ runs that die in every way

@pytest.fixture(scope="module")
def faulty_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    spec = write_spec(folder, "faults", """
        [[grid]]
        technique = "test_fault"
        fault = "memory"
        [[grid]]
        technique = "test_fault"
        tag = 1
        [[grid]]
        technique = "test_fault"
        fault = ["exit", "interrupt", "kill", "garbage", "fsize"]
        [[grid]]
        technique = "test_fault"
        tag = 2
    """, workers=1)
    calls = []
    result = run_sweep(load_spec(spec), folder / "store", progress=lambda done, total, run: calls.append((done, total)))
    return folder, result, calls


@pytest.mark.parametrize("fault, reason", [
    ("memory", "MemoryError"),
    ("exit", "the worker process exited with code 1"),
    ("interrupt", "the worker process exited with code 1"),
    ("kill", "killed by SIGKILL (out of memory?"),
    ("garbage", "AttributeError"),
    ("fsize", "cannot save the Core ML package"),
])
def test_a_run_that_dies_is_recorded_failed_with_its_reason(faulty_sweep, fault, reason):
    _, result, _ = faulty_sweep
    run = by_label(result.runs)[f"test_fault fault={fault}"]
    assert run.state == FAILED and reason in run.error, run.error


def test_the_sweep_goes_on_after_every_fault_and_records_every_run(faulty_sweep):
    folder, result, calls = faulty_sweep
    runs = by_label(result.runs)
    assert result.status == "done" and not result.invalid
    assert result.counts == {"PENDING": 0, "RUNNING": 0, "COMPLETE": 5, "FAILED": 6}
    assert [done for done, _ in calls] == list(range(1, 12)) and {total for _, total in calls} == {11}
    for tag in (1, 2):  # the good points (and the baselines) complete, with their packages
        run = runs[f"test_fault tag={tag}"]
        assert run.state == COMPLETE and run.metrics["n"] == 30
        assert (folder / "store" / run.artifact_path / "Manifest.json").is_file()
    store = open_store(folder / "store")
    assert store.integrity_check() == "ok"
    assert not list((folder / "store" / "artifacts").rglob("*.tmp-*")), "a half-written package was left behind"


def test_a_memory_error_leaves_the_worker_usable(faulty_sweep):
    """The address-space limit is lifted after the MemoryError: later points on that worker complete."""
    _, result, _ = faulty_sweep
    runs = by_label(result.runs)
    memory, after = runs["test_fault fault=memory"], runs["test_fault tag=1"]
    assert after.worker == memory.worker and after.state == COMPLETE and after.started_at >= memory.finished_at


# ------------------------------------------------------------------ unusable store folders

def test_a_store_folder_that_cannot_be_created_is_a_clear_cli_error(tmp_path):
    spec = write_spec(tmp_path, "nostore", "[[grid]]\ntechnique = 'test_fault'\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = subprocess.run([*CLI, str(spec), "--store", str(blocker / "store"), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "error: " in done.stderr and "a_file" in done.stderr and "Traceback" not in done.stderr
    assert blocker.read_text() == "not a folder"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_under_the_store_is_a_clear_error_and_the_store_resumes_intact(tmp_path):
    """A real 400 KB filesystem as the store folder: the sweep stops with a clear error, the
    SQLite store stays intact, and after making room the same command finishes every run once."""
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "400k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        spec = write_spec(tmp_path, "full", "[[grid]]\ntechnique = 'test_fault'\ntag = [1, 2, 3, 4, 5, 6]\n",
                          workers=1)
        cmd = [*CLI, str(spec), "--store", str(disk / "store"), "--quiet"]
        full = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert full.returncode == 2 and "disk is full" in full.stderr and "intact" in full.stderr, full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        store = open_store(disk / "store")
        assert store.integrity_check() == "ok"
        before = {r.run_id: r.state for r in store.list_runs(store.list_sweeps()[0].sweep_id)}
        assert len(before) == 9 and COMPLETE in before.values()
        store.close()

        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        resumed = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        report = json.loads(resumed.stdout)
        assert report["counts"]["COMPLETE"] == 9 and report["status"] == "done"
        assert report["executed"] == sum(1 for s in before.values() if s != COMPLETE)  # finished runs are kept
        assert open_store(disk / "store").integrity_check() == "ok"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------------ two sweeps, one store

@pytest.mark.slow
def test_two_sweep_processes_sharing_one_store_lose_and_duplicate_nothing(tmp_path):
    """Two real `compress-lab sweep` processes on one store, with overlapping grids (points 3..5 and a
    held point 99 in both). The second starts while the first holds point 99 and finishes its own points
    before 99 is released: it must wait for 99 (not end as "running" with a run unfinished), and no point
    may be computed twice."""
    release = tmp_path / "release"
    held = f"[[grid]]\ntechnique = 'test_fault'\ntag = 99\nhold_until = '{release}'\n"
    a = write_spec(tmp_path, "a", "[[grid]]\ntechnique = 'test_fault'\ntag = [0, 1, 2, 3, 4, 5]\n" + held, workers=1)
    b = write_spec(tmp_path, "b", "[[grid]]\ntechnique = 'test_fault'\ntag = [3, 4, 5, 6, 7, 8]\n" + held, workers=1)
    store = tmp_path / "shared"

    def start(spec):
        return subprocess.Popen([*CLI, str(spec), "--store", str(store), "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)

    first = start(a)
    try:
        wait_until(lambda: _labels(store, RUNNING) & {"tag=99"}, first, "the first sweep to reach point 99")
        second = start(b)
        wait_until(lambda: {"tag=6", "tag=7", "tag=8"} <= _labels(store, COMPLETE), second,
                   "the second sweep to finish its own points", allow_exit=True)
        time.sleep(2)
    finally:
        release.write_text("go")
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    for p, (out, err) in zip((first, second), outputs):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads(out) for out, _ in outputs]
    for report in reports:
        assert report["status"] == "done" and report["counts"] == {"PENDING": 0, "RUNNING": 0, "COMPLETE": 10, "FAILED": 0}
    assert reports[1]["executed"] == 3  # 6, 7, 8: the shared points and baselines were not computed again
    s = open_store(store)
    assert s.integrity_check() == "ok"
    sweeps = s.list_sweeps()
    ids = [{r.run_id for r in s.list_runs(sw.sweep_id)} for sw in sweeps]
    assert len(sweeps) == 2 and len(ids[0] | ids[1]) == 13 and len(ids[0] & ids[1]) == 7
    for sw in sweeps:
        runs = s.list_runs(sw.sweep_id)
        assert all(r.state == COMPLETE and r.attempts == 1 for r in runs)
        assert all((store / r.artifact_path / "Manifest.json").is_file() for r in runs if r.family != "baseline")
    leftovers = [p.name for p in (store / "work" / "float").iterdir() if not p.name.endswith(("_fp16.mlpackage", "_fp32.mlpackage"))
                 or ".tmp" in p.name or p.name.count(".") > 1]
    assert not leftovers, f"temporary float packages left behind: {leftovers}"


def wait_until(condition, process, what: str, allow_exit: bool = False, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None and not allow_exit:
            raise AssertionError(f"the sweep exited while waiting for {what}: {process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _labels(store: Path, state: str) -> set[str]:
    """The settings part ("tag=N") of the labels of runs in `state`, over all sweeps of the store."""
    if not (store / "results.sqlite").is_file():
        return set()
    try:
        s = open_store(store)
        return {part for sw in s.list_sweeps() for r in s.list_runs(sw.sweep_id, states=[state])
                for part in r.label.split() if part.startswith("tag=")}
    except Exception:
        return set()
