"""What the training-time techniques share: the fine-tuning settings every one of
them takes, the training (or calibration) source read by the model's task and held
in memory, a deterministic and cancellable fine-tuning loop that minimises the task's
loss (or the user's), the export that converts the finalized model and checks the
package really holds compressed weights, and honest time estimates.

Nothing here knows what a model does: batches are named input tensors and named
targets from `task.dataset(...)`, the model is called with its inputs in declared
order (int32 ids as int64, as compress_lab.evaluate.named_torch_predictor does), and
the loss is `task.loss(meta)(outputs, targets)` on dicts of tensors by name."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from compress_lab.errors import ConfigError, DataError, LabError
from compress_lab.mil import COMPRESSED_OPS, iter_ops
from compress_lab.quiet import quiet_coremltools
from compress_lab.models.handle import ModelHandle
from compress_lab.techniques.base import CompressContext, CompressOutcome, DataNeed, Progress, TechniqueConfig

OPTIMIZERS = ("sgd", "adam")
MAX_BATCH_SIZE = 4096
METADATA_SUFFIX = "compression_type"


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class FinetuneConfig(TechniqueConfig):
    """Fine-tuning settings shared by every training technique. `steps`, when
    given, wins over `epochs`; a given `seed` gives identical weights and losses."""

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    optimizer: Literal["sgd", "adam"] = "adam"
    seed: int = 0

    data_need = DataNeed.TRAINING
    family = "training_time"
    needs_loss = True

    def __post_init__(self) -> None:
        name = self.name or type(self).__name__
        _check_int(name, "epochs", self.epochs, 1)
        if self.steps is not None:
            _check_int(name, "steps", self.steps, 1)
        _check_int(name, "batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        if not isinstance(self.learning_rate, (int, float)) or isinstance(self.learning_rate, bool) \
                or not (0 < self.learning_rate <= 10):
            raise ConfigError(f"technique {name!r}: learning_rate = {self.learning_rate!r} must be a number in (0, 10]")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"technique {name!r}: optimizer = {self.optimizer!r} is not supported; use one of {list(OPTIMIZERS)}")
        _check_int(name, "seed", self.seed, 0)

    def total_steps(self, train_count: int) -> int:
        if self.steps is not None:
            return self.steps
        return self.epochs * max(1, math.ceil(train_count / self.batch_size))


def _check_int(technique: str, key: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"technique {technique!r}: {key} = {value!r} must be an integer {bound}")


def check_choice(technique: str, key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"technique {technique!r}: {key} = {value!r} is not allowed; use one of {list(allowed)}")


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class TrainingData:
    """A training (or calibration) source read by the model's task and held in memory:
    named input tensors in declared order and named targets, first axis = sample.
    An epoch shuffles `count` units (samples; for some tasks, e.g. query/key pairs,
    larger units: see Task.training_count); `batch(units)` makes a batch of them."""

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    skipped: int                  # unreadable samples left out
    count: int
    source: str
    task: Any = dataclasses.field(repr=False, compare=False, default=None)
    meta: Any = dataclasses.field(repr=False, compare=False, default=None)
    unit: str = "samples"         # what `count` counts, for people: images, samples, pairs

    def __len__(self) -> int:
        return self.count

    @property
    def samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def x(self) -> torch.Tensor:
        """The first input (an image model's images)."""
        return next(iter(self.inputs.values()))

    @property
    def y(self) -> torch.Tensor | None:
        """Class labels, where the source has them."""
        return self.targets.get("label")

    def batch(self, units: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(named inputs, named targets) of the batch made of `units` (int64 indices < count)."""
        return self.task.training_batch(self.meta, self.inputs, self.targets, units)

    def example(self) -> tuple[torch.Tensor, ...]:
        """The inputs of the first batch of one unit, as a tuple in declared order (what
        `prepare` callbacks and torch.fx tracing take as example inputs)."""
        inputs, _ = self.batch(torch.zeros(1, dtype=torch.int64))
        return tuple(model_input(self.meta, name, value) for name, value in inputs.items())


_DATA_CACHE: "OrderedDict[tuple, TrainingData]" = OrderedDict()
_DATA_LOCK = threading.Lock()
_DATA_CACHE_SIZE = 4


def training_folder(ctx: CompressContext, calibration: bool = False) -> Path:
    folder = (ctx.calibration_dir or ctx.train_dir) if calibration else ctx.train_dir
    if folder is None:
        what = "calibration or training data" if calibration else "training data"
        raise ConfigError(f"this technique needs {what}: a folder or an .npz file (--train PATH / [data] train = ...)")
    return Path(folder)


def load_training_data(ctx: CompressContext, folder: Path | None = None, labelled: bool = True) -> TrainingData:
    """The source `folder` (default: the training source) read by the model's task
    (an image folder with the model's preprocessing, an .npz, a folder of .npz files),
    held in memory and memoised for the process. With `labelled=True` the source must
    be one the task's loss can train on (else a ConfigError with the reason and the
    fix); `labelled=False` (calibration) takes any source the task reads."""
    from compress_lab.tasks import task_for

    folder = Path(folder) if folder is not None else training_folder(ctx)
    meta = ctx.handle.metadata
    task = task_for(meta)
    if not folder.exists():
        raise DataError(f"training source {folder} does not exist; give a folder or an .npz file")
    opened = task.open_source(folder, meta)
    if labelled and training_loss(ctx) is None:  # a user's loss decides itself what it needs
        task.require_training(meta, opened)
    preprocessing = meta.preprocessing.with_overrides(ctx.preprocessing_overrides)
    key = (str(folder.resolve()), task.name, json.dumps(preprocessing.to_dict(), sort_keys=True),
           json.dumps(meta.io.to_dict(), sort_keys=True), tuple(meta.class_names), hash(_source_stamp(opened, folder)))
    with _DATA_LOCK:
        if key in _DATA_CACHE:
            _DATA_CACHE.move_to_end(key)
            return _DATA_CACHE[key]
    data = task.dataset(opened, meta, batch_size=256, preprocessing_overrides=ctx.preprocessing_overrides)
    inputs: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    for batch in data:
        for name, value in batch.inputs.items():
            inputs.setdefault(name, []).append(np.asarray(value))
        for name, value in batch.targets.items():
            value = np.asarray(value)
            if value.dtype.kind in "biuf":  # text or object arrays are not training targets
                targets.setdefault(name, []).append(value)
    skipped_list = list(getattr(getattr(data, "folder", None), "skipped", None) or [])
    if not inputs:
        raise DataError(f"no readable sample in training source {folder}: {skipped_list[:3]}")
    io = meta.io
    names = [s.name for s in io.inputs if s.name in inputs] or list(inputs)
    stacked = {name: torch.from_numpy(_float32(_stack(inputs[name], name, folder))) for name in names}
    labels = {name: torch.from_numpy(_stack(parts, name, folder)) for name, parts in targets.items()
              if sum(len(p) for p in parts) == len(next(iter(stacked.values())))}
    count = int(task.training_count(meta, stacked, labels))
    if count < 1:
        raise DataError(f"training source {folder} holds no training unit for task {task.name!r}")
    samples = len(next(iter(stacked.values())))
    unit = "images" if getattr(opened, "samples", None) is not None else "samples" if count == samples else "pairs"
    loaded = TrainingData(inputs=stacked, targets=labels, skipped=len(skipped_list), count=count, source=str(folder),
                          task=task, meta=meta, unit=unit)
    with _DATA_LOCK:
        _DATA_CACHE[key] = loaded
        while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
            _DATA_CACHE.popitem(last=False)
    return loaded


def _stack(parts: list[np.ndarray], name: str, where: Path) -> np.ndarray:
    try:
        return np.concatenate(parts)
    except ValueError:
        shapes = sorted({tuple(p.shape[1:]) for p in parts})
        raise DataError(f"array {name!r} of training source {where} has samples of different shapes {shapes[:4]}; "
                        "fine-tuning batches samples at random, so give them one shape (pad token windows to one "
                        "length, with an attention_mask)") from None


def _float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype.kind == "f" and array.dtype != np.float32 else array


def _source_stamp(opened: Any, path: Path) -> tuple:
    """What identifies the source's contents for the memo: each file with its mtime."""
    samples = getattr(opened, "samples", None)
    if samples is not None:  # an image folder
        return tuple((str(p), label, _mtime(p)) for p, label in samples)
    files = list(getattr(opened, "files", None) or [])
    if files:
        return tuple((str(p), _mtime(p)) for p in files)
    return (str(path), _mtime(path), path.stat().st_size if path.is_file() else 0)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def model_input(meta, name: str, value: torch.Tensor) -> torch.Tensor:
    """A named sample-first input as the model takes it (the calling convention of
    evaluate.named_torch_predictor): int32 ids as int64 indices, floats as float32,
    the batch moved to the declared `batch_axis`."""
    from compress_lab.models.io_spec import to_model_layout

    spec = next((s for s in meta.io.inputs if s.name == name), None)
    if spec is not None:
        value = to_model_layout(value, spec)
    if (spec is not None and spec.dtype == "int32") or not value.is_floating_point():
        return value.to(torch.int64)
    return value.to(torch.float32)


def model_args(meta, inputs: dict[str, torch.Tensor], device: torch.device | None = None) -> list[torch.Tensor]:
    """The inputs positionally, in declared order, on `device`."""
    names = [s.name for s in meta.io.inputs]
    if len(names) == 1 and names[0] not in inputs and len(inputs) == 1:
        names = list(inputs)
    args = [model_input(meta, name, inputs[name]) for name in names]
    return [a.to(device) for a in args] if device is not None else args


def named_outputs(out: Any, meta) -> dict[str, torch.Tensor]:
    """The model's outputs by declared name, sample-first (a declared `batch_axis` moved
    to the front): a tensor is the first output, a tuple or list is named in declared
    order, a dict keeps its names (a single declared output takes the first value when
    its name is missing)."""
    names = list(meta.io.output_names)
    if isinstance(out, torch.Tensor):
        return _sample_first({names[0]: out}, meta)
    if isinstance(out, dict):
        found = {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
        if len(names) == 1 and names[0] not in found and found:
            found = {names[0]: next(iter(found.values())), **found}
        return _sample_first(found, meta)
    if isinstance(out, (tuple, list)):
        tensors = [t for t in out if isinstance(t, torch.Tensor)]
        return _sample_first({(names[i] if i < len(names) else f"output_{i}"): t for i, t in enumerate(tensors)}, meta)
    raise ConfigError(f"model {meta.name} returned {type(out).__name__} while fine-tuning; return a tensor, a tuple of "
                      "tensors or a dict of them")


def _sample_first(outputs: dict[str, torch.Tensor], meta) -> dict[str, torch.Tensor]:
    from compress_lab.models.io_spec import from_model_layout

    specs = {o.name: o for o in meta.io.outputs if o.batch_axis}
    if not specs:
        return outputs
    return {k: from_model_layout(v, specs[k]) if k in specs else v for k, v in outputs.items()}


# --------------------------------------------------------------------------- fine-tuning

def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Prepared:
    """A model wrapped for compression-aware training, the compressors whose
    `step()` follows each optimizer step, and how to finalize the model."""

    model: nn.Module
    steppers: list[Any]
    finalize: Callable[[nn.Module], nn.Module]


# prepare(fresh model copy, example inputs (a tuple of tensors in declared order), total fine-tuning steps)
Prepare = Callable[[nn.Module, tuple, int], Prepared]


@dataclass
class FinetuneResult:
    model: nn.Module          # finalized, eval mode, on the CPU
    losses: list[float]
    seconds: float
    device: str
    train_images: int

    @property
    def steps(self) -> int:
        return len(self.losses)

    def summary(self) -> dict[str, Any]:
        tail = self.losses[-10:]
        return {"steps": self.steps, "first_loss": self.losses[0] if self.losses else None,
                "final_loss": float(np.mean(tail)) if tail else None, "device": self.device,
                "train_images": self.train_images}


def finetune(config: FinetuneConfig, ctx: CompressContext, prepare: Prepare) -> FinetuneResult:
    """Fine-tune a fresh copy of the model wrapped by `prepare`, then finalize it.

    The training source is read by the model's task; each step calls the model with
    the batch's inputs in declared order and minimises the task's loss (or the user's,
    ctx.loss) on the named outputs and targets. Deterministic for a given seed: the
    seed drives weight-side randomness and the data order; deterministic kernels are
    requested; the global RNG state is restored afterwards. Cancellable between steps
    (ctx.check_cancelled)."""
    ctx.check_cancelled()
    train = load_training_data(ctx)
    loss_fn = loss_for(ctx)
    meta = ctx.handle.metadata
    total = config.total_steps(len(train))
    device = pick_device()
    ctx.report(Progress("finetune", 0, total, f"preparing {config.name} on {device.type}"))
    started = time.perf_counter()
    with _deterministic(config.seed, device):
        model = ctx.handle.torch_copy()
        prepared = prepare_or_explain(config, ctx.handle, prepare, model, train.example(), total)
        trainable = prepared.model.to(device)
        trainable.train()
        optimizer = _make_optimizer(config, trainable)
        order = _batch_order(len(train), config.batch_size, total, config.seed)
        losses: list[float] = []
        last_report = 0.0
        for step, units in enumerate(order, start=1):
            ctx.check_cancelled()
            inputs, targets = train.batch(units)
            args = model_args(meta, inputs, device)
            targets = {k: v.to(device) for k, v in targets.items()}
            with quiet_coremltools():
                loss = loss_value(config, ctx.handle, loss_fn, trainable(*args), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for stepper in prepared.steppers:
                    stepper.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ConfigError(
                    f"fine-tuning {config.name} diverged at step {step} (loss {value}); lower learning_rate "
                    f"(now {config.learning_rate}) or use optimizer 'adam'")
            losses.append(value)
            now = time.perf_counter()
            if step == total or step == 1 or now - last_report >= 0.25:
                last_report = now
                ctx.report(Progress("finetune", step, total, f"step {step}/{total}", loss=value,
                                    elapsed_s=now - started))
        trainable = trainable.cpu().eval()
        with quiet_coremltools():
            final = prepared.finalize(trainable)
    final = final.cpu().eval()
    return FinetuneResult(model=final, losses=losses, seconds=time.perf_counter() - started,
                          device=device.type, train_images=train.samples)


def training_loss(ctx: CompressContext):
    """The user's loss (ctx.loss = "path/to/loss.py[:function]"), loaded; None when not given."""
    spec = getattr(ctx, "loss", None)
    if not spec:
        return None
    from compress_lab.metrics import load_loss
    return load_loss(spec)


def loss_for(ctx: CompressContext):
    """What fine-tuning minimises: the user's loss, else the model's task's; a ConfigError
    with the task's reason when there is none."""
    from compress_lab.tasks import task_for
    user = training_loss(ctx)
    if user is not None:
        return user
    meta = ctx.handle.metadata
    task = task_for(meta)
    task.require_training(meta)
    return task.loss(meta)


def loss_value(config: TechniqueConfig, handle: ModelHandle, loss_fn, out: Any,
               targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """`loss_fn(named outputs, targets)` as a scalar tensor; a failure is a ConfigError
    naming the technique, the model and the loss."""
    outputs = named_outputs(out, handle.metadata)
    where = getattr(loss_fn, "where", None)
    what = f"loss {where}" if where else f"the {handle.metadata.task} loss"
    try:
        value = loss_fn(outputs, targets)
    except LabError:
        raise
    except Exception as e:
        fix = "; fix the loss file" if where else ""
        shapes = {k: list(v.shape) for k, v in outputs.items()}
        raise ConfigError(f"{config.name}: {what} failed on model {handle.name} (outputs {shapes}, targets "
                          f"{sorted(targets)}): {type(e).__name__}: {str(e).strip()[:300]}{fix}") from e
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        shown = f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ConfigError(f"{config.name}: {what} returned {shown} on model {handle.name}; a loss returns one "
                          "floating-point scalar tensor (e.g. torch.nn.functional.mse_loss(...))")
    return value.reshape(())


def prepare_or_explain(config: TechniqueConfig, handle: ModelHandle, prepare: Prepare, model: nn.Module,
                       example: torch.Tensor, total: int) -> Prepared:
    """Run `prepare`; a failure inside coremltools becomes a ConfigError that names the model and technique."""
    try:
        with quiet_coremltools():
            return prepare(model, example, total)
    except LabError:
        raise
    except Exception as e:
        raise ConfigError(
            f"{config.name}: coremltools could not prepare model {handle.name} "
            f"({type(e).__name__}: {str(e).strip()[:300]}). Models must be traceable (torch.fx) for QAT and use "
            "Conv/Linear layers for palettization and pruning.") from e


def _batch_order(count: int, batch_size: int, total: int, seed: int) -> list[torch.Tensor]:
    """Index batches for `total` steps: a fresh seeded permutation each epoch."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, count)
    order: list[torch.Tensor] = []
    while len(order) < total:
        perm = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            chunk = perm[start:start + batch_size]
            if len(chunk) < batch_size and start > 0:
                break  # drop a ragged last batch: steady batch statistics
            order.append(chunk)
            if len(order) == total:
                break
    return order


def _make_optimizer(config: FinetuneConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"model {config.name}: nothing to fine-tune (no parameter requires a gradient)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9)
    return torch.optim.Adam(params, lr=config.learning_rate)


@contextlib.contextmanager
def _deterministic(seed: int, device: torch.device):
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np_state = np.random.get_state()
        np.random.seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
            np.random.set_state(np_state)


# --------------------------------------------------------------------------- export

def compressed_parameter_names(model: nn.Module) -> list[str]:
    """Parameters coremltools' optimize.torch marked as compressed (its `_COREML_` metadata buffers)."""
    names = []
    for key in model.state_dict():
        parts = key.split("_COREML_/")
        if len(parts) == 2 and parts[1].endswith("/" + METADATA_SUFFIX):
            names.append(parts[0] + parts[1].split("/")[0])
    return names


def op_counts(package: Path) -> dict[str, int]:
    """How many times each MIL op type appears in the package's program."""
    import coremltools as ct
    spec = ct.utils.load_spec(str(package))
    counts: dict[str, int] = {}
    for op in iter_ops(spec.mlProgram):
        counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def package_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export(config: TechniqueConfig, ctx: CompressContext, model: nn.Module, out_path: Path,
           expected_ops: tuple[str, ...], *, pass_pipeline=None, precision: str = "fp16") -> tuple[Path, float, dict]:
    """Convert the finalized `model` and check the package holds compressed weights:
    a compressed-weight op per parameter the compressor marked, and at least one
    op of `expected_ops` (the technique's own kind). Returns (path, seconds, details)."""
    from compress_lab.models.convert import convert_module

    marked = compressed_parameter_names(model)
    if not marked:
        raise ConfigError(
            f"{config.name}: no layer of model {ctx.handle.name} was compressed (every weight is below the size "
            "threshold, or no layer is of a supported type: Conv/Linear); lower weight_threshold or pick another model")
    ctx.check_cancelled()
    ctx.report(Progress("convert", 0, 1, "converting to Core ML"))
    started = time.perf_counter()
    with quiet_coremltools():
        convert_module(model, ctx.handle.metadata, out_path, precision=precision, pass_pipeline=pass_pipeline)
    seconds = time.perf_counter() - started
    counts = op_counts(out_path)
    found = {op: n for op, n in counts.items() if op in COMPRESSED_OPS}
    if sum(found.values()) < len(marked) or not any(op in found for op in expected_ops):
        shutil.rmtree(out_path, ignore_errors=True)  # never leave a float package under a compressed name
        raise ConfigError(
            f"{config.name}: the converted package {out_path} is not compressed as expected: "
            f"{len(marked)} weight(s) were compressed in PyTorch ({', '.join(marked[:5])}) but the program holds "
            f"{found or 'no compressed weight op'} (expected {' or '.join(expected_ops)}). "
            "The weights would be stored as float; this coremltools version may not export this mode.")
    ctx.report(Progress("convert", 1, 1, "converted", elapsed_s=seconds))
    return out_path, seconds, {"compressed_weights": len(marked), "compressed_ops": found,
                               "size_bytes": package_bytes(out_path)}


PRUNING = 1  # coremltools' CompressionType.pruning, as stored in the compression_type metadata buffer


def pruned_parameter_names(model: nn.Module) -> list[str]:
    """Parameters coremltools marked as pruned (a joint technique also marks weights it only
    palettized or quantized, e.g. an embedding table the pruner does not take)."""
    names = []
    for key, value in model.state_dict().items():
        parts = key.split("_COREML_/")
        if len(parts) == 2 and parts[1].endswith("/" + METADATA_SUFFIX) and PRUNING in value.reshape(-1).tolist():
            names.append(parts[0] + parts[1].split("/")[0])
    return names


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the weights coremltools marked as pruned (else as compressed)."""
    state = model.state_dict()
    zeros = total = 0
    for name in pruned_parameter_names(model) or compressed_parameter_names(model):
        tensor = state.get(name)
        if tensor is not None and tensor.is_floating_point():
            zeros += int((tensor == 0).sum())
            total += tensor.numel()
    return zeros / total if total else 0.0


def check_sparsity(config: TechniqueConfig, model: nn.Module, target: float) -> float:
    """The achieved sparsity; a ConfigError when it falls well short of `target`
    (the package would carry sparse ops around mostly non-zero weights)."""
    achieved = weight_sparsity(model)
    if achieved < 0.9 * target:
        raise ConfigError(
            f"{config.name}: the fine-tuned weights are only {achieved:.0%} zeros, short of target_sparsity "
            f"{target:.0%}; give more steps (the schedule needs at least one pruner step) or use schedule 'constant'")
    return achieved


def run_training_technique(config: FinetuneConfig, ctx: CompressContext, out_path: Path, prepare: Prepare,
                           expected_ops: tuple[str, ...], target_sparsity: float | None = None) -> CompressOutcome:
    """The whole handler of a fine-tuning technique: fine-tune, finalize, convert, check."""
    result = finetune(config, ctx, prepare)
    sparsity = check_sparsity(config, result.model, target_sparsity) if target_sparsity else None
    path, convert_s, details = export(config, ctx, result.model, out_path, expected_ops)
    if sparsity is not None:
        details["sparsity"] = sparsity
    details.update(result.summary())
    return CompressOutcome(path=path, timings={"finetune_s": result.seconds, "convert_s": convert_s,
                                               "compress_s": result.seconds + convert_s}, details=details)


# --------------------------------------------------------------------------- estimates

_STEP_COST: dict[tuple, tuple[float, float]] = {}
_COST_LOCK = threading.Lock()
CONVERT_OVERHEAD_S = 3.0
DECODE_S_PER_IMAGE = 0.0005


def measure_step_cost(config: FinetuneConfig, handle: ModelHandle, prepare: Prepare,
                      train: TrainingData | None = None) -> tuple[float, float]:
    """(first step seconds, later step seconds) of fine-tuning `handle` with `config`,
    measured over 6 steps, once per process and per setting: on the first batch of
    `train` with its task's loss, or (no training data given) on blank declared inputs
    with a stand-in loss of the same cost (the mean square of the outputs)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("epochs", "steps", "learning_rate", "seed")}
    device = pick_device()
    key = (type(config).__name__, tuple(sorted((k, repr(v)) for k, v in fields.items())), handle.fingerprint, device.type,
           train.source if train is not None else None)
    with _COST_LOCK:
        if key in _STEP_COST:
            return _STEP_COST[key]
    meta = handle.metadata
    with _deterministic(0, device):
        if train is not None:
            example = train.example()
            inputs, targets = train.batch(torch.arange(min(config.batch_size, len(train))))
            args = model_args(meta, inputs, device)
            targets = {k: v.to(device) for k, v in targets.items()}
            loss_fn = train.task.loss(meta)   # None (a user's loss will train): the stand-in below
        else:
            blank = _blank_inputs(meta, config.batch_size)
            args = model_args(meta, blank, device)
            example = tuple(model_args(meta, {k: v[:1] for k, v in blank.items()}))
            targets, loss_fn = {}, None
        with quiet_coremltools():
            prepared = prepare(handle.torch_copy(), example, 100)
            model = prepared.model.to(device).train()
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)
            times = []
            for _ in range(6):
                started = time.perf_counter()
                out = model(*args)
                if loss_fn is not None:
                    loss = loss_value(config, handle, loss_fn, out, targets)
                else:
                    loss = sum(o.float().pow(2).mean() for o in named_outputs(out, meta).values()
                               if o.is_floating_point())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                for stepper in prepared.steppers:
                    stepper.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
    cost = (times[0], float(np.median(times[3:])))  # DKM's early steps cost more: time the settled ones
    with _COST_LOCK:
        _STEP_COST[key] = cost
    return cost


BLANK_LENGTH = 16   # a flexible dimension's length in blank timing inputs


def _blank_inputs(meta, batch_size: int) -> dict[str, torch.Tensor]:
    """Random float inputs and all-ones int inputs of the declared shapes (flexible dims: BLANK_LENGTH),
    by name, sample-first (model_args puts them as the model takes them)."""
    inputs = {}
    for spec in meta.io.inputs:
        shape = (batch_size, *[BLANK_LENGTH if isinstance(d, str) else int(d) for d in spec.shape])
        inputs[spec.name] = torch.ones(shape, dtype=torch.int64) if spec.dtype == "int32" else torch.randn(shape)
    return inputs


def estimate_finetune_seconds(config: FinetuneConfig, handle: ModelHandle, train_count: int, prepare: Prepare,
                              train: TrainingData | None = None) -> float:
    first, later = measure_step_cost(config, handle, prepare, train)
    steps = config.total_steps(train_count)
    return first + later * max(steps - 1, 0) + DECODE_S_PER_IMAGE * train_count + CONVERT_OVERHEAD_S


def estimate_seconds(config: TechniqueConfig, handle: ModelHandle, train_count: int,
                     train: TrainingData | None = None) -> float:
    """Seconds `config` is expected to take on `handle` with `train_count` training
    units (len(train) when `train` is given), for any training-time technique (each
    module defines its own `estimate_seconds`). The first call for a setting measures
    a few steps, on the first batch of `train` when given."""
    module = sys.modules.get(type(config).__module__)
    estimator = getattr(module, "estimate_seconds", None)
    if estimator is None or estimator is estimate_seconds:
        raise ConfigError(f"technique {config.name!r} has no time estimate")
    if train is None:
        return float(estimator(config, handle, train_count))
    return float(estimator(config, handle, train_count, train=train))
