"""The command line on the real sample model: info, techniques, compress, evaluate."""

import json

from compress_lab.cli import main


def test_info_json(capsys, mnist_dir):
    assert main(["info", "mnist_cnn", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"] == 390_410 and summary["input_shape"] == [1, 1, 28, 28]


def test_techniques_lists_both_families(capsys):
    assert main(["techniques", "--json"]) == 0
    rows = {r["technique"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["palettize"]["family"] == "post_training" and rows["dkm"]["family"] == "training_time"
    assert rows["dkm"]["data"] == "training"


def test_compress_then_evaluate(tmp_path, capsys, mnist_dir):
    out = tmp_path / "m.mlpackage"
    assert main(["compress", "mnist_cnn", "--technique", "palettize", "--set", "nbits=4", "--set", 'mode="uniform"',
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "bytes on disk" in captured.out and (out / "Manifest.json").is_file()
    assert "warning" not in captured.err
    assert main(["evaluate", str(out), "--data", str(mnist_dir / "val"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1000 and result["top1"] > 0.97


def test_a_compression_that_compresses_nothing_says_so_and_how_to_change_it(tmp_path, capsys):
    assert main(["compress", "mnist_cnn", "--technique", "palettize", "--set", "weight_threshold=10000000",
                 "--out", str(tmp_path / "none.mlpackage")]) == 0
    err = capsys.readouterr().err
    assert "compressed no weight of mnist_cnn" in err and "--set weight_threshold=N" in err


def test_bad_technique_and_setting_are_clear(tmp_path, capsys):
    assert main(["compress", "mnist_cnn", "--technique", "palettise", "--out", str(tmp_path / "x.mlpackage")]) == 2
    assert "did you mean 'palettize'" in capsys.readouterr().err.lower()
    assert main(["compress", "mnist_cnn", "--technique", "palettize", "--set", "nbits=5",
                 "--out", str(tmp_path / "x.mlpackage")]) == 2
    assert "nbits" in capsys.readouterr().err


def test_sensitivity_command(tmp_path, capsys, mnist_dir):
    import argparse
    from compress_lab.cli import sensitivity as sensitivity_cli
    from compress_lab.store import open_store

    assert main(["sensitivity", "mnist_cnn", "--data", str(mnist_dir / "val"), "--compression", "quantize",
                 "--max-images", "40", "--workdir", str(tmp_path / "work"), "--store", str(tmp_path / "store"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 40 and len(result["layers"]) == 4 and result["compression"] == "quantize"
    store = open_store(tmp_path / "store")
    (sweep,) = store.list_sweeps()
    assert {r.config["compression"] for r in store.list_runs(sweep.sweep_id)} == {"quantize"}
    parser = argparse.ArgumentParser()
    sensitivity_cli.add_arguments(parser)  # the option's name before the rename still works
    assert parser.parse_args(["m", "--data", "d", "--family", "prune"]).compression == "prune"
    assert main(["sensitivity", "no_such_model", "--data", str(mnist_dir / "val")]) == 2


def test_evaluate_gives_the_same_accuracy_for_the_model_and_its_fp32_conversion(tmp_path, capsys, mnist_dir):
    from compress_lab.models.convert import convert_module
    from compress_lab.models.handle import load_model

    handle = load_model("mnist_cnn")
    package = convert_module(handle.torch_copy(), handle.metadata, tmp_path / "fp32.mlpackage", precision="fp32")
    assert main(["evaluate", "mnist_cnn", "--data", str(mnist_dir / "val"), "--json"]) == 0
    torch_result = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(package), "--data", str(mnist_dir / "val"), "--reference", "mnist_cnn", "--json"]) == 0
    coreml_result = json.loads(capsys.readouterr().out)
    assert torch_result["n"] == coreml_result["n"] == 1000
    assert torch_result["top1"] == coreml_result["top1"] > 0.99
    assert coreml_result["agreement"] == 1.0


def test_evaluate_on_an_unlabelled_folder_without_a_reference_says_what_is_missing(tmp_path, capsys, mnist_dir):
    import shutil
    for image in sorted((mnist_dir / "val" / "3").iterdir())[:4]:
        shutil.copy2(image, tmp_path / image.name)
    assert main(["evaluate", "mnist_cnn", "--data", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 4
    assert "is not labelled" in captured.err and "--reference" in captured.err


def test_compress_with_a_training_time_technique_prints_a_time_estimate_first(tmp_path, capsys, mnist_dir):
    out = tmp_path / "pruned.mlpackage"
    argv = ["compress", "mnist_cnn", "--technique", "magnitude_pruning", "--set", "target_sparsity=0.5",
            "--set", "steps=4", "--set", "batch_size=16", "--train", str(mnist_dir / "train"), "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "estimated time for magnitude_pruning" in captured.err and "4,000 training images" in captured.err
    assert (out / "Manifest.json").is_file()
    assert main([*argv, "--no-estimate"]) == 0
    assert "estimated time" not in capsys.readouterr().err


def test_the_command_prints_none_of_coremltools_import_noise(tmp_path, mnist_dir):
    """Off macOS, a plain `import coremltools` prints 'Failed to load _MLModelProxy ...' and version
    warnings; the lab's commands import it quietly first, so none reaches the user's terminal."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    package = tmp_path / "m.mlpackage"
    assert main(["compress", "mnist_cnn", "--technique", "palettize", "--set", "nbits=4", "--out", str(package)]) == 0
    result = subprocess.run([str(Path(sys.executable).parent / "compress-lab"), "evaluate", str(package), "--data",
                             str(mnist_dir / "val")], capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0 and "top1" in result.stdout, result.stderr[-2000:]
    assert not any(noise in result.stderr for noise in ("Failed to load", "has not been tested", "is not supported")), \
        result.stderr[-2000:]
