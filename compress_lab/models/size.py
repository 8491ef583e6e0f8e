"""Size accounting of a Core ML package, measured on the files themselves.

`package_size(path)` reports the bytes on disk of the whole .mlpackage and of its
weights file, the number of weights (dense elements of every float weight tensor the
program uses, whether stored plain or compressed), the effective bits per weight
(8 * weights-file bytes / number of weights), and one row per weight tensor: its dense
shape, the bytes its stored parts take, and how it is compressed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress_lab.errors import ModelLoadError
from compress_lab.mil import COMPRESSED_OPS, input_vars, is_constexpr, iter_ops

WEIGHTS_DIR = Path("Data") / "com.apple.CoreML" / "weights"



@dataclass(frozen=True)
class WeightSize:
    """One weight tensor of the program."""

    name: str
    used_by: str
    op_type: str
    shape: tuple[int, ...]
    elements: int
    stored_bytes: int
    kind: str  # "dense", or the compression steps joined by "+", e.g. "sparse+palettized"

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.stored_bytes / self.elements if self.elements else 0.0


@dataclass(frozen=True)
class SizeReport:
    path: str
    package_bytes: int
    weights_bytes: int
    n_weights: int
    weights: tuple[WeightSize, ...] = field(default=())

    @property
    def bits_per_weight(self) -> float:
        """Weights-file bits per weight: 16 for an fp16 package (plus small overheads)."""
        return 8.0 * self.weights_bytes / self.n_weights if self.n_weights else 0.0

    @property
    def compressed_elements(self) -> int:
        return sum(w.elements for w in self.weights if w.kind != "dense")

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for w in self.weights:
            row = out.setdefault(w.kind, {"tensors": 0, "elements": 0, "stored_bytes": 0})
            row["tensors"] += 1
            row["elements"] += w.elements
            row["stored_bytes"] += w.stored_bytes
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "package_bytes": self.package_bytes,
            "weights_bytes": self.weights_bytes,
            "n_weights": self.n_weights,
            "bits_per_weight": self.bits_per_weight,
            "compressed_elements": self.compressed_elements,
            "by_kind": self.by_kind(),
            "weights": [dict(asdict(w), shape=list(w.shape), bits_per_weight=w.bits_per_weight) for w in self.weights],
        }


def package_size(path: str | Path) -> SizeReport:
    """Measure the .mlpackage at `path` (see module docstring)."""
    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise ModelLoadError(f"{path} is not a Core ML package (no Manifest.json)")
    package_bytes = _tree_bytes(path)
    weights_bytes = _tree_bytes(path / WEIGHTS_DIR)
    prog = _load_program(path)
    weights = tuple(_weight_tensors(prog))
    return SizeReport(str(path), package_bytes, weights_bytes, sum(w.elements for w in weights), weights)


def compare(size: SizeReport, baseline_fp16: SizeReport | None = None,
            baseline_fp32: SizeReport | None = None) -> dict[str, float]:
    """How many times smaller `size` is than each baseline (> 1 means smaller)."""
    out: dict[str, float] = {"bits_per_weight": size.bits_per_weight}
    for label, base in (("fp16", baseline_fp16), ("fp32", baseline_fp32)):
        if base is None:
            continue
        out[f"weights_vs_{label}"] = _ratio(base.weights_bytes, size.weights_bytes)
        out[f"package_vs_{label}"] = _ratio(base.package_bytes, size.package_bytes)
    return out


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.inf


def _tree_bytes(root: Path) -> int:
    if not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _load_program(path: Path):
    import coremltools as ct
    from compress_lab.quiet import quiet_coremltools
    from compress_lab.techniques._coreml_common import load_program
    try:
        with quiet_coremltools():
            return load_program(ct.models.MLModel(str(path), skip_model_load=True))
    except Exception as e:
        raise ModelLoadError(f"cannot read the ML program of {path}: {type(e).__name__}: {e}") from e


def _weight_tensors(prog):
    """Float tensors (rank >= 1) fed to compute ops from a const or a chain of constexpr ops."""
    from coremltools.converters.mil.mil import types
    seen = set()
    for op in iter_ops(prog):
        if op.op_type == "const" or is_constexpr(op):
            continue
        for var in input_vars(op):
            producer = var.op
            if producer is None or id(var) in seen:
                continue
            if producer.op_type != "const" and not is_constexpr(producer):
                continue
            if not types.is_tensor(var.sym_type) or not types.is_float(var.dtype) or var.rank < 1:
                continue
            seen.add(id(var))
            leaves, kinds = _chain(producer, set())
            shape = tuple(int(d) for d in var.shape)
            yield WeightSize(
                name=producer.name, used_by=op.name, op_type=op.op_type, shape=shape,
                elements=math.prod(shape), stored_bytes=sum(_stored_bytes(v) for v in leaves),
                kind="+".join(kinds) if kinds else "dense")


def _chain(op, visited: set) -> tuple[list, list[str]]:
    """The const outputs a weight is built from (each once: a multi-output constexpr such as
    lut_to_sparse feeds two inputs of the next op), and the compression steps."""
    from coremltools.converters.mil.mil import types
    if id(op) in visited:
        return [], []
    visited.add(id(op))
    if op.op_type == "const":
        return [op.outputs[0]], []
    leaves, kinds = [], []
    own = COMPRESSED_OPS.get(op.op_type, (op.op_type.removeprefix("constexpr_"),))  # constexpr_cast: "cast"
    data = getattr(op, "data", None)
    if op.op_type == "constexpr_blockwise_shift_scale" and data is not None and types.is_float(data.dtype):
        own = ("scaled",)  # float data times scales: palettization with per-channel scales
    for var in input_vars(op):
        if var.op is None:
            continue
        sub_leaves, sub_kinds = _chain(var.op, visited)
        leaves += sub_leaves
        kinds += [k for k in sub_kinds if k not in kinds]
    kinds = [k for k in own if k not in kinds] + kinds
    return leaves, _order(kinds)


def _order(kinds: list[str]) -> list[str]:
    """sparse, then palettized, then quantized (a quantized LUT), then the rest: one spelling per combination."""
    rank = {"sparse": 0, "palettized": 1, "quantized": 2, "scaled": 3}
    return sorted(kinds, key=lambda k: rank.get(k, 9))


def _stored_bytes(var) -> int:
    dtype = var.dtype
    bits = dtype.get_bitwidth() if hasattr(dtype, "get_bitwidth") else 8
    n = math.prod(int(d) for d in var.shape) if var.shape else 1
    return math.ceil(n * bits / 8)
