"""The lab's Core ML runtime against eager PyTorch on small models of each family
and on the sample models.

Tolerances (relative to the output scale, max |eager output|, floored at 1):
- fp32 program, fp32 compute: max abs diff <= 1e-4 x scale.
- fp16 program (weights and activations fp16 in the program), or fp16 compute
  mode: max abs diff <= 2e-2 x scale (fp16 has ~3 significant digits; errors
  accumulate through ~50 layers of MobileNetV2)."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import coremltools as ct
from coremltools.converters.mil.mil import Builder as mb

from compress_lab.errors import DataError, RuntimeUnavailableError, UnsupportedOpError
from compress_lab.models.convert import convert_module, save_mlmodel
from compress_lab.models.handle import list_sample_models, load_model
from compress_lab.models.metadata import ModelMetadata, Preprocessing
from compress_lab.runtime import CoreMLProgram, load_program, native_runtime_available

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2


# --- small models of each family ---------------------------------------------------------
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.Sigmoid(),
                                 nn.Linear(32, 5))

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + self.short(x))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class SmallMobileNet(nn.Module):
    """Keras-style stride-2 padding, depthwise + pointwise, grouped conv, ReLU6 / hardtanh, avg pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, 2, 0, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                                       nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=4), nn.Hardtanh(0.0, 6.0))
        self.pool, self.fc = nn.AvgPool2d(2), nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        x = self.pool(self.grouped(self.depthwise(self.stem(x))))
        return self.fc(x.mean([2, 3]))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class TinyViT(nn.Module):
    def __init__(self, dim=32, patch=4, image=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(dim), Attention(dim, 2), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 6)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.norm(x)[:, 0])


class FusedAttentionDecoder(nn.Module):
    """Ops that newer nets emit: scaled_dot_product_attention (iOS18), conv_transpose,
    upsample_nearest_neighbor, einsum, silu, expand_dims."""

    def __init__(self):
        super().__init__()
        self.patch, self.qkv, self.head = nn.Conv2d(3, 32, 4, 4), nn.Linear(32, 96), nn.Linear(32, 5)
        self.up = nn.ConvTranspose2d(32, 8, 2, 2)

    def forward(self, x):
        features = self.patch(x)
        tokens = features.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(tokens.shape[0], -1, 3, 2, 16).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(tokens.shape[0], -1, 32)
        upsampled = F.interpolate(self.up(features), scale_factor=2, mode="nearest").mean([2, 3])
        energy = torch.einsum("bc,bc->b", upsampled, upsampled)[:, None]
        return self.head(attended.mean(1)) + energy + F.silu(upsampled).sum(1, keepdim=True)


class ColumnConvNet(nn.Module):
    """CREPE's layout: (k, 1) kernels over a one-wide input, asymmetric padding, (2, 1) max-pools."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, (8, 1), (2, 1)), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, (5, 1), padding=(2, 0)), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(self.b1(F.relu(self.c1(F.pad(x, (0, 0, 3, 4))))), (2, 1), (2, 1))
        x = F.max_pool2d(self.b2(F.relu(self.c2(x))), (2, 1), (2, 1))
        return self.fc(x.flatten(1))


class MaskedEncoder(nn.Module):
    """BERT's layer, written out: an additive key mask, matmul-softmax-matmul attention,
    residual adds, layer norms and exact GELU (the runtime fuses the attention)."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads, self.q, self.k, self.v = heads, nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out, self.ln1, self.ln2 = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.up, self.down, self.head = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, 5)

    def split(self, x):
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x):
        x = x[:, 0]
        mask = (x.mean(-1) < 0.5).float()[:, None, None, :] * -10000.0
        scores = self.split(self.q(x)) @ self.split(self.k(x)).transpose(-1, -2) * 0.35 + mask
        context = (scores.softmax(-1) @ self.split(self.v(x))).transpose(1, 2).flatten(2)
        x = self.ln1(self.out(context) + x)
        x = self.ln2(self.down(F.gelu(self.up(x))) + x)
        return self.head(x.mean(1))


FAMILIES = {"mlp": (MLP, (1, 8, 8)), "resnet": (SmallResNet, (3, 16, 16)),
            "mobilenet": (SmallMobileNet, (3, 16, 16)), "vit": (TinyViT, (3, 16, 16)),
            "attention_decoder": (FusedAttentionDecoder, (3, 16, 16)),
            "column_conv": (ColumnConvNet, (1, 38, 1)), "masked_encoder": (MaskedEncoder, (1, 8, 16))}


def _metadata(name, shape) -> ModelMetadata:
    return ModelMetadata(name=name, input_shape=shape, class_names=tuple(str(i) for i in range(8)),
                         preprocessing=Preprocessing(color="L" if shape[0] == 1 else "RGB"))


