"""Every post-training compression mode of coremltools.optimize.coreml, run through the
lab's runtime: its decompressed weights equal `decompress_weights(model)`'s constants
exactly (same dtype, same bits), and the compressed program predicts exactly what the
decompressed program predicts."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

import coremltools as ct
import coremltools.optimize.coreml as cto

from compress_lab.models.convert import convert_module, save_mlmodel
from compress_lab.models.metadata import ModelMetadata
from compress_lab.runtime import load_program
from compress_lab.quiet import quiet_coremltools
from compress_lab.runtime.milprogram import load_mil_source

SHAPE = (3, 8, 8)


class TwoLayerNet(nn.Module):
    """conv2 (18,432 weights) and fc (16,384 weights) exceed the default weight_threshold (2048)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64 * 4 * 4, 16)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(torch.flatten(x, 1))


def _net(grid: bool) -> nn.Module:
    torch.manual_seed(0)
    net = TwoLayerNet().eval()
    if grid:  # weights on a 1/8 lattice: what palettize mode "unique" expects
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.round(p * 64) / 8)
    return net


@pytest.fixture(scope="module")
def base_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compressed")
    meta = ModelMetadata(name="two_layer", input_shape=SHAPE, class_names=tuple(str(i) for i in range(16)))
    models = {}
    for name, grid, precision in [("fp16", False, "fp16"), ("fp32", False, "fp32"), ("grid", True, "fp16")]:
        path = convert_module(_net(grid), meta, root / f"{name}.mlpackage", precision=precision)
        with quiet_coremltools():
            models[name] = ct.models.MLModel(str(path), skip_model_load=True)
    return models


def pal(**kw):
    return ("palettize", cto.OpPalettizerConfig(**kw))


def quant(**kw):
    return ("quantize", cto.OpLinearQuantizerConfig(**kw))


def prune(**kw):
    return ("prune", cto.OpMagnitudePrunerConfig(**kw))


_APPLY = {"palettize": cto.palettize_weights, "quantize": cto.linear_quantize_weights, "prune": cto.prune_weights}

LUT, SHIFT_SCALE, SPARSE = "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale", "constexpr_sparse_to_dense"

# id: (base model, compression steps (later steps are joint), op types that must appear)
CASES = {
    **{f"palettize-kmeans-{n}bit": ("fp16", [pal(mode="kmeans", nbits=n)], {LUT}) for n in (1, 2, 3, 4, 6, 8)},
    "palettize-kmeans-4bit-fp32": ("fp32", [pal(mode="kmeans", nbits=4)], {LUT}),
    "palettize-uniform-4bit": ("fp16", [pal(mode="uniform", nbits=4)], {LUT}),
    "palettize-uniform-3bit-fp32": ("fp32", [pal(mode="uniform", nbits=3)], {LUT}),
    "palettize-unique": ("grid", [pal(mode="unique")], {LUT}),
    "palettize-grouped-channel": ("fp16", [pal(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                                               group_size=16)], {LUT}),
    "palettize-per-channel-scale": ("fp16", [pal(mode="kmeans", nbits=3, enable_per_channel_scale=True)],
                                    {LUT, SHIFT_SCALE}),
    "palettize-vector-cluster-dim-2": ("fp16", [pal(mode="kmeans", nbits=2, cluster_dim=2)], {LUT}),
    "quantize-int8-symmetric-per-channel": ("fp16", [quant(dtype="int8", mode="linear_symmetric",
                                                           granularity="per_channel")], {SHIFT_SCALE}),
    "quantize-uint8-asymmetric-per-tensor": ("fp16", [quant(dtype="uint8", mode="linear", granularity="per_tensor")],
                                             {SHIFT_SCALE}),
    "quantize-int4-symmetric-per-block": ("fp16", [quant(dtype="int4", mode="linear_symmetric",
                                                         granularity="per_block", block_size=16)], {SHIFT_SCALE}),
    "quantize-uint4-asymmetric-per-block": ("fp16", [quant(dtype="uint4", mode="linear", granularity="per_block",
                                                           block_size=16)], {SHIFT_SCALE}),
    "quantize-int8-asymmetric-per-block": ("fp32", [quant(dtype="int8", mode="linear", granularity="per_block",
                                                          block_size=32)], {SHIFT_SCALE}),
    "quantize-uint8-symmetric-per-channel": ("fp32", [quant(dtype="uint8", mode="linear_symmetric",
                                                            granularity="per_channel")], {SHIFT_SCALE}),
    "quantize-int4-asymmetric-per-channel": ("fp16", [quant(dtype="int4", mode="linear", granularity="per_channel")],
                                             {SHIFT_SCALE}),
    "quantize-uint4-symmetric-per-tensor": ("fp16", [quant(dtype="uint4", mode="linear_symmetric",
                                                           granularity="per_tensor")], {SHIFT_SCALE}),
    "prune-magnitude-sparsity": ("fp16", [prune(target_sparsity=0.6)], {SPARSE}),
    "prune-magnitude-n-m": ("fp16", [prune(n_m_ratio=(2, 4))], {SPARSE}),
    "prune-magnitude-block": ("fp32", [prune(target_sparsity=0.5, block_size=2)], {SPARSE}),
    "prune-threshold": ("fp16", [("prune", cto.OpThresholdPrunerConfig(threshold=0.02,
                                                                        minimum_sparsity_percentile=0.0))], {SPARSE}),
    "joint-prune-then-palettize": ("fp16", [prune(target_sparsity=0.5), pal(mode="kmeans", nbits=4)],
                                   {"constexpr_lut_to_sparse", SPARSE}),
    "joint-prune-then-quantize": ("fp16", [prune(n_m_ratio=(2, 4)), quant(dtype="int8", mode="linear_symmetric")],
                                  {"constexpr_sparse_blockwise_shift_scale", SPARSE}),
    "joint-palettize-then-quantize-lut": ("fp16", [pal(mode="kmeans", nbits=4),
                                                   quant(dtype="int8", mode="linear_symmetric", granularity="per_tensor")], {LUT, SHIFT_SCALE}),
}


