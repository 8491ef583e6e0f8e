"""Recurrent layers as ct.convert emits them: `lstm` (iOS15/17 semantics).

(GRU and RNN layers are converted to a `while_loop` of plain ops, which the interpreter runs.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress_lab.runtime.ops.registry import Kernel, OpContext, register

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu, "linear": lambda x: x}


def _activation(ctx: OpContext, param: str, default: str):
    name = str(ctx.scalar(param, default)).lower()
    if name not in _ACTIVATIONS:
        raise ctx.unsupported(f"{param} {name!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _tensor(ctx: OpContext, param: str):
    value = ctx.operand(param, None)
    if value is not None and not isinstance(value, torch.Tensor):
        raise ctx.unsupported(f"input {param!r} must be a constant")
    return None if value is None else value.to(torch.float32)


@register("lstm")
def _lstm(ctx: OpContext) -> Kernel:
    """x (s, b, I), initial_h / initial_c (b, D*H); weights in input, forget, output, cell gate order.
    Returns the sequence (s or 1, b, D*H), the last hidden state and the last cell state (b, D*H)."""
    if ctx.has("peephole") or ctx.has("peephole_back"):
        raise ctx.unsupported("peephole connections are not supported")
    if ctx.has("clip"):
        raise ctx.unsupported("a clipped cell state is not supported")
    direction = str(ctx.scalar("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.unsupported(f"direction {direction!r} is not supported")
    output_sequence = bool(ctx.scalar("output_sequence", False))
    gate, cell, act = (_activation(ctx, "recurrent_activation", "sigmoid"), _activation(ctx, "cell_activation", "tanh"),
                       _activation(ctx, "activation", "tanh"))
    w_ih, w_hh, bias = _tensor(ctx, "weight_ih"), _tensor(ctx, "weight_hh"), _tensor(ctx, "bias")
    hidden = w_hh.shape[1]
    forward = (w_ih, w_hh, bias if bias is not None else torch.zeros(4 * hidden))
    backward = None
    if direction == "bidirectional":
        b_back = _tensor(ctx, "bias_back")
        backward = (_tensor(ctx, "weight_ih_back"), _tensor(ctx, "weight_hh_back"),
                    b_back if b_back is not None else torch.zeros(4 * hidden))

    def run(x, h, c, weights, reverse):
        wi, wh, b = weights
        projected = torch.matmul(x, wi.t()) + b  # (s, b, 4H): the input part of every step at once
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        outputs = [None] * x.shape[0]
        for t in steps:
            gates = projected[t] + torch.matmul(h, wh.t())
            i, f, o, z = gates.chunk(4, dim=-1)
            c = gate(f) * c + gate(i) * cell(z)
            h = gate(o) * act(c)
            outputs[t] = h
        return torch.stack(outputs), h, c

    def lstm(x, h0, c0):
        x, h0, c0 = x.float(), h0.float(), c0.float()
        if backward is None:
            seq, h, c = run(x, h0, c0, forward, direction == "reverse")
            last = seq[0 if direction == "reverse" else -1]
        else:
            seq_f, h_f, c_f = run(x, h0[:, :hidden], c0[:, :hidden], forward, False)
            seq_b, h_b, c_b = run(x, h0[:, hidden:], c0[:, hidden:], backward, True)
            seq, h, c = torch.cat([seq_f, seq_b], -1), torch.cat([h_f, h_b], -1), torch.cat([c_f, c_b], -1)
            last = h
        return (seq if output_sequence else last.unsqueeze(0)), h, c
    return Kernel(lstm, [ctx.operand("x"), ctx.operand("initial_h"), ctx.operand("initial_c")])
