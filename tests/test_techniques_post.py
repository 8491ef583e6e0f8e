"""Post-training compression on the real sample models, checked on the files written:
sizes, decompressed weight values, and the errors promised for bad settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from compress_lab.errors import ConfigError
from compress_lab.models import load_model
from compress_lab.models.size import package_size
from compress_lab.techniques import CompressContext, compress, config_from_dict
from compress_lab.quiet import quiet_coremltools
from compress_lab.techniques._coreml_common import load_program
from compress_lab.techniques.joint import PalettizeQuantizeLutConfig, PrunePalettizeConfig, PruneQuantizeConfig
from compress_lab.techniques.palettize import PalettizeConfig
from compress_lab.techniques.prune import PruneConfig
from compress_lab.techniques.quantize import QuantizeConfig

MNIST_CONV3 = "conv_layers_3_weight_to_fp16"
MNIST_FC2 = "fc_layers_2_weight_to_fp16"


# --------------------------------------------------------------------------- fixtures and helpers

class Lab:
    """One sample model, its float packages converted once, and compression into tmp."""

    def __init__(self, name: str, root: Path):
        self.handle = load_model(name)
        self.root = root
        self.ctx = CompressContext(handle=self.handle, workdir=root / "work")
        self._weights: dict[str, dict] = {}

    def float_package(self, precision="fp16") -> Path:
        return self.ctx.float_package(precision)

    def run(self, config, label: str):
        return compress(self.handle, config, self.root / f"{label}.mlpackage", context=self.ctx)

    def original(self, precision="fp16") -> dict[str, np.ndarray]:
        if precision not in self._weights:
            self._weights[precision] = dense_weights(self.float_package(precision))
        return self._weights[precision]


def dense_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights of rank >= 2 after coremltools' own decompression, keyed by the op using them."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    with quiet_coremltools():
        mlmodel = cto.decompress_weights(ct.models.MLModel(str(path), skip_model_load=True))
        prog = mlmodel._mil_program or load_program(mlmodel)
    out = {}
    for op in prog.functions["main"].operations:
        if op.op_type == "const" and op.outputs[0].rank >= 2 and op.outputs[0].child_ops:
            out[op.outputs[0].child_ops[0].name] = np.asarray(op.outputs[0].val, dtype=np.float32)
    return out


def user_of(lab: Lab, const_name: str) -> str:
    with quiet_coremltools():
        import coremltools as ct
        prog = load_program(ct.models.MLModel(str(lab.float_package()), skip_model_load=True))
    for op in prog.functions["main"].operations:
        if op.name == const_name:
            return op.outputs[0].child_ops[0].name
    raise KeyError(const_name)


def compressed(lab: Lab, outcome) -> tuple[dict, dict]:
    """(original, decompressed) weights of the layers the package stores compressed."""
    report = package_size(outcome.path)
    users = {w.used_by for w in report.weights if w.kind != "dense" and len(w.shape) >= 2}
    assert users, "nothing was compressed"
    after = dense_weights(outcome.path)
    before = lab.original()
    return {u: before[u] for u in users}, {u: after[u] for u in users}


def weights_ratio(lab: Lab, outcome, precision="fp16") -> float:
    return package_size(lab.float_package(precision)).weights_bytes / package_size(outcome.path).weights_bytes


def tree_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Lab:
    return Lab("mnist_cnn", tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module")
def dog(tmp_path_factory) -> Lab:
    return Lab("dog_mobilenetv2", tmp_path_factory.mktemp("dog"))


# --------------------------------------------------------------------------- palettization

def test_uniform_4bit_palettization_is_4x_smaller_with_16_values_per_layer(mnist):
    source_hash = tree_hash(mnist.float_package())
    outcome = mnist.run(PalettizeConfig(mode="uniform", nbits=4), "pal_u4")
    assert 3.7 < weights_ratio(mnist, outcome) < 4.05
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        assert len(np.unique(after[name])) <= 16
        step = (w.max() - w.min()) / 15
        assert np.abs(after[name] - w).max() <= step / 2 + 2e-3 * np.abs(w).max()
    assert set(outcome.timings) >= {"compress_s", "load_s", "save_s"}
    assert outcome.details["steps"][0]["optimization_config"]["global_config"]["nbits"] == 4
    assert tree_hash(mnist.float_package()) == source_hash  # the source package is untouched


def test_kmeans_2bit_beats_uniform_2bit_error(mnist):
    kmeans = mnist.run(PalettizeConfig(mode="kmeans", nbits=2), "pal_k2")
    assert 7.0 < weights_ratio(mnist, kmeans) < 8.1
    before, after = compressed(mnist, kmeans)
    for name, w in before.items():
        assert len(np.unique(after[name])) <= 4
        lo, hi = w.min(), w.max()
        uniform = lo + np.round((w - lo) / (hi - lo) * 3) / 3 * (hi - lo)
        assert np.mean((after[name] - w) ** 2) < np.mean((uniform - w) ** 2)


def test_grouped_channel_palettization_gives_each_group_its_own_lut(mnist):
    config = PalettizeConfig(mode="uniform", nbits=2, granularity="per_grouped_channel", group_size=16, skip_indivisible=True)
    outcome = mnist.run(config, "pal_grouped")
    fc2 = user_of(mnist, MNIST_FC2)
    assert outcome.details["skipped_ops"] == {MNIST_FC2: "palettize: group_size=16 does not divide its 10 output channels"}
    after = dense_weights(outcome.path)
    np.testing.assert_array_equal(after[fc2], mnist.original()[fc2])  # skipped: left as it was
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        groups = after[name].reshape(w.shape[0] // 16, -1)
        assert all(len(np.unique(g)) <= 4 for g in groups)
        assert len(np.unique(after[name])) > 4  # but not one LUT for the whole tensor


def test_indivisible_group_size_is_an_error_naming_the_op(mnist):
    with pytest.raises(ConfigError, match=rf"{MNIST_FC2}.*group_size=16 does not divide its 10 output channels.*skip_indivisible"):
        mnist.run(PalettizeConfig(mode="uniform", nbits=4, granularity="per_grouped_channel", group_size=16), "bad_group")
    assert not (mnist.root / "bad_group.mlpackage").exists()


def test_vector_palettization_uses_pairs_of_output_channels(mnist):
    outcome = mnist.run(PalettizeConfig(mode="kmeans", nbits=2, cluster_dim=2, weight_threshold=20000), "pal_vec")
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        pairs = np.moveaxis(after[name].reshape(w.shape[0] // 2, 2, -1), 1, -1).reshape(-1, 2)
        assert len(np.unique(pairs, axis=0)) <= 4
    # 2 bits index a pair of weights: about 1 bit per weight
    assert all(w.bits_per_weight < 1.1 for w in package_size(outcome.path).weights if w.kind != "dense")


def test_per_channel_scale_palettization_is_recorded_as_scaled(mnist):
    outcome = mnist.run(PalettizeConfig(mode="uniform", nbits=4, enable_per_channel_scale=True), "pal_pcs")
    kinds = {w.kind for w in package_size(outcome.path).weights}
    assert "palettized+scaled" in kinds
    before, after = compressed(mnist, outcome)
    _, plain = compressed(mnist, mnist.run(PalettizeConfig(mode="uniform", nbits=4), "pal_u4_plain"))
    for name, w in before.items():  # scaling each channel to [-1, 1] first cuts the error
        assert np.linalg.norm(after[name] - w) < 0.8 * np.linalg.norm(plain[name] - w)


def test_unique_palettization_reuses_existing_values(mnist, tmp_path):
    import torch
    from compress_lab.models.handle import ModelHandle
    module = mnist.handle.torch_copy()
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                lo, hi = p.min(), p.max()
                p.copy_(lo + torch.round((p - lo) / (hi - lo) * 3) / 3 * (hi - lo))  # 4 levels
    handle = ModelHandle(source="4-level mnist", kind="torch", metadata=mnist.handle.metadata,
                         fingerprint="4level" + mnist.handle.fingerprint, module=module)
    outcome = compress(handle, PalettizeConfig(mode="unique", nbits=None), tmp_path / "unique.mlpackage", workdir=tmp_path)
    report = package_size(outcome.path)
    big = [w for w in report.weights if w.elements > 2048]
    assert big and all(w.kind == "palettized" and w.bits_per_weight < 2.2 for w in big)
    # a float model has far more than 256 distinct values per layer: unique mode leaves it alone, and says so
    untouched = mnist.run(PalettizeConfig(mode="unique", nbits=None), "unique_float")
    assert package_size(untouched.path).compressed_elements == 0
    assert any("Unique values" in m for m in untouched.details["coremltools_warnings"])


# --------------------------------------------------------------------------- quantization

def test_int8_per_channel_is_2x_smaller_and_within_1_percent(mnist):
    outcome = mnist.run(QuantizeConfig(), "q8")
    assert 1.9 < weights_ratio(mnist, outcome) < 2.05
    before, after = compressed(mnist, outcome)
    assert all(np.linalg.norm(after[n] - w) / np.linalg.norm(w) < 0.01 for n, w in before.items())
    assert_int8_per_channel_error(before, after)


@pytest.mark.parametrize("dtype, mode", [("uint8", "linear"), ("int4", "linear_symmetric")])
def test_other_dtypes_quantize_within_their_error(mnist, dtype, mode):
    outcome = mnist.run(QuantizeConfig(dtype=dtype, mode=mode, granularity="per_tensor"), f"q_{dtype}")
    bits = int(dtype[-1])
    assert 16 / bits * 0.9 < weights_ratio(mnist, outcome) < 16 / bits * 1.02
    before, after = compressed(mnist, outcome)
    for name, w in before.items():  # rounding error: at most half a step of the one per-tensor scale
        step = (w.max() - w.min()) / 255 if mode == "linear" else np.abs(w).max() / 7
        assert np.abs(after[name] - w).max() <= step / 2 * 1.01 + 1e-3 * np.abs(w).max()


def test_int4_per_block_has_one_scale_per_block(mnist):
    outcome = mnist.run(QuantizeConfig(dtype="int4", granularity="per_block", block_size=16), "q4_block")
    per_tensor = mnist.run(QuantizeConfig(dtype="int4", granularity="per_tensor"), "q4_tensor")
    before, after_block = compressed(mnist, outcome)
    _, after_tensor = compressed(mnist, per_tensor)
    for name, w in before.items():
        assert np.linalg.norm(after_block[name] - w) < np.linalg.norm(after_tensor[name] - w)
    assert weights_ratio(mnist, per_tensor) > weights_ratio(mnist, outcome) > 3.0  # scales cost bytes


def test_fp32_source_quantizes_4x(mnist):
    outcome = mnist.run(QuantizeConfig(precision="fp32"), "q8_fp32")
    assert 3.7 < weights_ratio(mnist, outcome, precision="fp32") < 4.05


# --------------------------------------------------------------------------- pruning

def test_magnitude_pruning_hits_the_target_and_keeps_the_rest(mnist):
    outcome = mnist.run(PruneConfig(target_sparsity=0.75), "prune75")
    before, after = compressed(mnist, outcome)
    assert max(w.size for w in before.values()) > 65504  # the tensors coremltools' fp16 percentile got wrong
    for name, w in before.items():
        zero = after[name] == 0
        assert abs(zero.mean() - 0.75) < 0.01
        np.testing.assert_array_equal(after[name][~zero], w[~zero])
        assert np.abs(w[zero]).max() <= np.abs(w[~zero]).min()
    assert weights_ratio(mnist, outcome) > 2.5


def test_n_m_pruning_zeroes_n_of_every_m_input_weights(mnist):
    outcome = mnist.run(PruneConfig(n_m_ratio=(2, 4)), "prune_nm")
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        moved = np.moveaxis(after[name], 1, -1)
        groups = moved.reshape(-1, 4)
        assert np.all((groups == 0).sum(axis=1) >= 2)
        kept = after[name] != 0
        np.testing.assert_array_equal(after[name][kept], w[kept])


def test_threshold_pruning_zeroes_small_weights_only(mnist):
    outcome = mnist.run(PruneConfig(mode="threshold", threshold=0.02, minimum_sparsity_percentile=0.1), "prune_thr")
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        threshold = np.float32(np.float16(0.02))  # compared at the weights' precision
        np.testing.assert_array_equal(after[name], np.where(np.abs(w) <= threshold, 0, w))


# --------------------------------------------------------------------------- joint

def test_prune_then_palettize_keeps_sparsity_and_a_4bit_lut(mnist):
    outcome = mnist.run(PrunePalettizeConfig(target_sparsity=0.5, palettize_mode="uniform", nbits=4), "prune_pal")
    report = package_size(outcome.path)
    assert {w.kind for w in report.weights if w.kind != "dense"} == {"sparse+palettized"}
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        assert abs((after[name] == 0).mean() - 0.5) < 0.01
        assert len(np.unique(after[name][after[name] != 0])) <= 16
    prune_only = mnist.run(PruneConfig(), "prune50")
    assert weights_ratio(mnist, outcome) > 1.8 * weights_ratio(mnist, prune_only)


def test_prune_then_quantize_is_sparse_int8(mnist):
    outcome = mnist.run(PruneQuantizeConfig(target_sparsity=0.5), "prune_q")
    assert {w.kind for w in package_size(outcome.path).weights if w.kind != "dense"} == {"sparse+quantized"}
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        kept = after[name] != 0
        assert abs(1 - kept.mean() - 0.5) < 0.01
        assert np.linalg.norm(after[name][kept] - w[kept]) / np.linalg.norm(w[kept]) < 0.01
    assert weights_ratio(mnist, outcome) > 3.0


def test_palettize_then_quantize_lut_shrinks_grouped_luts(mnist):
    settings = dict(palettize_mode="uniform", nbits=8, granularity="per_grouped_channel", group_size=2)
    joint = mnist.run(PalettizeQuantizeLutConfig(**settings, lut_dtype="int8"), "pal_qlut")
    plain = mnist.run(PalettizeConfig(mode="uniform", nbits=8, granularity="per_grouped_channel", group_size=2), "pal_g2")
    assert {w.kind for w in package_size(joint.path).weights if w.kind != "dense"} == {"palettized+quantized"}
    plain_report = package_size(plain.path)
    lut_bytes = sum(w.stored_bytes - w.elements for w in plain_report.weights if w.kind != "dense")  # minus 8-bit indices
    assert lut_bytes > 0.1 * plain_report.weights_bytes
    saved = plain_report.weights_bytes - package_size(joint.path).weights_bytes
    assert 0.4 * lut_bytes < saved < 0.55 * lut_bytes  # fp16 LUT entries became int8
    before, after = compressed(mnist, joint)
    _, palettized = compressed(mnist, plain)
    for name, w in before.items():  # each LUT entry moved by at most half an int8 step of the LUT's range
        step = np.abs(palettized[name]).max() / 127
        assert np.abs(after[name] - palettized[name]).max() <= step / 2 * 1.01 + 1e-3 * step * 127


# --------------------------------------------------------------------------- overrides

def test_op_overrides_by_type_and_name(mnist):
    config = PalettizeConfig(mode="uniform", nbits=2, op_overrides={"type:linear": {"nbits": 8}, MNIST_CONV3: "skip"})
    outcome = mnist.run(config, "pal_overrides")
    after, before = dense_weights(outcome.path), mnist.original()
    conv3 = user_of(mnist, MNIST_CONV3)
    np.testing.assert_array_equal(after[conv3], before[conv3])
    for name, w in after.items():
        if name.startswith("linear") and w.size > 2048:
            assert 4 < len(np.unique(w)) <= 256
        elif name != conv3 and w.size > 2048:
            assert len(np.unique(w)) <= 4


def test_unknown_op_in_overrides_lists_real_ops(mnist):
    config = QuantizeConfig(op_overrides={"conv_99": "skip"})
    with pytest.raises(ConfigError, match=r"'conv_99'.*not in this model.*'input_7_cast_fp16'"):
        mnist.run(config, "bad_override")


def test_override_settings_are_validated_at_construction():
    with pytest.raises(ConfigError, match=r"op_overrides\['type:conv'\].*nbits=5"):
        PalettizeConfig(op_overrides={"type:conv": {"nbits": 5}})
    with pytest.raises(ConfigError, match=r"unknown setting.*'bits'"):
        PalettizeConfig(op_overrides={"type:conv": {"bits": 2}})
    with pytest.raises(ConfigError, match="'skip'"):
        QuantizeConfig(op_overrides={"type:conv": "off"})


# --------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("cls, kwargs, pattern", [
    (PalettizeConfig, {"nbits": 5}, r"nbits=5 is not allowed; use one of \[1, 2, 3, 4, 6, 8\]"),
    (PalettizeConfig, {"mode": "median"}, r"mode='median' is not allowed; use one of \['kmeans', 'uniform', 'unique', 'fast_kmeans'\]"),
    (PalettizeConfig, {"mode": "unique"}, r"nbits=4 cannot be set with mode 'unique'"),
    (PalettizeConfig, {"granularity": "per_grouped_channel", "group_size": 0}, r"group_size=0 must be an integer >= 1"),
    (PalettizeConfig, {"group_size": 8}, r"group_size=8 only applies with granularity 'per_grouped_channel'"),
    (PalettizeConfig, {"mode": "uniform", "cluster_dim": 2}, r"cluster_dim=2 .* works with mode 'kmeans' or 'unique', not 'uniform'"),
    (PalettizeConfig, {"granularity": "per_grouped_channel", "group_size": 6, "cluster_dim": 4}, r"cluster_dim=4 must divide group_size=6"),
    (QuantizeConfig, {"dtype": "int2"}, r"dtype='int2' is not allowed; use one of \['int8', 'uint8', 'int4', 'uint4'\]"),
    (QuantizeConfig, {"granularity": "per_block", "block_size": -1}, r"block_size=-1 must be an integer >= 1"),
    (QuantizeConfig, {"block_size": 32}, r"block_size=32 only applies with granularity 'per_block'"),
    (QuantizeConfig, {"precision": "fp8"}, r"precision='fp8'.*\['fp16', 'fp32'\]"),
    (QuantizeConfig, {"weight_threshold": -1}, r"weight_threshold=-1 must be an integer >= 0"),
    (PruneConfig, {"target_sparsity": 1.0}, r"target_sparsity=1.0 must be in \[0, 1\)"),
    (PruneConfig, {"n_m_ratio": (3, 2)}, r"n_m_ratio=\(3, 2\) must be \[n, m\] with 1 <= n < m"),
    (PruneConfig, {"n_m_ratio": (2, 4), "target_sparsity": 0.5}, r"cannot be combined with target_sparsity"),
    (PruneConfig, {"block_size": 1}, r"block_size=1 must be an integer >= 2"),
    (PruneConfig, {"mode": "threshold"}, r"threshold=None is required with mode 'threshold'"),
    (PruneConfig, {"threshold": 0.1}, r"threshold=0.1 only applies with mode 'threshold'"),
    (PruneConfig, {"dim": 1}, r"dim=1 only applies with block_size or n_m_ratio"),
    (PrunePalettizeConfig, {"prune_block_size": 1}, r"'prune_palettize' \(prune step\): prune_block_size=1 must be an integer >= 2"),
    (PrunePalettizeConfig, {"palettize_mode": "uniform", "nbits": 7}, r"\(palettize step\): nbits=7 is not allowed"),
    (PruneQuantizeConfig, {"quantize_block_size": 8}, r"quantize_block_size=8 only applies with granularity 'per_block'"),
    (PalettizeQuantizeLutConfig, {"lut_dtype": "fp8"}, r"lut_dtype='fp8' is not allowed"),
])
def test_bad_settings_name_the_value_and_the_allowed_ones(cls, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cls(**kwargs)


def test_from_dict_round_trip_and_unknown_keys():
    config = config_from_dict({"technique": "prune_palettize", "n_m_ratio": [2, 4], "nbits": 2,
                               "op_overrides": {"type:linear": {"nbits": 4}}})
    assert config.n_m_ratio == (2, 4)
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"'nbit' \(did you mean 'nbits'\?\)"):
        config_from_dict({"technique": "palettize", "nbit": 4})


def test_fast_kmeans_palettizes_like_kmeans(mnist):
    outcome = mnist.run(PalettizeConfig(mode="fast_kmeans", nbits=2), "pal_fast")
    before, after = compressed(mnist, outcome)
    for name, w in before.items():
        assert len(np.unique(after[name])) <= 4
    assert 7.0 < weights_ratio(mnist, outcome) < 8.1


# --------------------------------------------------------------------------- MobileNetV2 (slow)

def assert_int8_per_channel_error(before: dict, after: dict) -> None:
    """Per-channel symmetric int8: every value within half a step (channel max / 127)."""
    for name, w in before.items():
        scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127
        err = np.abs(after[name] - w).reshape(w.shape[0], -1).max(axis=1)
        assert np.all(err <= scale / 2 + 1e-3 * scale * 127), name


@pytest.mark.slow
def test_dog_palettize_and_quantize(dog):
    pal = dog.run(PalettizeConfig(mode="uniform", nbits=4), "pal_u4")
    assert 3.5 < weights_ratio(dog, pal) < 4.05
    q8 = dog.run(QuantizeConfig(), "q8")
    assert 1.85 < weights_ratio(dog, q8) < 2.05
    assert_int8_per_channel_error(*compressed(dog, q8))


@pytest.mark.slow
def test_dog_per_block_names_indivisible_layers_and_can_skip_them(dog):
    with pytest.raises(ConfigError, match=r"block_size=32 does not divide its 1 input channels"):
        dog.run(QuantizeConfig(dtype="int4", granularity="per_block"), "q4_block_bad")
    outcome = dog.run(QuantizeConfig(dtype="int4", granularity="per_block", skip_indivisible=True), "q4_block")
    skipped = outcome.details["skipped_ops"]
    assert any("its 1 input channels" in why for why in skipped.values())  # depthwise convs
    assert all("block_size=32 does not divide" in why for why in skipped.values())
    report = package_size(outcome.path)
    assert {w.name for w in report.weights if w.kind == "dense" and w.elements > 2048} == set(skipped)
    assert report.compressed_elements > 0.5 * report.n_weights


@pytest.mark.slow
def test_dog_prune_alone_and_then_palettized(dog):
    pruned = dog.run(PruneConfig(target_sparsity=0.5), "prune50")
    assert 1.6 < weights_ratio(dog, pruned) < 1.8  # fp16 values of half the weights + a 1-bit mask
    outcome = dog.run(PrunePalettizeConfig(target_sparsity=0.5, palettize_mode="uniform", nbits=4), "prune_pal")
    assert weights_ratio(dog, outcome) > 2.5 * weights_ratio(dog, pruned)
    before, after = compressed(dog, outcome)
    assert sum(w.size > 65504 for w in before.values()) >= 5  # where fp16 magnitude pruning used to fail
    for name, w in before.items():
        assert abs((after[name] == 0).mean() - 0.5) < 0.01
        assert len(np.unique(after[name])) <= 17  # 16 LUT values and the zeros
