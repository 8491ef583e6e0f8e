"""Results and Sensitivity pages (AppTest): the chosen sweep's model and data in the sidebar,
one curve per workflow with its read-out, both budget kinds, and the figure's downloads."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from compress_lab.store import RunSpec, open_store  # noqa: E402

TIMEOUT = 120


def _store(folder: Path, model: str = "dog_mobilenetv2") -> Path:
    """A store with one sweep of `model` (two workflows), values as a sweep stores them."""
    store = open_store(folder)
    spec = {"model": {"source": model}, "data": {"validation": f"/data/{model}/val", "train": f"/data/{model}/train"},
            "grid": [{"technique": "palettize", "nbits": [1, 4]}, {"technique": "dkm", "n_bits": 1}]}
    store.create_sweep("s1", "other-model", spec, "e" * 64)
    runs = [("a", "baseline_fp16", "baseline", "baseline fp16", 0.93, 1_000_000),
            ("b", "palettize", "post_training", "palettize nbits=1", 0.386, 80_000),
            ("c", "palettize", "post_training", "palettize nbits=4", 0.92, 260_000),
            ("d", "dkm", "training_time", "dkm n_bits=1", 0.918, 81_000)]
    store.add_runs("s1", [RunSpec(k * 16, t, f, {"technique": t}, label) for k, t, f, label, _, _ in runs])
    for k, _, _, _, top1, nbytes in runs:
        assert store.claim_run(k * 16, "test:1")
        store.complete_run(k * 16, {"top1": top1, "agreement": top1, "snr_db": 20.0},
                           {"bytes": nbytes, "ratio_fp16": 1_000_000 / nbytes, "bits_per_weight": 16 * nbytes / 1e6},
                           {"total_s": 1.0}, None)
    return folder


def test_sidebar_shows_the_chosen_sweeps_model_and_data(tmp_path, monkeypatch):
    cli_store = _store(tmp_path / "specs" / ".lab" / "other")
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(tmp_path / "own-store"))
    (tmp_path / ".streamlit").mkdir()
    shutil.copy2(ROOT / ".streamlit" / "config.toml", tmp_path / ".streamlit" / "config.toml")
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    glance = " ".join(m.value for m in at.sidebar.markdown)
    assert "mnist_cnn" in glance and "dog_mobilenetv2" not in glance  # the app's own model, its own (empty) store
    at.sidebar.selectbox[0].set_value(str(cli_store.resolve())).run()
    assert not at.exception
    glance = " ".join(m.value for m in at.sidebar.markdown)
    assert "dog_mobilenetv2" in glance and "dog_mobilenetv2/val" in glance and "other-model" in glance
    assert any("The app's own model: mnist_cnn" in c.value for c in at.sidebar.caption)


def test_results_page_curves_readout_budgets_and_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(_store(tmp_path / "store")))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()  # the one entry
    at.switch_page("app_pages/4_results.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    chart = at.get("plotly_chart")[0].proto.spec
    assert "post-training (data-free): dotted" in chart and "training-time: solid" in chart
    assert '"dash":"dot"' in chart.replace(" ", "") and "Pareto frontier (all runs)" not in chart
    readout = " ".join(m.value for m in at.markdown)
    assert "Where training-time pays off" in readout and "+53.2 points" in readout
    payoff = at.dataframe[0].value
    within = list(payoff["within size"])[0]   # exact bytes: packages a few bytes apart must not read alike
    assert within.endswith(" B") and 80_500 <= int(within[:-2].replace(",", "")) < 81_500
    assert "dkm n_bits=1" in list(payoff["training-time"])[0]
    # size budget: at most 100 kB -> the most accurate run that fits is the training-time 1-bit one
    at.selectbox(key="results.size_kind").set_value("bytes").run()
    at.number_input(key="results.size_kb").set_value(100.0).run()
    assert any("Most accurate at most 100,000 bytes" in s.value and "dkm n_bits=1" in s.value for s in at.success)
    at.selectbox(key="results.size_kind").set_value("ratio_fp16").run()
    at.number_input(key="results.size_ratio").set_value(3.5).run()
    assert any("at least 3.5x smaller than fp16" in s.value and "palettize nbits=4" in s.value for s in at.success)
    assert "most accurate within size budget" in at.get("plotly_chart")[0].proto.spec
    at.checkbox(key="results.overall").check().run()
    at.radio(key="results.layout").set_value("side by side").run()
    assert not at.exception
    chart = at.get("plotly_chart")[0].proto.spec
    assert "Pareto frontier (all runs)" in chart and '"xaxis2"' in chart.replace(" ", "")
    labels = [b.proto.label for b in at.get("download_button")]
    assert "HTML" in labels
    if shutil.which("chromium"):
        assert {"PNG", "SVG"} <= set(labels)


def test_sensitivity_page_offers_both_budget_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_LAB_STORE", str(tmp_path / "store"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()  # the one entry
    at.switch_page("app_pages/6_sensitivity.py").run()
    assert not at.exception
    options = at.selectbox(key="mixed.kind").options
    assert {"top-1 drop at most (points)", "agreement at least", "size on disk at most (kB)",
            "bits per weight at most"} <= set(options)
