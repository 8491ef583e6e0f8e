"""Per-layer sensitivity and mixed precision under a budget, on the real mnist_cnn."""

import numpy as np
import pytest

from compress_lab.analysis.compressors import simulate
from compress_lab.analysis.mixed import Budget, search_mixed
from compress_lab.analysis.sensitivity import measure_sensitivity
from compress_lab.analysis.subset import SubsetEvaluator
from compress_lab.errors import ConfigError
from compress_lab.techniques import CompressContext, config_from_dict


@pytest.fixture(scope="module")
def evaluator(mnist_handle, mnist_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    package = CompressContext(handle=mnist_handle, workdir=work).float_package("fp16")
    return SubsetEvaluator(package, mnist_dir / "val", mnist_handle.metadata, max_images=200)


def test_subset_is_deterministic_and_stratified(evaluator):
    assert len(evaluator.x) == 200
    assert set(evaluator.labels.tolist()) == set(range(10))
    assert evaluator.baseline.agreement == 1.0 and evaluator.baseline.top1 > 0.95


def test_simulation_matches_coremltools_decompression(evaluator, tmp_path):
    """The per-op simulation equals what palettize_weights + decompress_weights give for that op."""
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights
    name = "fc_layers_0_weight_to_fp16"
    original = evaluator.base.weights()[name]
    model = ct.models.MLModel(str(evaluator.base.origin), skip_model_load=True)
    config = OptimizationConfig(global_config=None, op_name_configs={name: OpPalettizerConfig(mode="uniform", nbits=4)})
    compressed = palettize_weights(model, config)
    from compress_lab.runtime import load_program
    compressed.save(str(tmp_path / "one.mlpackage"))
    real = load_program(tmp_path / "one.mlpackage").weights()
    ours = simulate(original, "palettize", {"nbits": 4, "mode": "uniform"})
    match = [v for k, v in real.items() if v.shape == original.shape and not np.array_equal(v, original)]
    assert match and np.array_equal(match[0], ours)


def test_sensitivity_one_row_per_compressible_op(evaluator, tmp_path, mnist_handle):
    result = measure_sensitivity(evaluator, "palettize", {"nbits": 1, "mode": "uniform"})
    names = [layer.name for layer in result.layers]
    assert names == sorted(["conv_layers_3_weight_to_fp16", "conv_layers_6_weight_to_fp16",
                            "fc_layers_0_weight_to_fp16", "fc_layers_2_weight_to_fp16"])
    for layer in result.layers:
        assert 0 <= layer.agreement <= 1 and layer.snr_db < 200 and layer.bits_saved > 0
        assert layer.top1_drop == pytest.approx(result.baseline_top1 - layer.top1)
    ranking = result.ranking()
    assert ranking[0].top1_drop >= ranking[-1].top1_drop
    # stored like any run
    from compress_lab.analysis.cli_sensitivity import record_sensitivity
    from compress_lab.store import open_store
    sweep_id = record_sensitivity(tmp_path / "store", mnist_handle, result)
    runs = open_store(tmp_path / "store").list_runs(sweep_id)
    assert len(runs) == 4 and all(r.state == "COMPLETE" for r in runs)


def test_mixed_search_honours_budget_and_beats_uniform(evaluator):
    budget = Budget("agreement", 0.99)
    result = search_mixed(evaluator, "palettize", budget,
                          levels=[{"nbits": 8, "mode": "uniform"}, {"nbits": 4, "mode": "uniform"},
                                  {"nbits": 2, "mode": "uniform"}, {"nbits": 1, "mode": "uniform"}])
    assert result.subset["meets_budget"] and result.subset["measured"]["agreement"] >= 0.99
    passing_uniform = [u["weight_bits"] for u in result.uniform if u["meets_budget"]]
    assert passing_uniform and result.weight_bits <= min(passing_uniform)
    config = config_from_dict(result.technique_config({"precision": "fp16"}))
    assert config.name == "palettize"
    # a mixed assignment really mixes: not every op at the same level
    if result.chosen == "mixed":
        assert len(set(result.assignment.values())) > 1


def test_budget_validation():
    with pytest.raises(ConfigError, match="fraction"):
        Budget("agreement", 99)
    with pytest.raises(ConfigError, match="top1_drop"):
        Budget("accuracy", 1)


@pytest.mark.slow
def test_run_mixed_compresses_for_real(mnist_handle, mnist_dir, tmp_path):
    from compress_lab.analysis.mixed_run import run_mixed
    out = run_mixed(mnist_handle, mnist_dir / "val", "palettize", Budget("top1_drop", 1.0), tmp_path / "mixed.mlpackage",
                    workdir=tmp_path / "work", max_images=200)
    assert (tmp_path / "mixed.mlpackage" / "Manifest.json").is_file()
    assert out["verified"]["images"] == 1000
    assert out["verified"]["bytes"] < 800_000 / 3  # well below the ~800 kB fp16 package
    assert out["verified"]["top1"] is not None and out["search"]["subset"]["meets_budget"]
