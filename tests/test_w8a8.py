"""Post-training activation quantization (W8A8): the config, the package on disk (its MIL
program holds quantize / dequantize ops and compressed weights), its accuracy through
the lab's runtime, where its calibration data comes from, and a sweep containing it."""

from __future__ import annotations

import shutil
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from compress_lab.errors import ConfigError
from compress_lab.techniques import REGISTRY, CompressContext, DataNeed, compress, config_from_dict

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
WEIGHT_OPS = {"int8": "constexpr_blockwise_shift_scale", "int4": "constexpr_blockwise_shift_scale",
              "palettize": "constexpr_lut_to_dense"}


def small_val(folder: Path, per_class: int = 6) -> Path:
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(image, folder / class_dir.name / image.name)
    return folder


def op_types(package: Path) -> Counter:
    """The op types of the package's MIL program, read from the file."""
    import coremltools as ct
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    function = spec.mlProgram.functions["main"]
    return Counter(op.type for op in function.block_specializations[function.opset].operations)


# --------------------------------------------------------------------------- config

def test_registered_as_post_training_with_calibration_data_and_the_chip_note():
    cls = REGISTRY.config_class("w8a8")
    assert cls.family == "post_training" and cls.data_need is DataNeed.CALIBRATION
    text = cls.summary + (cls.__doc__ or "")
    assert "A17 Pro" in text and "M4" in text and "Neural Engine" in text and "device" in text
    config = config_from_dict({"technique": "w8a8"})
    assert (config.weights, config.precision, config.calibration, config.calibration_samples) == \
        ("int8", "fp16", "validation", 128)
    assert config.label() == "w8a8 weights=int8"
    assert config_from_dict(config.to_dict()) == config
    assert not config.train_folder_needed() and config.extra_data_folder() is None
    assert config_from_dict({"technique": "w8a8", "calibration": "train"}).train_folder_needed()
    assert config_from_dict({"technique": "w8a8", "calibration": "/data/cal"}).extra_data_folder() == "/data/cal"


@pytest.mark.parametrize("settings, match", [
    ({"precision": "fp32"}, "precision"),
    ({"weights": "int2"}, "weights"),
    ({"nbits": 4}, "nbits=4 applies to weights 'palettize' only"),
    ({"weights": "palettize", "block_size": 32}, "block_size"),
    ({"weights": "palettize", "nbits": 5}, "nbits"),
    ({"granularity": "per_grouped_channel"}, "granularity"),
    ({"block_size": 16}, "block_size"),
    ({"calibration_samples": 0}, "calibration_samples"),
    ({"calibration": ""}, "calibration"),
    ({"activation_dtype": "int4"}, "activation_dtype"),
    ({"op_overrides": {"type:conv": {"calibration": "train"}}}, "unknown setting"),
])
def test_bad_settings_are_refused_naming_the_setting(settings, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"technique": "w8a8", **settings})


# --------------------------------------------------------------------------- the package

@pytest.fixture(scope="module")
def packages(tmp_path_factory, mnist_handle):
    """One package per weight form, calibrated on a small copy of the validation folder."""
    folder = tmp_path_factory.mktemp("w8a8")
    val = small_val(folder / "val")
    out = {}
    for weights in ("int8", "int4", "palettize"):
        ctx = CompressContext(handle=mnist_handle, workdir=folder / "work", validation_dir=val)
        config = config_from_dict({"technique": "w8a8", "weights": weights, "calibration_samples": 40})
        out[weights] = compress(mnist_handle, config, folder / f"{weights}.mlpackage", context=ctx)
    out["float"] = ctx.float_package("fp16")
    out["val"] = val
    return out


@pytest.mark.parametrize("weights", ["int8", "int4", "palettize"])
def test_the_package_holds_activation_quantize_dequantize_ops_and_compressed_weights(packages, weights):
    outcome = packages[weights]
    ops = op_types(outcome.path)
    assert ops["quantize"] >= 4 and ops["dequantize"] >= 4, ops   # mnist_cnn: 2 convs, 2 linears (+ pools)
    assert ops[WEIGHT_OPS[weights]] >= 3, ops
    assert op_types(packages["float"])["quantize"] == 0
    assert outcome.details["activations"]["calibration_samples"] == 40
    assert outcome.details["activations"]["calibration_folder"] == str(packages["val"])
    assert outcome.timings["calibrate_s"] > 0


