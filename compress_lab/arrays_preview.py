"""What an array source holds, for a person to check before a sweep: per array its
shape, dtype, value range and role (a model input or a target), and the first few
samples. Reads an `.npz` file, or up to `max_files` files of a folder of one-sample
`.npz` files (the range then covers those files, and says so)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress_lab.arrays import _open_npz
from compress_lab.errors import DataError

SAMPLE_VALUES = 8   # values shown per sample


@dataclass
class ArrayInfo:
    name: str
    role: str                      # "input", "target" or "array" (no model to say)
    shape: list[int]               # a stacked file: with the sample axis; a folder: per sample (first file)
    dtype: str
    min: float | None
    max: float | None
    mean: float | None
    samples: list[str] = field(default_factory=list)   # the first samples, flattened and cut short


@dataclass
class ArrayPreview:
    path: str
    layout: str                    # "stacked" (one .npz) or "folder" (one sample per file)
    samples: int                   # samples in the source
    read: int                      # samples the ranges cover
    arrays: list[ArrayInfo]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_array_source(path: str | Path) -> bool:
    """An `.npz` file, or a folder holding `.npz` files."""
    root = Path(path).expanduser()
    if root.is_file():
        return root.suffix == ".npz"
    return root.is_dir() and any(p.suffix == ".npz" and p.is_file() for p in root.iterdir())


def preview_arrays(path: str | Path, input_names=(), *, samples: int = 3, max_files: int = 200) -> ArrayPreview:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"array source {root} does not exist; give an .npz file or a folder of .npz files")
    inputs = set(input_names)
    if root.is_file():
        arrays = _open_npz(root)
        if not arrays:
            raise DataError(f"array file {root} holds no arrays; write them with numpy.savez(path, name=array, ...)")
        counts = {a.shape[0] if a.ndim else None for a in arrays.values()}
        n = next(iter(counts)) if len(counts) == 1 else None
        notes = [] if n is not None else [f"the arrays have different sample counts ({sorted(map(str, counts))}); "
                                          "the first axis must be the sample axis of every array"]
        infos = [_info(name, a, _role(name, inputs), [a[i] for i in range(min(samples, len(a)))] if a.ndim else [a])
                 for name, a in arrays.items()]
        return ArrayPreview(str(root), "stacked", n or 0, n or 0, infos, notes)
    files = sorted(p for p in root.iterdir() if p.suffix == ".npz" and p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"no .npz files in {root}; a folder source holds one .npz per sample")
    per_array: dict[str, list[np.ndarray]] = {}
    notes = []
    for p in files[:max_files]:
        for name, a in _open_npz(p).items():
            per_array.setdefault(name, []).append(a)
    if len(files) > max_files:
        notes.append(f"value ranges cover the first {max_files:,} of {len(files):,} files")
    infos = []
    for name, values in per_array.items():
        if len(values) < min(len(files), max_files):
            notes.append(f"array {name!r} is missing from {min(len(files), max_files) - len(values)} file(s)")
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            notes.append(f"array {name!r} has {len(shapes)} shapes across files (e.g. {sorted(shapes)[:3]})")
        infos.append(_info(name, values[0], _role(name, inputs), values[:samples], values))
    return ArrayPreview(str(root), "folder", len(files), min(len(files), max_files), infos, notes)


def _role(name: str, inputs: set) -> str:
    if not inputs:
        return "array"
    return "input" if name in inputs else "target"


def _info(name: str, first: np.ndarray, role: str, shown, every=None) -> ArrayInfo:
    values = every if every is not None else [first]
    numeric = first.dtype.kind in "fiub"
    lo = hi = mean = None
    if numeric and any(v.size for v in values):
        flat = [v.astype(np.float64).ravel() for v in values if v.size]
        finite = [f[np.isfinite(f)] for f in flat]
        finite = [f for f in finite if f.size]
        if finite:
            lo = float(min(f.min() for f in finite))
            hi = float(max(f.max() for f in finite))
            mean = float(sum(f.sum() for f in finite) / sum(f.size for f in finite))
    return ArrayInfo(name, role, [int(d) for d in first.shape], str(first.dtype), lo, hi, mean,
                     [_sample_text(s) for s in shown])


def _sample_text(sample) -> str:
    a = np.asarray(sample)
    flat = a.ravel()
    head = flat[:SAMPLE_VALUES]
    if a.dtype.kind == "f":
        text = ", ".join(f"{v:.4g}" for v in head)
    else:
        text = ", ".join(str(v) for v in head.tolist())
    more = f", … ({flat.size:,} values)" if flat.size > SAMPLE_VALUES else ""
    return f"[{text}{more}]"
