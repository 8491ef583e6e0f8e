"""The sweep driver: plan the runs, reuse what the store already has, prepare the
shared inputs (float packages, reference logits), dispatch the rest to an
executor and record every outcome.

Resuming is running the same spec again: runs left RUNNING by a dead process go
back to PENDING, COMPLETE runs are reused, nothing is duplicated (run ids are
content hashes, see keys.py)."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from compress_lab.errors import CancelledError
from compress_lab.store.base import BASELINE, is_baseline
from compress_lab.sweep import keys
from compress_lab.sweep.spec import InvalidPoint, SweepPlan, SweepSpec, expand
from compress_lab.sweep.task import KIND_FLOAT, KIND_PYTORCH, KIND_TECHNIQUE, RunTask, SweepContext, load_plugins

CANCEL_FILE = "CANCEL"
_IMPORTED_AT = time.time()  # a CANCEL file older than this process is stale
HEARTBEAT_S = 10.0
WORK_DIR = "work"
CACHE_DIR = "tensor_cache"
REFERENCE_DIR = "reference"

ProgressCallback = Callable[[int, int, object], None]   # (done, total, last Run)


@dataclass
class SweepResult:
    sweep_id: str
    store_folder: Path
    runs: list                        # store Runs of the sweep, in order
    counts: dict[str, int]
    invalid: tuple[InvalidPoint, ...]
    executed: int                     # runs computed by this call
    reused: int                       # runs found COMPLETE and reused
    elapsed_s: float
    status: str

    @property
    def ok(self) -> bool:
        return self.counts.get("FAILED", 0) == 0 and self.status == "done" and not self.invalid


@dataclass
class PreparedSweep:
    spec: SweepSpec
    plan: SweepPlan
    sweep_id: str
    store: object
    handle: object
    tasks: list[RunTask]              # every run of the sweep, baselines first
    invalid: tuple[InvalidPoint, ...]
    data_fp: str


def default_store_folder(spec_path: str | Path | None, spec: SweepSpec) -> Path:
    if spec_path is not None:
        return Path(spec_path).resolve().parent / ".lab" / _safe(spec.name)
    return Path.cwd() / "lab-store"


def _safe(name: str) -> str:
    # never "", "." or "..": a name of dots would put the store in the spec's own folder or above it
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lstrip(".") or "sweep"


def stored_spec(spec: SweepSpec) -> dict:
    """The spec as the store keeps it: what defines the results (not workers, executor, timeout)."""
    data = spec.to_dict()
    data["run"] = {"name": spec.run.name}
    if spec.run.plugins:
        data["run"]["plugins"] = list(spec.run.plugins)
    return data


def cancel_requested(store_folder: str | Path) -> bool:
    return (Path(store_folder) / CANCEL_FILE).exists()


def request_cancel(store_folder: str | Path) -> None:
    """Ask a running sweep (in this or another process) to stop after the runs in flight."""
    Path(store_folder).mkdir(parents=True, exist_ok=True)
    (Path(store_folder) / CANCEL_FILE).write_text(str(time.time()))


# --------------------------------------------------------------------------- planning

def prepare(spec: SweepSpec, store_folder: str | Path, plan: SweepPlan | None = None) -> PreparedSweep:
    """Load the model, compute run ids, register the sweep and its runs in the store."""
    from compress_lab.models.handle import load_model
    from compress_lab.store import RunSpec, open_store
    from compress_lab.tasks import task_for

    load_plugins(spec.run.plugins)
    plan = plan or expand(spec)
    handle = load_model(spec.model.source, weights=spec.model.weights, metadata=spec.model.metadata)
    preprocessing = handle.metadata.preprocessing.with_overrides(spec.data.preprocessing or None).to_dict()
    val_fp = keys.data_fingerprint(spec.data.validation, preprocessing, metric=spec.data.metric)
    train_fp = None

    invalid = list(plan.invalid)
    tasks: list[RunTask] = []
    refusals: dict[bool, str | None] = {}

    def training_refusal(config) -> str | None:
        """Why the model cannot be fine-tuned on [data] train (checked once, before any work);
        None when it can, or when a user loss takes over (it decides what it needs)."""
        if spec.data.loss is not None:
            return None
        if True not in refusals:
            task = task_for(handle.metadata)
            source = spec.data.train if config.train_folder_needed() and spec.data.train is not None else None
            refusals[True] = task.training_refusal(handle.metadata, source)
        return refusals[True]
    baseline_formats = ["pytorch", "fp32", "fp16"] if handle.kind == "torch" else ["coreml"]
    for fmt in baseline_formats:
        config = {"technique": BASELINE, "format": fmt}
        kind = KIND_PYTORCH if fmt == "pytorch" else KIND_FLOAT
        label = f"baseline {'PyTorch' if fmt == 'pytorch' else fmt if fmt != 'coreml' else 'Core ML'}"
        tasks.append(RunTask(keys.run_id(handle.fingerprint, config, val_fp), kind, config, label, BASELINE))
    for point in plan.points:
        config = point.config
        if config.family == "training_time" and handle.kind != "torch":
            invalid.append(InvalidPoint(point.grid_index, config.to_dict(),
                                        f"technique {config.name!r} fine-tunes the PyTorch model; {spec.model.source} "
                                        "is a Core ML package: give the PyTorch model (definition + weights or "
                                        "TorchScript) as [model] source to use training-time techniques"))
            continue
        refusal = training_refusal(config) if config.needs_loss else None
        if refusal:
            invalid.append(InvalidPoint(point.grid_index, config.to_dict(), f"technique {config.name!r}: {refusal}"))
            continue
        data_fp = val_fp
        extra = config.extra_data_folder()
        if extra is not None and Path(extra).expanduser().exists():  # a calibration source of its own
            data_fp = keys.data_fingerprint(spec.data.validation, preprocessing, Path(extra).expanduser(),
                                            metric=spec.data.metric)
        elif config.train_folder_needed():
            if spec.data.train is None:
                invalid.append(InvalidPoint(point.grid_index, config.to_dict(),
                                            f"technique {config.name!r} needs {config.data_need.value} data; "
                                            "add `train = \"FOLDER\"` to [data]"))
                continue
            if train_fp is None:
                train_fp = keys.data_fingerprint(spec.data.validation, preprocessing, spec.data.train,
                                                 metric=spec.data.metric, loss=spec.data.loss)
            data_fp = train_fp
        cfg = config.to_dict()
        tasks.append(RunTask(keys.run_id(handle.fingerprint, cfg, data_fp), KIND_TECHNIQUE, cfg, config.label(),
                             config.family))

    store = open_store(store_folder)
    stored = stored_spec(spec)
    sweep_id = keys.sweep_id(spec.name, stored, handle.fingerprint)
    store.create_sweep(sweep_id, spec.name, stored, handle.fingerprint)
    store.add_runs(sweep_id, [RunSpec(t.run_id, t.config["technique"], t.family, t.config, t.label) for t in tasks])
    return PreparedSweep(spec, plan, sweep_id, store, handle, tasks, tuple(invalid), val_fp)


# --------------------------------------------------------------------------- shared inputs

def _prepare_inputs(prep: PreparedSweep, store_folder: Path, driver: str, record) -> SweepContext:
    """Float packages, their sizes and the reference logits: converted/computed once, cached in the store folder."""
    from compress_lab.data import TensorCache
    from compress_lab.evaluate import SNR_CAP_DB, evaluate
    from compress_lab.models.size import package_size
    from compress_lab.sweep.task import outcome_failed, outcome_ok, predictor_of, save_reference, torch_sizes
    from compress_lab.tasks import task_for
    from compress_lab.techniques import CompressContext

    spec, handle = prep.spec, prep.handle
    workdir = store_folder / WORK_DIR
    cache_dir = store_folder / CACHE_DIR
    meta = handle.metadata
    preprocessing = meta.preprocessing.with_overrides(spec.data.preprocessing or None)
    task = task_for(meta)
    suffix = ".npy" if task.name == "classification" else ".npz"  # a classifier's logits, or every output
    reference = store_folder / REFERENCE_DIR / f"{handle.fingerprint[:16]}_{prep.data_fp[:16]}{suffix}"
    evaluation: dict = {}
    metric = None
    if spec.data.metric:
        from compress_lab.metrics import load_metric
        metric = load_metric(spec.data.metric)   # a file that does not load stops the sweep before any run

    def evaluate_reference() -> None:  # in a thread: PyTorch inference overlaps the conversions below
        try:
            t = time.perf_counter()
            predictor = predictor_of(handle, None if handle.kind == "torch" else handle.mlpackage)
            source = task.open_source(spec.data.validation, meta)
            extra = {"preprocessing": preprocessing} if task.name == "classification" else {}
            data = task.dataset(source, meta, batch_size=spec.data.batch_size, cache=TensorCache(cache_dir), **extra)
            evaluation["result"] = evaluate(predictor, data, task, None, meta=meta, metric=metric,
                                            metric_errors="keep")
            evaluation["seconds"] = time.perf_counter() - t
        except BaseException as e:  # noqa: BLE001 - raised again in the driver below
            evaluation["error"] = e

    evaluator = None
    if not reference.is_file():
        evaluator = threading.Thread(target=evaluate_reference, name="compress-lab-reference", daemon=True)
        evaluator.start()
    compress_ctx = CompressContext(handle=handle, workdir=workdir)
    baseline_sizes = {}
    for precision in ("fp32", "fp16"):  # on an error or Ctrl-C the evaluation thread is not waited for
        path = compress_ctx.float_package(precision)
        report = package_size(path)
        baseline_sizes[precision] = {"path": str(path), "package_bytes": report.package_bytes,
                                     "weights_bytes": report.weights_bytes, "n_weights": report.n_weights}
    if evaluator is not None:
        evaluator.join()
    if "error" in evaluation:
        raise evaluation["error"]
    if evaluator is not None:
        result, evaluate_s = evaluation["result"], evaluation["seconds"]
        if result.n == 0:  # every point would be "measured" on nothing
            from compress_lab.errors import DataError
            example = f", e.g. {result.skipped_files[0][0]}: {result.skipped_files[0][1]}" if result.skipped_files else ""
            raise DataError(f"no image in {spec.data.validation} could be read ({result.skipped} file(s) skipped"
                            f"{example}); replace or remove the unreadable files, then run the sweep again")
        save_reference(reference, result)
        # The PyTorch baseline is exactly this evaluation (its own reference: agreement 1, SNR capped).
        torch_task = next((t for t in prep.tasks if t.kind == KIND_PYTORCH), None)
        if torch_task is not None and prep.store.claim_run(torch_task.run_id, driver):
            metrics = result.to_dict()
            metrics.update(snr_db=SNR_CAP_DB)
            if task.name == "classification" or any(o.meaning == "class_scores" for o in meta.io.outputs):
                metrics["agreement"] = 1.0
            if result.metric_error:  # the reference is good; the baseline's metric failed: that is its error
                record(torch_task, outcome_failed(result.metric_error), driver)
            else:
                record(torch_task, outcome_ok(metrics, torch_sizes(handle, baseline_sizes),
                                              {"evaluate_s": evaluate_s, "total_s": evaluate_s}, None), driver)
    return SweepContext(
        store_folder=str(store_folder), model=spec.model.to_dict(), validation=str(spec.data.validation),
        train=str(spec.data.train) if spec.data.train else None, preprocessing=dict(spec.data.preprocessing),
        batch_size=spec.data.batch_size, reference_path=str(reference), baseline_sizes=baseline_sizes,
        workdir=str(workdir), cache_dir=str(cache_dir), plugins=tuple(str(p) for p in spec.run.plugins),
        metric=spec.data.metric, loss=spec.data.loss)


# --------------------------------------------------------------------------- running

def _reset_stale(store, sweep_id: str, grace_s: float = 5.0) -> None:
    """RUNNING runs whose worker died go back to PENDING. Workers of a killed driver
    stop within moments (their lifeline breaks): give them `grace_s` to go."""
    from compress_lab.store import RUNNING, worker_alive
    deadline = time.monotonic() + grace_s
    while True:
        store.reset_stale(sweep_id)
        held = [r for r in store.list_runs(sweep_id, states=[RUNNING]) if worker_alive(r.worker)]
        if not held or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def run_sweep(spec: SweepSpec, store_folder: str | Path, *, workers: int | None = None, executor: str | None = None,
              address: str | None = None, timeout_s: float | None = None, retry_failed: bool = False,
              progress: ProgressCallback | None = None, on_event: Callable | None = None,
              cancel_event: threading.Event | None = None, plan: SweepPlan | None = None) -> SweepResult:
    """Run (or resume) the sweep; returns when every run is COMPLETE or FAILED, or on cancel.

    `progress(done, total, run)` is called after each run is recorded; `on_event(kind, task, data)`
    gets every event ("invalid", "queued", "started", "progress", "done"). Cancel with `cancel_event` or
    request_cancel(store_folder) (a CANCEL file)."""
    from compress_lab.store import COMPLETE, FAILED, PENDING, RUNNING, worker_name

    started = time.perf_counter()
    store_folder = Path(store_folder).resolve()
    spec = spec.with_run(workers=workers, executor=executor, timeout_s=timeout_s, address=address)
    cancel_file = store_folder / CANCEL_FILE
    if cancel_file.exists() and cancel_file.stat().st_mtime < _IMPORTED_AT - 1.0:
        cancel_file.unlink(missing_ok=True)  # left over from an earlier, cancelled sweep
    prep = prepare(spec, store_folder, plan)
    store = prep.store
    if on_event is not None:  # points found invalid only once the model is loaded (e.g. fine-tuning a Core ML model)
        for bad in prep.invalid[len(prep.plan.invalid):]:
            on_event("invalid", None, bad)
    store.set_sweep_status(prep.sweep_id, "running")
    _reset_stale(store, prep.sweep_id)
    driver = worker_name("driver")

    by_id = {r.run_id: r for r in store.list_runs(prep.sweep_id)}
    total = len(prep.tasks)
    # RUNNING here means held by another live process (e.g. a second sweep on this store): claiming fails
    # and the run is waited for, so this sweep ends only when all its runs are finished
    todo_states = (PENDING, FAILED, RUNNING) if retry_failed else (PENDING, RUNNING)
    todo = [t for t in prep.tasks if by_id[t.run_id].state in todo_states]
    reused = sum(1 for t in prep.tasks if by_id[t.run_id].state == COMPLETE)
    done = total - len(todo)
    counters = {"done": done, "executed": 0}
    counted: set[str] = set()   # run ids already reported by this call

    def record(task: RunTask, outcome: dict, worker: str) -> None:
        try:
            if outcome.get("ok"):
                run = store.complete_run(task.run_id, outcome["metrics"], outcome["sizes"], outcome["timings"],
                                         outcome.get("artifact_path"), worker=worker)
            else:
                run = store.fail_run(task.run_id, outcome.get("error", "failed"), outcome.get("traceback", ""),
                                     worker=worker)
        except Exception as e:  # e.g. the run was reset by another process meanwhile
            print(f"warning: could not record run {task.run_id} ({task.label}): {e}", file=sys.stderr)
            return
        counted.add(task.run_id)
        counters["done"] += 1
        counters["executed"] += 1
        if progress is not None:
            progress(counters["done"], total, run)

    def settled(run) -> None:  # a run of this sweep that another process computed meanwhile
        if run.run_id in counted:  # e.g. the PyTorch baseline, recorded while preparing the inputs
            return
        counted.add(run.run_id)
        counters["done"] += 1
        if progress is not None:
            progress(counters["done"], total, run)

    status = "done"
    if todo:
        runner = None
        try:
            from compress_lab.sweep.executors import make_executor
            runner = make_executor(spec.run.executor, spec.run.workers, spec.run.timeout_s, spec.run.address)
            runner.start()   # workers import torch/coremltools while the driver prepares the shared inputs
            ctx = _prepare_inputs(prep, store_folder, driver, record)
            status = _dispatch(prep, runner, ctx, todo, record, retry_failed, on_event, cancel_event, store_folder,
                               settled, driver)
        except CancelledError:
            status = "cancelled"
        except KeyboardInterrupt:
            runner.stop(kill=True)
            runner = None
            store.reset_stale(prep.sweep_id, older_than_s=0.0 if spec.run.executor == "ray" else None)
            store.set_sweep_status(prep.sweep_id, "cancelled")
            raise
        finally:
            if runner is not None:
                runner.stop(kill=status == "cancelled")
    if status == "done" and store.counts(prep.sweep_id)[RUNNING]:
        status = "running"  # another live process holds some runs: the sweep is not finished
    if status == "cancelled":  # the runs in flight were stopped: they go back to PENDING
        store.reset_stale(prep.sweep_id, older_than_s=0.0 if spec.run.executor == "ray" else None)
    store.set_sweep_status(prep.sweep_id, status)
    runs = store.list_runs(prep.sweep_id)
    return SweepResult(prep.sweep_id, store_folder, runs, store.counts(prep.sweep_id), prep.invalid,
                       counters["executed"], reused, time.perf_counter() - started, status)


WAIT_POLL_S = 1.0


def _dispatch(prep, runner, ctx, todo, record, retry_failed, on_event, cancel_event, store_folder,
              settled: Callable | None = None, driver: str | None = None) -> str:
    store = prep.store
    queue = list(todo)
    waiting: list[RunTask] = []   # runs another process (another sweep on this store) holds: wait for its outcome
    last_beat = last_wait = time.monotonic()
    claimed: dict[str, str] = {}
    in_driver: _DriverRun | None = None

    def finish_in_driver() -> None:
        nonlocal in_driver
        run, in_driver = in_driver, None
        outcome = run.wait()
        record(run.task, outcome, driver)
        if on_event is not None:
            on_event("done", run.task, outcome)

    try:
        while queue or runner.busy() or waiting or in_driver is not None:
            if (cancel_event is not None and cancel_event.is_set()) or cancel_requested(store_folder):
                return "cancelled"
            if in_driver is not None and in_driver.done():
                finish_in_driver()
            if in_driver is None and driver:
                baseline = next((t for t in queue if is_baseline(t)), None)
                if baseline is not None:  # the driver evaluates the baselines; the workers take the points
                    queue.remove(baseline)
                    if store.claim_run(baseline.run_id, driver, retry=retry_failed):
                        in_driver = _DriverRun(baseline, ctx, cancel_event)
                        if on_event is not None:
                            on_event("queued", baseline, None)
                            on_event("started", baseline, None)
                    else:
                        waiting.append(baseline)
            for slot in runner.free_slots():
                while queue:
                    # workers take the points first: the driver evaluates the baselines
                    task = queue.pop(next((i for i, t in enumerate(queue) if not is_baseline(t)), 0) if driver else 0)
                    if store.claim_run(task.run_id, slot.worker, retry=retry_failed):
                        claimed[task.run_id] = slot.worker
                        runner.submit(slot, task, ctx)
                        if on_event is not None:
                            on_event("queued", task, None)
                        break
                    waiting.append(task)
                if not queue:
                    break
            if waiting and (time.monotonic() - last_wait > WAIT_POLL_S or not (queue or runner.busy())):
                last_wait = time.monotonic()
                queue.extend(_settle_waiting(store, prep.sweep_id, waiting, retry_failed, settled))
                if not (queue or runner.busy() or in_driver) and waiting:
                    time.sleep(WAIT_POLL_S / 2)
            for event in runner.poll(0.5 if in_driver is None else 0.1):
                if event.kind == "done":
                    record(event.task, event.outcome, claimed.pop(event.task.run_id, None))
                if on_event is not None:
                    on_event(event.kind, event.task, event.outcome if event.kind == "done" else event.progress)
            if time.monotonic() - last_beat > HEARTBEAT_S:
                last_beat = time.monotonic()
                for task, worker in runner.running():
                    try:
                        store.heartbeat(task.run_id, worker)
                    except Exception:
                        pass
    finally:
        if in_driver is not None:  # never leave a run held by this (live) process unrecorded
            finish_in_driver()
    return "done"


class _DriverRun:
    """A baseline evaluated in a thread of the driver while the workers compute the points. A baseline only
    evaluates float packages that are already converted: safe in the driver's own process, unlike
    a technique, which could crash or hang it and so always runs in a worker."""

    def __init__(self, task: RunTask, ctx: SweepContext, cancel_event: threading.Event | None):
        self.task = task
        self._outcome: dict | None = None
        self._thread = threading.Thread(target=self._run, args=(ctx, cancel_event), daemon=True,
                                        name=f"compress-lab-driver-run-{task.run_id[:8]}")
        self._thread.start()

    def _run(self, ctx: SweepContext, cancel_event) -> None:
        from compress_lab.sweep.task import execute
        self._outcome = execute(self.task, ctx, cancel_event=cancel_event)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> dict:
        self._thread.join()
        if self._outcome is None:
            from compress_lab.sweep.task import outcome_failed
            return outcome_failed("the baseline's evaluation in the sweep's driver ended without a result")
        return self._outcome


def _settle_waiting(store, sweep_id: str, waiting: list, retry_failed: bool, settled) -> list:
    """Check the runs held elsewhere: finished ones are counted (`settled(run)`), ones whose holder
    died or let go go back to the queue (returned); `waiting` keeps the rest."""
    from compress_lab.store import COMPLETE, FAILED, PENDING, RUNNING, worker_alive

    requeue, still = [], []
    for task in waiting:
        run = store.get_run(task.run_id)
        if run.state == RUNNING and not worker_alive(run.worker):
            store.reset_stale(sweep_id)
            run = store.get_run(task.run_id)
        if run.state == PENDING:
            requeue.append(task)
        elif run.state in (COMPLETE, FAILED):
            if settled is not None:
                settled(run)
        else:
            still.append(task)
    waiting[:] = still
    return requeue

