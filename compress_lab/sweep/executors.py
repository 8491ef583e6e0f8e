"""Where runs execute: a pool of local worker processes, or a Ray cluster.

Both run `task.execute` and hand its outcome back to the sweep's driver, which
alone writes the results store (SQLite stays single-writer; a remote Ray worker
never needs the database, only the artifacts folder).

Local: persistent workers pull one run at a time, so the torch/coremltools
import is paid once per worker (workers fork from a forkserver that imported
them once). A run that passes its timeout has its worker killed and replaced;
a worker that dies (killed, out of memory) fails its run with the exit signal.
Workers exit by themselves when the driver dies.

Ray: `ray.init(address=...)` joins a cluster, or a local one is started with
`num_cpus=workers`. For a remote cluster the store folder (artifacts, tensor
cache, float packages, reference logits) must be on storage every node mounts
at the same path; results travel back to the driver as return values."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from compress_lab.errors import ConfigError, LabError
from compress_lab.sweep.task import RunTask, SweepContext, execute, outcome_failed

PRELOAD = ["torch", "compress_lab.api",  # imports coremltools without its console noise
           "compress_lab.evaluate", "compress_lab.runtime", "compress_lab.models.size",
           "compress_lab.techniques", "compress_lab.sweep.task"]
PROGRESS_INTERVAL_S = 0.2


@dataclass
class Event:
    """What an executor reports: a run `started`, `progress` of a run, or a run `done` (with its outcome)."""

    kind: str
    task: RunTask
    outcome: dict | None = None
    progress: dict | None = None


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the worker process vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {exitcode}"


# --------------------------------------------------------------------------- local

@contextlib.contextmanager
def _main_module_hidden():
    """Start workers without re-importing the caller's __main__ (a script, a notebook,
    Streamlit): workers need only compress_lab, and re-running a script without an
    `if __name__ == "__main__"` guard in each worker would start sweeps recursively."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _worker_main(conn: Connection, lifeline: Connection, threads: int | None) -> None:
    """A local worker: pull (task, context) from `conn`, send events back."""
    def watch_driver() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(3)  # the driver is gone: stop at once, its runs will be redone

    threading.Thread(target=watch_driver, daemon=True, name="lifeline").start()
    if threads:
        try:
            import torch
            torch.set_num_threads(int(threads))
        except Exception:
            pass
    try:
        from compress_lab.sweep.task import warm_up
        warm_up()
    except Exception:
        pass  # a missing module fails the runs that need it, with its error
    send_lock = threading.Lock()

    def send(message) -> None:
        with send_lock:
            conn.send(message)

    send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task, ctx = message
        send(("started", task.run_id))
        last = [0.0]

        def progress(event) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_INTERVAL_S and event.done < event.total:
                return
            last[0] = now
            try:
                send(("progress", task.run_id, asdict(event)))
            except Exception:
                pass

        outcome = execute(task, ctx, progress=progress)
        send(("done", task.run_id, outcome))


