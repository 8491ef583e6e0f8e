"""The app for a model that is not an image classifier (Streamlit's AppTest, entering
through app.py): a small real regression model written here, with `.npz` sources beside
it. The Model page shows its task and named inputs/outputs (flexible dimensions marked),
the Data page picks `val.npz` / `train.npz` as its defaults and previews their arrays
(shape, dtype, range, first samples), and the Results page offers the task's metrics
(MAE, RMSE: lower is better) and fidelity measures as axes and budgets, from a real sweep."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

TIMEOUT = 120
REGRESSOR = textwrap.dedent('''
    import torch
    from torch import nn

    def build_model():
        return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
''')
META = {"name": "tiny_regressor", "task": "regression",
        "inputs": [{"name": "x", "shape": [8], "dtype": "float32"}],
        "outputs": [{"name": "value", "meaning": "values", "shape": [2]}]}


def frame(at: AppTest, column: str, after: int = 0):
    """The first dataframe on the page (from index `after`) with `column`."""
    return next(d.value for d in list(at.dataframe)[after:] if column in d.value.columns)


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def results_budget_a_lower_is_better_metric(store: Path, monkeypatch, metric: str, words: str, also=(),
                                            default: str | None = None) -> AppTest:
    """Open Results on `store`: `metric` (lower is better, `words` its label) is a y axis beside
    `also` and the default one (or, given `default`, that is the default and `metric` is chosen),
    a budget of 1000% on it names the smallest run, and the runs table shows them."""
    from compress_lab.analysis.table import axis_label

    monkeypatch.setenv("COMPRESS_LAB_STORE", str(store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).switch_page("app_pages/4_results.py").run()
    no_errors(at)
    y = at.selectbox(key="results.y")
    assert {axis_label(c) for c in (metric, *also)} <= set(y.options) and y.value == (default or metric)
    if y.value != metric:
        y.set_value(metric).run()
        no_errors(at)
        assert at.selectbox(key="results.y").value == metric
    kinds = at.selectbox(key="results.budget_kind").options
    (relative,) = [k for k in kinds if "% worse than the uncompressed" in k]
    at.selectbox(key="results.budget_kind").set_value(relative).run()
    budget = at.number_input(key="results.budget_relative")
    assert f"{words} up" in budget.label
    budget.set_value(1000.0).run()
    no_errors(at)
    assert any("Smallest within budget" in s.value and axis_label(metric) in s.value for s in at.success)
    assert {metric, *also} <= set(frame(at, "label").columns)
    return at


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> Path:
    """The model folder: model.py, weights fitted to real targets (least squares on a fixed
    function of x), metadata.json, val.npz and train.npz."""
    folder = tmp_path_factory.mktemp("regressor")
    (folder / "model.py").write_text(REGRESSOR)
    (folder / "metadata.json").write_text(json.dumps(META))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]) + x[:, 1] * x[:, 2], np.abs(x[:, 3]) - x[:, 4]], axis=1).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):   # a real fit, so MAE means something
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(torch.from_numpy(x[:64])), torch.from_numpy(y[:64]))
        loss.backward()
        optimiser.step()
    torch.save(model.state_dict(), folder / "weights.pt")
    np.savez(folder / "train.npz", x=x[:64], value=y[:64])
    np.savez(folder / "val.npz", x=x[64:], value=y[64:])
    return folder


def test_a_models_npz_sources_beside_it_are_its_default_data(tmp_path, regressor):
    from compress_lab_app.session import DataChoice, ModelChoice, default_data

    assert default_data(ModelChoice(str(regressor), origin="path")) == DataChoice(
        str(regressor / "val.npz"), str(regressor / "train.npz"))
    (tmp_path / "val").mkdir()          # an image folder and an .npz: the folder, as before
    np.savez(tmp_path / "val.npz", x=np.zeros((2, 8), np.float32))
    (tmp_path / "train.npz").mkdir()    # a folder named train.npz is not an array file
    assert default_data(ModelChoice(str(tmp_path), origin="path")) == DataChoice(str(tmp_path / "val"), None)


def open_model(store: Path, model: Path, monkeypatch) -> AppTest:
    """A session that loaded `model` on the Model page (a path on this computer)."""
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).switch_page("app_pages/1_model.py").run()
    at.radio(key="model.where").set_value("A path on this computer").run()
    at.text_input(key="model.path.source").set_value(str(model))
    next(b for b in at.button if b.label == "Load model").click().run()
    return at


def test_model_page_shows_the_task_and_named_inputs_and_outputs(tmp_path, regressor, monkeypatch):
    at = open_model(tmp_path / "store", regressor, monkeypatch)
    no_errors(at)
    assert any("Task: regression" in m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Inputs"] == "1" and metrics["Outputs"] == "1" and metrics["Parameters"] == f"{8 * 64 + 64 + 64 * 2 + 2:,}"
    io = frame(at, "meaning")
    assert list(io["name"]) == ["x", "value"] and list(io["shape"]) == ["N × 8", "N × 2"]
    assert list(io["dtype"]) == ["float32", "float32"] and io["meaning"][1].startswith("values")


def test_model_page_marks_flexible_dimensions_and_image_inputs():
    from compress_lab_app.task_panels import io_rows

    rows = io_rows({"inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                               {"name": "image", "shape": [3, 32, 32], "dtype": "float32",
                                "image": {"color_layout": "BGR", "scale": 1 / 255, "bias": [-1.0, 0.0, 0.5]}}],
                    "outputs": [{"name": "logits", "meaning": "logits_per_position", "shape": ["T", None]}]})
    assert [r["shape"] for r in rows] == ["N × T (flexible)", "N × 3 × 32 × 32", "N × T (flexible) × any (flexible)"]
    assert "BGR" in rows[1]["meaning"] and "0.003922" in rows[1]["meaning"] and "token ids" in rows[0]["meaning"]


def test_data_page_previews_the_array_sources(tmp_path, regressor, monkeypatch):
    at = open_model(tmp_path / "store", regressor, monkeypatch)
    at.switch_page("app_pages/2_data.py").run()
    no_errors(at)
    assert at.session_state["lab.data"].validation == str(regressor / "val.npz")
    captions = " ".join(c.value for c in at.caption)
    assert "32 samples (one .npz" in captions and "64 samples" in captions and "task regression" in captions
    arrays = frame(at, "role").set_index("array")
    val = np.load(regressor / "val.npz")
    assert arrays.loc["x", "role"] == "input" and arrays.loc["value", "role"] == "target"
    assert arrays.loc["x", "shape"] == "32 × 8" and arrays.loc["x", "dtype"] == "float32"
    assert arrays.loc["value", "min"] == pytest.approx(float(val["value"].min()))
    assert arrays.loc["value", "max"] == pytest.approx(float(val["value"].max()))
    samples = frame(at, "sample")
    assert len(samples) == 3 and samples["x"][0].startswith(f"[{val['x'][0, 0]:.4g}, ")


def test_data_page_previews_a_folder_of_one_sample_files(tmp_path, regressor, monkeypatch):
    folder = tmp_path / "val_files"
    folder.mkdir()
    val = np.load(regressor / "val.npz")
    for i in range(5):
        np.savez(folder / f"{i:03d}.npz", x=val["x"][i], value=val["value"][i])
    at = open_model(tmp_path / "store", regressor, monkeypatch)
    at.switch_page("app_pages/2_data.py").run()
    at.text_input[0].set_value(str(folder))
    next(b for b in at.button if b.label == "Scan").click().run()
    no_errors(at)
    arrays = frame(at, "role").set_index("array")
    assert arrays.loc["x", "shape per sample"] == "8"
    assert arrays.loc["x", "max"] == pytest.approx(float(val["x"][:5].max()))


@pytest.fixture(scope="module")
def regression_store(regressor, tmp_path_factory) -> Path:
    """A real sweep of the regressor: baselines and int8 / 4-bit weights, measured by MAE and RMSE."""
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec

    folder = tmp_path_factory.mktemp("regression-store")
    spec = folder / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{regressor}"
        [data]
        validation = "{regressor / 'val.npz'}"
        [run]
        name = "regression"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = [2, 4]
        weight_threshold = 0
    """))
    result = run_sweep(load_spec(spec), folder / "store")
    assert result.ok, [(r.label, r.error) for r in result.runs]
    return folder / "store"


