"""The Streamlit app, page by page, with Streamlit's AppTest: every page renders
without an exception, and the key interactions work against the real engine."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the pages import compress_lab_app from the repository
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

TIMEOUT = 120
MNIST = ROOT / "sample_models" / "mnist_cnn"


def open_page(name: str, timeout: float = TIMEOUT) -> AppTest:
    """A fresh session opened on one page's URL: through app.py, the app's one entry (a page file run
    alone refuses to render), not yet run."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    return at.switch_page(f"app_pages/{name}")


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def lab_store(tmp_path_factory, mnist_dir):
    """A real store: a tiny real sweep of mnist_cnn (two palettizations and one that fails) on 100 images."""
    from compress_lab.sweep import run_sweep
    from compress_lab_app import sweep_control
    from compress_lab_app.session import DataChoice, ModelChoice

    folder = tmp_path_factory.mktemp("lab-store")
    grid = [{"technique": "palettize", "nbits": [2, 4]},
            {"technique": "palettize", "granularity": "per_grouped_channel", "group_size": 7}]
    spec = sweep_control.build_spec(ModelChoice("mnist_cnn"), DataChoice(str(MNIST / "val"), None, {}, 100),
                                    grid, "app-test", 1, folder)
    result = run_sweep(spec, folder, workers=1)
    assert result.counts["COMPLETE"] == 5 and result.counts["FAILED"] == 1
    return folder


@pytest.fixture
def store_env(monkeypatch, lab_store):
    import shutil
    from compress_lab_app.place import PLACES_DIR
    shutil.rmtree(lab_store / PLACES_DIR, ignore_errors=True)  # each test starts a first visit, not another test's place
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(lab_store))
    return lab_store


@pytest.fixture
def empty_store(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(tmp_path / "store"))
    return tmp_path / "store"


def test_home_starts_on_the_sample_model(empty_store, mnist_dir):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    no_errors(at)
    assert at.title[0].value == "compress lab"
    assert any("mnist_cnn" in m.value for m in at.markdown)
    assert "Where to go" in [h.value for h in at.subheader]


def test_model_page_summarizes_the_sample(empty_store, mnist_dir):
    at = open_page("1_model.py").run()
    no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "390,410"
    assert metrics["Input (C×H×W)"] == "1×28×28" and metrics["Classes"] == "10"
    layers = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    assert list(layers["layer"]) == ["conv_layers.0", "conv_layers.3", "conv_layers.6", "fc_layers.0", "fc_layers.2"]
    assert not layers.loc[0, "post-training"] and layers.loc[0, "training-time"]  # 288 weights < 2048: left alone


def test_model_page_converts_and_measures(empty_store, mnist_dir):
    at = open_page("1_model.py").run()
    at.button[0].click().run()
    no_errors(at)
    sizes = next(d.value for d in at.dataframe if "package" in d.value.columns).set_index("package")["bytes on disk"]
    assert 1.5e6 < sizes["fp32"] < 1.7e6 and 0.75e6 < sizes["fp16"] < 0.85e6


def test_model_page_loads_a_path_and_reports_a_bad_one(empty_store, mnist_dir):
    at = open_page("1_model.py").run()
    at.radio(key="model.where").set_value("A path on this computer").run()
    at.text_input[0].set_value(str(MNIST / "model.py"))
    at.text_input[1].set_value(str(MNIST / "weights.pt"))
    at.button[0].click().run()
    no_errors(at)
    assert {m.label: m.value for m in at.metric}["Parameters"] == "390,410"
    at.text_input[0].set_value("/no/such/model.py")
    at.button[0].click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_model_page_offers_uploads(empty_store, mnist_dir):
    at = open_page("1_model.py").run()
    at.radio(key="model.where").set_value("Upload files").run()
    no_errors(at)
    assert at.button[0].label == "Use the uploaded files" and at.button[0].disabled
    assert {m.label: m.value for m in at.metric}["Parameters"] == "390,410"  # still the current model


def test_data_page_scans_and_limits_the_validation_set(empty_store, mnist_dir):
    at = open_page("2_data.py").run()
    no_errors(at)
    captions = " ".join(c.value for c in at.caption)
    assert "1,000 images, 10 classes" in captions and "4,000 images" in captions
    at.number_input[0].set_value(100)
    at.button[0].click().run()  # "Scan"
    no_errors(at)
    assert "class-balanced 100" in " ".join(c.value for c in at.caption)


