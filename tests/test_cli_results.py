"""`compress-lab results` and `compress-lab export` on a real sweep of the sample MNIST model."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from compress_lab import cli
from compress_lab.export import find_mlpackage
from compress_lab.store import open_store

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results_cli")
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        (folder / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            shutil.copy2(image, folder / "val" / class_dir.name / image.name)
    (folder / "spec.toml").write_text(textwrap.dedent(f"""
        [model]
        source = "{SAMPLES / 'mnist_cnn'}"
        [data]
        validation = "val"
        [run]
        name = "cli"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = 4
        [[grid]]
        technique = "prune"
        target_sparsity = 0.5
    """))
    assert cli.main(["sweep", str(folder / "spec.toml"), "--quiet"]) == 0
    store_folder = folder / ".lab" / "cli"
    store = open_store(store_folder)
    runs = {r.label: r for r in store.list_runs(store.list_sweeps()[0].sweep_id)}
    return folder, store_folder, runs


def test_results_json_has_one_row_per_run_with_the_documented_columns(swept, capsys):
    _, store_folder, runs = swept
    assert cli.main(["results", "--store", str(store_folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["columns"]) >= {"run_id", "workflow", "technique", "config", "status", "top1", "top5", "agreement",
                                    "size_bytes", "compression_ratio", "seconds", "error", "artifact"}
    rows = {r["run_id"]: r for r in data["runs"]}
    assert set(rows) == {r.run_id for r in runs.values()}
    p4 = rows[runs["palettize nbits=4"].run_id]
    assert p4["workflow"] == "post_training" and p4["status"] == "COMPLETE" and p4["config"]["nbits"] == 4
    assert p4["top1"] == runs["palettize nbits=4"].metrics["top1"]
    assert p4["size_bytes"] == runs["palettize nbits=4"].sizes["bytes"] > 0
    assert p4["compression_ratio"] == pytest.approx(runs["palettize nbits=4"].sizes["ratio_fp16"]) and p4["compression_ratio"] > 3
    assert (Path(p4["artifact"]) / "Manifest.json").is_file()
    assert {r["workflow"] for r in rows.values()} == {"baseline", "post_training"}
    assert rows[runs["baseline PyTorch"].run_id]["artifact"] is None


def test_results_finds_the_store_under_the_current_folder_and_prints_a_table(swept, capsys, monkeypatch):
    folder, _, runs = swept
    monkeypatch.chdir(folder)
    assert cli.main(["results"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith(runs["palettize nbits=4"].run_id[:12]))
    assert "post_training" in line and "palettize" in line and "nbits=4" in line and "COMPLETE" in line
    assert str(find_mlpackage(folder / ".lab" / "cli", runs["palettize nbits=4"].artifact_path).resolve()) in line
    assert f"{runs['palettize nbits=4'].sizes['bytes']:,}" in out


def test_results_without_a_store_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["results"]) == 2
    assert "no results store in" in capsys.readouterr().err
    assert cli.main(["results", "--store", str(tmp_path)]) == 2
    assert "holds no results store" in capsys.readouterr().err


def test_export_writes_the_package_with_config_and_metrics_in_its_metadata(swept, tmp_path, capsys):
    import coremltools as ct
    from compress_lab.data import scan_folder
    from compress_lab.evaluate import coreml_predictor, evaluate
    from compress_lab.models.metadata import ModelMetadata

    folder, store_folder, runs = swept
    run = runs["palettize nbits=4"]
    out = tmp_path / "mnist_p4.mlpackage"
    assert cli.main(["export", run.run_id[:10], "--store", str(store_folder), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    meta = ct.models.MLModel(str(out), skip_model_load=True).user_defined_metadata
    assert meta["com.compress_lab.run_id"] == run.run_id
    assert json.loads(meta["com.compress_lab.config"]) == run.config
    assert json.loads(meta["com.compress_lab.metrics"])["top1"] == run.metrics["top1"]
    # the exported package is the measured model: same weights, same accuracy
    stored = next((store_folder / run.artifact_path).rglob("weight.bin"))
    assert next(out.rglob("weight.bin")).read_bytes() == stored.read_bytes()
    model_meta = ModelMetadata.load(SAMPLES / "mnist_cnn" / "metadata.json")
    result = evaluate(coreml_predictor(out), scan_folder(folder / "val", class_names=model_meta.class_names),
                      model_meta.num_classes, preprocessing=model_meta.preprocessing, input_shape=model_meta.input_shape)
    assert result.top1 == run.metrics["top1"]


def test_export_refuses_what_it_cannot_do_and_says_why(swept, tmp_path, capsys):
    _, store_folder, runs = swept
    store = str(store_folder)
    existing = tmp_path / "taken.mlpackage"
    existing.mkdir()
    cases = [
        (["export", runs["prune target_sparsity=0.5"].run_id, "--store", store, "--out", str(existing)], "already exists"),
        (["export", runs["prune target_sparsity=0.5"].run_id, "--store", store, "--out", str(tmp_path / "m.zip")],
         "must end with .mlpackage"),
        (["export", runs["baseline PyTorch"].run_id, "--store", store, "--out", str(tmp_path / "pt.mlpackage")],
         "PyTorch baseline has no Core ML package"),
        (["export", "ffffffffffff", "--store", store, "--out", str(tmp_path / "x.mlpackage")], "no run 'ffffffffffff'"),
        (["export", "", "--store", store, "--out", str(tmp_path / "x.mlpackage")], "give a run id"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert cli.main(["export", runs["prune target_sparsity=0.5"].run_id, "--store", store, "--out", str(existing),
                     "--force"]) == 0
    assert (existing / "Manifest.json").is_file()


def _bytes_on_disk(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def test_results_answers_size_and_accuracy_budgets_on_real_packages(swept, capsys):
    """Each size budget's answer is a real package within that size, in bytes on disk; the
    accuracy budget gives the smallest run within it."""
    _, store_folder, runs = swept
    p4, prune = runs["palettize nbits=4"], runs["prune target_sparsity=0.5"]
    fp16 = next(r for r in runs.values() if r.family == "baseline" and "fp16" in r.label)
    limit = p4.sizes["bytes"] + 1000  # room for the 4-bit palettization, not for the 50%-pruned model
    assert prune.sizes["bytes"] > limit
    budgets = [(["--budget-bytes", str(limit)], lambda r: _bytes_on_disk(r["artifact"]) <= limit),
               (["--budget-ratio", "3"], lambda r: _bytes_on_disk(fp16_artifact) / _bytes_on_disk(r["artifact"]) >= 3),
               (["--budget-bits-per-weight", "5"], lambda r: r["artifact"] is not None)]
    fp16_artifact = find_mlpackage(store_folder, fp16.artifact_path)
    for argv, on_disk in budgets:
        assert cli.main(["results", "--store", str(store_folder), "--json", *argv]) == 0
        answer = json.loads(capsys.readouterr().out)["answer"]
        assert answer["kind"] == "size" and answer["metric"] == "top1"
        assert answer["run"]["run_id"] == p4.run_id, argv
        assert on_disk(answer["run"]) and _bytes_on_disk(answer["run"]["artifact"]) == p4.sizes["bytes"]
    assert p4.sizes["bits_per_weight"] <= 5 < prune.sizes["bits_per_weight"]
    assert cli.main(["results", "--store", str(store_folder), "--budget-bytes", "1000"]) == 0
    assert "no finished compressed run within at most 1,000 bytes on disk" in capsys.readouterr().out
    # accuracy budget: 100 points lets every run in; the smallest is the answer
    assert cli.main(["results", "--store", str(store_folder), "--budget-top1-drop", "100"]) == 0
    out = capsys.readouterr().out
    smallest = min((r for r in runs.values() if r.family != "baseline"), key=lambda r: r.sizes["bytes"])
    assert f"smallest run within top-1 drop <= 100 points: {smallest.run_id[:12]}" in out
    assert cli.main(["results", "--store", str(store_folder), "--budget-agreement", "7"]) == 2
    assert "--budget-agreement 7.0 must be a fraction" in capsys.readouterr().err
