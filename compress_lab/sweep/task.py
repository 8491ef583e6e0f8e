"""One run of a sweep, as executed by a worker (a local process or a Ray task):
compress (or take a baseline), write the package into the store's artifacts,
evaluate it on the validation folder, measure its size. Returns plain data; the
sweep's driver is the only writer of the store.

Everything here is picklable plain data so the same function runs in a local
worker process and in a Ray task on another machine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

# A run's kind: a PyTorch baseline, a float Core ML baseline, a technique.
KIND_PYTORCH = "pytorch"
KIND_FLOAT = "float"          # config["format"] is "fp16" | "fp32" | "coreml"
KIND_TECHNIQUE = "technique"
PACKAGE_NAME = "model.mlpackage"


@dataclass(frozen=True)
class RunTask:
    run_id: str
    kind: str
    config: dict
    label: str
    family: str


@dataclass(frozen=True)
class SweepContext:
    """What every run of a sweep shares (paths are absolute, as strings)."""

    store_folder: str
    model: dict                       # ModelSpec.to_dict(): source, weights, metadata
    validation: str
    train: str | None
    preprocessing: dict               # overrides of the model's preprocessing
    batch_size: int
    reference_path: str               # .npy of the reference logits
    baseline_sizes: dict              # {"fp16": SizeReport dict, "fp32": SizeReport dict}
    workdir: str                      # shared: the float packages live in workdir/float
    cache_dir: str                    # TensorCache folder
    plugins: tuple[str, ...] = ()     # Python files that register extra techniques
    threads: int | None = None        # torch threads per worker
    metric: str | None = None         # a user metric file, "path.py[:function]"
    loss: str | None = None           # a user training loss file, "path.py[:function]"

    def to_dict(self) -> dict:
        return asdict(self)


def outcome_ok(metrics: dict, sizes: dict, timings: dict, artifact_path: str | None) -> dict:
    return {"ok": True, "metrics": metrics, "sizes": sizes, "timings": timings, "artifact_path": artifact_path}


def outcome_failed(error: str, tb: str = "") -> dict:
    return {"ok": False, "error": error, "traceback": tb}


# --------------------------------------------------------------------------- worker-side state

_PLUGINS_LOADED: dict[str, str] = {}
_STATE: dict[tuple, "_WorkerState"] = {}
_STATE_LOCK = threading.Lock()


def load_plugins(paths) -> None:
    """Import each plugin file once per process (it registers its techniques)."""
    for raw in paths or ():
        path = str(Path(raw).resolve())
        if path in _PLUGINS_LOADED:
            continue
        import hashlib
        from compress_lab.errors import ConfigError
        name = "compress_lab_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        if name in sys.modules:
            _PLUGINS_LOADED[path] = name
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"plugin {path} cannot be imported; give a Python file that registers techniques")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ConfigError(f"plugin {path} raised {type(e).__name__}: {e}") from e
        _PLUGINS_LOADED[path] = name


class _WorkerState:
    """Per process and sweep: the loaded model, its task and opened validation source,
    the tensor cache and the reference outputs."""

    def __init__(self, ctx: SweepContext):
        from compress_lab.data import TensorCache
        from compress_lab.models.handle import load_model
        from compress_lab.tasks import task_for

        model = ctx.model
        self.handle = load_model(model["source"], weights=model.get("weights"), metadata=model.get("metadata"))
        meta = self.handle.metadata
        self.task = task_for(meta)
        self.preprocessing = meta.preprocessing.with_overrides(ctx.preprocessing or None)
        self.folder = self.task.open_source(ctx.validation, meta)  # an ImageFolder for a classifier
        self.cache = TensorCache(ctx.cache_dir)
        self.reference = load_reference(ctx.reference_path) if ctx.reference_path else None
        self.metric = None
        if ctx.metric:
            from compress_lab.metrics import load_metric
            self.metric = load_metric(ctx.metric)
        self.lock = threading.Lock()

    def dataset(self, batch_size: int):
        return self.task.dataset(self.folder, self.handle.metadata, batch_size=batch_size,
                                 preprocessing_overrides=None, cache=self.cache, **self._pre())

    def _pre(self) -> dict:
        return {"preprocessing": self.preprocessing} if self.task.name == "classification" else {}


def load_reference(path: str):
    """The reference outputs a sweep saved: a classifier's logits (.npy, memory-mapped) or every output (.npz)."""
    import numpy as np
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    return np.load(path, mmap_mode="r")


def save_reference(path: Path, result) -> None:
    """Write the reference outputs of `result` atomically at `path` (.npy logits or .npz outputs)."""
    import numpy as np
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    if path.suffix == ".npz":
        np.savez(tmp, **{k: np.asarray(v) for k, v in result.reference_outputs().items()})
    else:
        np.save(tmp, np.asarray(result.logits, dtype=np.float32))
    os.replace(tmp, path)


def predictor_of(handle, artifact: Path | None = None):
    """The predictor for a run: the PyTorch model (artifact None) or a Core ML package."""
    from compress_lab.evaluate import coreml_predictor, named_coreml_predictor, named_torch_predictor, torch_predictor
    meta = handle.metadata
    if meta.task == "classification":
        return torch_predictor(handle.module) if artifact is None else coreml_predictor(artifact)
    return named_torch_predictor(handle.module, meta.io) if artifact is None else named_coreml_predictor(artifact, meta.io)