def _build(name) -> nn.Module:
    torch.manual_seed(0)
    module = FAMILIES[name][0]().eval()
    for bn in module.modules():  # non-trivial batch-norm statistics, so folding them is tested
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(family, precision) -> (module, input shape, path of the flexible-batch program)."""
    root = tmp_path_factory.mktemp("runtime")
    cache = {}

    def get(name, precision):
        if (name, precision) not in cache:
            module, shape = _build(name), FAMILIES[name][1]
            path = convert_module(module, _metadata(name, shape), root / f"{name}_{precision}.mlpackage",
                                  precision=precision)
            cache[name, precision] = module, shape, path
        return cache[name, precision]
    return get


def _eager(module, x) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


def _assert_close(out, ref, tolerance):
    assert out.dtype == np.float32 and out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    diff = float(np.abs(out - ref).max())
    assert diff <= tolerance * scale, f"max abs diff {diff:.3g} > {tolerance} x output scale {scale:.3g}"


# --- parity -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp32_program_matches_eager_at_batch_1_3_64(converted, family):
    module, shape, path = converted(family, "fp32")
    program = load_program(path)
    assert isinstance(program, CoreMLProgram) and program.fixed_batch is None
    assert program.input_shape[1:] == shape and program.output_names == ["logits"]
    for n in (1, 3, 64):
        x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(n))
        _assert_close(program.predict(x), _eager(module, x), FP32_TOLERANCE)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp16_program_matches_eager_within_fp16_tolerance(converted, family):
    module, shape, path = converted(family, "fp16")
    program = load_program(path)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    out, ref = program.predict(x), _eager(module, x)
    _assert_close(out, ref, FP16_TOLERANCE)
    assert not np.array_equal(out, ref), "an fp16 program should not reproduce fp32 eager output bit for bit"


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_fp16_compute_mode_rounds_like_device(converted, family):
    module, shape, path = converted(family, "fp32")
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    fp32 = load_program(path).predict(x)
    fp16 = load_program(path, compute_precision="fp16")
    assert fp16.compute_precision == "fp16"
    out = fp16.predict(x)
    _assert_close(out, _eager(module, x), FP16_TOLERANCE)
    assert np.abs(out - fp32).max() > 0, "fp16 compute mode gave exactly the fp32 result"
    assert np.array_equal(out.astype(np.float16).astype(np.float32), out), "fp16 mode outputs are not fp16 values"


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 4), (3, 1, 4, 4)])
def test_attention_pattern_runs_fused_or_as_its_ops(tmp_path, mask_shape):
    """matmul-softmax-matmul with an additive mask gives softmax(Q K^T * s + mask) V, whether the
    mask fits one scaled_dot_product_attention call or broadcasts the scores to a larger batch;
    an observed run (calibration) still sees the scores."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 4, 8)), mb.TensorSpec(shape=mask_shape)],
                opset_version=ct.target.iOS17)
    def prog(x, mask):
        scores = mb.mul(x=mb.matmul(x=x, y=x, transpose_y=True), y=np.float32(0.35))
        scores = mb.add(x=scores, y=mask, name="scores")
        return mb.matmul(x=mb.softmax(x=scores, axis=-1), y=x, name="context")
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         compute_precision=ct.precision.FLOAT32)
    program = load_program(save_mlmodel(mlmodel, tmp_path / "attention.mlpackage"))
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((1, 2, 4, 8)).astype(np.float32),
              "mask": np.where(rng.random(mask_shape) < 0.3, -10000.0, 0.0).astype(np.float32)}
    x, mask = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["mask"])
    expected = torch.softmax(x @ x.transpose(-1, -2) * 0.35 + mask, -1) @ x
    _assert_close(program.predict_all(inputs)[program.output_names[0]], expected.numpy(), FP32_TOLERANCE)
    seen = []
    program.observe(inputs, lambda name, value: seen.append(name))
    assert "scores" in seen


def test_inputs_as_numpy_or_torch_give_the_same_outputs(converted):
    module, shape, path = converted("mlp", "fp32")
    program = load_program(path)
    x = np.random.default_rng(0).standard_normal((5, *shape)).astype(np.float32)
    from_numpy, from_torch = program.predict(x), program.predict(torch.from_numpy(x))
    np.testing.assert_array_equal(from_numpy, from_torch)
    outputs = program.predict_all(x)
    assert set(outputs) == {"logits"} and np.array_equal(outputs["logits"], from_numpy)
    np.testing.assert_allclose(program.predict(x, batch_size=2), from_numpy, rtol=1e-5, atol=1e-6)  # BLAS blocking differs by batch


