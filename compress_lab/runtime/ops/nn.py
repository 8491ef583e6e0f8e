"""Layers: convolution, pooling, linear/matmul, normalization, attention, resizing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compress_lab.runtime.ops.registry import Kernel, OpContext, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# --- padding ----------------------------------------------------------------------------
def _same_pairs(sizes, kernel, strides, dilations, lower: bool):
    pairs = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        pairs.append((large, small) if lower else (small, large))
    return pairs


def _padding(ctx: OpContext, kernel, strides, dilations):
    """(static pairs or None, function spatial_sizes -> pairs) for the op's pad_type."""
    n = len(kernel)
    pad_type = ctx.scalar("pad_type", "valid")
    if pad_type == "valid":
        pairs = [(0, 0)] * n
        return pairs, lambda sizes: pairs
    if pad_type == "custom":
        pad = ctx.ints("pad", [0] * 2 * n)
        pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
        return pairs, lambda sizes: pairs
    if pad_type in ("same", "same_lower"):
        lower = pad_type == "same_lower"

        def pairs_for(sizes):
            return _same_pairs(sizes, kernel, strides, dilations, lower)
        sizes = ctx.shape("x")[2:]
        static = pairs_for(sizes) if all(s is not None for s in sizes) else None
        return static, pairs_for
    raise ctx.unsupported(f"pad_type {pad_type!r} is unknown")


def _torch_pad(pairs):
    """MIL (begin, end) pairs for the spatial dims -> F.pad's flat list, last dim first."""
    flat = []
    for begin, end in reversed(pairs):
        flat += [begin, end]
    return flat


def _symmetric(pairs) -> bool:
    return all(b == e for b, e in pairs)


# --- convolution ------------------------------------------------------------------------
@register("conv")
def _conv(ctx: OpContext) -> Kernel:
    weight_shape = ctx.shape("weight")
    n = len(weight_shape) - 2
    if n not in _CONV:
        raise ctx.unsupported(f"{n}-D convolution is not supported")
    kernel = weight_shape[2:]
    strides = tuple(ctx.ints("strides", [1] * n))
    dilations = tuple(ctx.ints("dilations", [1] * n))
    groups = int(ctx.scalar("groups", 1))
    conv = _CONV[n]
    static, pairs_for = _padding(ctx, kernel, strides, dilations)
    args = [ctx.operand("x"), ctx.operand("weight"), ctx.operand("bias", None)]
    if n == 2 and kernel[1] == 1 and static is not None and static[1] == (0, 0):
        return Kernel(_width_one_conv(static[0], strides, dilations, groups), args)
    if static is not None and _symmetric(static):
        padding = tuple(b for b, _ in static)
        return Kernel(lambda x, w, b: conv(x, w, b, strides, padding, dilations, groups), args)
    if static is not None:
        flat = _torch_pad(static)
        return Kernel(lambda x, w, b: conv(F.pad(x, flat), w, b, strides, 0, dilations, groups), args)

    def dynamic(x, w, b):
        return conv(F.pad(x, _torch_pad(pairs_for(x.shape[2:]))), w, b, strides, 0, dilations, groups)
    return Kernel(dynamic, args)


def _rows(x):
    """(N, C, H, 1) -> (N, C, 1, H): the same memory, read as one row."""
    return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])


def _width_one_conv(pad_pair, strides: tuple, dilations: tuple, groups: int):
    """A 2-D convolution with a (k, 1) kernel and no padding across the width. On a one-wide
    input (CREPE's frames) it runs as the same convolution of the input read as one row with
    the (1, k) kernel: the same sums in the same order, but PyTorch's CPU kernels are several
    times faster for (1, k) kernels than for (k, 1)."""
    top, bottom = pad_pair
    padding = (0, top) if top == bottom else (0, 0)
    row_strides, row_dilations = (1, strides[0]), (1, dilations[0])

    def run(x, w, b):
        if x.shape[-1] != 1:
            return F.conv2d(F.pad(x, (0, 0, top, bottom)), w, b, strides, 0, dilations, groups)
        rows = _rows(x)
        if top != bottom:
            rows = F.pad(rows, (top, bottom))
        y = F.conv2d(rows, _rows(w), b, row_strides, padding, row_dilations, groups)
        return y.reshape(y.shape[0], y.shape[1], y.shape[3], 1)
    return run


