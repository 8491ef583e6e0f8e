"""Fused steps for plain runs (nothing observed): a few op patterns become one PyTorch call.

The interpreter keeps its op-by-op steps for runs that observe every value (calibration);
a plain run takes the fused plan built here from those steps. Each fused step computes
what its ops compute, up to float rounding:

- attention, `matmul(Q, K^T) [* scale] [+ mask] -> softmax(last axis) -> matmul(., V)`,
  becomes one `scaled_dot_product_attention` (no score tensor, no copies of the heads);
  shapes it cannot take at run time fall back to the original ops;
- an element-wise op on the fresh output of `linear`, `conv` or `matmul` (or of a step fused
  from one: relu, gelu, add of a residual) is done in place on that output, saving an allocation.

A step here is `[fn, args, refs, outs, frees, op]` (see interpreter.py); only values used
by exactly one step, and not outputs of the function, are fused away."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from compress_lab.runtime.ops import Ref

FRESH_PRODUCERS = ("linear", "conv", "matmul")


def fuse_steps(steps: list, keep: set[str], constants: dict) -> list:
    """A new step list with the patterns above fused; `steps` is left as it is.
    `keep`: names that must stay computed (the function's outputs)."""
    uses = Counter(name for step in steps for _, name in step[2])
    fusable = {name for name, count in uses.items() if count == 1 and name not in keep}
    steps = _fuse_attention([list(s) for s in steps], fusable, constants)
    return _fuse_in_place(steps, fusable, constants)


# --- shared helpers ---------------------------------------------------------------------------
def _producers(steps) -> dict[str, int]:
    return {name: i for i, step in enumerate(steps) for name in step[3]}


def _input(op, param: str):
    var = op.inputs.get(param)
    return None if var is None or isinstance(var, (list, tuple)) else var


def _const(op, param: str, constants: dict, default=None):
    var = _input(op, param)
    if var is None:
        return default
    return constants.get(var.name, default)


def _step(fn, args: list, outs: tuple, op) -> list:
    refs = [(i, a.name) for i, a in enumerate(args) if isinstance(a, Ref)]
    return [fn, args, refs, outs, (), op]


def _run_original(steps, names: list[str], out: str):
    """A function of the named values that runs `steps` (the unfused ops) and returns `out`."""
    from compress_lab.runtime.interpreter import _run_steps

    steps = [tuple(s[:5]) for s in steps]

    def run(*values):
        env = dict(zip(names, values))
        _run_steps(steps, env)
        return env[out]
    return run


# --- attention --------------------------------------------------------------------------------
def _fuse_attention(steps: list, fusable: set[str], constants: dict) -> list:
    made = _producers(steps)
    removed, replaced = set(), {}
    for i, step in enumerate(steps):
        chain = _attention_chain(steps, i, made, fusable, constants)
        if chain is None:
            continue
        indices, fused = chain
        removed.update(indices)
        replaced[i] = fused
    return [replaced.get(i, s) for i, s in enumerate(steps) if i not in removed]


def _attention_chain(steps, i: int, made: dict, fusable: set, constants: dict):
    """(indices of the steps fused into step i, the fused step) when step i is the `matmul(P, V)`
    of an attention pattern; else None."""
    last = steps[i][5]
    if last is None or last.op_type != "matmul" or not _plain_matmul(last, constants, allow_ty=False):
        return None
    soft = _fusable_producer(steps, made, fusable, _input(last, "x"))
    if soft is None or soft[5].op_type != "softmax" or not _last_axis(soft[5], constants):
        return None
    chain, mask, scale = [soft], None, None
    step = _fusable_producer(steps, made, fusable, _input(soft[5], "x"))
    if step is not None and step[5].op_type == "add":
        found = _split_operands(steps, made, fusable, step, ("mul", "matmul"))
        if found is None or not _is_float_arg(found[1]):
            return None
        chain.append(step)
        step, mask = found
    if step is not None and step[5].op_type == "mul":
        found = _split_operands(steps, made, fusable, step, ("matmul",))
        scale = None if found is None else _scalar_constant(found[1])
        if scale is None:
            return None
        chain.append(step)
        step = found[0]
    if step is None or step[5].op_type != "matmul" or not _plain_matmul(step[5], constants, allow_ty=True):
        return None
    if not all(isinstance(a, Ref) for a in step[1]) or not _rank(step[5], 4) or not _rank(last, 4):
        return None
    chain.append(step)
    q, key, v = step[1][0], step[1][1], steps[i][1][1]
    indices = sorted(made[s[3][0]] for s in chain)
    originals = [steps[j] for j in indices] + [steps[i]]
    names = [q.name, key.name, v.name if isinstance(v, Ref) else None, mask.name if isinstance(mask, Ref) else None]
    transposed_key = bool(_const(step[5], "transpose_y", constants, False))
    fn = _attention_fn(scale, transposed_key, originals, names, steps[i][3][0])
    return indices, _step(fn, [q, key, v, mask], steps[i][3], last)


def _fusable_producer(steps, made: dict, fusable: set, var):
    """The step computing `var` when its value may be fused away (one use, not kept, one output)."""
    if var is None or var.name not in fusable or var.name not in made:
        return None
    step = steps[made[var.name]]
    return step if step[5] is not None and len(step[3]) == 1 else None


def _split_operands(steps, made: dict, fusable: set, step, kinds: tuple):
    """(the step making one operand of a binary `step`, of one of `kinds`, the other operand's
    arg: a constant or a Ref), or None."""
    op = step[5]
    for position, param in ((0, "x"), (1, "y")):
        var = _input(op, param)
        producer = _fusable_producer(steps, made, fusable, var)
        if producer is not None and producer[5].op_type in kinds:
            other = step[1][1 - position]
            return None if _same(other, var) else (producer, other)
    return None


def _same(arg, var) -> bool:
    return isinstance(arg, Ref) and arg.name == var.name


def _scalar_constant(arg):
    if isinstance(arg, torch.Tensor) and arg.numel() == 1 and arg.is_floating_point():
        return float(arg.reshape(()).item())
    return None


def _is_float_arg(arg) -> bool:
    if isinstance(arg, torch.Tensor):
        return arg.is_floating_point()
    return isinstance(arg, Ref)  # the add's output is float, so is a run-time operand added to it


def _plain_matmul(op, constants: dict, allow_ty: bool) -> bool:
    if bool(_const(op, "transpose_x", constants, False)):
        return False
    return allow_ty or not bool(_const(op, "transpose_y", constants, False))


def _last_axis(op, constants: dict) -> bool:
    axis = _const(op, "axis", constants, -1)
    rank = len(op.outputs[0].shape)
    return int(np.asarray(axis).reshape(())) % rank == rank - 1


def _rank(op, rank: int) -> bool:
    return len(op.outputs[0].shape) == rank


def _attention_fn(scale, transposed_key: bool, originals, names, out: str):
    """softmax(Q K^T * scale + mask) V with scaled_dot_product_attention; the original ops when
    the run-time shapes are not 4-D heads that SDPA takes as they are."""
    fallback_names = [n for n in names if n is not None]
    fallback = _run_original(originals, fallback_names, out)
    factor = 1.0 if scale is None else scale

    def attention(q, key, v, mask):
        k = key if transposed_key else key.transpose(-1, -2)
        if _sdpa_fits(q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=factor)
        values = [value for value, name in zip((q, key, v, mask), names) if name is not None]
        return fallback(*values)
    return attention


def _sdpa_fits(q, k, v, mask) -> bool:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or not q.is_floating_point():
        return False
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2] or k.shape[2] != v.shape[2] or q.shape[3] != k.shape[3]:
        return False
    if q.dtype != k.dtype or k.dtype != v.dtype:
        return False
    if mask is None:
        return True
    scores = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if mask.dim() > 4 or mask.dtype != q.dtype:
        return False
    try:
        return tuple(torch.broadcast_shapes(mask.shape, scores)) == scores
    except RuntimeError:
        return False


