"""Size accounting measured on real packages of the MNIST sample model."""

from __future__ import annotations

import json

import pytest

from compress_lab.errors import ModelLoadError
from compress_lab.models import load_model
from compress_lab.models.size import compare, package_size
from compress_lab.techniques import CompressContext, compress
from compress_lab.techniques.joint import PrunePalettizeConfig
from compress_lab.techniques.palettize import PalettizeConfig
from compress_lab.techniques.quantize import QuantizeConfig


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("size")
    handle = load_model("mnist_cnn")
    ctx = CompressContext(handle=handle, workdir=root / "work")

    def run(config, label):
        return compress(handle, config, root / f"{label}.mlpackage", context=ctx).path

    return handle, ctx, run


def test_float_packages_store_16_and_32_bits_per_weight(lab):
    handle, ctx, _ = lab
    fp16, fp32 = package_size(ctx.float_package("fp16")), package_size(ctx.float_package("fp32"))
    assert fp16.n_weights == fp32.n_weights == handle.parameter_count()
    assert 16.0 <= fp16.bits_per_weight < 16.1
    assert 32.0 <= fp32.bits_per_weight < 32.1
    assert fp16.package_bytes > fp16.weights_bytes > 0
    assert {w.kind for w in fp16.weights} == {"dense"}
    assert sum(w.stored_bytes for w in fp16.weights) == 2 * fp16.n_weights
    ratios = compare(fp16, baseline_fp16=fp16, baseline_fp32=fp32)
    assert ratios["weights_vs_fp16"] == 1.0
    assert 1.99 < ratios["weights_vs_fp32"] < 2.01
    assert 1.9 < ratios["package_vs_fp32"] < 2.01


def test_per_op_rows_describe_each_compression(lab):
    handle, ctx, run = lab
    fp16 = package_size(ctx.float_package("fp16"))
    palettized = package_size(run(PalettizeConfig(mode="uniform", nbits=4), "pal4"))
    assert palettized.n_weights == fp16.n_weights  # dense shapes are unchanged
    fc0 = next(w for w in palettized.weights if w.shape == (256, 1152))
    assert (fc0.kind, fc0.op_type, fc0.elements) == ("palettized", "linear", 294912)
    assert fc0.stored_bytes == 294912 // 2 + 16 * 2  # 4-bit indices + 16 fp16 LUT entries
    small = [w for w in palettized.weights if w.elements <= 2048]
    assert small and all(w.kind == "dense" for w in small)  # under weight_threshold
    # rows add up to the weights file, up to per-blob headers and alignment
    stored = sum(w.stored_bytes for w in palettized.weights)
    assert stored <= palettized.weights_bytes < stored + 64 * 2 * len(palettized.weights) + 64
    assert 3.9 < compare(palettized, fp16)["weights_vs_fp16"] < 4.05
    assert 4.0 < palettized.bits_per_weight < 4.2

    joint = package_size(run(PrunePalettizeConfig(palettize_mode="uniform", nbits=2), "prune_pal"))
    kinds = joint.by_kind()
    assert kinds["sparse+palettized"]["tensors"] == 4
    assert kinds["sparse+palettized"]["elements"] == joint.compressed_elements
    # 1-bit mask + 2-bit indices of the half that is kept: 2 bits per weight
    row = next(w for w in joint.weights if w.shape == (256, 1152))
    assert 1.95 < row.bits_per_weight < 2.05

    quantized = package_size(run(QuantizeConfig(dtype="int4", granularity="per_block", block_size=32), "q4"))
    row = next(w for w in quantized.weights if w.shape == (256, 1152))
    # 4-bit values + one fp16 scale per 32 weights
    assert row.kind == "quantized" and row.stored_bytes == 294912 // 2 + 294912 // 32 * 2


def test_to_dict_is_plain_json(lab):
    _, ctx, _ = lab
    data = json.loads(json.dumps(package_size(ctx.float_package("fp16")).to_dict()))
    assert data["n_weights"] == sum(w["elements"] for w in data["weights"])
    assert data["by_kind"]["dense"]["tensors"] == len(data["weights"])
    assert {"name", "used_by", "op_type", "shape", "stored_bytes", "kind", "bits_per_weight"} <= set(data["weights"][0])


def test_not_a_package_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a Core ML package"):
        package_size(tmp_path)
