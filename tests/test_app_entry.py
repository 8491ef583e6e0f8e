"""The app's one entry and the user's place, with Streamlit's AppTest: a page file run on its
own refuses, every page refuses through app.py on a non-loopback address, and the place (model,
data, store, sweep, selections) comes back in a new session, per tab, with clear notes for what
no longer exists. The same in a real browser: tests/test_browser.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from compress_lab_app.pages_index import PAGES  # noqa: E402

TIMEOUT = 120
MNIST = ROOT / "sample_models" / "mnist_cnn"


def session(page: str | None = None, place: str | None = None) -> AppTest:
    """A new browser session (a reload, a bookmark, a second tab) on `page`, not yet run."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if place is not None:
        at.query_params["place"] = place
    return at.switch_page(page) if page else at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def place_file(store: Path, place_id: str) -> dict:
    return json.loads((store / "app-places" / f"{place_id}.json").read_text())


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(tmp_path / "store"))
    return tmp_path / "store"


def test_no_legacy_pages_folder_next_to_the_entry():
    """A pages/*.py next to app.py would make Streamlit run a deep-linked page without app.py (see entry.py)."""
    assert not list((ROOT / "pages").glob("*.py"))
    assert all((ROOT / p.path).is_file() and p.path.startswith("app_pages/") for p in PAGES)


@pytest.mark.parametrize("page", [p.path for p in PAGES])
def test_a_page_run_on_its_own_refuses_to_render(page, store, mnist_dir):
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This page of compress lab opens only through the app itself: start it with `bash run.sh` "
        "(or `streamlit run app.py`) and open http://127.0.0.1:8501."]
    assert not (at.title or at.subheader or at.markdown or at.metric or at.button or at.selectbox or at.text_input)
    assert len(at.main.children) == 1


@pytest.fixture
def exposed(monkeypatch):
    """Served on every interface without COMPRESS_LAB_ADDRESS (the address the app reads at each run)."""
    from streamlit import config
    monkeypatch.delenv("COMPRESS_LAB_ADDRESS", raising=False)
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", before)


@pytest.mark.parametrize("page", [None, *(p.path for p in PAGES)])
def test_every_page_refuses_through_the_entry_on_a_non_loopback_address(page, exposed, store, mnist_dir):
    at = session(page).run()
    assert not at.exception
    assert len(at.error) == 1 and "not only on this computer" in at.error[0].value
    assert not (at.title or at.markdown or at.metric or at.button or at.selectbox or at.text_input)
    assert len(at.main.children) == 1 and not at.sidebar.children
    assert "lab.place" not in at.session_state and not (store / "app-places").exists()


def load_model_by_path_and_set_folders(at: AppTest, validation: Path, max_images: int) -> AppTest:
    at.radio(key="model.where").set_value("A path on this computer").run()
    at.text_input(key="model.path.source").set_value(str(MNIST / "model.py"))
    at.text_input(key="model.path.weights").set_value(str(MNIST / "weights.pt"))
    next(b for b in at.button if b.label == "Load model").click().run()
    no_errors(at)
    at.switch_page("app_pages/2_data.py").run()
    at.text_input[0].set_value(str(validation))
    at.text_input[1].set_value("")
    at.number_input[0].set_value(max_images)
    next(b for b in at.button if b.label == "Scan").click().run()
    no_errors(at)
    return at


def test_a_reload_restores_the_model_by_path_and_the_data_folders(store, mnist_dir):
    from compress_lab_app.session import DataChoice, ModelChoice
    first = load_model_by_path_and_set_folders(session("app_pages/1_model.py").run(), MNIST / "train", 100)
    place = first.query_params["place"]
    saved = place_file(store, place)
    assert saved["model"] == {"source": str(MNIST / "model.py"), "weights": str(MNIST / "weights.pt"),
                              "metadata": None, "origin": "path"}
    assert saved["data"]["validation"] == str(MNIST / "train") and saved["data"]["train"] is None

    again = session("app_pages/2_data.py", place=place).run()  # the reload: same address, new session
    no_errors(again)
    assert again.session_state["lab.model"] == ModelChoice(str(MNIST / "model.py"), str(MNIST / "weights.pt"),
                                                           None, "path")
    assert again.session_state["lab.data"] == DataChoice(str(MNIST / "train"), None, {}, 100)
    assert again.text_input[0].value == str(MNIST / "train") and again.text_input[1].value == ""
    assert "class-balanced 100" in " ".join(c.value for c in again.caption)
    assert again.query_params["place"] != place  # from now on it saves under its own id
    assert not again.warning


def test_two_tabs_keep_their_own_place(store, mnist_dir):
    first = load_model_by_path_and_set_folders(session("app_pages/1_model.py").run(), MNIST / "train", 100)
    first_id = first.query_params["place"]
    second = session("app_pages/2_data.py").run()  # a second tab on a deep link: starts from the newest place
    no_errors(second)
    assert second.session_state["lab.data"].validation == str(MNIST / "train")
    second.text_input[1].set_value(str(MNIST / "val"))
    next(b for b in second.button if b.label == "Scan").click().run()
    no_errors(second)
    second_id = second.query_params["place"]
    assert second_id != first_id
    assert place_file(store, second_id)["data"]["train"] == str(MNIST / "val")
    assert place_file(store, first_id)["data"]["train"] is None  # the first tab's place is untouched
    first.run()  # and the first tab's own next run does not pick up the second tab's choice
    assert first.session_state["lab.data"].train is None and first.query_params["place"] == first_id