# --- in place ---------------------------------------------------------------------------------
def _in_place_fn(op, constants: dict):
    """(fn(fresh, *others), index of the fused operand among the op's args) for an element-wise
    op that can write into its operand's buffer; None otherwise."""
    kind = op.op_type
    if kind == "relu":
        return torch.relu_, 0
    if kind == "gelu":
        mode = str(_const(op, "mode", constants, "EXACT"))
        approximate = {"EXACT": "none", "TANH_APPROXIMATION": "tanh"}.get(mode)
        if approximate is None:
            return None
        return (lambda t: torch.ops.aten.gelu_(t, approximate=approximate)), 0
    if kind == "add":
        return _add_into, None
    return None


def _add_into(fresh, other):
    """fresh + other, written into `fresh` when the sum has its shape and dtype."""
    if isinstance(other, torch.Tensor) and other.dtype == fresh.dtype and other.dim() <= fresh.dim():
        try:
            fits = tuple(torch.broadcast_shapes(fresh.shape, other.shape)) == tuple(fresh.shape)
        except RuntimeError:
            fits = False
        if fits:
            return fresh.add_(other)
    return torch.add(fresh, other)


def _fuse_in_place(steps: list, fusable: set[str], constants: dict) -> list:
    out, fresh_at = [], {}  # fresh_at: name -> index in `out` of the step making it fresh
    for step in steps:
        op = step[5]
        merged = _merge_in_place(out, fresh_at, step, fusable, constants) if op is not None else None
        if merged is not None:  # the producer moves to the consumer's place, after its other operands
            out[merged[0]] = None
            step = merged[1]
        out.append(step)
        if op is not None and len(step[3]) == 1 and (merged is not None or op.op_type in FRESH_PRODUCERS):
            fresh_at[step[3][0]] = len(out) - 1
    return [step for step in out if step is not None]


def _merge_in_place(out: list, fresh_at: dict, step, fusable: set, constants: dict):
    """(index in `out`, merged step) when `step` can run in place on a fresh value; else None."""
    found = _in_place_fn(step[5], constants)
    if found is None or len(step[3]) != 1:
        return None
    fn, position = found
    args = step[1]
    positions = [position] if position is not None else [0, 1]
    for pos in positions:
        arg = args[pos] if pos < len(args) else None
        if isinstance(arg, Ref) and arg.name in fusable and arg.name in fresh_at:
            others = [a for j, a in enumerate(args) if j != pos]
            if any(_same(a, arg) for a in others):
                return None
            index = fresh_at.pop(arg.name)
            first = out[index]
            return index, _step(_then(first[0], len(first[1]), fn), [*first[1], *others], step[3], first[5])
    return None


def _then(first, count: int, second):
    def fused(*args):
        return second(first(*args[:count]), *args[count:])
    return fused