def test_wrong_input_shape_is_a_clear_error(converted):
    _, _, path = converted("mlp", "fp32")
    program = load_program(path)
    with pytest.raises(DataError, match=r"takes \(N, 1, 8, 8\)"):
        program.predict(np.zeros((2, 3, 8, 8), np.float32))


def test_weights_are_the_programs_constants(converted):
    module, _, path = converted("mlp", "fp32")
    weights = load_program(path).weights()
    first = module.net[1].weight.detach().numpy()
    matches = [name for name, w in weights.items() if w.shape == first.shape and np.array_equal(w, first)]
    assert matches, f"the first linear layer's weight is not among {sorted(weights)}"


# --- fixed batch --------------------------------------------------------------------------
def test_fixed_batch_one_program_runs_any_batch(converted, tmp_path):
    module, shape, _ = converted("resnet", "fp32")
    path = convert_module(module, _metadata("resnet", shape), tmp_path / "fixed.mlpackage",
                          precision="fp32", flexible_batch=False)
    program = load_program(path)
    assert program.fixed_batch == 1 and program.input_shape == (1, *shape)
    x = torch.randn(3, *shape)
    _assert_close(program.predict(x), _eager(module, x), FP32_TOLERANCE)


def test_fixed_batch_four_program_pads_and_trims_the_last_chunk(tmp_path):
    module = _build("vit")  # batch is baked into reshape targets and tile reps
    shape = FAMILIES["vit"][1]
    traced = torch.jit.trace(module, torch.zeros(4, *shape))
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(4, *shape))],
                         outputs=[ct.TensorType(name="logits")], convert_to="mlprogram",
                         minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)
    path = save_mlmodel(mlmodel, tmp_path / "fixed4.mlpackage")
    program = load_program(path)
    assert program.fixed_batch == 4
    for n in (1, 6):
        x = torch.randn(n, *shape)
        _assert_close(program.predict(x), _eager(module, x), FP32_TOLERANCE)


# --- failure modes ----------------------------------------------------------------------
def test_unsupported_op_is_reported_at_load_with_name_and_location(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8))], opset_version=ct.target.iOS18)
    def prog(x):
        y = mb.relu(x=x, name="activation")
        order = mb.argsort(x=y, axis=-1, name="best_two")
        return mb.cast(x=order, dtype="fp32")
    mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    path = save_mlmodel(mlmodel, tmp_path / "argsort.mlpackage")
    with pytest.raises(UnsupportedOpError) as error:
        load_program(path)
    message = str(error.value)
    assert "'argsort'" in message and "named 'best_two" in message and "function 'main'" in message
    assert "activation" not in message


def test_missing_package_is_a_load_error(tmp_path):
    from compress_lab.errors import ModelLoadError
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_program(tmp_path / "nowhere.mlpackage")


def test_native_runtime_reports_why_it_is_unavailable(converted):
    available, reason = native_runtime_available()
    assert reason
    if platform.system() != "Darwin":
        assert not available and "macOS" in reason
        _, _, path = converted("mlp", "fp32")
        with pytest.raises(RuntimeUnavailableError, match="macOS"):
            load_program(path, backend="native", compute_units="ALL")


# --- sample models ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    cache = {}

    def get(name, precision):
        if name not in list_sample_models() or not (load_model_dir(name) / "weights.pt").is_file():
            pytest.skip(f"sample model {name} is not built (run python sample_models/build.py)")
        if (name, precision) not in cache:
            handle = load_model(name)
            module = handle.torch_copy()
            path = convert_module(module, handle.metadata, root / f"{name}_{precision}.mlpackage", precision=precision)
            cache[name, precision] = module, handle.metadata.input_shape, path
        return cache[name, precision]
    return get


def load_model_dir(name):
    from compress_lab.models.handle import SAMPLE_MODELS_DIR
    return SAMPLE_MODELS_DIR / name


@pytest.mark.parametrize("name", ["mnist_cnn", "dog_mobilenetv2"])
def test_sample_models_match_eager(sample, name):
    module, shape, path = sample(name, "fp32")
    program = load_program(path)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3))
    ref = _eager(module, x)
    _assert_close(program.predict(x), ref, FP32_TOLERANCE)
    fp16_compute = load_program(path, compute_precision="fp16").predict(x)
    _assert_close(fp16_compute, ref, FP16_TOLERANCE)


@pytest.mark.parametrize("name", ["mnist_cnn", "dog_mobilenetv2"])
def test_sample_models_fp16_programs_match_eager(sample, name):
    module, shape, path = sample(name, "fp16")
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(4))
    _assert_close(load_program(path).predict(x), _eager(module, x), FP16_TOLERANCE)