def _compress(model, steps):
    with quiet_coremltools():
        for i, (kind, op_config) in enumerate(steps):
            config = cto.OptimizationConfig(global_config=op_config)
            model = _APPLY[kind](model, config, joint_compression=i > 0)
    return model


def _spec_ops(mlmodel):
    spec = mlmodel.get_spec()
    function = spec.mlProgram.functions["main"]
    return list(function.block_specializations[function.opset].operations)


def _decompressed_weight_names(mlmodel) -> list[str]:
    """Outputs of constexpr ops that a computing op consumes (the end of each chain)."""
    ops = _spec_ops(mlmodel)
    consumers = defaultdict(list)
    for op in ops:
        for argument in op.inputs.values():
            for binding in argument.arguments:
                if binding.name:
                    consumers[binding.name].append(op.type)
    return [out.name for op in ops if op.type.startswith("constexpr_") for out in op.outputs
            if any(not t.startswith("constexpr_") for t in consumers[out.name])]


def _const_values(mlmodel) -> dict[str, np.ndarray]:
    function = load_mil_source(mlmodel).function
    return {op.outputs[0].name: op.outputs[0].val for op in function.operations if op.op_type == "const"}


@pytest.mark.parametrize("case", list(CASES))
def test_runtime_decompresses_exactly_like_coremltools(base_models, tmp_path, case):
    base, steps, expected_ops = CASES[case]
    compressed = _compress(base_models[base], steps)
    path = save_mlmodel(compressed, tmp_path / f"{case}.mlpackage")
    with quiet_coremltools():
        on_disk = ct.models.MLModel(str(path), skip_model_load=True)
    op_types = {op.type for op in _spec_ops(on_disk)}
    assert expected_ops <= op_types, f"expected {expected_ops} in the compressed program, got {sorted(op_types)}"

    program = load_program(path)
    with quiet_coremltools():
        reference_model = cto.decompress_weights(on_disk)
    reference = _const_values(reference_model)
    weights = program.weights()
    names = _decompressed_weight_names(on_disk)
    assert len(names) == 2, f"expected conv2 and fc to be compressed, got {names}"
    for name in names:
        ours, theirs = weights[name], np.asarray(reference[name])
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{case}: weight {name}")

    x = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    out = program.predict(x)
    assert out.shape == (3, 16) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, load_program(reference_model).predict(x))


@pytest.mark.parametrize("kind", ["quantize", "palettize", "prune"])
def test_ios16_constexpr_ops_decompress_exactly(tmp_path, kind):
    """Programs targeting iOS16 carry the older constexpr ops (affine_dequantize, iOS16 lut / sparse)."""
    net = _net(False)
    traced = torch.jit.trace(net, torch.zeros(1, *SHAPE))
    with quiet_coremltools():
        model = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(1, *SHAPE))], convert_to="mlprogram",
                           minimum_deployment_target=ct.target.iOS16)
    steps = {"quantize": [quant(mode="linear_symmetric")], "palettize": [pal(mode="uniform", nbits=4)],
             "prune": [prune(target_sparsity=0.5)]}[kind]
    compressed = _compress(model, steps)
    expected = {"quantize": "constexpr_affine_dequantize", "palettize": LUT, "prune": SPARSE}[kind]
    assert expected in {op.type for op in _spec_ops(compressed)}
    path = save_mlmodel(compressed, tmp_path / f"ios16_{kind}.mlpackage")
    program = load_program(path)
    with quiet_coremltools():
        reference_model = cto.decompress_weights(compressed)
    reference = _const_values(reference_model)
    names = _decompressed_weight_names(compressed)
    assert names
    for name in names:
        np.testing.assert_array_equal(program.weights()[name], reference[name])
    x = np.random.default_rng(1).standard_normal((2, *SHAPE)).astype(np.float32)
    np.testing.assert_array_equal(program.predict(x), load_program(reference_model).predict(x))
