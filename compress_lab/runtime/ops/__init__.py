"""MIL op -> PyTorch kernels. Importing this package registers every supported op."""

from compress_lab.runtime.ops import elementwise, nn, quantization, recurrent, tensor  # noqa: F401  (registration)
from compress_lab.runtime.ops.registry import Kernel, OpContext, Ref, builder_for, supported_op_types

__all__ = ["Kernel", "OpContext", "Ref", "builder_for", "supported_op_types"]