@dataclass
class _Slot:
    index: int
    process: Any
    conn: Connection
    lifeline: Connection
    task: RunTask | None = None
    started_at: float | None = None   # when the worker picked up the task (timeout clock)
    ready: bool = False

    @property
    def worker(self) -> str:
        """The store's worker id: host:pid of this worker process (so reset_stale sees it die)."""
        return f"{socket.gethostname()}:{self.process.pid}:sweep-w{self.index}"


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None, timeout_s: float | None = None, threads: int | None = None):
        self.workers = int(workers or os.cpu_count() or 1)
        if self.workers < 1:
            raise ConfigError(f"workers = {workers!r} must be at least 1")
        self.timeout_s = timeout_s
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)
        self._ctx = None
        self._slots: list[_Slot] = []
        self._idle_deaths = 0
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._stopping = False

    # lifecycle
    def start(self) -> None:
        """Start the workers in the background: the forkserver's first start imports torch and
        coremltools (seconds), which overlaps with the driver preparing the shared inputs."""
        if self._starter is not None:
            return
        self._ctx = mp.get_context("forkserver")
        try:
            self._ctx.set_forkserver_preload(PRELOAD)
        except Exception:
            pass
        self._starter = threading.Thread(target=self._start_workers, name="compress-lab-sweep-start", daemon=True)
        self._starter.start()

    def _start_workers(self) -> None:
        try:
            for index in range(self.workers):
                if self._stopping:
                    return
                self._slots.append(self._spawn(index))  # the driver only reads the list (copies of it)
        except BaseException as e:  # noqa: BLE001 - raised in the driver by poll()
            self._start_error = e

    def _check_started(self) -> None:
        if self._start_error is not None:
            raise LabError(f"could not start the sweep's worker processes: {type(self._start_error).__name__}: "
                           f"{self._start_error}; run `python -c 'import compress_lab.techniques, compress_lab.evaluate'` "
                           "to see why") from self._start_error

    def _spawn(self, index: int) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        life_r, life_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_worker_main, args=(child, life_r, self.threads),
                                    name=f"compress-lab-sweep-w{index}", daemon=True)
        with _main_module_hidden():
            process.start()
        child.close()
        life_r.close()
        return _Slot(index, process, parent, life_w)

    def stop(self, kill: bool = False) -> None:
        self._stopping = True
        if self._starter is not None:
            # at most one worker is being started: its slot is then stopped below (a forkserver stuck in
            # its imports is not waited for; its workers exit by themselves once this driver is gone)
            self._starter.join(timeout=60)
        for slot in self._slots:
            if kill or slot.task is not None:
                slot.process.kill()
            else:
                try:
                    slot.conn.send(None)
                except OSError:
                    slot.process.kill()
        for slot in self._slots:
            slot.process.join(timeout=10)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=5)
            slot.conn.close()
            slot.lifeline.close()
        self._slots = []
        self._starter = None
        self._stopping = False

    # dispatch
    def free_slots(self) -> list[_Slot]:
        self._check_started()
        return [s for s in list(self._slots) if s.task is None]

    def busy(self) -> bool:
        return any(s.task is not None for s in self._slots)

    def running(self) -> list[tuple[RunTask, str]]:
        return [(s.task, s.worker) for s in self._slots if s.task is not None]

    def submit(self, slot: _Slot, task: RunTask, ctx: SweepContext) -> None:
        slot.task, slot.started_at = task, None
        try:
            slot.conn.send((task, ctx))
        except OSError:
            pass  # the worker died: poll() reports it

    def poll(self, timeout: float) -> list[Event]:
        self._check_started()
        events: list[Event] = []
        busy = [s for s in list(self._slots) if s.task is not None or not s.ready]
        waitables = [s.conn for s in busy] + [s.process.sentinel for s in busy]
        if waitables:
            deadline = self._next_deadline()
            wait_s = timeout if deadline is None else max(0.0, min(timeout, deadline - time.monotonic()))
            wait(waitables, timeout=wait_s)
        else:
            time.sleep(min(timeout, 0.05))
        for slot in list(self._slots):
            events.extend(self._drain(slot))
        now = time.monotonic()
        for slot in list(self._slots):
            if (slot.task is not None and self.timeout_s and slot.started_at is not None
                    and now - slot.started_at > self.timeout_s):
                task = slot.task
                self._replace(slot)
                events.append(Event("done", task, outcome_failed(
                    f"timed out after {self.timeout_s:g} s (the worker was stopped; raise [run] timeout_s / --timeout "
                    "to give this run more time)")))
        return events

    def _next_deadline(self) -> float | None:
        if not self.timeout_s:
            return None
        starts = [s.started_at for s in self._slots if s.task is not None and s.started_at is not None]
        return min(starts) + self.timeout_s if starts else None

    def _drain(self, slot: _Slot) -> list[Event]:
        events = []
        while True:
            try:
                if not slot.conn.poll():
                    break
                message = slot.conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "ready":
                slot.ready = True
            elif kind == "started" and slot.task is not None:
                slot.started_at = time.monotonic()
                events.append(Event("started", slot.task))
            elif kind == "progress" and slot.task is not None:
                events.append(Event("progress", slot.task, progress=message[2]))
            elif kind == "done" and slot.task is not None:
                events.append(Event("done", slot.task, message[2]))
                slot.task, slot.started_at = None, None
        if not slot.process.is_alive():
            slot.process.join(timeout=1)
            task = slot.task
            self._idle_deaths = 0 if task is not None else self._idle_deaths + 1
            if self._idle_deaths > 3 * self.workers:
                raise LabError(f"sweep worker processes keep dying before running anything ({describe_exit(slot.process.exitcode)}); "
                               "run `python -c 'import compress_lab.techniques, compress_lab.evaluate'` to see why")
            self._replace(slot)
            if task is not None:
                events.append(Event("done", task, outcome_failed(
                    f"{describe_exit(slot.process.exitcode)} while running this point; the sweep went on")))
        return events

    def _replace(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(timeout=5)
        slot.conn.close()
        slot.lifeline.close()
        fresh = self._spawn(slot.index)
        self._slots[self._slots.index(slot)] = fresh
        slot.task = None


# --------------------------------------------------------------------------- ray

def _ray_execute(task: RunTask, ctx: SweepContext) -> dict:
    return execute(task, ctx)


@dataclass
class _RaySlot:
    worker: str
    ref: Any = None
    task: RunTask | None = None
    submitted_at: float | None = None


class RayExecutor:
    name = "ray"

    def __init__(self, workers: int | None = None, timeout_s: float | None = None, address: str | None = None,
                 threads: int | None = None):
        self.requested_workers = workers
        self.workers = int(workers or os.cpu_count() or 1)
        self.timeout_s = timeout_s
        self.address = address
        self.threads = threads
        self._started_ray = False
        self._slots: list[_RaySlot] = []
        self._remote = None

    def start(self) -> None:
        if self._remote is not None:
            return
        try:
            import ray
        except ImportError:
            raise ConfigError("the Ray executor needs ray: pip install 'ray[default]' (or use --executor local)") from None
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        if self.address and self.requested_workers is None:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", self.workers)))
        self.threads = self.threads or 1
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
        name = f"{socket.gethostname()}:{os.getpid()}"
        self._slots = [_RaySlot(f"{name}:ray-{i}") for i in range(self.workers)]

    def stop(self, kill: bool = False) -> None:
        import ray
        for slot in self._slots:
            if slot.ref is not None:
                try:
                    ray.cancel(slot.ref, force=True)
                except Exception:
                    pass
        self._slots = []
        self._remote = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def free_slots(self) -> list[_RaySlot]:
        return [s for s in self._slots if s.task is None]

    def busy(self) -> bool:
        return any(s.task is not None for s in self._slots)

    def running(self) -> list[tuple[RunTask, str]]:
        return [(s.task, s.worker) for s in self._slots if s.task is not None]

    def submit(self, slot: _RaySlot, task: RunTask, ctx: SweepContext) -> None:
        if self.threads and not ctx.threads:
            import dataclasses
            ctx = dataclasses.replace(ctx, threads=self.threads)
        slot.task, slot.submitted_at = task, time.monotonic()
        slot.ref = self._remote.remote(task, ctx)

    def poll(self, timeout: float) -> list[Event]:
        import ray
        events: list[Event] = []
        busy = [s for s in self._slots if s.task is not None]
        if not busy:
            time.sleep(min(timeout, 0.05))
            return events
        ready, _ = ray.wait([s.ref for s in busy], num_returns=len(busy), timeout=timeout)
        ready = set(ready)
        for slot in busy:
            if slot.ref in ready:
                task = slot.task
                try:
                    outcome = ray.get(slot.ref)
                except Exception as e:  # the task's worker crashed or was killed
                    outcome = outcome_failed(_ray_error(e))
                events.append(Event("done", task, outcome))
                slot.task = slot.ref = slot.submitted_at = None
            elif self.timeout_s and time.monotonic() - slot.submitted_at > self.timeout_s:
                task = slot.task
                try:
                    ray.cancel(slot.ref, force=True)
                except Exception:
                    pass
                events.append(Event("done", task, outcome_failed(
                    f"timed out after {self.timeout_s:g} s (the Ray task was cancelled; raise [run] timeout_s / --timeout "
                    "to give this run more time)")))
                slot.task = slot.ref = slot.submitted_at = None
        return events


def _ray_error(e: Exception) -> str:
    name = type(e).__name__
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if "WorkerCrashed" in name or "worker died" in str(e).lower() or "OutOfMemory" in name:
        return f"the Ray worker running this point died ({name}: {first[:300]}); the sweep went on"
    return f"{name}: {first[:500]}"


def make_executor(kind: str, workers: int | None, timeout_s: float | None, address: str | None = None):
    if kind == "local":
        return LocalExecutor(workers, timeout_s)
    if kind == "ray":
        return RayExecutor(workers, timeout_s, address)
    raise ConfigError(f"executor {kind!r} is not known; use 'local' or 'ray'")