@register("conv_transpose")
def _conv_transpose(ctx: OpContext) -> Kernel:
    weight_shape = ctx.shape("weight")
    n = len(weight_shape) - 2
    if n not in _CONV_T:
        raise ctx.unsupported(f"{n}-D transposed convolution is not supported")
    strides = tuple(ctx.ints("strides", [1] * n))
    dilations = tuple(ctx.ints("dilations", [1] * n))
    groups = int(ctx.scalar("groups", 1))
    pad_type = ctx.scalar("pad_type", "valid")
    pad = ctx.ints("pad", [0] * 2 * n)
    output_shape = ctx.ints("output_shape", None) if ctx.is_const("output_shape") else None
    conv_t = _CONV_T[n]

    def run(x, w, b):
        y = conv_t(x, w, b, strides, 0, 0, groups, dilations)
        full = y.shape[2:]
        if output_shape is not None:
            out = output_shape[-n:]
        elif pad_type == "custom":
            out = [f - pad[2 * i] - pad[2 * i + 1] for i, f in enumerate(full)]
        elif pad_type in ("same", "same_lower"):
            out = [size * s for size, s in zip(x.shape[2:], strides)]
        else:
            out = list(full)
        index = [slice(None), slice(None)]
        for i, (f, o) in enumerate(zip(full, out)):
            if pad_type == "custom":
                begin = pad[2 * i]
            else:
                total = f - o
                begin = total - total // 2 if pad_type == "same_lower" else total // 2
            index.append(slice(begin, begin + o))
        return y[tuple(index)]
    return Kernel(run, [ctx.operand("x"), ctx.operand("weight"), ctx.operand("bias", None)])


