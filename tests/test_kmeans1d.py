"""Exact 1-D k-means, palettize_array's layout, and fast_palettize_weights vs coremltools."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_lab.errors import ConfigError
from compress_lab.techniques.fast_palettize import fast_palettize_weights
from compress_lab.techniques.kmeans1d import dense_from_lut, optimal_kmeans_1d, palettize_array, palettize_flat

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "mnist_cnn"


def brute_force_sse(x: np.ndarray, w: np.ndarray, k: int) -> float:
    """Minimum weighted SSE over every split of sorted x into k contiguous non-empty runs."""
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        bounds = (0, *cuts, len(x))
        sse = 0.0
        for a, b in zip(bounds[:-1], bounds[1:]):
            mean = np.average(x[a:b], weights=w[a:b])
            sse += float((w[a:b] * (x[a:b] - mean) ** 2).sum())
        best = min(best, sse)
    return best


def sse(x, w, centres, assignment) -> float:
    return float((w * (x - centres[assignment]) ** 2).sum())


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_matches_exhaustive_optimum(k):
    rng = np.random.default_rng(k)
    for _ in range(60):
        n = int(rng.integers(k, 10))
        x = np.unique(np.round(rng.standard_normal(n) * rng.choice([1, 10, 1e-3]), 4))
        w = rng.uniform(0.05, 5.0, len(x))
        if len(x) < k:
            continue
        perm = rng.permutation(len(x))  # input order must not matter
        centres, assignment = optimal_kmeans_1d(x[perm], w[perm], k)
        assert len(centres) == k and np.all(np.diff(centres) > 0)
        got = sse(x[perm], w[perm], centres, assignment)
        assert got <= brute_force_sse(x, w, k) * (1 + 1e-9) + 1e-12
        # each value sits with its nearest centre, clusters are contiguous
        assert np.all(np.diff(assignment[np.argsort(x[perm])]) >= 0)


def test_ties_on_an_integer_grid_still_reach_the_optimum():
    rng = np.random.default_rng(7)
    for _ in range(80):
        x = np.unique(rng.integers(0, 12, 9)).astype(float)
        w = rng.integers(1, 3, len(x)).astype(float)
        for k in range(1, min(4, len(x)) + 1):
            centres, assignment = optimal_kmeans_1d(x, w, k)
            assert sse(x, w, centres, assignment) <= brute_force_sse(x, w, k) + 1e-9


def test_matches_coremltools_bundled_exact_solver_on_a_large_histogram(real_weights, k=32):
    from coremltools._deps import kmeans1d as bundled

    w = sorted(real_weights.values(), key=np.size)[-2].astype(np.float16).astype(np.float64).ravel()
    x, counts = np.unique(w, return_counts=True)
    centres, assignment = optimal_kmeans_1d(x, counts.astype(float), k)
    ref = bundled.cluster(x, k, weights=counts.astype(float))
    ref_sse = sse(x, counts, np.asarray(ref.centroids), np.asarray(ref.clusters))
    assert sse(x, counts, centres, assignment) <= ref_sse * (1 + 1e-9)


def test_duplicates_are_merged_and_few_values_keep_zero_error():
    centres, assignment = optimal_kmeans_1d([3.0, 1.0, 3.0, 2.0], None, 4)
    np.testing.assert_array_equal(centres, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(centres[assignment], [3.0, 1.0, 3.0, 2.0])


@pytest.mark.parametrize("values,weights,k,message", [
    ([], None, 2, "at least one value"),
    ([1.0, 2.0], [1.0], 2, "one weight per value"),
    ([1.0, 2.0], [1.0, 0.0], 2, "> 0"),
    ([1.0, np.nan], None, 2, "finite"),
    ([1.0, 2.0], None, 0, "positive integer"),
])
def test_bad_input_is_rejected_with_a_reason(values, weights, k, message):
    with pytest.raises(ConfigError, match=message):
        optimal_kmeans_1d(values, weights, k)


def test_palettize_array_rejects_bad_settings():
    w = np.zeros((6, 4), np.float32)
    with pytest.raises(ConfigError, match="nbits 5"):
        palettize_array(w, 5)
    with pytest.raises(ConfigError, match="group_size 4 must divide the 6"):
        palettize_array(w, 2, "per_grouped_channel", group_size=4)
    with pytest.raises(ConfigError, match="granularity"):
        palettize_array(w, 2, "per_block")


@pytest.fixture(scope="module")
def real_weights() -> dict[str, np.ndarray]:
    """Conv/linear weights of the trained MNIST sample (random-init conv if not built)."""
    if (SAMPLE / "weights.pt").exists():
        state = torch.load(SAMPLE / "weights.pt", map_location="cpu", weights_only=True)
        return {name: t.numpy() for name, t in state.items() if t.ndim >= 2}
    conv = torch.nn.Conv2d(64, 128, 3)
    return {"conv.weight": conv.weight.detach().numpy()}


def coremltools_kmeans(w: np.ndarray, nbits: int, group_size: int = 0):
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as pass_
    return pass_.grouped_channelwise_compress(w, "KMEANS", nbits, 0, group_size)


@pytest.mark.parametrize("dtype,nbits,group_size", [
    (np.float16, 2, 0), (np.float16, 4, 16), (np.float16, 6, 0), (np.float32, 4, 0), (np.float32, 2, 16)])
def test_never_worse_than_coremltools_kmeans_on_real_layers(real_weights, dtype, nbits, group_size):
    from coremltools.optimize import _utils as optimize_utils

    for name, w in real_weights.items():
        w = w.astype(dtype)
        if w.size < 2048 or (group_size and w.shape[0] % group_size):
            continue
        granularity = "per_grouped_channel" if group_size else "per_tensor"
        lut, indices = palettize_array(w, nbits, granularity, group_size=group_size or 32)
        ref = coremltools_kmeans(w, nbits, group_size)
        assert lut.shape == ref.lut.shape and lut.dtype == ref.lut.dtype
        assert indices.shape == ref.indices.shape and int(indices.max()) < 2 ** nbits
        ours = dense_from_lut(lut, indices)
        np.testing.assert_array_equal(ours, optimize_utils.lut_to_dense(indices, lut, None))
        theirs = optimize_utils.lut_to_dense(ref.indices, ref.lut, None)
        err = np.mean((ours.astype(np.float64) - w) ** 2)
        ref_err = np.mean((theirs.astype(np.float64) - w) ** 2)
        assert err <= ref_err * (1 + 1e-6), f"{name} {dtype.__name__} {nbits}-bit: {err} > {ref_err}"


def test_grouped_luts_follow_the_channel_axis():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8, 5)).astype(np.float32)
    w[:, :4] += 100.0  # channels 0-3 on axis 1 live far from channels 4-7
    lut, indices = palettize_array(w, 1, "per_grouped_channel", group_size=4, channel_axis=1)
    assert lut.shape == (1, 2, 1, 2, 1) and indices.shape == w.shape
    assert lut[0, 0].min() > 90 and lut[0, 1].max() < 10
    dense = dense_from_lut(lut, indices)
    assert np.abs(dense - w).max() < 5


def test_palettize_flat_handles_few_distinct_values_and_ints():
    lut, idx = palettize_flat(np.array([5, -3, 5, 7, -3], np.int32), 2)
    assert lut.dtype == np.int32 and len(lut) == 4
    np.testing.assert_array_equal(lut[idx], [5, -3, 5, 7, -3])


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory):
    import coremltools as ct
    from compress_lab.models.convert import convert_module
    from compress_lab.models.metadata import ModelMetadata, Preprocessing

    if (SAMPLE / "weights.pt").exists():
        from compress_lab.models import load_model
        handle = load_model(str(SAMPLE))
        module, metadata = handle.torch_copy(), handle.metadata
    else:
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3),
                                     torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64 * 24 * 24, 16))
        metadata = ModelMetadata(name="tiny", input_shape=(1, 28, 28), class_names=[str(i) for i in range(16)],
                                 preprocessing=Preprocessing(color="L"))
    path = convert_module(module, metadata, tmp_path_factory.mktemp("m") / "m.mlpackage", precision="fp16")
    return ct.models.MLModel(str(path), skip_model_load=True)


def weights_by_name(mlmodel) -> dict[str, np.ndarray]:
    import coremltools as ct
    meta = ct.optimize.coreml.get_weights_metadata(mlmodel, weight_threshold=0)
    return {name.removesuffix("_palettized"): m.val.astype(np.float64) for name, m in meta.items()}


def op_types(mlmodel) -> list[str]:
    program = mlmodel.get_spec().mlProgram
    return [op.type for f in program.functions.values() for b in f.block_specializations.values() for op in b.operations]


def package_size(mlmodel, path: Path) -> int:
    mlmodel.save(str(path))
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("granularity,nbits", [("per_tensor", 4), ("per_grouped_channel", 2)])
def test_model_matches_coremltools_package_with_lower_error(fp16_model, tmp_path, granularity, nbits):
    import coremltools as ct

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    op_config = ct.optimize.coreml.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity=granularity, group_size=16)
    config = ct.optimize.coreml.OptimizationConfig(global_config=op_config)
    before = op_types(fp16_model)
    ours = fast_palettize_weights(fp16_model, config)
    theirs = ct.optimize.coreml.palettize_weights(fp16_model, config)
    assert op_types(fp16_model) == before  # input untouched
    assert op_types(ours) == op_types(theirs) and "constexpr_lut_to_dense" in op_types(ours)
    assert package_size(ours, tmp_path / "a.mlpackage") == package_size(theirs, tmp_path / "b.mlpackage")

    original = weights_by_name(fp16_model)
    mine = weights_by_name(ct.optimize.coreml.decompress_weights(ours))
    ref = weights_by_name(ct.optimize.coreml.decompress_weights(theirs))
    compressed = 0
    for name, value in original.items():
        if np.array_equal(ref[name], value):
            np.testing.assert_array_equal(mine[name], value)  # skipped by both
            continue
        compressed += 1
        err, ref_err = np.mean((mine[name] - value) ** 2), np.mean((ref[name] - value) ** 2)
        assert err <= ref_err * (1 + 1e-6), f"{name}: {err} > {ref_err}"
    assert compressed >= 2


def test_direct_serialisation_equals_the_full_coremltools_route(fp16_model, tmp_path):
    import coremltools as ct

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpPalettizerConfig(mode="kmeans", nbits=3))
    fast = fast_palettize_weights(fp16_model, config)
    full = fast_palettize_weights(fp16_model, config, rerun_default_pipeline=True)
    fast.save(str(tmp_path / "fast.mlpackage"))
    full.save(str(tmp_path / "full.mlpackage"))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.name != "Manifest.json"}  # the manifest holds random item ids
    assert files(tmp_path / "fast.mlpackage") == files(tmp_path / "full.mlpackage")


def test_model_honours_op_name_overrides_and_skips(fp16_model):
    import coremltools as ct

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    names = [n for n, m in ct.optimize.coreml.get_weights_metadata(fp16_model, weight_threshold=2048).items()]
    skipped, two_bit = names[0], names[1]
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpPalettizerConfig(mode="kmeans", nbits=4),
        op_name_configs={skipped: None, two_bit: ct.optimize.coreml.OpPalettizerConfig(mode="kmeans", nbits=2)},
    )
    out = ct.optimize.coreml.decompress_weights(fast_palettize_weights(fp16_model, config))
    after = weights_by_name(out)
    assert np.array_equal(after[skipped], weights_by_name(fp16_model)[skipped])
    assert len(np.unique(after[two_bit])) <= 4
    others = [n for n in names if n not in (skipped, two_bit)]
    assert others and all(4 < len(np.unique(after[n])) <= 16 for n in others)


def test_model_rejects_a_config_of_the_wrong_kind(fp16_model):
    import coremltools as ct

    config = ct.optimize.coreml.OptimizationConfig(global_config=ct.optimize.coreml.OpLinearQuantizerConfig())
    with pytest.raises(ConfigError, match="OpPalettizerConfig"):
        fast_palettize_weights(fp16_model, config)