def test_data_page_reports_bad_preprocessing(empty_store, mnist_dir):
    at = open_page("2_data.py").run()
    at.text_input(key=None) if False else None
    mean = next(t for t in at.text_input if t.label.startswith("Mean"))
    mean.set_value("abc")
    next(b for b in at.button if b.label == "Apply").click().run()
    assert not at.exception
    assert any("must be numbers" in e.value for e in at.error)


def test_sweep_page_counts_runs_as_the_grid_changes(empty_store, mnist_dir):
    at = open_page("3_sweep.py").run()
    no_errors(at)
    runs = lambda: {m.label: m.value for m in at.metric}["Runs"]  # noqa: E731
    assert runs() == "1"
    at.multiselect(key="grid.palettize.nbits").set_value([2, 4, 8]).run()
    no_errors(at)
    assert runs() == "3"
    at.checkbox(key="grid.use.quantize").check().run()
    at.multiselect(key="grid.quantize.dtype").set_value(["int8", "int4"]).run()
    no_errors(at)
    assert runs() == "5"
    assert any(m.label == "Estimated time" for m in at.metric)


def test_sweep_page_shows_invalid_points(empty_store, mnist_dir):
    at = open_page("3_sweep.py").run()
    at.multiselect(key="grid.palettize.mode").set_value(["kmeans", "unique"]).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Runs"] == "1"
    assert any("Left out" in w.value and "unique" in w.value for w in at.warning)


def test_sweep_page_lists_a_finished_sweep(store_env):
    at = open_page("3_sweep.py").run()
    no_errors(at)
    assert "6 of 6 runs finished" in at.get("progress")[0].proto.text
    states = list(at.dataframe[0].value["state"])
    assert states.count("COMPLETE") == 5 and states.count("FAILED") == 1


def test_results_page_plots_and_details(store_env):
    at = open_page("4_results.py").run()
    no_errors(at)
    chart = at.get("plotly_chart")[0].proto.spec
    assert '"post-training"' in chart and '"baseline (uncompressed)"' in chart and "data-free): dotted" in chart
    assert "nbits" in chart  # hover text carries the config
    table = at.dataframe[0].value
    assert len(table) == 6 and set(table["family"]) == {"baseline", "post_training"}
    at.selectbox(key="results.x").set_value("bits_per_weight").run()
    at.selectbox(key="results.y").set_value("agreement").run()
    no_errors(at)
    failed = next(i for i, label in zip(table["run_id"], table["label"]) if "group_size=7" in label)
    at.selectbox(key="results.run").set_value(failed).run()
    assert not at.exception
    assert any("does not divide" in e.value for e in at.error)  # the failed run's own error, shown as such
    assert any("ConfigError" in c.value for c in at.code)
    complete = next(i for i, label in zip(table["run_id"], table["label"]) if label == "palettize nbits=2")
    at.selectbox(key="results.run").set_value(complete).run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 3  # trade-off, per-class accuracy, confusion matrix


def test_export_page_offers_downloads(store_env):
    at = open_page("5_export.py").run()
    no_errors(at)
    buttons = at.get("download_button")
    assert len(buttons) == 4
    assert "report" in buttons[2].proto.label and "JSON" in buttons[3].proto.label
    assert ".zip" in buttons[0].proto.label and "CSV (6 runs)" in buttons[1].proto.label
    code = " ".join(c.value for c in at.code)
    assert "Manifest.json" in code and "config.json" in code and "metrics.json" in code


def test_results_page_without_sweeps_says_what_to_do(empty_store):
    for name in ("4_results.py", "5_export.py"):
        at = open_page(name).run()
        no_errors(at)
        assert any("No sweeps" in i.value for i in at.info)