# --- pooling ----------------------------------------------------------------------------
@register("max_pool", "avg_pool")
def _pool(ctx: OpContext) -> Kernel:
    kernel = tuple(ctx.ints("kernel_sizes"))
    n = len(kernel)
    if n not in _MAX_POOL:
        raise ctx.unsupported(f"{n}-D pooling is not supported")
    strides = tuple(ctx.ints("strides", [1] * n))
    ceil_mode = bool(ctx.scalar("ceil_mode", False))
    static, pairs_for = _padding(ctx, kernel, strides, (1,) * n)
    is_max = ctx.op.op_type == "max_pool"
    exclude = bool(ctx.scalar("exclude_padding_from_average", False))
    pool = _MAX_POOL[n] if is_max else _AVG_POOL[n]

    def pooled(x, pairs):
        if _symmetric(pairs) and all(b <= k // 2 for (b, _), k in zip(pairs, kernel)):
            padding = tuple(b for b, _ in pairs)
            if is_max:
                return pool(x, kernel, strides, padding, ceil_mode=ceil_mode)
            return pool(x, kernel, strides, padding, ceil_mode=ceil_mode, count_include_pad=not exclude)
        flat = _torch_pad(pairs)
        if is_max:
            return pool(F.pad(x, flat, value=-math.inf), kernel, strides, 0, ceil_mode=ceil_mode)
        summed = pool(F.pad(x, flat), kernel, strides, 0, ceil_mode=ceil_mode)
        if not exclude:
            return summed
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
        return summed / pool(F.pad(ones, flat), kernel, strides, 0, ceil_mode=ceil_mode)

    if is_max and static is not None and all(p == (0, 0) for p in static) and kernel == strides and not ceil_mode:
        return Kernel(lambda x: _tiled_max(x, kernel), [ctx.operand("x")])
    if static is not None:
        return Kernel(lambda x: pooled(x, static), [ctx.operand("x")])
    return Kernel(lambda x: pooled(x, pairs_for(x.shape[2:])), [ctx.operand("x")])


def _tiled_max(x, kernel):
    """Max pooling over windows that tile the input (stride = kernel, no padding, the remainder
    dropped): a reshape and amax. The same values as max_pool, several times faster for
    windows such as CREPE's (2, 1)."""
    spatial = x.shape[2:]
    outs = [size // k for size, k in zip(spatial, kernel)]
    if any(o * k != size for o, k, size in zip(outs, kernel, spatial)):
        x = x[(slice(None), slice(None), *[slice(0, o * k) for o, k in zip(outs, kernel)])]
    shape, dims = [x.shape[0], x.shape[1]], []
    for o, k in zip(outs, kernel):
        if k == 1:
            shape.append(o)
        else:
            shape += [o, k]
            dims.append(len(shape) - 1)
    if not dims:
        return x
    return x.reshape(shape).amax(dim=dims)


# --- dense ------------------------------------------------------------------------------
@register("linear")
def _linear(ctx: OpContext) -> Kernel:
    return Kernel(F.linear, [ctx.operand("x"), ctx.operand("weight"), ctx.operand("bias", None)])


@register("matmul")
def _matmul(ctx: OpContext) -> Kernel:
    tx = bool(ctx.scalar("transpose_x", False))
    ty = bool(ctx.scalar("transpose_y", False))
    x, y = ctx.operand("x"), ctx.operand("y")
    if ty and isinstance(y, torch.Tensor) and y.dim() >= 2:
        y, ty = y.transpose(-1, -2).contiguous(), False
    if tx and isinstance(x, torch.Tensor) and x.dim() >= 2:
        x, tx = x.transpose(-1, -2).contiguous(), False

    def mm(a, b):
        if tx and a.dim() >= 2:
            a = a.transpose(-1, -2)
        if ty and b.dim() >= 2:
            b = b.transpose(-1, -2)
        return torch.matmul(a, b)
    return Kernel(torch.matmul if not (tx or ty) else mm, [x, y])


@register("einsum")
def _einsum(ctx: OpContext) -> Kernel:
    equation = str(ctx.scalar("equation"))
    return Kernel(lambda *values: torch.einsum(equation, *values), ctx.operands("values"))


@register("scaled_dot_product_attention")
def _sdpa(ctx: OpContext) -> Kernel:
    args = [ctx.operand("query"), ctx.operand("key"), ctx.operand("value"), ctx.operand("attn_mask", None)]
    return Kernel(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), args)


# --- normalization ----------------------------------------------------------------------
@register("batch_norm")
def _batch_norm(ctx: OpContext) -> Kernel:
    eps = float(ctx.scalar("epsilon", 1e-5))
    args = [ctx.operand("x"), ctx.operand("mean"), ctx.operand("variance"),
            ctx.operand("gamma", None), ctx.operand("beta", None)]
    return Kernel(lambda x, m, v, g, b: F.batch_norm(x, m, v, g, b, False, 0.0, eps), args)


@register("instance_norm")
def _instance_norm(ctx: OpContext) -> Kernel:
    eps = float(ctx.scalar("epsilon", 1e-5))
    args = [ctx.operand("x"), ctx.operand("gamma", None), ctx.operand("beta", None)]
    return Kernel(lambda x, g, b: F.instance_norm(x, weight=g, bias=b, eps=eps), args)


@register("layer_norm")
def _layer_norm(ctx: OpContext) -> Kernel:
    rank = ctx.rank("x")
    eps = float(ctx.scalar("epsilon", 1e-5))
    axes = ctx.ints("axes", None)
    axes = sorted(a % rank for a in axes) if axes is not None else list(range(rank))
    args = [ctx.operand("x"), ctx.operand("gamma", None), ctx.operand("beta", None)]
    count = len(axes)
    if axes == list(range(rank - count, rank)):
        return Kernel(lambda x, g, b: F.layer_norm(x, x.shape[rank - count:], g, b, eps), args)
    if ctx.has("gamma") or ctx.has("beta"):
        raise ctx.unsupported(f"layer_norm over non-trailing axes {axes} with gamma/beta is not implemented")

    def manual(x, g, b):
        mean = x.mean(dim=axes, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps)
    return Kernel(manual, args)


@register("l2_norm")
def _l2_norm(ctx: OpContext) -> Kernel:
    eps = float(ctx.scalar("epsilon", 1e-6))
    rank = ctx.rank("x")
    dims = tuple(range(max(rank - 3, 1), rank)) if rank > 1 else (0,)

    def l2(x):
        return x / torch.sqrt(torch.clamp(torch.sum(x * x, dim=dims, keepdim=True), min=eps))
    return Kernel(l2, [ctx.operand("x")])


# --- resizing ---------------------------------------------------------------------------
@register("upsample_nearest_neighbor")
def _upsample_nearest(ctx: OpContext) -> Kernel:
    sh = float(ctx.scalar("scale_factor_height", 1))
    sw = float(ctx.scalar("scale_factor_width", 1))
    return Kernel(lambda x: F.interpolate(x, scale_factor=(sh, sw), mode="nearest"), [ctx.operand("x")])


@register("upsample_bilinear")
def _upsample_bilinear(ctx: OpContext) -> Kernel:
    sh = float(ctx.scalar("scale_factor_height", 1))
    sw = float(ctx.scalar("scale_factor_width", 1))
    align = bool(ctx.scalar("align_corners", False))
    half_pixel = bool(ctx.scalar("half_pixel_centers", not align))
    if not align and not half_pixel:
        raise ctx.unsupported("upsample_bilinear without align_corners or half_pixel_centers is not implemented")
    return Kernel(lambda x: F.interpolate(x, scale_factor=(sh, sw), mode="bilinear", align_corners=align),
                  [ctx.operand("x")])
