"""The chosen assignment exported as a coremltools OptimizationConfig (dict / YAML with
op_name_configs), applied with coremltools directly: the same package bytes as the lab's."""

from __future__ import annotations

import pytest

from compress_lab.analysis.coreml_config import optimization_config_dict, to_yaml, write_config
from compress_lab.errors import ConfigError
from compress_lab.techniques import CompressContext, compress, config_from_dict

# a mixed assignment as the search writes it: a global level, one op at another level, one left alone
MIXED = {"technique": "palettize", "precision": "fp16", "nbits": 4, "mode": "kmeans",
         "op_overrides": {"conv_layers_3_weight_to_fp16": {"nbits": 6}, "fc_layers_2_weight_to_fp16": "skip",
                          "fc_layers_0_weight_to_fp16": {"nbits": 2}}}


def _files(package):
    return {p.relative_to(package).as_posix(): p.read_bytes() for p in sorted(package.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("as_yaml", [False, True], ids=["dict", "yaml"])
def test_exported_config_applied_with_coremltools_gives_the_same_package(mnist_handle, tmp_path, as_yaml):
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from compress_lab.models.convert import save_mlmodel

    ctx = CompressContext(handle=mnist_handle, workdir=tmp_path / "work")
    outcome = compress(mnist_handle, config_from_dict(MIXED), tmp_path / "lab.mlpackage", context=ctx)
    exported = optimization_config_dict(outcome.details)
    assert exported["config_type"] == "OpPalettizerConfig" and exported["global_config"]["nbits"] == 4
    assert None in exported["op_name_configs"].values()  # the skipped op
    assert {c["nbits"] for c in exported["op_name_configs"].values() if c} == {6, 2}

    if as_yaml:
        path = write_config(exported, tmp_path / "mixed.yaml")
        config = cto.OptimizationConfig.from_yaml(str(path))
    else:
        config = cto.OptimizationConfig.from_dict(exported)
    float_model = ct.models.MLModel(str(ctx.float_package("fp16")), skip_model_load=True)
    theirs = cto.palettize_weights(float_model, config)
    save_mlmodel(theirs, tmp_path / "theirs.mlpackage")
    ours, other = _files(tmp_path / "lab.mlpackage"), _files(tmp_path / "theirs.mlpackage")
    assert set(ours) == set(other) and "Data/com.apple.CoreML/weights/weight.bin" in ours
    # every file byte for byte (weights and the program spec), but the manifest's random item ids
    assert all(ours[k] == other[k] for k in ours if k != "Manifest.json")
    assert sum(map(len, ours.values())) == sum(map(len, other.values()))  # the same bytes on disk


def test_yaml_is_plain_and_multi_step_runs_are_refused():
    text = to_yaml({"config_type": "OpPalettizerConfig", "global_config": {"nbits": 4}, "op_name_configs": {"a": None}})
    assert "config_type: OpPalettizerConfig" in text and "a: null" in text
    with pytest.raises(ConfigError, match="one compression step"):
        optimization_config_dict({"steps": [{"kind": "prune"}, {"kind": "palettize"}]})


@pytest.mark.slow
def test_mixed_cli_exports_the_config_it_chose(mnist_dir, tmp_path, capsys):
    """`compress-lab mixed ... --export-config mixed.yaml`: the YAML, applied with coremltools to the
    lab's float package, gives the package `mixed` wrote, byte for byte but the manifest."""
    import json
    import shutil

    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from compress_lab import cli
    from compress_lab.models.convert import save_mlmodel
    from compress_lab.models import load_model
    val = tmp_path / "val"
    for class_dir in sorted((mnist_dir / "val").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            shutil.copy2(image, val / class_dir.name / image.name)
    out, yaml_path = tmp_path / "mixed.mlpackage", tmp_path / "mixed.yaml"
    assert cli.main(["mixed", "mnist_cnn", "--data", str(val), "--budget-bits-per-weight", "3", "--out", str(out),
                     "--workdir", str(tmp_path / "work"), "--export-config", str(yaml_path), "--json"]) == 0
    captured = capsys.readouterr()
    outcome = json.loads(captured.out)
    assert "OptimizationConfig.from_yaml" in captured.err and "palettize_weights" in captured.err
    handle = load_model("mnist_cnn")
    float_package = CompressContext(handle=handle, workdir=tmp_path / "work").float_package("fp16")
    theirs = cto.palettize_weights(ct.models.MLModel(str(float_package), skip_model_load=True),
                                   cto.OptimizationConfig.from_yaml(str(yaml_path)))
    save_mlmodel(theirs, tmp_path / "theirs.mlpackage")
    ours, other = _files(out), _files(tmp_path / "theirs.mlpackage")
    assert set(ours) == set(other) and all(ours[k] == other[k] for k in ours if k != "Manifest.json")
    assert outcome["coreml_config"]["config_type"] == "OpPalettizerConfig"
