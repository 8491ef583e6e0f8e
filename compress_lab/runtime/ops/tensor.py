"""Shape and layout ops, including the integer shape arithmetic of flexible-batch programs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress_lab.runtime.ops.registry import Kernel, OpContext, register


def _as_list(t) -> list[int]:
    return [int(v) for v in (t.reshape(-1).tolist() if isinstance(t, torch.Tensor) else t)]


@register("shape")
def _shape(ctx: OpContext) -> Kernel:
    dtype = ctx.out_dtype()
    return Kernel(lambda x: torch.tensor(x.shape, dtype=dtype), [ctx.operand("x")], layout_only=True)


def _reshape_target(x_shape, shape):
    """MIL (iOS17) reshape: a 0 copies the input dim counted from the right (1 if out of range)."""
    shape = list(shape)
    if 0 in shape:
        rank, count = len(x_shape), len(shape)
        for i, d in enumerate(shape):
            if d == 0:
                j = rank - (count - i)
                shape[i] = x_shape[j] if j >= 0 else 1
    return shape


@register("reshape")
def _reshape(ctx: OpContext) -> Kernel:
    if ctx.is_const("shape"):
        shape = ctx.ints("shape")
        if 0 not in shape:
            return Kernel(lambda x: x.reshape(shape), [ctx.operand("x")], layout_only=True)
        return Kernel(lambda x: x.reshape(_reshape_target(x.shape, shape)), [ctx.operand("x")], layout_only=True)
    return Kernel(lambda x, s: x.reshape(_reshape_target(x.shape, _as_list(s))),
                  [ctx.operand("x"), ctx.operand("shape")], layout_only=True)


@register("transpose")
def _transpose(ctx: OpContext) -> Kernel:
    perm = ctx.ints("perm")
    return Kernel(lambda x: x.permute(perm), [ctx.operand("x")], layout_only=True)


@register("squeeze")
def _squeeze(ctx: OpContext) -> Kernel:
    axes = ctx.ints("axes", None)
    if axes is None:
        return Kernel(torch.squeeze, [ctx.operand("x")], layout_only=True)
    return Kernel(lambda x: torch.squeeze(x, tuple(axes)), [ctx.operand("x")], layout_only=True)


@register("expand_dims")
def _expand_dims(ctx: OpContext) -> Kernel:
    out_rank = ctx.rank("x") + len(ctx.ints("axes"))
    axes = sorted(a % out_rank for a in ctx.ints("axes"))

    def expand(x):
        for a in axes:
            x = x.unsqueeze(a)
        return x
    return Kernel(expand, [ctx.operand("x")], layout_only=True)


@register("flatten2d")
def _flatten2d(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", 1))
    rank = ctx.rank("x")
    axis = axis % rank if axis < 0 else axis

    def flatten(x):
        lead = 1
        for d in x.shape[:axis]:
            lead *= d
        return x.reshape(lead, -1)
    return Kernel(flatten, [ctx.operand("x")], layout_only=True)


@register("concat")
def _concat(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis"))
    interleave = bool(ctx.scalar("interleave", False))
    values = ctx.operands("values")

    def concat(*vals):
        vals = [v.reshape(1) if v.dim() == 0 else v for v in vals]
        if interleave:
            a = axis % vals[0].dim()
            return torch.stack(vals, a + 1).flatten(a, a + 1)
        return torch.cat(vals, axis)
    return Kernel(concat, values, layout_only=True)


@register("stack")
def _stack(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", 0))
    return Kernel(lambda *vals: torch.stack(vals, axis), ctx.operands("values"), layout_only=True)


@register("split")
def _split(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis"))
    sizes = ctx.ints("split_sizes", None)
    if sizes is None:
        count = int(ctx.scalar("num_splits"))
        return Kernel(lambda x: torch.split(x, x.shape[axis] // count, axis), [ctx.operand("x")], layout_only=True)
    return Kernel(lambda x: torch.split(x, sizes, axis), [ctx.operand("x")], layout_only=True)


@register("tile")
def _tile(ctx: OpContext) -> Kernel:
    if ctx.is_const("reps"):
        reps = ctx.ints("reps")
        return Kernel(lambda x: torch.tile(x, reps), [ctx.operand("x")], layout_only=True)
    return Kernel(lambda x, r: torch.tile(x, _as_list(r)), [ctx.operand("x"), ctx.operand("reps")], layout_only=True)


@register("pad")
def _pad(ctx: OpContext) -> Kernel:
    mode = str(ctx.scalar("mode", "constant"))
    if mode not in ("constant", "reflect", "replicate"):
        raise ctx.unsupported(f"pad mode {mode!r} is not supported")
    value = float(ctx.scalar("constant_val", 0.0))
    pad = ctx.ints("pad")
    flat = []
    for i in reversed(range(len(pad) // 2)):
        flat += [pad[2 * i], pad[2 * i + 1]]
    if mode == "constant":
        return Kernel(lambda x: F.pad(x, flat, value=value), [ctx.operand("x")], layout_only=value == 0.0)
    while len(flat) > 2 and flat[-2:] == [0, 0]:  # MIL pads every axis; torch's reflect/replicate only the last ones
        flat = flat[:-2]
    padded = len(flat) // 2
    rank = ctx.rank("x")

    def pad(x):
        if rank - padded >= 1 or padded == 1:
            return F.pad(x, flat, mode=mode)
        # torch wants at least one unpadded leading axis: add one and take it away again
        return F.pad(x.unsqueeze(0), flat, mode=mode).squeeze(0)
    return Kernel(pad, [ctx.operand("x")], layout_only=True)


@register("crop")
def _crop(ctx: OpContext) -> Kernel:
    top, bottom = ctx.ints("crop_height")
    left, right = ctx.ints("crop_width")

    def crop(x):
        h, w = x.shape[-2], x.shape[-1]
        return x[..., top:h - bottom, left:w - right]
    return Kernel(crop, [ctx.operand("x")], layout_only=True)


@register("topk")
def _topk(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", -1))
    ascending = bool(ctx.scalar("ascending", False))
    if not bool(ctx.scalar("return_indices", True)):
        raise ctx.unsupported("topk without indices (return_indices=False) is not supported")
    index_dtype = ctx.out_dtype(1)
    sort = bool(ctx.scalar("sort", True))

    def topk(x, k):
        values, indices = torch.topk(x, int(k), dim=axis, largest=not ascending, sorted=sort)
        return values, indices.to(index_dtype)
    return Kernel(topk, [ctx.operand("x"), ctx.operand("k")], layout_only=True)


_SCATTER_MODES = ("update", "add", "sub", "mul", "div", "max", "min")


@register("scatter")
def _scatter(ctx: OpContext) -> Kernel:
    """data[..., indices[i], ...] (at `axis`) combined with updates[..., i, ...] by `mode`."""
    axis = int(ctx.scalar("axis", 0))
    mode = str(ctx.scalar("mode", "add"))
    if mode not in _SCATTER_MODES:
        raise ctx.unsupported(f"scatter mode {mode!r} is not supported")

    def scatter(data, indices, updates):
        a = axis % data.dim()
        out = data.movedim(a, 0).clone()
        idx = indices.long().reshape(-1)
        idx = torch.where(idx < 0, idx + out.shape[0], idx)
        upd = updates.movedim(a, 0).reshape(idx.shape[0], *out.shape[1:]).to(out.dtype)
        if mode == "update":
            out[idx] = upd
        elif mode in ("add", "sub"):
            out.index_add_(0, idx, upd if mode == "add" else -upd)
        elif mode == "mul":
            out.index_reduce_(0, idx, upd, "prod")
        elif mode == "div":
            out.index_reduce_(0, idx, 1.0 / upd, "prod")
        else:
            out.index_reduce_(0, idx, upd, "amax" if mode == "max" else "amin")
        return out.movedim(0, a)
    return Kernel(scatter, [ctx.operand("data"), ctx.operand("indices"), ctx.operand("updates")], layout_only=mode == "update")


@register("gather")
def _gather(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", 0))
    if int(ctx.scalar("batch_dims", 0)) != 0:
        raise ctx.unsupported("gather with batch_dims > 0 is not implemented")

    def gather(x, indices):
        a = axis % x.dim()
        idx = indices.long() if isinstance(indices, torch.Tensor) else torch.as_tensor(indices, dtype=torch.long)
        idx = torch.where(idx < 0, idx + x.shape[a], idx)
        out = torch.index_select(x, a, idx.reshape(-1))
        return out.reshape(*x.shape[:a], *idx.shape, *x.shape[a + 1:])
    return Kernel(gather, [ctx.operand("x"), ctx.operand("indices")], layout_only=True)


@register("gather_along_axis")
def _gather_along_axis(ctx: OpContext) -> Kernel:
    axis = int(ctx.scalar("axis", 0))

    def gather(x, indices):
        idx = indices.long()
        idx = torch.where(idx < 0, idx + x.shape[axis], idx)
        return torch.gather(x, axis, idx)
    return Kernel(gather, [ctx.operand("x"), ctx.operand("indices")], layout_only=True)


def _index_for(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    """Python indexing for slice_by_index (numpy semantics; negative strides via index lists)."""
    index, needs_select = [], False
    for i, size in enumerate(shape):
        step = stride[i]
        b = None if begin_mask[i] else begin[i]
        if squeeze_mask[i]:
            index.append(0 if b is None else b)
            continue
        e = None if end_mask[i] else end[i]
        s = slice(b, e, step)
        if step < 0:
            index.append(torch.arange(*s.indices(size)))
            needs_select = True
        else:
            index.append(s)
    return index, needs_select


def _apply_index(x, index, needs_select):
    if not needs_select:
        return x[tuple(index)]
    out, dim = x, 0
    for item in index:
        if isinstance(item, torch.Tensor):
            out = torch.index_select(out, dim, item)
            dim += 1
        elif isinstance(item, slice):
            out = out[(slice(None),) * dim + (item,)]
            dim += 1
        else:
            out = out.select(dim, item)
    return out


@register("slice_by_index")
def _slice_by_index(ctx: OpContext) -> Kernel:
    rank = ctx.rank("x")
    stride = ctx.ints("stride", None) or [1] * rank
    begin_mask = [bool(v) for v in (ctx.ints("begin_mask", None) or [0] * rank)]
    end_mask = [bool(v) for v in (ctx.ints("end_mask", None) or [0] * rank)]
    squeeze_mask = [bool(v) for v in (ctx.ints("squeeze_mask", None) or [0] * rank)]
    masks = (stride, begin_mask, end_mask, squeeze_mask)
    x = ctx.operand("x")
    if ctx.is_const("begin") and ctx.is_const("end") and not any(s < 0 for s in stride):
        index, _ = _index_for([None] * rank, ctx.ints("begin"), ctx.ints("end"), *masks)
        index = tuple(index)
        return Kernel(lambda t: t[index], [x], layout_only=True)

    def run(t, begin, end):
        index, select = _index_for(t.shape, _as_list(begin), _as_list(end), *masks)
        return _apply_index(t, index, select)
    begin = ctx.operand("begin") if not ctx.is_const("begin") else ctx.ints("begin")
    end = ctx.operand("end") if not ctx.is_const("end") else ctx.ints("end")
    return Kernel(run, [x, begin, end], layout_only=True)


@register("slice_by_size")
def _slice_by_size(ctx: OpContext) -> Kernel:
    def run(t, begin, size):
        index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(_as_list(begin), _as_list(size)))
        return t[index]
    begin = ctx.ints("begin") if ctx.is_const("begin") else ctx.operand("begin")
    size = ctx.ints("size") if ctx.is_const("size") else ctx.operand("size")
    return Kernel(run, [ctx.operand("x"), begin, size], layout_only=True)


@register("reverse")
def _reverse(ctx: OpContext) -> Kernel:
    axes = ctx.ints("axes", None)
    rank = ctx.rank("x")
    dims = list(range(rank)) if axes is None else axes
    return Kernel(lambda x: torch.flip(x, dims), [ctx.operand("x")], layout_only=True)


@register("fill")
def _fill(ctx: OpContext) -> Kernel:
    dtype = ctx.out_dtype()
    value = ctx.scalar("value", 0.0)
    shape = ctx.ints("shape") if ctx.is_const("shape") else ctx.operand("shape")
    return Kernel(lambda s: torch.full(_as_list(s), value, dtype=dtype), [shape])


@register("fill_like")
def _fill_like(ctx: OpContext) -> Kernel:
    dtype = ctx.out_dtype()
    value = ctx.scalar("value", 0.0)
    return Kernel(lambda r: torch.full(r.shape, value, dtype=dtype), [ctx.operand("ref_tensor")])


@register("range_1d")
def _range_1d(ctx: OpContext) -> Kernel:
    dtype = ctx.out_dtype()

    def arange(start, end, step):
        return torch.arange(_scalar(start), _scalar(end), _scalar(step), dtype=dtype)
    return Kernel(arange, [ctx.operand("start"), ctx.operand("end"), ctx.operand("step")])


def _scalar(v):
    return v.item() if isinstance(v, torch.Tensor) else v


@register("pixel_shuffle")
def _pixel_shuffle(ctx: OpContext) -> Kernel:
    factor = int(ctx.scalar("upscale_factor"))
    return Kernel(lambda x: F.pixel_shuffle(x, factor), [ctx.operand("x")], layout_only=True)


@register("pixel_unshuffle")
def _pixel_unshuffle(ctx: OpContext) -> Kernel:
    factor = int(ctx.scalar("downscale_factor"))
    return Kernel(lambda x: F.pixel_unshuffle(x, factor), [ctx.operand("x")], layout_only=True)
