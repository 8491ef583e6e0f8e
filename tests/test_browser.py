"""End to end in a real headless Chromium: launch `streamlit run app.py`, look at
every page, run a tiny grid with a post-training and a training-time point,
check the trade-off plot shows both series, and download an exported model.
Screenshots of each page go to test-artifacts/screenshots/."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "screenshots"
SWEEP_TIMEOUT_S = 200

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (install Debian's chromium package)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, mnist_dir):
    port = free_port()
    store = tmp_path_factory.mktemp("browser-store")
    env = dict(os.environ, COMPRESS_LAB_STORE=str(store), PYTHONPATH=str(ROOT))
    log = open(store / "streamlit.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start: {(store / 'streamlit.log').read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
        yield context.new_page()
        browser.close()


def wait_idle(page, timeout_s: float = 90) -> None:
    """Wait until the script run finished (Streamlit's 'Running...' indicator is gone)."""
    time.sleep(0.5)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            time.sleep(0.5)
            if page.locator('[data-testid="stStatusWidget"]').count() == 0:
                return
        time.sleep(0.3)
    raise AssertionError("the page kept running")


def open_page(page, title: str, expect: str) -> None:
    """Go to a page through the sidebar (a new URL would start a new session and lose the choices)."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).click()
    page.get_by_text(expect).first.wait_for(timeout=60_000)
    wait_idle(page)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], section.main').forEach(e => e.scrollTo(0, 0))")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_error_on(page) -> None:
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert not errors, errors
    assert page.locator('[data-testid="stException"]').count() == 0


def test_end_to_end(app_url, page):
    page.goto(app_url)
    page.get_by_text("Where to go").first.wait_for(timeout=60_000)
    wait_idle(page)
    expect(page.get_by_text("mnist_cnn").first).to_be_visible()
    no_error_on(page)
    shot(page, "1_home")

    open_page(page, "Model", "Layers")
    expect(page.get_by_text("390,410")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("conv_layers.0").or_(page.locator('[data-testid="stDataFrame"]'))).not_to_have_count(0)
    wait_idle(page)
    no_error_on(page)
    shot(page, "2_model")

    open_page(page, "Data", "Samples after preprocessing")
    expect(page.locator('[data-testid="stImage"]').first).to_be_visible(timeout=60_000)
    page.get_by_role("spinbutton", name="Use at most N validation images").fill("100")
    page.get_by_role("button", name="Scan").click()
    page.get_by_text("a sweep uses a class-balanced 100").wait_for(timeout=60_000)
    wait_idle(page)
    no_error_on(page)
    shot(page, "3_data")

    open_page(page, "Sweep", "New sweep")
    training = [t for t in ("magnitude_pruning", "dkm", "qat") if page.locator('[data-testid="stCheckbox"]').filter(
        has_text=f"{t}:").count()]
    assert training, "no training-time technique is offered"
    page.locator('[data-testid="stCheckbox"]').filter(has_text=f"{training[0]}:").locator("label").click()
    wait_idle(page)
    steps = page.get_by_role("textbox", name="steps", exact=True)
    steps.fill("4")
    steps.press("Enter")
    wait_idle(page)
    expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("2", timeout=60_000)
    wait_idle(page)
    no_error_on(page)
    shot(page, "4_sweep_grid")
    page.get_by_role("button", name="Start the sweep").click()
    page.get_by_text("runs finished").first.wait_for(timeout=60_000)
    shot(page, "5_sweep_running")
    page.get_by_text("sweep done").first.wait_for(timeout=SWEEP_TIMEOUT_S * 1000)
    wait_idle(page)
    progress = page.locator('[data-testid="stProgress"]').inner_text()
    assert "5 of 5 runs finished" in progress and "0 failed" in progress, progress
    shot(page, "6_sweep_done")

    open_page(page, "Results", "All runs")
    page.locator(".legendtext").first.wait_for(timeout=30_000)
    legend = page.locator(".legendtext").all_text_contents()
    assert "post-training" in legend and "training-time" in legend and "baseline (uncompressed)" in legend, legend
    no_error_on(page)
    shot(page, "7_results")

    open_page(page, "Export", "All results")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download mnist_cnn-").click()
    data = Path(info.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
    assert any(n.endswith(".mlpackage/Manifest.json") for n in names), names
    assert "config.json" in names and "metrics.json" in names
    no_error_on(page)
    shot(page, "8_export")
