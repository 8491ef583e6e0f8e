"""Element-wise unary and binary ops, activations, and reductions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress_lab.runtime.ops.registry import Kernel, OpContext, register

_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "mod": torch.remainder,
    "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
    "greater": torch.gt, "greater_equal": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}


@register(*_BINARY)
def _binary(ctx: OpContext) -> Kernel:
    fn = _BINARY[ctx.op.op_type]
    out_dtype = ctx.out_dtype()
    if not out_dtype.is_floating_point and out_dtype != torch.bool:
        def int_fn(x, y, _fn=fn, _dt=out_dtype):
            return _fn(x, y).to(_dt)
        return Kernel(int_fn, [ctx.operand("x"), ctx.operand("y")])
    return Kernel(fn, [ctx.operand("x"), ctx.operand("y")])


@register("real_div", "floor_div")
def _division(ctx: OpContext) -> Kernel:
    out_dtype = ctx.out_dtype()
    if out_dtype.is_floating_point:
        if ctx.op.op_type == "real_div":
            return Kernel(torch.div, [ctx.operand("x"), ctx.operand("y")])
        return Kernel(torch.floor_divide, [ctx.operand("x"), ctx.operand("y")])

    def int_div(x, y, _dt=out_dtype):
        return torch.div(x, y, rounding_mode="floor").to(_dt)
    return Kernel(int_div, [ctx.operand("x"), ctx.operand("y")])


_UNARY = {
    "relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "silu": F.silu, "softplus": F.softplus, "softsign": F.softsign, "erf": torch.erf,
    "exp": torch.exp, "exp2": torch.exp2, "sqrt": torch.sqrt, "abs": torch.abs,
    "ceil": torch.ceil, "floor": torch.floor, "round": torch.round, "sign": torch.sign,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "asin": torch.asin, "acos": torch.acos,
    "atan": torch.atan, "sinh": torch.sinh, "cosh": torch.cosh, "square": torch.square,
    "logical_not": torch.logical_not, "identity": lambda x: x,
}


@register(*_UNARY)
def _unary(ctx: OpContext) -> Kernel:
    return Kernel(_UNARY[ctx.op.op_type], [ctx.operand("x")], layout_only=ctx.op.op_type == "identity")


@register("clip")
def _clip(ctx: OpContext) -> Kernel:
    return Kernel(torch.clamp, [ctx.operand("x"), float(ctx.scalar("alpha")), float(ctx.scalar("beta"))])


@register("gelu")
def _gelu(ctx: OpContext) -> Kernel:
    mode = ctx.scalar("mode", "EXACT")
    if mode == "EXACT":
        return Kernel(F.gelu, [ctx.operand("x")])
    if mode == "TANH_APPROXIMATION":
        return Kernel(lambda x: F.gelu(x, approximate="tanh"), [ctx.operand("x")])
    if mode == "SIGMOID_APPROXIMATION":
        return Kernel(lambda x: x * torch.sigmoid(1.702 * x), [ctx.operand("x")])
    raise ctx.unsupported(f"gelu mode {mode!r} is unknown")


@register("leaky_relu", "elu", "thresholded_relu", "sigmoid_hard", "linear_activation", "scaled_tanh",
          "clamped_relu", "softplus_parametric", "prelu")
def _parametric(ctx: OpContext) -> Kernel:
    kind = ctx.op.op_type
    x = ctx.operand("x")
    if kind == "prelu":
        alpha = ctx.operand("alpha")
        return Kernel(F.prelu, [x, alpha])
    alpha = float(ctx.scalar("alpha", 1.0))
    beta = ctx.scalar("beta", None)
    beta = None if beta is None else float(beta)
    if kind == "leaky_relu":
        return Kernel(lambda t: F.leaky_relu(t, alpha), [x])
    if kind == "elu":
        return Kernel(lambda t: F.elu(t, alpha), [x])
    if kind == "thresholded_relu":
        return Kernel(lambda t: torch.where(t > alpha, t, torch.zeros_like(t)), [x])
    if kind == "sigmoid_hard":
        b = 0.5 if beta is None else beta
        return Kernel(lambda t: torch.clamp(alpha * t + b, 0.0, 1.0), [x])
    if kind == "linear_activation":
        b = 0.0 if beta is None else beta
        return Kernel(lambda t: alpha * t + b, [x])
    if kind == "scaled_tanh":
        b = 1.0 if beta is None else beta
        return Kernel(lambda t: alpha * torch.tanh(b * t), [x])
    if kind == "clamped_relu":
        b = 1.0 if beta is None else beta
        return Kernel(lambda t: torch.clamp(torch.where(t >= 0, t, alpha * t), max=b), [x])
    raise ctx.unsupported("per-channel parametric softplus is not implemented")


@register("log", "rsqrt", "inverse")
def _with_epsilon(ctx: OpContext) -> Kernel:
    kind = ctx.op.op_type
    defaults = {"log": 1e-45, "rsqrt": 1e-12, "inverse": 1e-4}
    eps = float(ctx.scalar("epsilon", defaults[kind]))
    fn = {"log": lambda t: torch.log(t + eps), "rsqrt": lambda t: torch.rsqrt(t + eps),
          "inverse": lambda t: torch.reciprocal(t + eps)}[kind]
    return Kernel(fn, [ctx.operand("x")])


@register("softmax")
def _softmax(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", -1))
    return Kernel(lambda t: torch.softmax(t, axis), [ctx.operand("x")])


@register("select")
def _select(ctx: OpContext) -> Kernel:
    return Kernel(torch.where, [ctx.operand("cond"), ctx.operand("a"), ctx.operand("b")])


@register("cast")
def _cast(ctx: OpContext) -> Kernel:
    dtype = ctx.out_dtype()
    return Kernel(lambda t: t.to(dtype), [ctx.operand("x")])


_REDUCE = {
    "reduce_mean": lambda t, d, k: torch.mean(t, dim=d, keepdim=k),
    "reduce_sum": lambda t, d, k: torch.sum(t, dim=d, keepdim=k),
    "reduce_max": lambda t, d, k: torch.amax(t, dim=d, keepdim=k),
    "reduce_min": lambda t, d, k: torch.amin(t, dim=d, keepdim=k),
    "reduce_prod": lambda t, d, k: _prod(t, d, k),
    "reduce_sum_square": lambda t, d, k: torch.sum(t * t, dim=d, keepdim=k),
    "reduce_l1_norm": lambda t, d, k: torch.sum(torch.abs(t), dim=d, keepdim=k),
    "reduce_l2_norm": lambda t, d, k: torch.sqrt(torch.sum(t * t, dim=d, keepdim=k)),
    "reduce_log_sum": lambda t, d, k: torch.log(torch.sum(t, dim=d, keepdim=k)),
    "reduce_log_sum_exp": lambda t, d, k: torch.logsumexp(t, dim=d, keepdim=k),
}


def _prod(t, dims, keep):
    for d in sorted((d % t.dim() for d in dims), reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep)
    return t


@register(*_REDUCE)
def _reduce(ctx: OpContext) -> Kernel:
    fn = _REDUCE[ctx.op.op_type]
    axes = ctx.ints("axes", None)
    keep = bool(ctx.scalar("keep_dims", False))
    dims = tuple(axes) if axes is not None else tuple(range(ctx.rank("x")))
    return Kernel(lambda t: fn(t, dims, keep), [ctx.operand("x")])


@register("reduce_argmax", "reduce_argmin")
def _arg_reduce(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", -1))
    keep = bool(ctx.scalar("keep_dims", False))
    fn = torch.argmax if ctx.op.op_type == "reduce_argmax" else torch.argmin
    dtype = ctx.out_dtype()
    return Kernel(lambda t: fn(t, dim=axis, keepdim=keep).to(dtype), [ctx.operand("x")])


@register("cumsum")
def _cumsum(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", 0))
    exclusive = bool(ctx.scalar("exclusive", False))
    reverse = bool(ctx.scalar("reverse", False))

    def cumsum(t):
        if reverse:
            t = torch.flip(t, [axis])
        out = torch.cumsum(t, axis)
        if exclusive:
            out = out - t
        return torch.flip(out, [axis]) if reverse else out
    return Kernel(cumsum, [ctx.operand("x")])

