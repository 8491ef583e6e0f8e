"""The one MIL op walker and the one compressed-op table (compress_lab/mil.py)."""

import numpy as np
import pytest

from compress_lab.mil import COMPRESSED_OPS, is_constexpr, iter_ops, ops_for
from compress_lab.quiet import import_coremltools, quiet_coremltools

ct = import_coremltools()


def _loop_program():
    """A program whose while_loop body holds an op (`mul`) found only by recursing into blocks."""
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS17)
    def prog(x):
        def cond(i, acc):
            return mb.less(x=i, y=np.int32(3))

        def body(i, acc):
            return mb.add(x=i, y=np.int32(1)), mb.mul(x=acc, y=np.float32(2.0), name="in_body")

        _, out = mb.while_loop(_cond=cond, _body=body, loop_vars=(np.int32(0), x))
        return out
    return prog


def test_iter_ops_recurses_into_nested_blocks_of_python_mil_and_protobuf(tmp_path):
    prog = _loop_program()
    mil_types = [op.op_type for op in iter_ops(prog)]
    assert "while_loop" in mil_types and "mul" in mil_types and "less" in mil_types
    assert mil_types.index("while_loop") < mil_types.index("mul")  # an op before the ops nested in it
    top_level = [op.op_type for op in prog.functions["main"].operations]
    assert "mul" not in top_level

    with quiet_coremltools():
        mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
    proto_types = [op.type for op in iter_ops(mlmodel.get_spec().mlProgram)]
    assert "while_loop" in proto_types and "mul" in proto_types


def test_compressed_op_table_says_what_each_op_means():
    assert ops_for("palettized") == ("constexpr_lut_to_dense", "constexpr_lut_to_sparse")
    assert set(ops_for("sparse")) == {"constexpr_sparse_to_dense", "constexpr_lut_to_sparse",
                                      "constexpr_sparse_blockwise_shift_scale"}
    assert "constexpr_affine_dequantize" in ops_for("quantized")
    assert all(op.startswith("constexpr_") for op in COMPRESSED_OPS)
    with pytest.raises(ValueError, match="palettized"):
        ops_for("pruned")


def test_is_constexpr_reads_python_and_protobuf_ops():
    prog = _loop_program()
    assert not any(is_constexpr(op) for op in iter_ops(prog))