def test_results_axes_offer_the_tasks_metrics_and_budget_a_lower_is_better_one(regression_store, monkeypatch):
    from compress_lab.analysis.table import lower_is_better, metric_columns, runs_table
    from compress_lab.store import open_store

    store = open_store(regression_store)
    rows = runs_table(store.list_runs(store.list_sweeps()[0].sweep_id))
    columns = metric_columns(rows)
    assert {"mae", "rmse"} <= set(columns) and "top1" not in columns
    assert lower_is_better("mae") and lower_is_better("rmse") and not lower_is_better("snr_db")

    monkeypatch.setenv("COMPRESS_LAB_STORE", str(regression_store))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).switch_page("app_pages/4_results.py").run()
    no_errors(at)
    from compress_lab.analysis.table import axis_label
    y = at.selectbox(key="results.y")
    assert {axis_label("mae"), axis_label("rmse"), axis_label("cosine")} <= set(y.options)
    assert axis_label("top1") not in y.options and y.value == "mae"   # the task's primary metric first
    y.set_value("rmse").run()
    no_errors(at)
    assert axis_label("rmse") in at.get("plotly_chart")[0].proto.spec
    y.set_value("mae").run()
    kinds = at.selectbox(key="results.budget_kind").options
    (relative,) = [k for k in kinds if "% worse than the uncompressed" in k]
    at.selectbox(key="results.budget_kind").set_value(relative).run()
    budget = at.number_input(key="results.budget_relative")
    assert "mean absolute error up" in budget.label          # lower is better: a budget on how far MAE may rise
    budget.set_value(1000.0).run()
    no_errors(at)
    assert any("Smallest within budget" in s.value and axis_label("mae") in s.value for s in at.success)
    assert {"mae", "rmse"} <= set(frame(at, "label").columns)   # the runs table shows them too


