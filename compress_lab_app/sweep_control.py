"""From the Sweep page's choices to a SweepSpec, its plan and time estimate, and
the background sweep process (started, watched and cancelled through the engine)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from compress_lab.errors import ConfigError
from compress_lab.sweep.spec import DataSpec, ModelSpec, RunOptions, SweepPlan, SweepSpec, estimate_seconds, expand
from compress_lab_app.session import REPO_ROOT, DataChoice, ModelChoice

SUBSETS_DIR = "subsets"


def build_spec(model: ModelChoice, data: DataChoice, grid: list[dict], name: str, workers: int,
               store_folder: Path, batch_size: int = 64) -> SweepSpec:
    """The spec of a sweep over `grid` for the chosen model and data (a validation subset
    is materialized under the store folder when "at most N images" is set)."""
    if not data.validation:
        raise ConfigError("no validation folder is set; choose one on the Data page")
    if not grid:
        raise ConfigError("the grid is empty: include at least one technique")
    validation = Path(data.validation).expanduser()
    if data.max_val_images:
        from compress_lab_app.subset import subset_folder
        validation = subset_folder(validation, data.max_val_images, Path(store_folder) / SUBSETS_DIR)
    return SweepSpec(
        model=ModelSpec.from_dict(model.spec_dict(), REPO_ROOT),
        data=DataSpec(validation.resolve(), Path(data.train).expanduser().resolve() if data.train else None,
                      dict(data.preprocessing), batch_size, metric=data.metric),
        grid=tuple(grid),
        run=RunOptions(name=name, workers=workers),
        base_dir=Path(store_folder))


def plan(spec: SweepSpec, has_train: bool, is_torch: bool) -> tuple[SweepPlan, list[str]]:
    """Expand the grid; also name the points the runner would refuse (no training data, Core ML model)."""
    result = expand(spec)
    refused = []
    for point in result.points:
        config = point.config
        if config.family == "training_time" and not is_torch:
            refused.append(f"{config.label()}: needs the PyTorch model (this one is a Core ML package)")
        elif config.train_folder_needed() and not has_train:
            refused.append(f"{config.label()}: needs a training folder (set it on the Data page)")
    return result, refused


def baseline_count(is_torch: bool) -> int:
    return 3 if is_torch else 1  # PyTorch, fp32 and fp16 Core ML / the package as given


BASELINE_S = 4.0            # convert + evaluate one uncompressed baseline (small models)
POST_TRAINING_S = 2.0       # fixed cost of one post-training run ...
POST_TRAINING_S_PER_MPARAM = 8.0  # ... plus this per million parameters (k-means dominates)


def estimate(result: SweepPlan, workers: int, handle=None, train_count: int = 0) -> float:
    """Seconds the sweep should take: training-time techniques give their own estimate
    (measured on a few steps); post-training runs scale with the parameter count."""
    params = (handle.parameter_count() if handle is not None else None) or 1_000_000
    total = BASELINE_S * baseline_count(handle is None or handle.kind == "torch")
    rest = []
    for point in result.points:
        config = point.config
        if config.family == "post_training":
            total += POST_TRAINING_S + POST_TRAINING_S_PER_MPARAM * params / 1e6
            continue
        seconds = _training_estimate(config, handle, train_count)
        if seconds is None:
            rest.append(point)
        else:
            total += seconds
    return total / max(1, workers) + estimate_seconds(rest, workers)


def _training_estimate(config, handle, train_count: int) -> float | None:
    if handle is None or handle.kind != "torch" or not train_count:
        return None
    from compress_lab.errors import LabError
    from compress_lab.techniques import _training
    try:
        return _training.estimate_seconds(config, handle, train_count)
    except LabError:
        return None


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- the background process

LAUNCHES_FILE = "app-launches.json"  # sweep id -> pid of the process the app started for it


@dataclass(frozen=True)
class ProcessState:
    alive: bool | None  # None: cannot tell (e.g. a sweep started from the CLI, between runs)
    pid: int | None
    log_tail: str


def running_elsewhere(store_folder: Path) -> int | None:
    """The pid of a sweep process already running on this store folder, if any."""
    from compress_lab.sweep.background import SweepHandle
    handle = SweepHandle.find(store_folder)
    return handle.pid if handle is not None and handle.is_running() else None


def launch(spec: SweepSpec, store_folder: Path) -> str:
    """Register the sweep and its runs in the store (so the page shows them at once), then
    start it in a detached process that outlives the browser tab. Returns the sweep id."""
    from compress_lab.errors import LabError
    from compress_lab.sweep.background import launch_background
    from compress_lab.sweep.runner import prepare

    store_folder = Path(store_folder)
    pid = running_elsewhere(store_folder)
    if pid is not None:
        raise LabError(f"a sweep is already running on the store {store_folder} (pid {pid}); "
                       "wait for it to finish or cancel it first")
    prepared = prepare(spec, store_folder)
    handle = launch_background(spec, store_folder, workers=spec.run.workers)
    _record_launch(store_folder, prepared.sweep_id, handle.pid)
    return prepared.sweep_id


def resume(store, sweep_id: str, store_folder: Path) -> str:
    """Start a stored sweep again: finished runs are reused, the rest run."""
    sweep = store.get_sweep(sweep_id)
    if sweep is None:
        raise ConfigError(f"sweep {sweep_id!r} is not in the store {store_folder}")
    spec = SweepSpec.from_dict(sweep.spec, Path(store_folder)).with_run(workers=default_workers())
    return launch(spec, store_folder)


def cancel(store_folder: Path, sweep_id: str) -> None:
    from compress_lab.sweep.runner import request_cancel
    request_cancel(store_folder)


def process_state(store_folder: Path, sweep_id: str) -> ProcessState:
    from compress_lab.store import RUNNING, worker_alive
    from compress_lab.sweep.background import SweepHandle

    store_folder = Path(store_folder)
    pid = _launches(store_folder).get(sweep_id)
    handle = SweepHandle.find(store_folder)
    tail = handle.log_tail(15) if handle is not None and handle.pid == pid else ""
    if pid is not None:
        return ProcessState(bool(worker_alive(f"{_host()}:{pid}")), pid, tail)
    from compress_lab_app.cached import store as cached_store
    running = cached_store(str(store_folder)).list_runs(sweep_id, states=[RUNNING])
    if any(worker_alive(r.worker) for r in running):
        return ProcessState(True, None, "")
    return ProcessState(None, None, "")


def _host() -> str:
    import socket
    return socket.gethostname()


def _launches(store_folder: Path) -> dict[str, int]:
    import json
    try:
        data = json.loads((Path(store_folder) / LAUNCHES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_launch(store_folder: Path, sweep_id: str, pid: int) -> None:
    import json
    data = _launches(store_folder)
    data[sweep_id] = pid
    path = Path(store_folder) / LAUNCHES_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.tmp")  # two tabs never share a temporary file
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
