"""Array sources: validation / calibration data given as NumPy `.npz` files.

Two layouts:
- one `.npz` holding one stacked array per input name, first axis = sample
  (`np.savez("val.npz", input_ids=ids, attention_mask=mask)`);
- a folder of `.npz` files, one sample each (arrays without the sample axis),
  read in sorted file-name order.

Arrays whose names are not inputs are targets (e.g. `label`, `target`), passed
to metrics as they are. Every error names the file, the array and the fix.

A model whose one input is a Core ML image input (models/image_input.py) also
takes a folder of images (class sub-folders or flat): each image resized to the
declared size, pixels 0..255 in RGB order (one gray channel for a grayscale
input); class folders give a `label` target (sorted folder order)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from compress_lab.errors import ConfigError, DataError
from compress_lab.models.io_spec import IOSpec, TensorSpec, format_shape, shape_matches
from compress_lab.tasks.base import TaskBatch

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32}


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"array file {path} does not exist; give an .npz file or a folder of .npz files") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"array file {path} is not a readable .npz ({type(e).__name__}: {str(e)[:160]}); "
                        "write it with numpy.savez(path, input_name=array, ...)") from None


def _cast(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    want = NUMPY_DTYPES[spec.dtype]
    if array.dtype == want:
        return array
    if spec.dtype == "int32":
        if array.dtype.kind not in "iub":
            if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
                return array.astype(np.int32)
            raise DataError(f"{where} holds {array.dtype} values but input {spec.name!r} is declared int32; "
                            "store integer ids (e.g. array.astype(numpy.int32))")
        if array.size and (array.max() > np.iinfo(np.int32).max or array.min() < np.iinfo(np.int32).min):
            raise DataError(f"{where} holds values outside the int32 range; input {spec.name!r} is declared int32")
        return array.astype(np.int32)
    if array.dtype.kind not in "fiub":
        raise DataError(f"{where} holds {array.dtype} values; input {spec.name!r} needs numbers ({spec.dtype})")
    return array.astype(want)


@dataclass
class ArraySource:
    """An array source read against a model's inputs."""

    root: Path
    inputs: dict[str, np.ndarray] | None = None     # stacked (one .npz)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # one sample each (a folder)
    io: IOSpec | None = None
    warnings: list[str] = field(default_factory=list)
    images: Any = None   # an ImageFolder feeding the model's one image input

    @property
    def n(self) -> int:
        if self.images is not None:
            return len(self.images)
        if self.inputs is not None:
            return len(next(iter(self.inputs.values())))
        return len(self.files)

    @property
    def labelled(self) -> bool:
        if self.images is not None:
            return self.images.labelled
        return bool(self.targets) if self.inputs is not None else bool(self._folder_targets)

    _folder_targets: tuple = ()

    def batches(self, batch_size: int = 64) -> Iterator[TaskBatch]:
        if int(batch_size) <= 0:
            raise ConfigError(f"batch size {batch_size!r} must be a positive integer")
        batch_size = int(batch_size)
        if self.images is not None:
            yield from self._image_batches(batch_size)
            return
        if self.inputs is not None:
            for start in range(0, self.n, batch_size):
                stop = min(start + batch_size, self.n)
                yield TaskBatch(inputs={k: v[start:stop] for k, v in self.inputs.items()},
                                targets={k: v[start:stop] for k, v in self.targets.items()},
                                ids=list(range(start, stop)))
            return
        pending: list[tuple[int, dict, dict]] = []
        for index, path in enumerate(self.files):
            sample, targets = _read_sample(path, self.io)
            if pending and (_shapes(sample) != _shapes(pending[0][1]) or set(targets) != set(pending[0][2])
                            or len(pending) == batch_size):
                yield _stack(pending)
                pending = []
            pending.append((index, sample, targets))
        if pending:
            yield _stack(pending)


    def _image_batches(self, batch_size: int) -> Iterator[TaskBatch]:
        from compress_lab.data import iter_batches
        spec = self.io.inputs[0]
        for batch in iter_batches(self.images, image_preprocessing(spec), spec.shape, batch_size):
            yield TaskBatch(inputs={spec.name: batch.x},
                            targets={"label": batch.labels} if self.images.labelled else {}, ids=list(batch.paths))
        skipped = self.images.skipped
        if skipped:
            self.warnings.append(f"{len(skipped)} file(s) in {self.root} were left out: "
                                 + "; ".join(f"{p.name}: {why}" for p, why in skipped[:5]))


def image_preprocessing(spec: TensorSpec):
    """How an image becomes the pixels an image input takes: resized to the declared
    size, 0..255, RGB (or gray), no normalisation (the package applies its own)."""
    from compress_lab.models.metadata import Preprocessing
    return Preprocessing(color="L" if spec.image.grayscale else "RGB", resize=None, scale=1.0, mean=(0.0,), std=(1.0,))


def image_input_of(io: IOSpec) -> TensorSpec | None:
    """The model's input when it has exactly one and that is an image input."""
    return io.inputs[0] if len(io.inputs) == 1 and io.inputs[0].image is not None else None


