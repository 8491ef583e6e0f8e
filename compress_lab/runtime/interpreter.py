"""Compile a MIL function into a flat list of PyTorch calls, and run it.

At load time: constants are decompressed once and turned into torch tensors,
each op becomes a `Kernel` with its constant arguments resolved, ops whose
inputs are all constant are evaluated once (folded), and every op the runtime
cannot run is collected and reported together as UnsupportedOpError."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compress_lab.errors import UnsupportedOpError
from compress_lab.runtime.constants import decompress_constants, is_constexpr
from compress_lab.runtime.milprogram import MilSource
from compress_lab.runtime.ops import OpContext, Ref, builder_for

COMPUTE_PRECISIONS = ("fp32", "fp16")


class Interpreter:
    """Runs one MIL function with PyTorch. `compute_precision="fp16"` rounds every
    computed float value (and every float weight) to fp16 while accumulating in
    fp32, approximating how Core ML runs fp16 on device."""

    def __init__(self, source: MilSource, compute_precision: str = "fp32"):
        self.source = source
        self.round_fp16 = compute_precision == "fp16"
        self.constants: dict[str, Any] = decompress_constants(source.program, source.function, source.origin)
        self._tensors = {name: self._to_torch(value) for name, value in self.constants.items()}
        self._setup()

    def _setup(self) -> None:
        self._unfolded = (dict(self.constants), dict(self._tensors))  # before folding, for with_constants
        self._input_name = self.source.input_name
        self._output_names = [v.name for v in self.source.function.outputs]
        self._steps = self._compile()

    def with_constants(self, overrides: dict[str, Any]) -> "Interpreter":
        """A new interpreter of the same program with some constants replaced (same
        shapes); nothing is decompressed again. Used to measure a weight change fast."""
        constants, tensors = self._unfolded
        for name, value in overrides.items():
            if name not in constants:
                raise KeyError(f"{name!r} is not a constant of {self.source.origin}")
            if np.shape(value) != np.shape(constants[name]):
                raise ValueError(f"constant {name!r} has shape {np.shape(constants[name])}, not {np.shape(value)}")
        clone = object.__new__(Interpreter)
        clone.source, clone.round_fp16 = self.source, self.round_fp16
        clone.constants = {**constants, **overrides}
        clone._tensors = {**tensors, **{name: clone._to_torch(value) for name, value in overrides.items()}}
        clone._setup()
        return clone

    # --- load time ------------------------------------------------------------------------
    def _to_torch(self, value):
        if isinstance(value, (str, bytes)):
            return value
        array = np.asarray(value)
        if array.dtype.kind in "US O":
            return value
        if array.dtype.kind == "f":
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            return tensor.half().float() if self.round_fp16 else tensor
        if array.dtype.kind == "b":
            return torch.from_numpy(np.ascontiguousarray(array))
        if array.dtype == np.int64 or array.dtype == np.uint32:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int32))

    def _compile(self):
        function = self.source.function
        where = f"function {self.source.function_name!r}, top-level block"
        steps, problems = [], []
        for index, op in enumerate(function.operations):
            if op.op_type == "const" or is_constexpr(op):
                continue
            if all(v.name in self.constants for v in op.outputs):
                continue  # coremltools' value inference already folded it
            location = f"{where}, op #{index}"
            if op.blocks:
                problems.append(f"op {op.op_type!r} named {op.name!r} ({location}): control flow is not supported")
                continue
            builder = builder_for(op.op_type)
            if builder is None:
                problems.append(f"op {op.op_type!r} named {op.name!r} ({location}): op type not supported")
                continue
            try:
                kernel = builder(OpContext(op, self._tensors, self.constants, location))
            except UnsupportedOpError as e:
                problems.append(str(e))
                continue
            fn = kernel.fn
            ctx_out_float = [self._is_float(v) for v in op.outputs]
            if self.round_fp16 and not kernel.layout_only and any(ctx_out_float):
                fn = _rounding(fn)
            refs = [(i, a.name) for i, a in enumerate(kernel.args) if isinstance(a, Ref)]
            outs = tuple(v.name for v in op.outputs)
            if not refs:
                self._fold(fn, kernel.args, outs)
                continue
            steps.append([fn, list(kernel.args), refs, outs, ()])
        if problems:
            listed = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
            raise UnsupportedOpError(
                f"the lab's Core ML runtime cannot run {len(problems)} op(s) of {self.source.origin}:\n  {listed}\n"
                "Convert the model without these ops, or run it on macOS with backend='native'.")
        missing = [n for n in self._output_names if n not in self.constants and not any(n in s[3] for s in steps)]
        if missing:
            raise UnsupportedOpError(f"outputs {missing} of {self.source.origin} are not produced by any op")
        return self._plan_frees(steps)

    @staticmethod
    def _is_float(var) -> bool:
        from coremltools.converters.mil.mil import types
        return types.is_float(var.dtype) if var.dtype is not None else False

    def _fold(self, fn, args, outs):
        with torch.inference_mode():
            result = fn(*args)
        results = result if isinstance(result, (tuple, list)) else [result]
        for name, value in zip(outs, results):
            self._tensors[name] = value
            self.constants[name] = value.numpy() if isinstance(value, torch.Tensor) else value

    def _plan_frees(self, steps):
        """Drop each intermediate right after its last use, as eager PyTorch does."""
        last_use: dict[str, int] = {}
        for i, (_, _, refs, _, _) in enumerate(steps):
            for _, name in refs:
                last_use[name] = i
        keep = set(self._output_names)
        frees: dict[int, list[str]] = {}
        for name, i in last_use.items():
            if name not in keep:
                frees.setdefault(i, []).append(name)
        for i, step in enumerate(steps):
            step[4] = tuple(frees.get(i, ()))
        return [tuple(s) for s in steps]

    # --- run time -------------------------------------------------------------------------
    def run(self, x: torch.Tensor, observe=None) -> dict[str, torch.Tensor]:
        """Outputs by name. `observe(name, value)`, if given, sees every computed value
        (calibration uses it to record activation ranges)."""
        if self.round_fp16:
            x = x.half().float()
        env: dict[str, Any] = {self._input_name: x}
        if observe is not None:
            observe(self._input_name, x)
        with torch.inference_mode():
            for fn, args, refs, outs, frees in self._steps:
                call = args.copy()  # a copy per call keeps one program usable from several threads
                for i, name in refs:
                    call[i] = env[name]
                result = fn(*call)
                if len(outs) == 1:
                    env[outs[0]] = result
                else:
                    for name, value in zip(outs, result):
                        env[name] = value
                if observe is not None:
                    for name in outs:
                        observe(name, env[name])
                for name in frees:
                    del env[name]
        return {name: env[name] if name in env else self._tensors[name] for name in self._output_names}


def _rounding(fn):
    def rounded(*args):
        out = fn(*args)
        if isinstance(out, (tuple, list)):
            return tuple(o.half().float() if o.is_floating_point() else o for o in out)
        return out.half().float() if out.is_floating_point() else out
    return rounded