def test_results_cli_budgets_a_lower_is_better_metric_both_ways(regression_store, capsys):
    from compress_lab.cli import main

    assert main(["results", "--store", str(regression_store), "--json", "--budget-metric", "mae=1000%"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = {r["run_id"]: r for r in out["runs"]}
    reference = next(r for r in out["runs"] if r["technique"] == "baseline" and r["config"].get("format") == "pytorch")
    compressed = [r for r in out["runs"] if r["workflow"] != "baseline"]
    # "MAE at most 1000% above the float model": every point fits; the answer is the smallest
    assert out["answer"]["run"]["run_id"] == min(compressed, key=lambda r: r["size_bytes"])["run_id"]
    assert "mae at most 1000% above the uncompressed model" in out["answer"]["budget"]
    # no MAE rise allowed: only a point as good as the float model would do
    assert main(["results", "--store", str(regression_store), "--json", "--budget-metric", "mae=0"]) == 0
    strict = json.loads(capsys.readouterr().out)["answer"]["run"]
    assert strict is None or strict["metrics"]["mae"] <= reference["metrics"]["mae"] + 1e-9
    # a size budget answers with the lowest MAE that fits, the task's own metric by default
    largest = max(r["size_bytes"] for r in compressed)
    assert main(["results", "--store", str(regression_store), "--budget-bytes", str(largest)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    best = min(compressed, key=lambda r: r["metrics"]["mae"])
    assert line.startswith("most accurate run (mae)") and best["run_id"][:12] in line and "mae " in line
    assert runs[best["run_id"]]["metrics"]["mae"] <= min(r["metrics"]["mae"] for r in compressed)
    # a metric the sweep does not have, or a malformed budget, is refused naming what it has
    assert main(["results", "--store", str(regression_store), "--budget-bytes", "1000000", "--metric", "top1"]) == 2
    assert "has no metric 'top1'" in capsys.readouterr().err
    assert main(["results", "--store", str(regression_store), "--budget-metric", "mae"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_an_image_input_package_shows_its_image_input_and_previews_photos(tmp_path, monkeypatch):
    """A Core ML package with a BGR image input and no lab metadata: a tensors model whose Model
    page describes the image input and whose Data page takes a folder of photos."""
    import coremltools as ct
    from test_model_kinds import BIAS, PHOTOS, SCALE, TinyConv, convert_image_model

    torch.manual_seed(0)
    package = convert_image_model(TinyConv().eval(), tmp_path / "bgr.mlpackage", (1, 3, 32, 32), scale=SCALE,
                                  bias=BIAS, color_layout=ct.colorlayout.BGR)
    at = open_model(tmp_path / "store", package, monkeypatch)
    no_errors(at)
    assert any("Task: tensors" in m.value for m in at.markdown)
    assert any("no compress-lab metadata" in i.value for i in at.info)
    io = frame(at, "meaning")
    assert list(io["name"]) == ["image", "scores"] and io["shape"][0] == "N × 3 × 32 × 32"
    assert "BGR" in io["meaning"][0] and "pixels 0..255" in io["meaning"][0]
    at.switch_page("app_pages/2_data.py").run()
    at.text_input[0].set_value(str(PHOTOS))
    next(b for b in at.button if b.label == "Scan").click().run()
    no_errors(at)
    captions = " ".join(c.value for c in at.caption)
    assert "image BGR" in captions and "resized to 32x32" in captions and "75 images" in captions
    assert len(at.get("image")) >= 10   # the samples, as the model is fed them


USER_METRIC = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"max_error": "lower", "within_half": "higher"}

    def metric(outputs, targets):
        error = np.abs(outputs["value"] - targets["value"])
        return {"max_error": float(error.max()), "within_half": float((error < 0.5).mean())}
''')


def use_metric(at: AppTest, text: str) -> AppTest:
    """Type `text` into the Data page's metric field and press Use metric."""
    at.text_input(key="data.metric.path").set_value(text)
    return next(b for b in at.button if b.label == "Use metric").click().run()


def test_data_page_takes_the_users_metric_file_and_names_a_broken_one(tmp_path, regressor, monkeypatch):
    good = tmp_path / "my_metric.py"
    good.write_text(USER_METRIC)
    (tmp_path / "raises.py").write_text("import numpy as np\nDIRECTIONS = {'x': 'higher'}\nscale = 1 / 0\n")
    at = open_model(tmp_path / "store", regressor, monkeypatch)
    at.switch_page("app_pages/2_data.py").run()
    no_errors(at)
    assert at.session_state["lab.data"].metric is None
    assert any("runs it with your user's rights" in i.value for i in at.info)

    use_metric(at, str(good))
    no_errors(at)
    assert at.session_state["lab.data"].metric == str(good.resolve())
    (shown,) = [s.value for s in at.success if "Metric" in s.value]
    assert "**max_error**: lower is better" in shown and "**within_half**: higher is better" in shown

    use_metric(at, f"{good}:missing")   # no such function: an error naming the file and its functions
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert str(good) in error and "no function 'missing'" in error and "metric" in error and "Fix the file" in error
    assert at.session_state["lab.data"].metric == str(good.resolve())   # the last good metric stays

    use_metric(at, str(tmp_path / "raises.py"))   # raises when imported: the file, the error and the line
    (error,) = [e.value for e in at.error]
    assert str(tmp_path / "raises.py") in error and "ZeroDivisionError when loaded (line 3)" in error

    use_metric(at, str(tmp_path / "nowhere.py"))
    (error,) = [e.value for e in at.error]
    assert "nowhere.py does not exist" in error

    use_metric(at, "")   # clearing the field removes the metric
    no_errors(at)
    assert at.session_state["lab.data"].metric is None
    assert not [s for s in at.success if "Metric" in s.value]


def test_a_sweep_from_the_app_stores_the_users_metric_with_every_run(tmp_path, regressor, monkeypatch):
    from compress_lab.analysis.table import axis_label
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import SweepSpec
    from compress_lab_app import sweep_control

    metric = tmp_path / "metric.py"
    metric.write_text(USER_METRIC)
    store = tmp_path / "store"
    at = open_model(store, regressor, monkeypatch)
    at.switch_page("app_pages/2_data.py").run()
    use_metric(at, f"{metric}:metric")
    no_errors(at)
    assert at.session_state["lab.data"].metric == f"{metric.resolve()}:metric"

    at.switch_page("app_pages/3_sweep.py").run()
    no_errors(at)
    assert any(f"your metric: `{metric.resolve()}:metric`" in c.value for c in at.caption)
    # the spec the page builds (and "Start the sweep" launches) carries it as [data] metric
    spec = sweep_control.build_spec(at.session_state["lab.model"], at.session_state["lab.data"],
                                    [{"technique": "palettize", "nbits": 4, "weight_threshold": 0}], "metric", 1, store)
    assert spec.data.metric == f"{metric.resolve()}:metric"
    assert SweepSpec.from_dict(spec.to_dict(), tmp_path).data.metric == spec.data.metric
    result = run_sweep(spec, store, workers=1)
    assert result.ok, [(r.label, r.error) for r in result.runs]
    for run in result.runs:
        values = run.metrics["values"]
        assert set(values) >= {"max_error", "within_half"} and 0.0 <= values["within_half"] <= 1.0

    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).switch_page("app_pages/2_data.py").run()
    no_errors(again)   # a new tab starts from the saved place: the metric is kept
    assert again.session_state["lab.data"].metric == f"{metric.resolve()}:metric"
    again.switch_page("app_pages/4_results.py").run()
    no_errors(again)
    assert {axis_label("max_error"), axis_label("within_half")} <= set(again.selectbox(key="results.y").options)

    metric.unlink()   # a restored metric whose file is gone is dropped, with a note
    gone = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).switch_page("app_pages/2_data.py").run()
    assert gone.session_state["lab.data"].metric is None
    assert any("metric file" in w.value and "no longer exists" in w.value for w in gone.warning)


def test_an_uploaded_metric_file_is_saved_in_the_stores_uploads_and_used(tmp_path, regressor, monkeypatch):
    store = tmp_path / "store"
    at = open_model(store, regressor, monkeypatch)
    at.switch_page("app_pages/2_data.py").run()
    at.file_uploader(key="data.metric.upload").set_value(("../../evil name.py", USER_METRIC.encode(), "text/x-python"))
    use_metric(at, "")
    no_errors(at)
    saved = Path(at.session_state["lab.data"].metric)
    assert saved.is_relative_to(store.resolve() / "uploads") and saved.read_text() == USER_METRIC
    assert any("**max_error**: lower is better" in s.value for s in at.success)


def test_the_metric_field_shows_the_metric_again_after_another_page_and_no_metric_clears_it(tmp_path, regressor, monkeypatch):
    metric = tmp_path / "metric.py"
    metric.write_text(USER_METRIC)
    at = open_model(tmp_path / "store", regressor, monkeypatch)
    at.switch_page("app_pages/2_data.py").run()
    use_metric(at, str(metric))
    at.switch_page("app_pages/3_sweep.py").run()
    at.switch_page("app_pages/2_data.py").run()
    no_errors(at)
    assert at.text_input(key="data.metric.path").value == str(metric.resolve())
    next(b for b in at.button if b.label == "No metric").click().run()
    no_errors(at)
    assert at.session_state["lab.data"].metric is None and at.text_input(key="data.metric.path").value == ""