def _state(ctx: SweepContext) -> _WorkerState:
    key = (ctx.store_folder, repr(sorted(ctx.model.items())), ctx.validation, repr(ctx.preprocessing), ctx.reference_path)
    with _STATE_LOCK:
        state = _STATE.get(key)
        if state is None:
            state = _STATE[key] = _WorkerState(ctx)
        return state


def warm_up() -> None:
    """Import what runs need, so the first run does not pay for it."""
    import compress_lab.evaluate  # noqa: F401
    import compress_lab.models.size  # noqa: F401
    import compress_lab.runtime  # noqa: F401
    import compress_lab.techniques  # noqa: F401


# --------------------------------------------------------------------------- one run

def execute(task: RunTask, ctx: SweepContext, progress: Callable | None = None,
            cancel_event: threading.Event | None = None) -> dict:
    """Run `task`; never raises (a failure is returned with its error and traceback)."""
    started = time.perf_counter()
    try:
        load_plugins(ctx.plugins)
        if ctx.threads:
            import torch
            torch.set_num_threads(int(ctx.threads))
        state = _state(ctx)
        return _execute(task, ctx, state, started, progress, cancel_event)
    except BaseException as e:  # noqa: BLE001 - a run's failure is data, never a crash of the sweep
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return outcome_failed(f"{type(e).__name__}: {e}", traceback.format_exc())


def _execute(task: RunTask, ctx: SweepContext, state: _WorkerState, started: float, progress, cancel_event) -> dict:
    from compress_lab.evaluate import evaluate
    from compress_lab.models.size import package_size
    from compress_lab.store.artifacts import artifact_dir, relative_artifact_path, remove_artifacts
    from compress_lab.techniques import CompressContext, compress, config_from_dict

    handle = state.handle
    meta = handle.metadata
    timings: dict[str, float] = {}
    artifact: Path | None = None
    compress_ctx = CompressContext(handle=handle, workdir=Path(ctx.workdir),
                                   train_dir=Path(ctx.train) if ctx.train else None,
                                   validation_dir=Path(ctx.validation),
                                   preprocessing_overrides=ctx.preprocessing or None, loss=ctx.loss,
                                   progress=progress, cancel_event=cancel_event)

    if task.kind == KIND_PYTORCH:
        predictor = predictor_of(handle)
        sizes = torch_sizes(handle, ctx.baseline_sizes)
    else:
        remove_artifacts(ctx.store_folder, task.run_id)  # a redone run starts clean
        out_dir = artifact_dir(ctx.store_folder, task.run_id)
        artifact = out_dir / PACKAGE_NAME
        if task.kind == KIND_FLOAT:
            t = time.perf_counter()
            precision = task.config.get("format", "fp16")
            source = compress_ctx.float_package(precision if precision in ("fp16", "fp32") else "fp16")
            link_tree(source, artifact)
            timings["convert_s"] = time.perf_counter() - t
        else:
            config = config_from_dict(dict(task.config))
            outcome = compress(handle, config, artifact, context=compress_ctx)
            artifact = Path(outcome.path)
            for key, value in outcome.timings.items():
                timings["technique_s" if key == "total_s" else key] = float(value)
        compress_ctx.check_cancelled()
        t = time.perf_counter()
        sizes = size_dict(package_size(artifact), ctx.baseline_sizes)
        timings["size_s"] = time.perf_counter() - t
        predictor = predictor_of(handle, artifact)

    t = time.perf_counter()
    result = evaluate(predictor, state.dataset(ctx.batch_size), state.task, state.reference, meta=meta,
                      metric=state.metric)
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    rel = relative_artifact_path(ctx.store_folder, artifact) if artifact is not None else None
    return outcome_ok(result.to_dict(), sizes, timings, rel)


def size_dict(report, baseline_sizes: dict) -> dict:
    """SizeReport.to_dict() plus `bytes` (the package on disk) and the ratios to the
    sweep's float baselines (`ratio_fp16`: how many times smaller than the fp16 package)."""
    from compress_lab.models.size import compare
    sizes = report.to_dict()
    sizes["bytes"] = report.package_bytes
    bases = {k: _report_from(baseline_sizes.get(k)) for k in ("fp16", "fp32")}
    sizes.update(compare(report, bases["fp16"], bases["fp32"]))
    for label in ("fp16", "fp32"):
        if bases[label] is not None:
            sizes[f"ratio_{label}"] = sizes[f"package_vs_{label}"]
    return sizes


def torch_sizes(handle, baseline_sizes: dict | None = None) -> dict:
    """Size of a PyTorch model's weights as stored (its state_dict tensors)."""
    state = handle.module.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    weights = sum(t.numel() for t in state.values() if t.is_floating_point())
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point())
    sizes = {"bytes": int(total), "package_bytes": int(total), "weights_bytes": int(weight_bytes), "n_weights": int(weights),
             "bits_per_weight": (8.0 * weight_bytes / weights) if weights else None, "format": "pytorch state_dict"}
    for label, base in (baseline_sizes or {}).items():
        if base and total:
            sizes[f"ratio_{label}"] = base["package_bytes"] / total
    return sizes


def _report_from(data: dict | None):
    if not data:
        return None
    from compress_lab.models.size import SizeReport
    return SizeReport(data.get("path", ""), int(data["package_bytes"]), int(data["weights_bytes"]), int(data["n_weights"]))


def link_tree(source: Path, target: Path) -> Path:
    """Copy a package folder using hard links where possible (no extra disk space)."""
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)

    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, tmp, copy_function=link_or_copy)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
