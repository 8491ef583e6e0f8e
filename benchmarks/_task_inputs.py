"""Named model inputs for the benchmarks, read through the model's task: the
benchmarks never assume one image input. Not a benchmark (run_all skips `_*.py`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def built_samples(names) -> tuple[list[str], list[str]]:
    """(built, not built) among sample names: built = model.py and metadata.json present."""
    built = [n for n in names if (SAMPLES / n / "model.py").is_file() and (SAMPLES / n / "metadata.json").is_file()]
    return built, [n for n in names if n not in built]


def validation_source(model: str | Path, data: str | Path | None = None) -> Path | None:
    """`data` if given; else a sample's (or a model folder's) validation source: `val/`,
    `val.npz`, or another `val*` entry. None when there is none."""
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise SystemExit(f"validation data {path} does not exist; give an existing folder or .npz")
        return path
    folder = Path(model) if Path(model).is_dir() else SAMPLES / str(model)
    for candidate in (folder / "val", folder / "val.npz", *sorted(folder.glob("val*"))):
        if candidate.exists():
            return candidate
    return None


def task_batches(handle, source: Path, batch_size: int):
    """The task's batches ({input name: array}, targets) of `source` for this model."""
    from compress_lab.tasks import task_for

    meta = handle.metadata
    task = task_for(meta)
    return task.dataset(task.open_source(source, meta), meta, batch_size=batch_size)


def task_inputs(handle, batch: int, source: Path | None, seed: int = 0) -> dict[str, np.ndarray]:
    """`batch` samples of every declared input, in declared order: the first samples of
    the task's dataset (repeated when the source holds fewer). Without a source, float
    inputs are random normal; an int input (token ids, ...) then needs data."""
    io = handle.metadata.io
    if source is None:
        rng = np.random.default_rng(seed)
        inputs = {}
        for spec in io.inputs:
            if spec.dtype == "int32" or spec.flexible:
                raise SystemExit(f"model {handle.metadata.name}: input {spec.name!r} ({spec.dtype}, shape "
                                 f"{list(spec.shape)}) needs real data; pass --data with a validation source")
            inputs[spec.name] = rng.standard_normal((batch, *spec.shape)).astype(np.float32)
        return inputs
    parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in io.inputs}
    have = 0
    for item in task_batches(handle, source, batch_size=batch):
        if any(parts[n] and np.shape(item.inputs[n])[1:] != parts[n][0].shape[1:] for n in parts):
            continue  # a flexible length: keep samples of the first batch's shape
        for name in parts:
            parts[name].append(np.asarray(item.inputs[name]))
        have += len(item)
        if have >= batch:
            break
    if not have:
        raise SystemExit(f"no samples could be read from {source} for model {handle.metadata.name}")
    out = {}
    for name, arrays in parts.items():
        stacked = np.concatenate(arrays)
        reps = -(-batch // len(stacked))
        out[name] = np.ascontiguousarray(np.concatenate([stacked] * reps)[:batch])
    return out


def eager_args(handle, inputs: dict[str, np.ndarray]) -> list:
    """The same inputs as eager PyTorch takes them, positionally in declared order
    (int inputs as int64 indices, as the lab's PyTorch predictor passes them)."""
    import torch

    args = []
    for spec in handle.metadata.io.inputs:
        value = torch.from_numpy(np.array(inputs[spec.name], copy=True))
        args.append(value.to(torch.int64) if spec.dtype == "int32" else value.to(torch.float32))
    return args