def _stop(handle) -> None:
    """Never leave a background sweep behind, whatever the test's outcome."""
    if handle.is_running():
        handle.terminate()  # SIGTERM to the driver: it stops its workers and marks the sweep cancelled
        if not handle.wait(timeout_s=30):
            os.killpg(handle.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sweep_starts_in_the_background_and_cancels(empty_store, mnist_dir, request):
    """Start a real background sweep from the page, see it listed, cancel it from the page."""
    from compress_lab.store import open_store
    from compress_lab.sweep.background import SweepHandle

    at = open_page("3_sweep.py").run()
    at.checkbox(key="grid.use.palettize").uncheck().run()
    training = next(n for n in ("magnitude_pruning", "dkm", "qat") if any(c.key == f"grid.use.{n}" for c in at.checkbox))
    at.checkbox(key=f"grid.use.{training}").check().run()
    at.text_input(key=f"grid.{training}.steps").set_value("5000").run()
    no_errors(at)
    at.button(key="sweep.start").click().run()
    no_errors(at)
    handle = SweepHandle.find(empty_store)
    assert handle is not None and handle.is_running()
    request.addfinalizer(lambda: _stop(handle))
    sweep = open_store(empty_store).list_sweeps()[0]
    assert at.session_state["lab.sweep_id"] == sweep.sweep_id
    assert "runs finished" in at.get("progress")[0].proto.text
    assert at.button(key="sweep.start").disabled  # one sweep at a time per store
    at.button(key="sweep.cancel").click().run()
    assert any("Cancelling" in i.value for i in at.info)
    deadline = time.monotonic() + 120
    while handle.is_running() and time.monotonic() < deadline:
        at.run()  # the page polls the store (and keeps the cancel request) while the sweep runs
        time.sleep(2)
    assert handle.wait(timeout_s=5), "the sweep process did not stop after cancel"
    assert open_store(empty_store).get_sweep(sweep.sweep_id).status == "cancelled"
    at.run()
    no_errors(at)
    assert "sweep cancelled" in at.get("progress")[0].proto.text


def test_uploads_stay_in_their_folder_and_make_a_model(tmp_path, mnist_handle):
    import zipfile

    from compress_lab.errors import ModelLoadError
    from compress_lab.models.convert import convert_module
    from compress_lab.models.handle import load_model
    from compress_lab_app.uploads import extract_zip, model_from_folder, save_files, upload_folder

    folder = upload_folder(tmp_path / "uploads", "../../session")
    assert folder.resolve().is_relative_to((tmp_path / "uploads").resolve())
    saved = save_files(folder, [("../../evil.py", b"x = 1"), ("C:\\\\temp\\\\w.pt", b"")])
    assert [p.name for p in saved] == ["evil.py", "w.pt"] and all(p.parent == folder for p in saved)

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "no")
    with pytest.raises(ModelLoadError, match="outside"):
        extract_zip(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()

    # a real .mlpackage, zipped as a user would upload it
    package = convert_module(mnist_handle.torch_copy(), mnist_handle.metadata, tmp_path / "m.mlpackage", precision="fp16")
    archive = tmp_path / "upload" / "m.mlpackage.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for f in package.rglob("*"):
            if f.is_file():
                zf.write(f, f"m.mlpackage/{f.relative_to(package)}")
    choice = model_from_folder(archive.parent)
    assert choice.origin == "upload" and choice.source.endswith("m.mlpackage")
    assert load_model(choice.source).kind == "coreml"

    with pytest.raises(ModelLoadError, match="metadata.json"):
        model_from_folder(upload_folder(tmp_path / "uploads", "s2"))


def test_validation_subset_is_class_balanced_and_reused(tmp_path, mnist_dir):
    from compress_lab.data import scan_folder
    from compress_lab_app.subset import subset_folder

    first = subset_folder(mnist_dir / "val", 50, tmp_path)
    folder = scan_folder(first)
    assert len(folder) == 50 and set(folder.class_counts().values()) == {5}
    assert subset_folder(mnist_dir / "val", 50, tmp_path) == first
    assert subset_folder(mnist_dir / "val", 5000, tmp_path) == mnist_dir / "val"  # no subset needed


def test_error_edge_turns_errors_into_messages(tmp_path):
    script = tmp_path / "page.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from compress_lab.errors import DataError\n"
        "from compress_lab_app.edge import error_edge\n"
        "with error_edge('Scanning'):\n"
        "    raise DataError('folder x has no images; add some')\n"
        "with error_edge():\n"
        "    {}['missing']\n"
        "import streamlit as st\n"
        "st.write('after')\n")
    at = AppTest.from_file(str(script), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Scanning: folder x has no images; add some",
        "Unexpected KeyError: 'missing'. The full traceback is in the terminal running the app."]
    assert at.markdown[0].value == "after"