def test_evaluated_through_the_runtime_it_stays_accurate_and_differs_from_the_float_model(packages):
    from compress_lab.evaluate import evaluate_model
    from compress_lab.models.size import package_size
    from compress_lab.runtime import load_program

    val = packages["val"]
    float_result = evaluate_model(packages["float"], val).to_dict()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    float_out = load_program(packages["float"]).predict(x)
    sizes = {}
    for weights in ("int8", "int4", "palettize"):
        path = packages[weights].path
        result = evaluate_model(path, val).to_dict()
        assert result["n"] == 60 and result["top1"] >= float_result["top1"] - 0.05, (weights, result["top1"])
        assert np.abs(load_program(path).predict(x) - float_out).max() > 0, weights
        sizes[weights] = package_size(path).weights_bytes
    assert sizes["int4"] < sizes["int8"] and sizes["palettize"] < sizes["int8"]


def test_calibration_source_is_the_validation_folder_the_training_folder_or_a_given_one(tmp_path, mnist_handle):
    val = small_val(tmp_path / "val", per_class=2)
    other = small_val(tmp_path / "other", per_class=1)
    config = config_from_dict({"technique": "w8a8", "calibration": "validation", "calibration_samples": 8})
    with pytest.raises(ConfigError, match="calibration='validation' needs the validation folder"):
        compress(mnist_handle, config, tmp_path / "a.mlpackage", workdir=tmp_path / "work")
    with pytest.raises(ConfigError, match="needs calibration data; give a training"):
        compress(mnist_handle, config_from_dict({"technique": "w8a8", "calibration": "train"}), tmp_path / "a.mlpackage",
                 workdir=tmp_path / "work", validation_dir=val)
    with pytest.raises(ConfigError, match="is not a folder"):
        compress(mnist_handle, config_from_dict({"technique": "w8a8", "calibration": str(tmp_path / "nope")}),
                 tmp_path / "a.mlpackage", workdir=tmp_path / "work", validation_dir=val)
    outcome = compress(mnist_handle, config_from_dict({"technique": "w8a8", "calibration": str(other),
                                                       "calibration_samples": 100}),
                       tmp_path / "b.mlpackage", workdir=tmp_path / "work", validation_dir=val)
    assert outcome.details["activations"] == {"dtype": "int8", "mode": "linear_symmetric",
                                              "calibration_folder": str(other), "calibration_samples": 10}
    outcome = compress(mnist_handle, config_from_dict({"technique": "w8a8", "calibration": "train", "calibration_samples": 5}),
                       tmp_path / "c.mlpackage", workdir=tmp_path / "work", train_dir=other)
    assert outcome.details["activations"]["calibration_folder"] == str(other)


# --------------------------------------------------------------------------- in a sweep

def test_a_sweep_with_w8a8_records_its_metrics_and_sizes(tmp_path, mnist_dir):
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec

    small_val(tmp_path / "val", per_class=5)
    spec = tmp_path / "w8a8.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{mnist_dir}"
        [data]
        validation = "val"
        [run]
        name = "w8a8"
        workers = 1
        [[grid]]
        technique = "w8a8"
        weights = ["int8", "int4"]
        calibration_samples = 20
    """))
    result = run_sweep(load_spec(spec), tmp_path / "store")
    runs = {r.label: r for r in result.runs}
    assert result.status == "done", {label: r.error for label, r in runs.items()}
    int8, int4 = runs["w8a8 weights=int8 calibration_samples=20"], runs["w8a8 weights=int4 calibration_samples=20"]
    for run in (int8, int4):
        label = run.label
        assert run.state == "COMPLETE", (label, run.error)
        assert run.family == "post_training"
        assert run.metrics["n"] == 50 and run.metrics["top1"] >= 0.9 and run.metrics["agreement"] >= 0.9
        assert run.metrics["snr_db"] > 10 and run.timings["calibrate_s"] > 0
        assert op_types(tmp_path / "store" / run.artifact_path)["quantize"] >= 4
    assert int4.sizes["bytes"] < int8.sizes["bytes"]
    assert 1.7 < int8.sizes["ratio_fp16"] < 2.2
