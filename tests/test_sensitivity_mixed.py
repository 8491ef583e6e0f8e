"""Per-layer sensitivity and mixed precision under a budget, on the real mnist_cnn."""

from pathlib import Path

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
    assert evaluator.count == len(evaluator.x) == 200
    assert set(evaluator.source.targets["label"].tolist()) == set(range(10))
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
    from compress_lab.analysis.sensitivity import record_sensitivity
    from compress_lab.store import open_store
    sweep_id = record_sensitivity(tmp_path / "store", mnist_handle, result)
    runs = open_store(tmp_path / "store").list_runs(sweep_id)
    assert len(runs) == 4 and all(r.state == "COMPLETE" for r in runs)


@pytest.mark.parametrize("search", ["fast", "exact"])
def test_mixed_search_honours_budget_and_beats_uniform(evaluator, search):
    budget = Budget("agreement", 0.99)
    result = search_mixed(evaluator, "palettize", budget, search=search,
                          levels=[{"nbits": 8, "mode": "uniform"}, {"nbits": 4, "mode": "uniform"},
                                  {"nbits": 2, "mode": "uniform"}, {"nbits": 1, "mode": "uniform"}])
    assert result.search == search
    assert result.subset["meets_budget"] and result.subset["measured"]["agreement"] >= 0.99
    passing_uniform = [u["weight_bits"] for u in result.uniform if u["meets_budget"]]
    assert all(result.weight_bits <= bits for bits in passing_uniform)
    if search == "exact":  # every uniform level measured
        assert passing_uniform and None not in [u["meets_budget"] for u in result.uniform]
    else:  # only the ones smaller than the answer could win; none of those measured passes
        smaller = [u for u in result.uniform if u["weight_bits"] < result.weight_bits]
        assert not any(u["meets_budget"] for u in smaller)
    config = config_from_dict(result.technique_config({"precision": "fp16"}))
    assert config.name == "palettize"
    # a mixed assignment really mixes: not every op at the same level
    if result.chosen == "mixed":
        assert len(set(result.assignment.values())) > 1


def test_budget_validation():
    with pytest.raises(ConfigError, match="fraction"):
        Budget("agreement", 99)
    with pytest.raises(ConfigError, match="top1_drop"):
        Budget("top-1", 1)
    with pytest.raises(ConfigError, match=">= 0"):
        Budget("mrr", -0.1)
    with pytest.raises(ConfigError, match="relative"):
        Budget("agreement", 0.9, relative=True)
    from compress_lab.analysis.subset import Measurement
    baseline = Measurement(top1=None, agreement=None, snr_db=200.0, values={"mae": 0.5}, higher_is_better={"mae": False})
    with pytest.raises(ConfigError, match=r"'accuracy' is not measured.*\['mae'\]"):
        Budget("accuracy", 1).check_measurable(baseline)
    with pytest.raises(ConfigError, match="class scores"):
        Budget("agreement", 0.99).check_measurable(baseline)
    # lower is better: at most 10% above the baseline's 0.5
    assert Budget("mae", 10, relative=True).met(
        Measurement(None, None, 30.0, {"mae": 0.549}, {"mae": False}), baseline)
    assert not Budget("mae", 10, relative=True).met(
        Measurement(None, None, 30.0, {"mae": 0.551}, {"mae": False}), baseline)
    assert Budget("mae", 0.05).met(Measurement(None, None, 30.0, {"mae": 0.45}, {"mae": False}), baseline)


@pytest.mark.slow
def test_run_mixed_compresses_for_real(mnist_handle, mnist_dir, tmp_path):
    from compress_lab.analysis.mixed_run import run_mixed
    out = run_mixed(mnist_handle, mnist_dir / "val", "palettize", Budget("top1_drop", 1.0), tmp_path / "mixed.mlpackage",
                    workdir=tmp_path / "work", max_images=200)
    assert (tmp_path / "mixed.mlpackage" / "Manifest.json").is_file()
    assert out["verified"]["images"] == 1000
    assert out["verified"]["bytes"] < 800_000 / 3  # well below the ~800 kB fp16 package
    assert out["verified"]["top1"] is not None and out["search"]["subset"]["meets_budget"]