def test_results_page_highlights_the_smallest_run_within_budget(store_env):
    at = open_page("4_results.py").run()
    no_errors(at)
    at.number_input(key="results.budget_top1").set_value(100.0).run()
    no_errors(at)
    assert any("Smallest within budget" in s.value and "nbits=2" in s.value for s in at.success)
    assert "smallest within budget" in at.get("plotly_chart")[0].proto.spec
    at.number_input(key="results.budget_top1").set_value(0.0).run()
    assert any("No finished compressed run meets" in i.value for i in at.info) or at.success


def test_sensitivity_page_measures_each_layer(empty_store, mnist_dir):
    at = open_page("6_sensitivity.py").run()
    no_errors(at)
    at.number_input(key="sensitivity.images").set_value(40).run()
    at.button(key="sensitivity.run").click().run()
    no_errors(at)
    frame = at.dataframe[0].value
    assert len(frame) == 4 and "fc_layers_0_weight_to_fp16" in set(frame["layer"])
    assert len(at.get("plotly_chart")) == 1


@pytest.mark.slow
def test_sensitivity_page_adds_a_mixed_point_to_a_sweep(store_env):
    at = open_page("6_sensitivity.py", timeout=300).run()
    no_errors(at)
    at.number_input(key="sensitivity.images").set_value(60).run()
    at.selectbox(key="mixed.kind").set_value("agreement at least").run()
    at.button(key="mixed.run").click().run()
    no_errors(at)
    message = next(s.value for s in at.success if "Added" in s.value)
    assert "The search chose" in message
    from compress_lab.store import open_store
    store = open_store(store_env)
    runs = [r for s in store.list_sweeps() for r in store.list_runs(s.sweep_id)]
    # the answer is a run of the sweep: a new "mixed" point, or the uniform point it equals
    chosen = message.split("**")[1]
    assert any(r.state == "COMPLETE" and r.label == chosen for r in runs)


def test_app_refuses_to_serve_beyond_this_computer_unless_asked(tmp_path):
    """Started from another folder, Streamlit would listen on every interface: the app refuses."""
    import subprocess
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file(%r, default_timeout=60).run()\n"
            "print('REFUSED' if any('not only on this computer' in e.value for e in at.error) else 'SERVED')\n"
            % (str(ROOT), str(ROOT / "app.py")))
    env = {k: v for k, v in os.environ.items() if k != "COMPRESS_LAB_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "REFUSED" in out.stdout, out.stderr[-2000:]
    env["COMPRESS_LAB_ADDRESS"] = "0.0.0.0"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "SERVED" in out.stdout, out.stderr[-2000:]


def test_a_sweep_started_from_the_cli_shows_up_in_the_app(empty_store, lab_store, tmp_path, monkeypatch):
    """`compress-lab sweep SPEC` writes to <spec folder>/.lab/<name>: the sidebar offers that store."""
    import shutil
    cli_store = tmp_path / "specs" / ".lab" / "cli-sweep"
    shutil.copytree(lab_store, cli_store, ignore=shutil.ignore_patterns("*.pid", "*.log"))
    (tmp_path / ".streamlit").mkdir()  # the repository's config (serve on 127.0.0.1) is read from the current folder
    shutil.copy2(ROOT / ".streamlit" / "config.toml", tmp_path / ".streamlit" / "config.toml")
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    no_errors(at)
    picker = at.sidebar.selectbox[0]
    assert picker.label == "Results store"
    assert picker.options[0].endswith("store") and "specs/.lab/cli-sweep" in picker.options  # shown shortened
    picker.set_value(str(cli_store.resolve())).run()
    no_errors(at)
    assert at.session_state["lab.store_folder"] == str(cli_store.resolve())
    at.switch_page("app_pages/4_results.py").run()
    no_errors(at)
    assert any("app-test" in str(getattr(e, "value", "")) or "app-test" in str(getattr(e, "options", ""))
               for e in [*at.selectbox, *at.markdown, *at.caption]), "the CLI store's sweep is listed"
