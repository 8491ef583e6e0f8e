"""The constant values of a MIL function: `const` ops and decompressed `constexpr_*` ops.

Every constexpr op whose output feeds a computing op is decompressed exactly once,
with coremltools' own `materialized_val_inference` (the numpy implementation that
`coremltools.optimize.coreml.decompress_weights` uses), so values match it bit for
bit. Chains (e.g. lut_to_sparse -> sparse_to_dense, or a quantized LUT feeding
lut_to_dense) are resolved inside that call."""

from __future__ import annotations

import numpy as np

from compress_lab.errors import ModelLoadError, UnsupportedOpError

CONSTEXPR_PREFIX = "constexpr_"


def is_constexpr(op) -> bool:
    return op.op_type.startswith(CONSTEXPR_PREFIX)


def decompress_constants(function, origin: str = "the program") -> dict[str, np.ndarray]:
    """Name -> value of every constant var of `function`'s top-level block whose value
    is known at load time: const ops, constexpr ops (decompressed) and vars that
    coremltools' value inference already folded."""
    values: dict[str, np.ndarray] = {}
    ops = list(function.operations)
    for op in ops:
        if is_constexpr(op):
            if not _feeds_non_constexpr(op, function):
                continue
            values.update(_materialize(op, origin))
            continue
        for var in op.outputs:
            if var.val is not None:
                values[var.name] = var.val
    return values


def _feeds_non_constexpr(op, function) -> bool:
    outputs = {id(v) for v in function.outputs}
    return any(id(v) in outputs or any(not is_constexpr(child) for child in v.child_ops) for v in op.outputs)


def _materialize(op, origin: str) -> dict[str, np.ndarray]:
    try:
        value = op.materialized_val_inference()
    except AttributeError as e:
        raise UnsupportedOpError(
            f"cannot decompress {op.op_type} op {op.name!r} in {origin}: coremltools has no value inference for it "
            f"({e}); the lab's runtime cannot run this compressed weight") from e
    except Exception as e:
        raise ModelLoadError(f"decompressing {op.op_type} op {op.name!r} in {origin} failed: {type(e).__name__}: {e}") from e
    if not isinstance(value, (list, tuple)):
        value = [value]
    if len(value) != len(op.outputs):
        raise ModelLoadError(
            f"{op.op_type} op {op.name!r} in {origin} decompressed to {len(value)} values for {len(op.outputs)} outputs")
    return {var.name: np.asarray(v) for var, v in zip(op.outputs, value)}


def weight_values(function, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The constant tensors produced by const / constexpr ops (not folded intermediates),
    in their stored dtype (fp16 stays fp16)."""
    weights = {}
    for op in function.operations:
        if op.op_type != "const" and not is_constexpr(op):
            continue
        for var in op.outputs:
            value = constants.get(var.name)
            if isinstance(value, np.ndarray) and value.ndim > 0 and np.issubdtype(value.dtype, np.floating):
                weights[var.name] = value
    return weights
