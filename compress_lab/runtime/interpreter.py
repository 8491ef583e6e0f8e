"""Compile a MIL function into a flat list of PyTorch calls, and run it.

At load time: constants are decompressed once and turned into torch tensors,
each op becomes a `Kernel` with its constant arguments resolved, ops whose
inputs are all constant are evaluated once (folded), and every op the runtime
cannot run is collected and reported together as UnsupportedOpError. A plain run (nothing
observed, fp32 compute) takes a fused copy of the steps (fusion.py); a run that observes every
value, and fp16 compute mode, keep one step per op."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from compress_lab.errors import UnsupportedOpError
from compress_lab.mil import is_constexpr
from compress_lab.runtime.constants import decompress_constants
from compress_lab.runtime.fusion import fuse_steps
from compress_lab.runtime.milprogram import MilSource
from compress_lab.runtime.ops import Kernel, OpContext, Ref, builder_for

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
        self._folded_from: dict[str, set[str]] = {}  # folded constant -> the constants it was computed from
        self._read_by_steps: set[str] = set()        # every value an op that runs (at any depth) reads
        self._steps, self._plain_steps = self._compile()
        self._checkpoints: dict[bytes, list[tuple[int, dict]]] | None = None
        self._resume: tuple[dict, int] | None = None

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
        problems: list[str] = []
        steps = self._compile_ops(function.operations, where, problems)
        if problems:
            listed = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
            raise UnsupportedOpError(
                f"the lab's Core ML runtime cannot run {len(problems)} op(s) of {self.source.origin}:\n  {listed}\n"
                "Convert the model without these ops, or run it on macOS with backend='native'.")
        missing = [n for n in self._output_names if n not in self.constants and not any(n in s[3] for s in steps)]
        if missing:
            raise UnsupportedOpError(f"outputs {missing} of {self.source.origin} are not produced by any op")
        plain = steps if self.round_fp16 else fuse_steps(steps, set(self._output_names), self.constants)
        return self._plan_frees(steps), self._plan_frees(plain)

    def _compile_ops(self, operations, where: str, problems: list[str]) -> list:
        """The steps of one block's ops; every op that cannot run is added to `problems`."""
        steps = []
        for index, op in enumerate(operations):
            if op.op_type == "const" or is_constexpr(op):
                continue
            if all(v.name in self.constants for v in op.outputs):
                continue  # coremltools' value inference already folded it
            location = f"{where}, op #{index}"
            if op.op_type == "while_loop":
                kernel = self._while_loop(op, location, problems)
                if kernel is None:
                    continue
            elif op.blocks:
                problems.append(f"op {op.op_type!r} named {op.name!r} ({location}): control flow of this kind is not supported")
                continue
            else:
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
            sources = {name for v in op.inputs.values() for name in _var_names(v)}
            if not refs:
                self._fold(fn, kernel.args, outs)
                for name in outs:
                    self._folded_from[name] = sources
                continue
            self._read_by_steps |= sources
            steps.append([fn, list(kernel.args), refs, outs, (), op])
        return steps

    def _while_loop(self, op, location: str, problems: list[str]):
        """A `while_loop` (ct.convert's form of GRU / RNN layers and loops over a sequence): its
        condition and body blocks compiled like the top level, run until the condition is false."""
        if len(op.blocks) != 2:
            problems.append(f"op 'while_loop' named {op.name!r} ({location}): expected a condition and a body block, "
                            f"found {len(op.blocks)}")
            return None
        before = len(problems)
        cond_block, body_block = op.blocks
        cond_steps = self._compile_ops(cond_block.operations, f"{location}, condition block", problems)
        body_steps = self._compile_ops(body_block.operations, f"{location}, body block", problems)
        if len(problems) > before:
            return None
        cond_inputs = [v.name for v in cond_block.inputs]
        body_inputs = [v.name for v in body_block.inputs]
        cond_out = cond_block.outputs[0].name
        body_outs = [v.name for v in body_block.outputs]

        def free_names(steps, inputs):
            made = set(inputs) | {name for step in steps for name in step[3]}
            return {name for step in steps for _, name in step[2] if name not in made}
        free = sorted(free_names(cond_steps, cond_inputs) | free_names(body_steps, body_inputs))
        loop_vars = op.inputs["loop_vars"]
        count = len(loop_vars)
        operands = [self._tensors[v.name] if v.name in self._tensors else Ref(v.name) for v in loop_vars]
        tensors = self._tensors
        cond_steps, body_steps = [tuple(s[:5]) for s in cond_steps], [tuple(s[:5]) for s in body_steps]

        def lookup(env, name):
            return env[name] if name in env else tensors[name]

        def run_loop(*args):
            values, outer = list(args[:count]), dict(zip(free, args[count:]))
            for _ in range(MAX_LOOP_ITERATIONS):
                env = {**outer, **dict(zip(cond_inputs, values))}
                _run_steps(cond_steps, env)
                if not bool(lookup(env, cond_out)):
                    return tuple(values)
                env = {**outer, **dict(zip(body_inputs, values))}
                _run_steps(body_steps, env)
                values = [lookup(env, name) for name in body_outs]
            raise UnsupportedOpError(f"while_loop {op.name!r} ({location}) ran {MAX_LOOP_ITERATIONS} iterations "
                                     "without its condition becoming false")
        return Kernel(run_loop, [*operands, *[Ref(name) for name in free]], layout_only=True)

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
        """The run-time steps `(fn, args, refs, outs, frees)`: each intermediate dropped right
        after its last use, as eager PyTorch does."""
        last_use: dict[str, int] = {}
        for i, step in enumerate(steps):
            for _, name in step[2]:
                last_use[name] = i
        keep = set(self._output_names)
        frees: dict[int, list[str]] = {}
        for name, i in last_use.items():
            if name not in keep:
                frees.setdefault(i, []).append(name)
        return [(*step[:4], tuple(frees.get(i, ()))) for i, step in enumerate(steps)]

    # --- run time -------------------------------------------------------------------------
    def run(self, x, observe=None) -> dict[str, torch.Tensor]:
        """Outputs by name. `x`: the (first) input's tensor, or a dict {input name: tensor}.
        `observe(name, value)`, if given, sees every input and computed value
        (calibration uses it to record activation ranges)."""
        named = dict(x) if isinstance(x, dict) else {self._input_name: x}
        env: dict[str, Any] = {}
        for name, value in named.items():
            if self.round_fp16 and value.is_floating_point():
                value = value.half().float()
            env[name] = value
            if observe is not None:
                observe(name, value)
        with torch.inference_mode():
            if observe is not None:
                _run_steps(self._steps, env, observe)
            else:
                self._run_plain(env)
        return {name: env[name] if name in env else self._tensors[name] for name in self._output_names}


    # --- resuming -------------------------------------------------------------------------
    def keep_checkpoints(self, count: int = 16, max_bytes: int | None = None) -> None:
        """From now on, each plain run keeps the values alive before `count` evenly spaced steps;
        all of them dropped (and no more kept) once they hold more than `max_bytes`."""
        self._checkpoints = {}
        self._checkpoint_bytes, self._checkpoint_max, self._checkpoint_seen = 0, max_bytes, set()
        n = len(self._plain_steps)
        self._checkpoint_at = set(np.unique(np.linspace(0, n, count + 1, endpoint=False).astype(int)[1:]).tolist())

    def resume_from(self, anchor: "Interpreter") -> None:
        """Runs of inputs `anchor` has kept checkpoints for start at the last one before the first
        step that reads a constant differing from the anchor's; whole runs where it cannot tell."""
        self._resume = None
        if anchor._checkpoints is None or anchor.source is not self.source or anchor.round_fp16 != self.round_fp16:
            return
        if [s[3] for s in anchor._plain_steps] != [s[3] for s in self._plain_steps]:
            return
        mine, theirs = self._unfolded[0], anchor._unfolded[0]
        changed = {name for name in mine if mine[name] is not theirs.get(name)
                   and not _same_value(mine[name], theirs.get(name))}
        start = self._first_step_reading(changed)
        if start is not None and start > 0:
            self._resume = (anchor._checkpoints, start)

    def _first_step_reading(self, changed: set[str]) -> int | None:
        """The first plain step reading a constant in `changed` or folded from one; None when one
        of them is read where steps' arguments do not show it (inside a kernel, a loop's body)."""
        affected, grew = set(changed), True
        while grew:
            grew = False
            for name, sources in self._folded_from.items():
                if name not in affected and sources & affected:
                    affected.add(name)
                    grew = True
        if affected & set(self._output_names):
            return None
        ids = {id(self._tensors[name]): name for name in affected if name in self._tensors}
        first, found = len(self._plain_steps), set()
        for i, step in enumerate(self._plain_steps):
            for arg in step[1]:
                name = ids.get(id(arg))
                if name is not None:
                    found.add(name)
                    first = min(first, i)
        if (affected & self._read_by_steps) - found:
            return None
        return first

    def _run_plain(self, env: dict) -> None:
        steps = self._plain_steps
        key = _digest(env) if self._checkpoints is not None or self._resume is not None else None
        start, kept = 0, []
        if self._resume is not None:
            store, first = self._resume
            kept = [(i, values) for i, values in store.get(key, ()) if i <= first]  # still true of this run
            if kept:
                start = kept[-1][0]
                env.update(kept[-1][1])
        if self._checkpoints is None:
            _run_steps(steps[start:], env)
            return
        at = self._checkpoint_at
        for i in range(start, len(steps)):
            if i in at and not (kept and kept[-1][0] >= i):
                kept.append((i, dict(env)))
                self._count_bytes(kept[-1][1])
            _run_steps(steps[i:i + 1], env)
        if self._checkpoints is not None:
            self._checkpoints[key] = kept

    def _count_bytes(self, values: dict) -> None:
        for value in values.values():
            if isinstance(value, torch.Tensor) and id(value) not in self._checkpoint_seen:
                self._checkpoint_seen.add(id(value))
                self._checkpoint_bytes += value.numel() * value.element_size()
        if self._checkpoint_max is not None and self._checkpoint_bytes > self._checkpoint_max:
            self._checkpoints = None  # too big to keep: whole runs from now on
            self._checkpoint_seen = set()

    @property
    def keeps_checkpoints(self) -> bool:
        return self._checkpoints is not None


def _var_names(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [name for v in value for name in _var_names(v)]
    return [value.name] if getattr(value, "name", None) else []


def _same_value(a, b) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return np.array_equal(np.asarray(a), np.asarray(b))
    except (TypeError, ValueError):
        return False


def _digest(env: dict) -> bytes:
    """A key for a run's inputs (checkpoints are kept per input)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(env):
        value = env[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(str((tuple(value.shape), value.dtype)).encode())
            h.update(value.detach().contiguous().numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.digest()


MAX_LOOP_ITERATIONS = 1_000_000


def _run_steps(steps, env: dict, observe=None) -> None:
    for fn, args, refs, outs, frees in steps:
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


def _rounding(fn):
    def rounded(*args):
        out = fn(*args)
        if isinstance(out, (tuple, list)):
            return tuple(o.half().float() if o.is_floating_point() else o for o in out)
        return out.half().float() if out.is_floating_point() else out
    return rounded