def test_results_selections_store_and_sweep_come_back(monkeypatch, tmp_path, mnist_dir):
    from compress_lab.sweep import run_sweep
    from compress_lab_app import sweep_control
    from compress_lab_app.session import DataChoice, ModelChoice

    folder = tmp_path / "store"
    spec = sweep_control.build_spec(ModelChoice("mnist_cnn"), DataChoice(str(MNIST / "val"), None, {}, 40),
                                    [{"technique": "palettize", "nbits": [2, 4]}], "place-test", 1, folder)
    assert run_sweep(spec, folder, workers=1).counts["COMPLETE"] == 5
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(folder))
    at = session("app_pages/4_results.py").run()
    no_errors(at)
    at.selectbox(key="results.x").set_value("bits_per_weight").run()
    at.selectbox(key="results.y").set_value("agreement").run()
    table = at.dataframe[0].value
    chosen = next(i for i, label in zip(table["run_id"], table["label"]) if label == "palettize nbits=4")
    at.selectbox(key="results.run").set_value(chosen).run()
    at.switch_page("app_pages/1_model.py").run()  # leaving the page keeps the selections in the place
    no_errors(at)
    sweep_id = at.session_state["lab.sweep_id"]

    again = session("app_pages/4_results.py", place=at.query_params["place"]).run()
    no_errors(again)
    assert again.session_state["lab.sweep_id"] == sweep_id
    assert again.selectbox(key="results.x").value == "bits_per_weight"
    assert again.selectbox(key="results.y").value == "agreement"
    assert again.selectbox(key="results.run").value == chosen


def test_a_restored_path_that_is_gone_gets_a_clear_note(store, mnist_dir, tmp_path):
    from compress_lab_app import place
    from compress_lab_app.session import DEFAULT_SAMPLE, ModelChoice
    gone = {"version": 1, "model": {"source": str(tmp_path / "gone" / "model.py"), "origin": "path"},
            "data": {"validation": str(tmp_path / "gone" / "val")}, "store": str(tmp_path / "gone-store"),
            "sweep_id": "abc", "widgets": {"results.x": "ratio_fp16", "sweep.start": True, "results.plot": {"a": 1}}}
    store.mkdir(parents=True)
    place.write("0123456789abcdef", gone)
    at = session("app_pages/1_model.py", place="0123456789abcdef").run()
    assert not at.exception and not at.error
    notes = " ".join(w.value for w in at.sidebar.warning)
    assert f"{tmp_path / 'gone' / 'model.py'}, no longer exists; showing the sample {DEFAULT_SAMPLE}" in notes
    assert f"{tmp_path / 'gone-store'}, no longer exists" in notes and "sweep, abc, is not in the store" in notes
    assert at.session_state["lab.model"] == ModelChoice(DEFAULT_SAMPLE)
    assert at.session_state["results.x"] == "ratio_fp16" and "sweep.start" not in at.session_state
    assert {m.label: m.value for m in at.metric}["Parameters"] == "390,410"  # the page works on the fallback

    gone_data = dict(gone, model={"source": "mnist_cnn", "origin": "sample"}, store=None, sweep_id=None)
    place.write("fedcba9876543210", gone_data)
    at = session("app_pages/2_data.py", place="fedcba9876543210").run()
    assert not at.exception and not at.error
    notes = " ".join(w.value for w in at.sidebar.warning)
    assert f"validation folder, {tmp_path / 'gone' / 'val'}, no longer exists; using the model's" in notes
    assert at.session_state["lab.data"].validation == str(MNIST / "val")
    at.sidebar.button(key="place.dismiss").click().run()
    assert not at.sidebar.warning


@pytest.mark.parametrize("asked", ["../../etc/passwd", "0123456789abcdef"])
def test_an_unknown_or_unsafe_place_in_the_address_starts_fresh(asked, store, mnist_dir):
    at = session(place=asked).run()
    assert not at.exception and not at.error
    assert any("is not saved in" in w.value for w in at.sidebar.warning)
    assert at.query_params["place"] != asked and "mnist_cnn" in " ".join(m.value for m in at.markdown)
    assert [p.name for p in (store / "app-places").iterdir()] == [f"{at.query_params['place']}.json"]


def test_a_broken_place_file_is_reported_not_raised(store, mnist_dir):
    (store / "app-places").mkdir(parents=True)
    (store / "app-places" / "00000000000000aa.json").write_text("{not json")
    at = session(place="00000000000000aa").run()
    assert not at.exception and not at.error
    assert any("Could not read your saved place" in w.value for w in at.sidebar.warning)
    assert at.title[0].value == "compress lab"
