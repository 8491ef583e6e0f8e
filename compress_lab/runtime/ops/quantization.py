"""Activation quantize / dequantize (iOS17), as inserted by linear_quantize_activations.

Quantized values are kept as float tensors holding integers: only dequantize reads them."""

from __future__ import annotations

import torch

from compress_lab.runtime.ops.registry import Kernel, OpContext, register

_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _broadcast(ctx: OpContext, param: str):
    """A scale / zero point as a float tensor shaped to broadcast against the input."""
    value = ctx.operand(param, None)
    if value is None:
        return None
    value = value.to(torch.float32)
    if value.dim() == 1 and ctx.has("axis"):
        rank = ctx.rank("input")
        axis = int(ctx.scalar("axis")) % rank
        shape = [1] * rank
        shape[axis] = -1
        value = value.reshape(shape)
    return value


@register("quantize")
def _quantize(ctx: OpContext) -> Kernel:
    dtype = str(ctx.scalar("output_dtype"))
    if dtype not in _RANGES:
        raise ctx.unsupported(f"quantize to {dtype!r} is not supported")
    low, high = _RANGES[dtype]
    scale, zero_point = _broadcast(ctx, "scale"), _broadcast(ctx, "zero_point")

    def quantize(x):
        q = torch.round(x / scale)
        if zero_point is not None:
            q = q + zero_point
        return torch.clamp(q, low, high)
    return Kernel(quantize, [ctx.operand("input")], layout_only=True)


@register("dequantize")
def _dequantize(ctx: OpContext) -> Kernel:
    scale, zero_point = _broadcast(ctx, "scale"), _broadcast(ctx, "zero_point")

    def dequantize(q):
        q = q.to(torch.float32)
        return (q - zero_point) * scale if zero_point is not None else q * scale
    return Kernel(dequantize, [ctx.operand("input")])