def _bytes_on_disk(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


UNIFORM_LEVELS = [{"nbits": 8, "mode": "uniform"}, {"nbits": 4, "mode": "uniform"}, {"nbits": 2, "mode": "uniform"},
                  {"nbits": 1, "mode": "uniform"}]


@pytest.mark.parametrize("budget", [Budget("bytes", 150_000), Budget("bits_per_weight", 3.0)],
                         ids=["bytes", "bits_per_weight"])
def test_mixed_within_a_size_budget_is_met_by_the_real_package(budget, mnist_handle, mnist_dir, tmp_path):
    """The most accurate mix within a size budget, compressed for real: its package is within the
    budget in bytes on disk (or bits per weight of its weights file), and it is at least as good
    on the subset as the least aggressive uniform level that fits."""
    from compress_lab.analysis.mixed_run import search_config
    from compress_lab.models.size import package_size
    from compress_lab.techniques import compress

    config, result = search_config(mnist_handle, mnist_dir / "val", "palettize", budget, workdir=tmp_path / "work",
                                   max_images=200, levels=UNIFORM_LEVELS)
    out = tmp_path / "answer.mlpackage"
    compress(mnist_handle, config_from_dict(config), out, context=CompressContext(mnist_handle, tmp_path / "work"))
    size = package_size(out)
    if budget.metric == "bytes":
        assert _bytes_on_disk(out) == size.package_bytes <= budget.value
    else:
        assert size.bits_per_weight <= budget.value
    assert result.size_target["checks"] >= 1 and result.subset["meets_budget"]
    fitting_uniform = result.uniform
    assert fitting_uniform, "a uniform level fits this budget and was measured beside the mix"
    measured = result.subset["measured"]
    assert (measured["top1"], measured["agreement"]) >= (fitting_uniform[0]["top1"], fitting_uniform[0]["agreement"])
    # the single-op stage is kept: a second search on it measures only the candidates
    from compress_lab.analysis.subset import SubsetEvaluator
    evaluator = SubsetEvaluator(CompressContext(mnist_handle, tmp_path / "work").float_package("fp16"),
                                mnist_dir / "val", mnist_handle.metadata, max_images=200)
    again = search_mixed(evaluator, "palettize", budget, levels=UNIFORM_LEVELS, noise=result.noise)
    assert again.evaluations <= 2 and again.noise == result.noise


def test_size_budget_validation_and_an_impossible_budget(evaluator):
    with pytest.raises(ConfigError, match="bits per weight must be in"):
        Budget("bits_per_weight", 40)
    with pytest.raises(ConfigError, match="positive number of bytes"):
        Budget("bytes", 0)
    with pytest.raises(ConfigError, match="no assignment of these levels fits"):
        search_mixed(evaluator, "palettize", Budget("bytes", 10_000), levels=UNIFORM_LEVELS[:2])


def test_mixed_cli_size_budget_writes_a_package_within_it(mnist_dir, tmp_path, capsys):
    """`compress-lab mixed --budget-bytes` and `--budget-bits-per-weight`: the package written is
    within the budget on disk, measured on the whole (small) folder."""
    import json
    import shutil
    from compress_lab import cli
    from compress_lab.models.size import package_size
    val = tmp_path / "val"
    for class_dir in sorted((mnist_dir / "val").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            shutil.copy2(image, val / class_dir.name / image.name)
    for flag, value in (("--budget-bytes", "120000"), ("--budget-bits-per-weight", "2.5")):
        out = tmp_path / f"mixed{flag}.mlpackage"
        assert cli.main(["mixed", "mnist_cnn", "--data", str(val), "--compression", "palettize", flag, value,
                         "--out", str(out), "--workdir", str(tmp_path / "work"), "--json"]) == 0
        outcome = json.loads(capsys.readouterr().out)
        assert outcome["verified"]["meets_budget"] and outcome["verified"]["images"] == 40
        if flag == "--budget-bytes":
            assert _bytes_on_disk(out) == outcome["verified"]["bytes"] <= 120_000
        else:
            assert package_size(out).bits_per_weight <= 2.5


def test_a_second_search_reuses_the_stored_single_op_stage(mnist_handle, mnist_dir, tmp_path):
    """Same program, subset and levels: the single-op stage is read back, not measured, and the
    answer is the same; other levels (or another subset) measure it again."""
    from compress_lab.analysis.mixed_run import search_config
    kwargs = dict(workdir=tmp_path / "work", max_images=100)
    budget = Budget("agreement", 0.98)
    kwargs["search"] = "exact"
    first_config, first = search_config(mnist_handle, mnist_dir / "val", "palettize", budget, levels=UNIFORM_LEVELS,
                                        **kwargs)
    assert not first.reused_single_op and list((tmp_path / "work" / "mixed-single-op").glob("*.json"))
    again_config, again = search_config(mnist_handle, mnist_dir / "val", "palettize", budget, levels=UNIFORM_LEVELS,
                                        **kwargs)
    assert again.reused_single_op and again_config == first_config and again.noise == first.noise
    assert again.evaluations == first.evaluations - 4 * len(UNIFORM_LEVELS)  # 4 ops x 4 levels not measured
    _, other = search_config(mnist_handle, mnist_dir / "val", "palettize", budget, levels=UNIFORM_LEVELS[:3], **kwargs)
    assert not other.reused_single_op
    _, today = search_config(mnist_handle, mnist_dir / "val", "palettize", budget, levels=UNIFORM_LEVELS,
                             reuse=False, **kwargs)
    assert not today.reused_single_op and today.evaluations == first.evaluations


def test_fast_kmeans_simulation_matches_the_lab_fast_palettizer(evaluator, tmp_path):
    """mode fast_kmeans in the search simulates exactly what the lab's fast palettizer writes."""
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig
    from compress_lab.runtime import load_program
    from compress_lab.techniques.fast_palettize import fast_palettize_weights
    name = "fc_layers_0_weight_to_fp16"
    original = evaluator.base.weights()[name]
    model = ct.models.MLModel(str(evaluator.base.origin), skip_model_load=True)
    config = OptimizationConfig(global_config=None, op_name_configs={name: OpPalettizerConfig(mode="kmeans", nbits=3)})
    fast_palettize_weights(model, config).save(str(tmp_path / "one.mlpackage"))
    real = load_program(tmp_path / "one.mlpackage").weights()
    ours = simulate(original, "palettize", {"nbits": 3, "mode": "fast_kmeans"})
    match = [v for v in real.values() if v.shape == original.shape and not np.array_equal(v, original)]
    assert match and np.array_equal(match[0], ours) and len(np.unique(ours)) <= 8


def test_fast_search_is_the_default_and_meets_the_budget_on_the_real_package(mnist_handle, mnist_dir, tmp_path):
    """The default (fast) search: levels simulated with the exact k-means, one measurement per op (a few at two
    levels) on a part of the subset; its answer, compressed for real, is within the budget on the
    whole folder (the search's subset here) and smaller on disk than the float package."""
    from compress_lab.analysis.mixed_run import run_mixed
    from compress_lab.analysis.mixed import CALIBRATION_OPS
    budget = Budget("top1_drop", 1.0)
    out = run_mixed(mnist_handle, mnist_dir / "val", "palettize", budget, tmp_path / "fast.mlpackage",
                    workdir=tmp_path / "work", max_images=1000)
    search = out["search"]
    assert search["search"] == "fast" and search["subset"]["meets_budget"]
    assert all("mode" not in level for level in search["levels"])  # simulated with the exact k-means, kept as given
    assert out["config"].get("mode", "kmeans") == "kmeans"
    # every op measured alone once (calibrating ops twice) on a part of the subset, not at every level
    assert search["subset"]["single_op_images"] < search["subset"]["images"] == 1000
    assert search["subset"]["part_evaluations"] >= 4 + min(CALIBRATION_OPS, 4)
    assert search["evaluations"] - search["subset"]["part_evaluations"] < 4 * len(search["levels"])
    verified = out["verified"]
    assert verified["meets_budget"] and verified["images"] == 1000
    assert verified["top1"] >= verified["baseline_top1"] - 0.01
    assert _bytes_on_disk(tmp_path / "fast.mlpackage") == verified["bytes"]
    float_bytes = _bytes_on_disk(Path(CompressContext(mnist_handle, tmp_path / "work").float_package("fp16")))
    assert verified["bytes"] < float_bytes / 2
    # every op's noise grows with the level, as measured at the reference level
    assert all(np.all(np.diff(levels) >= 0) and levels[-1] > 0 for levels in search["noise"].values())


def test_exact_search_stays_reachable_from_the_cli(mnist_dir, tmp_path, capsys):
    """`compress-lab mixed --search exact`: today's algorithm (coremltools' k-means levels, every
    op measured alone at every level); its package is within the budget on the whole folder."""
    import json
    import shutil
    from compress_lab import cli
    val = tmp_path / "val"
    for class_dir in sorted((mnist_dir / "val").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            shutil.copy2(image, val / class_dir.name / image.name)
    out = tmp_path / "exact.mlpackage"
    assert cli.main(["mixed", "mnist_cnn", "--data", str(val), "--budget-agreement", "0.95", "--search", "exact",
                     "--out", str(out), "--workdir", str(tmp_path / "work"), "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    search = outcome["search"]
    assert search["search"] == "exact" and all("mode" not in level for level in search["levels"])
    assert outcome["config"].get("mode", "kmeans") == "kmeans"
    assert search["subset"]["part_evaluations"] == 0
    assert search["evaluations"] >= 4 * len(search["levels"])  # 4 ops x every level, then the search itself
    assert outcome["verified"]["meets_budget"] and _bytes_on_disk(out) == outcome["verified"]["bytes"]


def test_search_option_validation():
    from compress_lab.analysis.mixed import search_levels
    with pytest.raises(ConfigError, match="'fast'.*'exact'"):
        search_mixed(None, "palettize", Budget("agreement", 0.99), search="quick")
    assert [l["mode"] for l in search_levels("palettize", None, "fast")] == ["fast_kmeans"] * 6
    assert all("mode" not in l for l in search_levels("palettize", None, "exact"))
    assert search_levels("palettize", UNIFORM_LEVELS, "fast") == UNIFORM_LEVELS  # only k-means levels change


def test_a_part_of_the_subset_measures_like_the_subset(evaluator):
    part = evaluator.part(50)
    assert part.count == 50 and evaluator.count == 200 and part.base is evaluator.base
    assert part.baseline.agreement == 1.0 and part.evaluations == 0
    name = "fc_layers_0_weight_to_fp16"
    weight = simulate(evaluator.base.weights()[name], "palettize", {"nbits": 1, "mode": "uniform"})
    assert part.measure({name: weight}).snr_db < 100 and part.evaluations == 1  # 1-bit: far from the float outputs
    assert evaluator.part(500) is evaluator


def test_batches_are_sized_to_the_samples_and_measure_the_same(mnist_handle, mnist_dir, evaluator):
    """Large inputs run in small batches (a 224x224 RGB image: 8 at a time), small ones in large
    ones; the batch changes how fast the subset runs, not what it measures."""
    from compress_lab.analysis.subset import batch_size_for
    assert batch_size_for({"image": np.zeros((1, 3, 224, 224), np.float32)}) == 8
    assert batch_size_for({"image": np.zeros((1, 1, 28, 28), np.float32)}) == 128 == evaluator.batch_size
    assert batch_size_for({"ids": np.zeros((1, 16), np.int32), "mask": np.zeros((1, 16), np.int32)}) == 128
    small = SubsetEvaluator(evaluator.base.origin, mnist_dir / "val", mnist_handle.metadata, max_images=200, batch_size=7)
    name = "fc_layers_0_weight_to_fp16"
    weight = simulate(evaluator.base.weights()[name], "palettize", {"nbits": 1, "mode": "uniform"})
    ours, theirs = small.measure({name: weight}), evaluator.measure({name: weight})
    assert small.batch_size == 7 and ours.agreement == theirs.agreement < 1 and ours.top1 == theirs.top1
    assert ours.snr_db == pytest.approx(theirs.snr_db, abs=1e-3)


def test_fragile_samples_come_first_and_a_part_can_break_an_agreement_budget(evaluator):
    order = evaluator.fragile_order()
    scores = np.sort(np.asarray(next(iter(evaluator.reference.values()))), axis=1)
    margins = scores[:, -1] - scores[:, -2]
    assert sorted(order) == list(range(200)) and np.all(np.diff(margins[order]) >= 0)
    fragile = evaluator.samples(order[:8])
    assert fragile.count == 8 and fragile.baseline.agreement == 1.0
    name = "fc_layers_0_weight_to_fp16"
    broken = fragile.measure({name: simulate(evaluator.base.weights()[name], "palettize", {"nbits": 1, "mode": "uniform"})})
    flips = round((1 - broken.agreement) * 8)
    assert flips >= 1  # 1-bit weights flip the samples held by the smallest margins
    # 200 samples at agreement >= 0.99 allow 2 disagreements: more on the part breaks it whatever the rest does
    assert Budget("agreement", 0.99).fails_on_part(broken, 8, 200) == (flips > 2)
    assert Budget("agreement", 0.999).fails_on_part(broken, 8, 200)
    assert not Budget("agreement", 0.9).fails_on_part(broken, 8, 200) or flips > 20
    assert not Budget("top1_drop", 0.0).fails_on_part(broken, 8, 200)  # the other samples can make up top-1


def test_fast_search_screens_trials_on_fragile_samples_and_measures_what_the_package_holds(
        mnist_handle, mnist_dir, tmp_path):
    """Under an agreement budget the fast search runs its trials on the 8 most fragile samples
    first; its measurement of the answer on the subset (here the whole folder) is the real
    package's, since the subset runs the weights as coremltools compresses them."""
    import shutil
    from compress_lab.analysis.mixed import FRAGILE_SAMPLES
    from compress_lab.analysis.mixed_run import run_mixed
    val = tmp_path / "val"
    for class_dir in sorted((mnist_dir / "val").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:30]:
            shutil.copy2(image, val / class_dir.name / image.name)
    budget = Budget("agreement", 0.995)
    out = run_mixed(mnist_handle, val, "palettize", budget, tmp_path / "fast.mlpackage",
                    workdir=tmp_path / "work", max_images=1000)
    search, verified = out["search"], out["verified"]
    assert search["search"] == "fast" and search["subset"]["fragile_samples"] == FRAGILE_SAMPLES
    assert search["subset"]["real_variants"] > 0  # the levels as given, compressed by coremltools
    assert verified["images"] == search["subset"]["images"] == 300
    assert verified["meets_budget"] and search["subset"]["measured"]["agreement"] == verified["agreement"] >= 0.995
    assert out["config"].get("mode", "kmeans") == "kmeans" and _bytes_on_disk(tmp_path / "fast.mlpackage") == verified["bytes"]
