"""End to end in a real headless Chromium: launch `streamlit run app.py`, look at
every page, run a tiny grid with a post-training and a training-time point,
check the trade-off plot shows both series, and download an exported model.
Before that, every URL (each page's path opened first, an unknown path, a query
string) goes through the app's one entry: the refusal on a non-loopback address,
the navigation and sidebar on loopback; and the user's place survives a reload
and a second tab. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def serve(store: Path, address: str = "127.0.0.1", **env_changes):
    """`streamlit run app.py` on a free port, listening on `address`; yields the URL to open (always via 127.0.0.1)."""
    port = free_port()
    env = dict(os.environ, COMPRESS_LAB_STORE=str(store), PYTHONPATH=str(ROOT), **env_changes)
    env.pop("COMPRESS_LAB_ADDRESS", None)
    log = open(store / "streamlit.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", address,
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
def app_url(tmp_path_factory, mnist_dir):
    with serve(tmp_path_factory.mktemp("browser-store")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
    yield context.new_page()
    context.close()


@contextlib.contextmanager
def fresh_page(browser):
    """A new browser context: no cookies, no session, as a first visit."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()


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
    """Go to a page through the sidebar, as a user clicks (the same session; a new URL would start a new one)."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).click()
    page.get_by_text(expect).first.wait_for(timeout=60_000)
    wait_idle(page)


def shot(page, name: str, address_bar: str | None = None) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    if address_bar:  # headless Chromium has no address bar: show which URL the screenshot is of
        page.evaluate("""t => { const d = document.createElement('div'); d.textContent = t;
            d.style.cssText = 'position:fixed;bottom:0;right:0;z-index:99999;padding:4px 10px;font:13px monospace;'
                + 'background:#eee;color:#333;border-top-left-radius:6px'; document.body.appendChild(d); }""",
                      address_bar)
    page.evaluate("() => document.querySelectorAll('[data-testid=\"stMain\"], section.main').forEach(e => e.scrollTo(0, 0))")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_error_on(page) -> None:
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert not errors, errors
    assert page.locator('[data-testid="stException"]').count() == 0


NAV = ["Home", "Model", "Data", "Sweep", "Results", "Export", "Sensitivity"]
ICONS = ["home", "memory", "photo_library", "tune", "scatter_plot", "download", "equalizer"]  # material icon names
TITLES = {"/": "compress lab", "/model": "Model", "/data": "Data", "/sweep": "Sweep", "/results": "Results",
          "/export": "Export", "/sensitivity": "Sensitivity", "/no-such-page": "compress lab", "/data?foo=bar": "Data"}
URLS = ["/sweep", *(u for u in TITLES if u != "/sweep")]  # a deep link first: the fresh server's first visit


def sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebarUserContent"]').inner_text()


def test_every_url_refuses_on_a_non_loopback_address(browser, tmp_path, mnist_dir):
    """Served on 0.0.0.0 without COMPRESS_LAB_ADDRESS: every URL, each the first of its own browser context (and
    the first one the first visit of the server), shows the refusal and nothing of any page."""
    with serve(tmp_path, address="0.0.0.0") as url:
        for path in URLS:
            with fresh_page(browser) as page:
                page.goto(url + path)
                page.get_by_text("not only on this computer").first.wait_for(timeout=60_000)
                wait_idle(page)
                assert "It has no authentication" in page.locator('[data-testid="stAlertContentError"]').inner_text()
                assert page.locator('[data-testid="stSidebar"], [data-testid="stSidebarNav"]').count() == 0, path
                assert page.get_by_role("heading").count() == 0, (path, page.get_by_role("heading").all_inner_texts())
                assert page.locator('[data-testid="stMain"] [data-testid="stElementContainer"]').count() == 1, path
                assert page.get_by_text("At a glance").count() == 0
                if path == "/sweep":
                    shot(page, "refusal_nonloopback", f"{page.url} · streamlit run app.py --server.address 0.0.0.0")
    assert not list((tmp_path / "app-places").glob("*.json")), "a refused session saved a place"


def test_every_url_shows_the_navigation_and_sidebar_on_loopback(app_url, browser):
    """Each page URL opened first (a deep link, an unknown path, a query string) runs the app's entry: the same
    navigation and sidebar as the home page, then the page asked for."""
    sidebars = {}
    for path in URLS:
        with fresh_page(browser) as page:
            page.goto(app_url + path)
            page.get_by_text("At a glance").first.wait_for(timeout=90_000)
            expect(page.get_by_role("heading", level=1).first).to_have_text(TITLES[path], timeout=90_000)
            wait_idle(page)
            nav = [t.split() for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
            assert nav == [[icon, title] for icon, title in zip(ICONS, NAV)], (path, nav)  # the app's, with icons
            sidebars[path] = sidebar_text(page)
            assert "mnist_cnn" in sidebars[path] and "validation" in sidebars[path], sidebars[path]
            assert "place=" in page.url
            assert page.locator('[data-testid="stException"]').count() == 0
            if path == "/sweep":
                page.get_by_text("New sweep").first.wait_for(timeout=90_000)
                wait_idle(page)
                shot(page, "deeplink_loopback", f"{page.url} · opened first, in a fresh browser context")
    assert all(text == sidebars["/"] for text in sidebars.values()), sidebars


def test_the_place_survives_a_reload_and_a_second_tab(browser, tmp_path, mnist_dir):
    """A model loaded by path and data folders set are still set after a reload; a second tab opened on a deep
    link starts from them, and its changes do not leak into the first tab."""
    model_py, val, train = str(mnist_dir / "model.py"), str(mnist_dir / "train"), str(mnist_dir / "val")
    with serve(tmp_path) as url, fresh_page(browser) as page:
        page.goto(url + "/model")
        page.get_by_text("Layers").first.wait_for(timeout=90_000)
        wait_idle(page)
        page.get_by_text("A path on this computer").click()
        page.get_by_role("textbox", name="Model path").fill(model_py)
        page.get_by_role("textbox", name="Weights (for a model.py)").fill(str(mnist_dir / "weights.pt"))
        page.get_by_role("button", name="Load model").click()
        expect(page.locator('[data-testid="stSidebarUserContent"]')).to_contain_text("mnist_cnn/model.py", timeout=60_000)
        wait_idle(page)
        open_page(page, "Data", "Samples after preprocessing")
        page.get_by_role("textbox", name="Validation folder").fill(val)  # the training digits, as another folder
        page.get_by_role("textbox", name="Training folder (optional)").fill("")
        page.get_by_role("spinbutton", name="Use at most N validation images").fill("200")
        page.get_by_role("button", name="Scan").click()
        page.get_by_text("a sweep uses a class-balanced 200").wait_for(timeout=90_000)
        wait_idle(page)

        page.reload()
        page.get_by_text("a sweep uses a class-balanced 200").wait_for(timeout=90_000)
        wait_idle(page)
        expect(page.get_by_role("textbox", name="Validation folder")).to_have_value(val)
        expect(page.get_by_role("textbox", name="Training folder (optional)")).to_have_value("")
        side = sidebar_text(page)
        assert "mnist_cnn/model.py" in side and "mnist_cnn/train" in side and "200 images" in side, side
        open_page(page, "Model", "Layers")
        expect(page.get_by_role("textbox", name="Model path")).to_have_value(model_py)
        no_error_on(page)
        first_place = page.url.split("place=")[1]

        with fresh_page(browser) as other:  # a second tab, opened on a deep link without a place
            other.goto(url + "/data")
            other.get_by_text("a sweep uses a class-balanced 200").wait_for(timeout=90_000)
            wait_idle(other)
            expect(other.get_by_role("textbox", name="Validation folder")).to_have_value(val)
            other.get_by_role("textbox", name="Training folder (optional)").fill(train)
            other.get_by_role("button", name="Scan").click()
            expect(other.locator('[data-testid="stSidebarUserContent"]')).to_contain_text("mnist_cnn/val", timeout=60_000)
            wait_idle(other)
            assert other.url.split("place=")[1] != first_place

        page.reload()  # the first tab comes back to its own place, not the second tab's
        page.get_by_text("Layers").first.wait_for(timeout=90_000)
        wait_idle(page)
        side = sidebar_text(page)
        assert "training none" in " ".join(side.split()), side
        expect(page.get_by_role("textbox", name="Model path")).to_have_value(model_py)


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
    assert any(t.startswith("post-training") for t in legend) and any(t.startswith("training-time") for t in legend), legend
    assert "baseline (uncompressed)" in legend, legend
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
