"""Export: a stored run zipped with its .mlpackage, config and metrics; results as CSV."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from compress_lab.analysis.table import runs_table
from compress_lab.errors import StoreError
from compress_lab.export import export_run, find_mlpackage, results_csv, safe_name
from compress_lab.models.convert import convert_module
from compress_lab.store import RunSpec, artifact_dir, open_store, relative_artifact_path, worker_name

RUN_ID = "0123456789abcdef"


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory, mnist_handle):
    """A real fp16 Core ML package of mnist_cnn, recorded as a complete run in a real store."""
    folder = tmp_path_factory.mktemp("store")
    store = open_store(folder)
    store.create_sweep("s1", "mnist ../evil name", {"grid": []}, mnist_handle.fingerprint)
    store.add_runs("s1", [RunSpec(RUN_ID, "palettize", "post_training", {"technique": "palettize", "nbits": 4},
                                  "palettize nbits=4 / ../../x")])
    package = convert_module(mnist_handle.torch_copy(), mnist_handle.metadata,
                             artifact_dir(folder, RUN_ID) / "model.mlpackage", precision="fp16")
    store.claim_run(RUN_ID, worker_name())
    run = store.complete_run(RUN_ID, {"top1": 0.99, "per_class": {"0": 1.0}}, {"bytes": 123}, {"total_s": 1.5},
                             relative_artifact_path(folder, package))
    return folder, store, run


def test_safe_name_keeps_names_plain():
    assert safe_name("palettize nbits=4 / ../../x") == "palettize_nbits_4_.._.._x"
    assert safe_name("../..") == "run"
    assert safe_name("") == "run"
    assert safe_name(".hidden") == "hidden"
    assert "/" not in safe_name("a/b\\c") and "\\" not in safe_name("a/b\\c")
    assert len(safe_name("x" * 500)) == 80


def test_export_zip_holds_package_config_and_metrics(stored_run):
    folder, _, run = stored_run
    bundle = export_run(folder, run, model_name="mnist_cnn")
    assert bundle.file_name == "mnist_cnn-palettize_nbits_4_.._.._x.zip"
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as zf:
        names = zf.namelist()
        assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
        package = "mnist_cnn-palettize_nbits_4_.._.._x.mlpackage/"
        assert package + "Manifest.json" in names
        assert any(n.startswith(package + "Data/com.apple.CoreML/") and n.endswith(".mlmodel") for n in names)
        assert json.loads(zf.read("config.json"))["config"] == {"technique": "palettize", "nbits": 4}
        metrics = json.loads(zf.read("metrics.json"))
        assert metrics["metrics"]["top1"] == 0.99 and metrics["sizes"]["bytes"] == 123
        assert zf.testzip() is None


def test_exported_package_loads_back(stored_run, tmp_path, mnist_handle):
    from compress_lab.models.handle import load_model
    folder, _, run = stored_run
    with zipfile.ZipFile(io.BytesIO(export_run(folder, run).data)) as zf:
        zf.extractall(tmp_path)
    package = next(tmp_path.glob("*.mlpackage"))
    handle = load_model(package)
    assert handle.kind == "coreml" and handle.metadata.class_names == mnist_handle.metadata.class_names


def test_missing_or_escaping_artifact_is_a_store_error(stored_run):
    folder, _, run = stored_run
    with pytest.raises(StoreError, match="no exported model"):
        find_mlpackage(folder, None)
    with pytest.raises(StoreError, match="missing"):
        find_mlpackage(folder, "artifacts/ffffffffffffffff/model.mlpackage")
    with pytest.raises(StoreError):
        find_mlpackage(folder, "../outside/model.mlpackage")


def test_results_csv_has_one_row_per_run(stored_run):
    _, store, _ = stored_run
    rows = runs_table(store.list_runs("s1"))
    text = results_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 1
    assert parsed[0]["run_id"] == RUN_ID and float(parsed[0]["top1"]) == 0.99 and parsed[0]["bytes"] == "123"
    assert parsed[0]["top5"] == ""  # missing values are empty, not "None"
    assert list(parsed[0])[:3] == ["run_id", "label", "technique"]


def test_export_never_follows_links_and_caps_the_package(stored_run, tmp_path, monkeypatch):
    import compress_lab.export as export

    folder, _, run = stored_run
    package = find_mlpackage(folder, run.artifact_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    links = [package / "Data" / "leak.txt", package / "inside_link.json"]
    links[0].symlink_to(secret)                            # out of the package
    links[1].symlink_to(package / "Manifest.json")         # inside it, still a link
    try:
        exported = export_run(folder, run)
        with zipfile.ZipFile(io.BytesIO(exported.data)) as zf:
            names = zf.namelist()
            assert not any("leak" in n or "inside_link" in n for n in names), names
            assert all(b"private key" not in zf.read(n) for n in names)
            assert any(n.endswith("Manifest.json") for n in names)
        monkeypatch.setattr(export, "MAX_EXPORT_FILES", 2)
        with pytest.raises(StoreError, match="holds more than 2 files"):
            export_run(folder, run)
        monkeypatch.setattr(export, "MAX_EXPORT_FILES", 10_000)
        monkeypatch.setattr(export, "MAX_EXPORT_BYTES", 1024)
        with pytest.raises(StoreError, match="not a model package the lab wrote"):
            export_run(folder, run)
    finally:
        for link in links:
            link.unlink()
