"""The constant values of a MIL function: `const` ops and decompressed `constexpr_*` ops.

Constexpr ops are decompressed once, at load time, by coremltools' own
`WeightDecompressor` pass (what `coremltools.optimize.coreml.decompress_weights`
runs): each op, in program order, is replaced by a `const` holding its
`materialized_val_inference` value, so chains (a quantized LUT feeding
lut_to_dense, lut_to_sparse -> sparse_to_dense, per-channel scales) resolve
step by step and values match decompress_weights bit for bit. The pass runs on
the runtime's own copy of the program, never on the caller's model."""

from __future__ import annotations

import numpy as np

from compress_lab.errors import ModelLoadError, UnsupportedOpError
from compress_lab.mil import is_constexpr, iter_ops


def decompress_constants(program, function, origin: str = "the program") -> dict[str, np.ndarray]:
    """Decompress `program`'s constexpr ops in place, then return name -> value of every
    var of `function`'s top-level block known at load time (const ops and vars that
    coremltools' value inference folded)."""
    if any(is_constexpr(op) for op in iter_ops(function)):
        _decompress_in_place(program, origin)
    values: dict[str, np.ndarray] = {}
    for op in iter_ops(function):
        for var in op.outputs:
            if var.val is not None:
                values[var.name] = var.val
    return values


def _decompress_in_place(program, origin: str) -> None:
    from coremltools.optimize.coreml._quantization_passes import WeightDecompressor

    from compress_lab.quiet import quiet_coremltools

    decompressor = WeightDecompressor(op_selector=lambda op: True)
    original = decompressor.transform_op

    def transform(op):
        try:
            original(op)
        except (AttributeError, NotImplementedError) as e:
            raise UnsupportedOpError(
                f"cannot decompress {op.op_type} op {op.name!r} in {origin}: coremltools has no value inference "
                f"for it ({type(e).__name__}: {e}); the lab's runtime cannot run this compressed weight") from e
        except Exception as e:
            raise ModelLoadError(
                f"decompressing {op.op_type} op {op.name!r} in {origin} failed: {type(e).__name__}: {e}") from e
    decompressor.transform_op = transform
    with quiet_coremltools():
        decompressor.apply(program)


def weight_values(function, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float constant tensors of const ops that a computing op consumes (after
    decompression: layer weights and biases, not LUTs or scales), in their stored
    dtype (an fp16 program's stay fp16)."""
    weights = {}
    for op in function.operations:
        if op.op_type != "const":
            continue
        for var in op.outputs:
            if not any(child.op_type != "const" and not is_constexpr(child) for child in var.child_ops):
                continue
            value = constants.get(var.name)
            if isinstance(value, np.ndarray) and value.ndim > 0 and np.issubdtype(value.dtype, np.floating):
                weights[var.name] = value
    return weights