# --- W8A8 through the runtime's calibration -----------------------------------------------
def test_activation_quantization_calibrated_by_the_runtime(converted):
    import coremltools.optimize.coreml as cto

    from compress_lab.errors import ConfigError
    from compress_lab.runtime import activation_quantization_available, linear_quantize_activations

    available, reason = activation_quantization_available()
    assert available, reason
    module, shape, path = converted("resnet", "fp16")
    float_model = ct.models.MLModel(str(path), skip_model_load=True)
    rng = np.random.default_rng(5)
    samples = [rng.standard_normal((8, *shape)).astype(np.float32) for _ in range(3)]
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
    quantized = linear_quantize_activations(float_model, config, samples)
    spec = quantized.get_spec()
    function = spec.mlProgram.functions["main"]
    op_types = [op.type for op in function.block_specializations[function.opset].operations]
    assert op_types.count("quantize") >= 5 and "dequantize" in op_types
    x = samples[0]
    ref = _eager(module, torch.from_numpy(x))
    out = load_program(quantized).predict(x)
    _assert_close(out, ref, 5e-2)  # 8-bit activations: within 5% of the output scale
    assert np.abs(out - load_program(path).predict(x)).max() > 0, "activation quantization changed nothing"

    _, _, fp32_path = converted("resnet", "fp32")
    with pytest.raises(ConfigError, match="fp16"):
        linear_quantize_activations(ct.models.MLModel(str(fp32_path), skip_model_load=True), config, samples)


# --- resuming from checkpoints ------------------------------------------------------------
class SmallLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 5)

    def forward(self, x):
        out, _ = self.lstm(x[:, 0])
        return self.head(out[:, -1])


@pytest.mark.parametrize("family,precision,compute", [("resnet", "fp32", "fp32"), ("mobilenet", "fp16", "fp32"),
                                                      ("vit", "fp16", "fp16"), ("masked_encoder", "fp32", "fp32"),
                                                      ("lstm", "fp16", "fp32")])
def test_a_run_resumed_from_checkpoints_gives_the_whole_runs_outputs(converted, tmp_path, family, precision, compute):
    """Each weight changed alone, then two at once: a copy resuming from the uncompressed program's
    checkpoints gives the same outputs, bit for bit, as a whole run, and starts after step 0 for
    the weights late in the program (an LSTM's weights, inside its kernel, take whole runs)."""
    if family == "lstm":
        torch.manual_seed(0)
        path = convert_module(SmallLSTM().eval(), _metadata("lstm", (1, 8, 8)), tmp_path / "lstm.mlpackage",
                              precision=precision)
        shape = (1, 8, 8)
    else:
        _, shape, path = converted(family, precision)
    base = load_program(path, compute_precision=compute)
    x = np.random.default_rng(1).uniform(0, 1, (3, *shape)).astype(np.float32)
    anchor = base.with_constants({})
    anchor.keep_checkpoints(count=8)
    assert np.array_equal(anchor.predict(x), base.predict(x))
    weights = base.weights()
    changes = [{name: (w * 0.9).astype(w.dtype)} for name, w in weights.items() if w.ndim >= 2]
    changes.append({k: v for change in changes[-2:] for k, v in change.items()})
    starts = []
    for change in changes:
        whole = base.with_constants(change).predict(x)
        resumed = base.with_constants(change)
        resumed.resume_from(anchor)
        starts.append(resumed._interpreter._resume[1] if resumed._interpreter._resume else 0)
        assert np.array_equal(resumed.predict(x), whole), f"{sorted(change)} resumed differs from a whole run"
        other = np.random.default_rng(2).uniform(0, 1, x.shape).astype(np.float32)  # not seen by the anchor
        assert np.array_equal(resumed.predict(other), base.with_constants(change).predict(other))
    if family == "lstm":
        assert min(starts) == 0
    else:
        assert max(starts) > 0, "no run resumed after the first step"


def test_checkpoints_over_their_memory_limit_are_dropped(converted):
    _, shape, path = converted("resnet", "fp32")
    base = load_program(path)
    anchor = base.with_constants({})
    anchor.keep_checkpoints(max_bytes=1024)
    x = np.zeros((2, *shape), np.float32)
    assert np.array_equal(anchor.predict(x), base.predict(x))
    assert not anchor._interpreter.keeps_checkpoints
    name, w = next(iter(base.weights().items()))
    resumed = base.with_constants({name: w * 0})
    resumed.resume_from(anchor)
    assert np.array_equal(resumed.predict(x), base.with_constants({name: w * 0}).predict(x))
