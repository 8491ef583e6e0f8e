"""How a MIL op becomes a PyTorch call.

A builder runs once per op at load time. It reads the op's constant arguments
(`ctx.value`), resolves what it can in advance (weights as torch tensors, padding),
and returns a `Kernel`: a function plus its positional arguments, each either a
constant or a `Ref` to a var computed at run time. The per-batch loop then only
fetches refs and calls the function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from compress_lab.errors import UnsupportedOpError

_BUILDERS: dict[str, Callable[["OpContext"], "Kernel"]] = {}
_MISSING = object()

TORCH_DTYPES = {
    "fp16": torch.float32, "fp32": torch.float32, "fp64": torch.float32,  # floats compute in fp32
    "int8": torch.int32, "uint8": torch.int32, "int16": torch.int32, "uint16": torch.int32,
    "int32": torch.int32, "uint32": torch.int64, "int64": torch.int64, "bool": torch.bool,
}


@dataclass(frozen=True)
class Ref:
    """A var whose value is only known at run time."""

    name: str


@dataclass
class Kernel:
    fn: Callable[..., Any]
    args: list[Any]
    layout_only: bool = False  # moves values without computing new ones (no fp16 rounding needed)


def register(*op_types: str):
    def decorate(builder):
        for op_type in op_types:
            if op_type in _BUILDERS:
                raise ValueError(f"op type {op_type!r} registered twice")
            _BUILDERS[op_type] = builder
        return builder
    return decorate


def builder_for(op_type: str):
    return _BUILDERS.get(op_type)


def supported_op_types() -> tuple[str, ...]:
    return tuple(sorted(_BUILDERS))


class OpContext:
    """One op as its builder sees it: constant values, run-time refs, static shapes."""

    def __init__(self, op, tensors: dict[str, Any], values: dict[str, Any], location: str):
        self.op = op
        self._tensors = tensors  # var name -> torch tensor / python value, for constants
        self._values = values  # var name -> numpy / python value, for constants
        self.location = location

    # --- inputs -------------------------------------------------------------------
    def has(self, param: str) -> bool:
        return self.op.inputs.get(param) is not None

    def _var(self, param: str):
        var = self.op.inputs.get(param)
        if var is None:
            raise self.unsupported(f"input {param!r} is missing")
        return var

    def is_const(self, param: str) -> bool:
        var = self.op.inputs.get(param)
        return var is None or (not isinstance(var, (list, tuple)) and var.name in self._values)

    def value(self, param: str, default=_MISSING):
        """The load-time value of a constant input, as numpy / python (`default` when absent)."""
        var = self.op.inputs.get(param)
        if var is None:
            if default is _MISSING:
                raise self.unsupported(f"input {param!r} is missing")
            return default
        if isinstance(var, (list, tuple)) or var.name not in self._values:
            raise self.unsupported(f"input {param!r} must be a constant but is computed at run time")
        return self._values[var.name]

    def ints(self, param: str, default=_MISSING) -> list[int] | None:
        value = self.value(param, default)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def scalar(self, param: str, default=_MISSING):
        value = self.value(param, default)
        if value is None:
            return None
        value = np.asarray(value)
        return value.item() if value.size == 1 else value

    def operand(self, param: str, default=_MISSING):
        """A constant input as a torch tensor, or a Ref for a run-time one."""
        var = self.op.inputs.get(param)
        if var is None:
            if default is _MISSING:
                raise self.unsupported(f"input {param!r} is missing")
            return default
        return self._operand_of(var)

    def operands(self, param: str) -> list:
        var = self._var(param)
        return [self._operand_of(v) for v in (var if isinstance(var, (list, tuple)) else [var])]

    def _operand_of(self, var):
        if var.name in self._tensors:
            return self._tensors[var.name]
        return Ref(var.name)

    def shape(self, param: str) -> tuple[int | None, ...]:
        """Static shape of an input; None for dimensions known only at run time."""
        return tuple(_static_dim(d) for d in self._var(param).shape)

    def rank(self, param: str) -> int:
        return len(self._var(param).shape)

    # --- outputs ------------------------------------------------------------------
    def out_dtype(self, index: int = 0) -> torch.dtype:
        from coremltools.converters.mil.mil import types
        name = types.builtin_to_string(self.op.outputs[index].dtype)
        if name not in TORCH_DTYPES:
            raise self.unsupported(f"output dtype {name} is not supported")
        return TORCH_DTYPES[name]

    def out_is_float(self, index: int = 0) -> bool:
        return self.out_dtype(index).is_floating_point

    def unsupported(self, reason: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"op {self.op.op_type!r} named {self.op.name!r} ({self.location}): {reason}")


def _static_dim(d):
    if isinstance(d, (int, np.integer)):
        return int(d)
    return None


def torch_dtype(mil_dtype_name: str) -> torch.dtype:
    return TORCH_DTYPES[mil_dtype_name]
