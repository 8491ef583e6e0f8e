"""Walking a MIL program, and what its compressed-weight ops mean.

`iter_ops` is the one walker: it takes coremltools' Python MIL objects (a Program, a Function
or a Block) or the protobuf of an ML program (`spec.mlProgram`, one of its functions or
blocks) and yields every op, including those of nested blocks (a while_loop's condition
and body, a cond's branches), each op before the ops nested in it.

`COMPRESSED_OPS` is the one table of compressed-weight ops: op type -> the compressions a
weight built by it carries (a chain such as lut_to_sparse -> sparse_to_dense is a sparse,
palettized weight)."""

from __future__ import annotations

from typing import Any, Iterator

CONSTEXPR_PREFIX = "constexpr_"

PALETTIZED, QUANTIZED, SPARSE = "palettized", "quantized", "sparse"

COMPRESSED_OPS: dict[str, tuple[str, ...]] = {
    "constexpr_lut_to_dense": (PALETTIZED,),                     # iOS16+: indices into a look-up table
    "constexpr_lut_to_sparse": (SPARSE, PALETTIZED),             # iOS18: a sparse weight's palettized values
    "constexpr_blockwise_shift_scale": (QUANTIZED,),             # iOS18: integers (or floats) times scales
    "constexpr_affine_dequantize": (QUANTIZED,),                 # iOS16: (integers - zero point) * scale
    "constexpr_sparse_blockwise_shift_scale": (SPARSE, QUANTIZED),  # iOS18: a sparse weight's quantized values
    "constexpr_sparse_to_dense": (SPARSE,),                      # iOS16+: mask + non-zero values
}


def ops_for(compression: str) -> tuple[str, ...]:
    """The op types whose weights carry `compression` ("palettized", "quantized" or "sparse")."""
    found = tuple(op for op, kinds in COMPRESSED_OPS.items() if compression in kinds)
    if not found:
        raise ValueError(f"unknown compression {compression!r}; known: {PALETTIZED}, {QUANTIZED}, {SPARSE}")
    return found


def op_type(op: Any) -> str:
    """The op's type, for a Python MIL op (`op_type`) or a protobuf one (`type`)."""
    return op.op_type if hasattr(op, "op_type") else op.type


def is_constexpr(op: Any) -> bool:
    """A weight-building op evaluated at load time (compressed weights, casts)."""
    return op_type(op).startswith(CONSTEXPR_PREFIX)


def iter_ops(node: Any) -> Iterator[Any]:
    """Every op of a program, function or block, with the ops of nested blocks."""
    if hasattr(node, "functions"):                   # a Program (Python MIL or protobuf)
        for function in node.functions.values():
            yield from iter_ops(function)
        return
    if hasattr(node, "block_specializations"):       # a protobuf Function: one block per opset
        for block in node.block_specializations.values():
            yield from iter_ops(block)
        return
    for op in node.operations:
        yield op
        for inner in op.blocks:
            yield from iter_ops(inner)


def input_vars(op: Any) -> Iterator[Any]:
    """The vars a Python MIL op reads (list-valued inputs such as concat's `values` flattened)."""
    for value in op.inputs.values():
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value