def _shapes(arrays: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {k: v.shape for k, v in arrays.items()}


def _stack(pending) -> TaskBatch:
    first = pending[0]
    return TaskBatch(inputs={k: np.stack([p[1][k] for p in pending]) for k in first[1]},
                     targets={k: np.stack([p[2][k] for p in pending]) for k in first[2]},
                     ids=[p[0] for p in pending])


def _read_sample(path: Path, io: IOSpec) -> tuple[dict, dict]:
    arrays = _open_npz(path)
    _require_inputs(arrays, io, path)
    inputs, targets = {}, {}
    for name, array in arrays.items():
        if name in io.input_names:
            spec = io.input(name)
            if array.ndim == len(spec.shape) + 1 and array.shape[0] == 1:
                array = array[0]
            if not shape_matches(spec.shape, array.shape):
                raise DataError(f"array {name!r} in {path} has shape {list(array.shape)} but input {name!r} is declared "
                                f"{format_shape(spec.shape)} per sample; a folder holds one sample per .npz file "
                                "(no sample axis), or fix 'inputs' in metadata.json")
            inputs[name] = _cast(array, spec, f"array {name!r} in {path}")
        else:
            targets[name] = array
    return inputs, targets


def _require_inputs(arrays: dict, io: IOSpec, path: Path) -> None:
    missing = [n for n in io.input_names if n not in arrays]
    if missing:
        raise DataError(f"array file {path} has no array {missing[0]!r} for input {missing[0]!r} (it holds "
                        f"{sorted(arrays) or 'no arrays'}); save one array per input name, e.g. "
                        f"numpy.savez({path.name!r}, {', '.join(f'{n}=...' for n in io.input_names)})")


def read_arrays(source: str | Path, io: IOSpec) -> ArraySource:
    """Read `source` (an .npz file or a folder of .npz files) against `io`."""
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError(f"array source {root} does not exist; give an .npz file (one array per input, first axis = "
                        "sample) or a folder of .npz files (one sample each)")
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix == ".npz" and p.is_file() and not p.name.startswith("."))
        if not files and image_input_of(io) is not None:
            from compress_lab.data import scan_folder
            folder = scan_folder(root)
            return ArraySource(root=root, io=io, images=folder, warnings=list(folder.warnings))
        if not files:
            others = sorted(p.name for p in root.iterdir())[:8]
            raise DataError(f"no .npz files in {root} (found {others or 'nothing'}); a folder source holds one .npz "
                            "per sample")
        source_ = ArraySource(root=root, files=files, io=io)
        _, targets = _read_sample(files[0], io)  # fail early on a bad first file
        source_._folder_targets = tuple(targets)
        return source_
    if root.suffix != ".npz":
        raise DataError(f"array source {root} is not an .npz file; write the arrays with numpy.savez")
    arrays = _open_npz(root)
    _require_inputs(arrays, io, root)
    counts = {name: (int(a.shape[0]) if a.ndim else None) for name, a in arrays.items()}
    scalars = [n for n, c in counts.items() if c is None]
    if scalars:
        raise DataError(f"array {scalars[0]!r} in {root} is a scalar; every array needs a first axis of samples")
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{n!r}: {c}" for n, c in counts.items())
        raise DataError(f"arrays in {root} have different sample counts ({listing}); the first axis is the sample "
                        "axis and must have the same length in every array" + _model_layout_hint(arrays, io, counts))
    inputs, targets = {}, {}
    for name, array in arrays.items():
        if name in io.input_names:
            spec = io.input(name)
            if not shape_matches(spec.shape, array.shape[1:]):
                raise DataError(f"array {name!r} in {root} has shape {list(array.shape)}, i.e. {list(array.shape[1:])} "
                                f"per sample, but input {name!r} is declared {format_shape(spec.shape)}; fix the array "
                                "(first axis = sample) or 'inputs' in metadata.json")
            inputs[name] = _cast(array, spec, f"array {name!r} in {root}")
        else:
            targets[name] = array
    if not next(iter(counts.values())):
        raise DataError(f"array file {root} holds 0 samples")
    return ArraySource(root=root, inputs={n: inputs[n] for n in io.input_names}, targets=targets, io=io)


def _model_layout_hint(arrays: dict, io: IOSpec, counts: dict) -> str:
    """For an input declared with a batch_axis whose array looks saved in the model's layout: how to save it."""
    common = max(set(counts.values()), key=list(counts.values()).count)
    for spec in io.inputs:
        array = arrays.get(spec.name)
        if spec.batch_axis and array is not None and counts[spec.name] != common and array.ndim > spec.batch_axis \
                and array.shape[spec.batch_axis] == common:
            return (f"; array {spec.name!r} looks saved as the model takes it (batch on axis {spec.batch_axis}): "
                    f"save it sample-first, numpy.moveaxis({spec.name}, {spec.batch_axis}, 0)")
    return ""


def evenly_spaced(n: int, limit: int) -> list[int]:
    """At most `limit` sample indices spread evenly over 0..n-1 (all of them when n <= limit)."""
    if n <= limit:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, int(limit)).round().astype(int).tolist()))


def take(source: ArraySource, indices: Sequence[int]) -> ArraySource:
    """The samples `indices` of `source`, in that order (a folder source keeps those files)."""
    indices = [int(i) for i in indices]
    if source.images is not None:   # an image folder feeding an image input: those images
        import dataclasses
        folder = dataclasses.replace(source.images, samples=[source.images.samples[i] for i in indices], skipped=[])
        return ArraySource(root=source.root, io=source.io, images=folder, warnings=list(source.warnings))
    if source.inputs is not None:
        return ArraySource(root=source.root, inputs={k: v[indices] for k, v in source.inputs.items()},
                           targets={k: v[indices] for k, v in source.targets.items()}, io=source.io,
                           warnings=list(source.warnings))
    subset = ArraySource(root=source.root, files=[source.files[i] for i in indices], io=source.io,
                         warnings=list(source.warnings))
    subset._folder_targets = source._folder_targets
    return subset
