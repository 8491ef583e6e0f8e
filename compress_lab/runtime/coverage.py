"""Runtime coverage: common PyTorch layers and ops, each in a tiny model, converted with
`ct.convert` (ML program, iOS18, flexible batch where the model allows it) and run by the
lab's runtime, compared with eager PyTorch.

Used by tests/test_runtime_coverage.py and scripts/runtime_coverage.py (which writes the
coverage table). Tolerances: fp32 within 1e-4 x the output's scale (its largest
magnitude), fp16 within 2% of it; integer outputs (indices) must match exactly."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 0.02
BATCH = 3


@dataclass(frozen=True)
class Case:
    """One layer or op: a model factory, its example inputs (name -> tensor; the batch is
    the first axis unless `batch_axes` says otherwise) and which inputs get a flexible batch."""

    name: str
    group: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], dict[str, torch.Tensor]]
    flexible_batch: bool = True
    batch_axes: dict[str, int] = field(default_factory=dict)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids(n, length, vocab, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)


def _seeded(factory):
    def build():
        torch.manual_seed(0)
        return factory().eval()
    return build


class _Fn(nn.Module):
    """A module around a function of the inputs (for functional ops)."""

    def __init__(self, fn, params: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.fn = fn
        for name, value in (params or {}).items():
            self.register_buffer(name, value)

    def forward(self, *args):
        return self.fn(self, *args)


class _LSTMState(nn.Module):
    def __init__(self, layers, bidirectional):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=layers, bidirectional=bidirectional, batch_first=True)

    def forward(self, x, h0, c0):
        out, (h, c) = self.lstm(x, (h0, c0))
        return out, h, c


class _GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 8, num_layers=2, batch_first=True)

    def forward(self, x, h0):
        out, h = self.gru(x, h0)
        return out, h


class _MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        length = x.shape[1]
        mask = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
        out, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False)
        return out


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.encoder(x, mask=mask, is_causal=True)


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.TransformerDecoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)

    def forward(self, tgt, memory):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.decoder(tgt, memory, tgt_mask=mask, tgt_is_causal=True)


class _Embedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(50, 12)
        self.proj = nn.Linear(12, 4)

    def forward(self, ids):
        return self.proj(self.embedding(ids))


def _lstm_case(name, layers, bidirectional):
    directions = 2 if bidirectional else 1
    return Case(name, "recurrent", _seeded(lambda: _LSTMState(layers, bidirectional)),
                lambda n: {"x": _randn(n, 5, 6), "h0": _randn(layers * directions, n, 8, seed=1),
                           "c0": _randn(layers * directions, n, 8, seed=2)},
                batch_axes={"h0": 1, "c0": 1})


def _topk(m, x):
    values, indices = torch.topk(x, 3, dim=-1)
    return values, indices.to(torch.int32)


def _where_masked_fill(m, x):
    y = torch.where(x > 0, x, 0.1 * x)
    return y.masked_fill(x < -0.5, -2.0)


CASES: tuple[Case, ...] = (
    # recurrent
    _lstm_case("nn.LSTM, 1 layer, batch_first, h0/c0", 1, False),
    _lstm_case("nn.LSTM, 2 layers, bidirectional, batch_first, h0/c0", 2, True),
    Case("nn.GRU, 2 layers, batch_first, h0", "recurrent", _seeded(_GRU),
         lambda n: {"x": _randn(n, 5, 6), "h0": _randn(2, n, 8, seed=1)}, batch_axes={"h0": 1}),
    # attention
    Case("nn.MultiheadAttention, causal mask", "attention", _seeded(_MHA), lambda n: {"x": _randn(n, 6, 16)}),
    Case("nn.TransformerEncoder (2 layers), causal mask", "attention", _seeded(_Encoder),
         lambda n: {"x": _randn(n, 6, 16)}),
    Case("nn.TransformerDecoderLayer, causal mask", "attention", _seeded(_Decoder),
         lambda n: {"tgt": _randn(n, 5, 16), "memory": _randn(n, 7, 16, seed=1)}),
    Case("nn.Embedding (int32 ids)", "attention", _seeded(_Embedding), lambda n: {"ids": _ids(n, 7, 50)}),
    # convolution
    Case("nn.Conv1d", "convolution", _seeded(lambda: nn.Conv1d(4, 6, 3, padding=1)), lambda n: {"x": _randn(n, 4, 16)}),
    Case("nn.ConvTranspose1d", "convolution", _seeded(lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1)),
         lambda n: {"x": _randn(n, 4, 16)}),
    Case("nn.ConvTranspose2d", "convolution",
         _seeded(lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)),
         lambda n: {"x": _randn(n, 4, 8, 8)}),
    # normalisation and activation
    Case("nn.GroupNorm", "normalisation", _seeded(lambda: nn.GroupNorm(2, 6)), lambda n: {"x": _randn(n, 6, 5, 5)}),
    Case("nn.PReLU", "activation", _seeded(lambda: nn.PReLU(6, init=0.2)), lambda n: {"x": _randn(n, 6, 5, 5)}),
    Case("F.log_softmax", "activation", _seeded(lambda: _Fn(lambda m, x: F.log_softmax(x, dim=-1))),
         lambda n: {"x": _randn(n, 10)}),
    Case("GELU (tanh approximation)", "activation", _seeded(lambda: nn.GELU(approximate="tanh")),
         lambda n: {"x": _randn(n, 6, 5)}),
    # resampling and padding
    Case("F.interpolate nearest, scale_factor=2", "resampling",
         _seeded(lambda: _Fn(lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest"))),
         lambda n: {"x": _randn(n, 3, 5, 6)}),
    Case("F.interpolate nearest, size=(9, 7)", "resampling",
         _seeded(lambda: _Fn(lambda m, x: F.interpolate(x, size=(9, 7), mode="nearest"))),
         lambda n: {"x": _randn(n, 3, 5, 6)}),
    Case("F.interpolate bilinear, scale_factor=2", "resampling",
         _seeded(lambda: _Fn(lambda m, x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))),
         lambda n: {"x": _randn(n, 3, 5, 6)}),
    Case("F.interpolate bilinear, size=(9, 7), align_corners", "resampling",
         _seeded(lambda: _Fn(lambda m, x: F.interpolate(x, size=(9, 7), mode="bilinear", align_corners=True))),
         lambda n: {"x": _randn(n, 3, 5, 6)}),
    Case("F.pad reflect", "padding", _seeded(lambda: _Fn(lambda m, x: F.pad(x, (1, 2, 2, 1), mode="reflect"))),
         lambda n: {"x": _randn(n, 3, 5, 6)}),
    Case("F.pad replicate", "padding", _seeded(lambda: _Fn(lambda m, x: F.pad(x, (1, 2, 2, 1), mode="replicate"))),
         lambda n: {"x": _randn(n, 3, 5, 6)}),
    # selection and masking
    Case("torch.topk (values, indices)", "selection", _seeded(lambda: _Fn(_topk)), lambda n: {"x": _randn(n, 10)}),
    Case("torch.argmax", "selection", _seeded(lambda: _Fn(lambda m, x: torch.argmax(x, dim=-1).to(torch.int32))),
         lambda n: {"x": _randn(n, 10)}),
    Case("torch.where + masked_fill", "masking", _seeded(lambda: _Fn(_where_masked_fill)),
         lambda n: {"x": _randn(n, 4, 6)}),
    Case("torch.cumsum", "selection", _seeded(lambda: _Fn(lambda m, x: torch.cumsum(x, dim=1))),
         lambda n: {"x": _randn(n, 8)}),
    # arithmetic
    Case("broadcasting matmul", "arithmetic",
         _seeded(lambda: _Fn(lambda m, x: torch.matmul(x, m.w), {"w": _randn(5, 4, seed=3)})),
         lambda n: {"x": _randn(n, 2, 3, 5)}),
    Case("broadcasting matmul of two inputs", "arithmetic", _seeded(lambda: _Fn(lambda m, a, b: a @ b)),
         lambda n: {"a": _randn(n, 2, 3, 5), "b": _randn(n, 1, 5, 4, seed=1)}),
    Case("torch.einsum", "arithmetic",
         _seeded(lambda: _Fn(lambda m, a, b: torch.einsum("bhqd,bhkd->bhqk", a, b))),
         lambda n: {"a": _randn(n, 2, 4, 8), "b": _randn(n, 2, 5, 8, seed=1)}),
)


# --------------------------------------------------------------------------- running a case

@dataclass
class Result:
    case: str
    group: str
    converts: bool = False
    runs: bool = False
    flexible_batch: bool = False
    errors: dict[str, float] = field(default_factory=dict)   # precision -> max error / output scale
    passed: dict[str, bool] = field(default_factory=dict)
    problem: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.converts and self.runs and all(self.passed.get(p, False) for p in ("fp32", "fp16"))


def _ct_inputs(case: Case, example: dict[str, torch.Tensor], flexible: bool):
    import coremltools as ct
    specs = []
    for name, value in example.items():
        shape = list(value.shape)
        if flexible:
            axis = case.batch_axes.get(name, 0)
            shape[axis] = ct.RangeDim(lower_bound=1, upper_bound=64, default=shape[axis])
        dtype = np.int32 if not value.is_floating_point() else np.float32
        specs.append(ct.TensorType(name=name, shape=shape, dtype=dtype))
    return specs


GRAD_NOTE = ("converted from a trace taken with autograd on: traced under torch.no_grad, PyTorch takes its fused "
             "fast path (_transformer_encoder_layer_fwd), which ct.convert cannot convert")


def convert_case(case: Case, precision: str, out_dir: Path, flexible: bool, grad: bool = False):
    """`ct.convert` the case's model, traced under torch.no_grad (or with autograd on: `grad`);
    returns the saved package path."""
    import coremltools as ct

    from compress_lab.quiet import quiet_coremltools

    model = case.build()
    example = case.inputs(1)
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        traced = torch.jit.trace(model, tuple(example.values()), check_trace=False)
    with quiet_coremltools():
        mlmodel = ct.convert(traced, inputs=_ct_inputs(case, example, flexible), convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS18,
                             compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    path = out_dir / f"{precision}.mlpackage"
    mlmodel.save(str(path))
    return path


def eager(case: Case, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = case.build()(*inputs.values())
    out = out if isinstance(out, (tuple, list)) else [out]
    return [o.numpy() for o in out]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Max absolute error over the output's scale (its largest magnitude); integer outputs: 0 or inf."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return float("inf")
    if want.dtype.kind in "iub":
        return 0.0 if np.array_equal(got.astype(np.int64), want.astype(np.int64)) else float("inf")
    scale = max(float(np.abs(want).max()), 1e-12)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max() / scale)


def run_case(case: Case, work: Path | None = None) -> Result:
    """Convert (flexible batch first, else fixed), run through the lab's runtime at fp32 and
    fp16 on a batch of BATCH (1 for a fixed batch) and compare with eager PyTorch."""
    from compress_lab.runtime import load_program

    result = Result(case.name, case.group)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for precision in ("fp32", "fp16"):
            path = None
            first_problem = ""
            for grad in (False, True):
                for flexible in ((True, False) if case.flexible_batch else (False,)):
                    out_dir = Path(tmp) / f"{precision}_{'flex' if flexible else 'fixed'}_{grad}"
                    out_dir.mkdir()
                    try:
                        path = convert_case(case, precision, out_dir, flexible, grad)
                        result.flexible_batch = flexible
                        break
                    except Exception as e:  # noqa: BLE001 - recorded in the table
                        first_problem = first_problem or f"ct.convert: {type(e).__name__}: {str(e)[:200]}"
                if path is not None:
                    break
            if path is None:
                result.problem = first_problem
                return result
            if case.flexible_batch and not result.flexible_batch and not result.note:
                result.note = f"fixed batch: with a flexible batch, {first_problem}"
            result.converts = True
            result.problem = ""
            if grad and "fast path" not in result.note:
                result.note = GRAD_NOTE if "_transformer_encoder_layer_fwd" in first_problem else (
                    f"converted from a trace with autograd on; under torch.no_grad: {first_problem}")
            inputs = case.inputs(BATCH if result.flexible_batch else 1)
            try:
                program = load_program(path, compute_precision=precision)
                outputs = program.predict_all({k: v.numpy() for k, v in inputs.items()})
            except Exception as e:  # noqa: BLE001
                result.problem = f"runtime ({precision}): {type(e).__name__}: {str(e)[:300]}"
                return result
            result.runs = True
            want = eager(case, inputs)
            got = [outputs[name] for name in program.output_names]
            error = max(relative_error(g, w) for g, w in zip(got, want)) if len(got) == len(want) else float("inf")
            result.errors[precision] = error
            result.passed[precision] = error <= (FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE)
    return result


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "/").split())


def coverage_table(results: list[Result]) -> str:
    """The coverage table in Markdown."""
    def err(r, p):
        if p not in r.errors:
            return "-"
        value = r.errors[p]
        mark = "" if r.passed[p] else " (over)"
        return ("exact" if value == 0 else f"{value:.1e}") + mark
    lines = ["| layer / op | group | converts | runs | batch | max error fp32 | max error fp16 | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.case} | {r.group} | {'yes' if r.converts else 'no'} | {'yes' if r.runs else 'no'} | "
                     f"{'flexible' if r.flexible_batch else 'fixed'} | {err(r, 'fp32')} | {err(r, 'fp16')} | "
                     f"{_cell(r.problem or r.note)} |")
    return "\n".join(lines)
