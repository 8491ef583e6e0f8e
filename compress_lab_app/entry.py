"""The app's one entry: app.py. Every URL of the app (/, each page's path, unknown paths,
query strings, the first visit of a fresh server on a deep link) runs app.py, which refuses
to serve beyond this computer, builds the navigation and the sidebar, and only then runs
the page. A page module run any other way (`streamlit run app_pages/1_model.py`, AppTest on
the file, a legacy `pages/` folder) refuses to render.

Why the pages live in app_pages/ and not in a top-level pages/ folder: Streamlit 1.67
decides once per server process, when the first session starts, whether the app is a
legacy multipage app (`PagesManager.uses_pages_directory = (main script folder / "pages").exists()`).
While that flag is set, every script run goes through `_mpa_v1`, which builds its own
navigation from pages/*.py and runs the requested page file directly, without the main
script; only a call of the public st.navigation clears the flag, and that call is in app.py,
which a first session opened on /model never runs. A folder named anything but `pages`
leaves the flag off from the start: then Streamlit always runs the main script."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import streamlit as st

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADDRESS_ENV = "COMPRESS_LAB_ADDRESS"

_entry = threading.local()  # set while app.py runs the chosen page (one script thread per session)


def exposure() -> str | None:
    """The non-loopback address the app is served on without the user asking for it, or None."""
    address = st.get_option("server.address") or "0.0.0.0"  # unset: Streamlit listens on every interface
    if address in LOOPBACK or os.environ.get(ADDRESS_ENV) == address:
        return None
    return address


def refuse_unless_loopback() -> None:
    """Safe by default: on another interface, unless asked for with COMPRESS_LAB_ADDRESS, show why and stop
    before any page, navigation or sidebar exists (run.sh sets COMPRESS_LAB_ADDRESS; started elsewhere without
    the repository's .streamlit/config.toml, Streamlit would listen on every interface)."""
    address = exposure()
    if address is None:
        return
    st.error(f"compress lab is being served on {address!r}, not only on this computer (127.0.0.1). It has no "
             "authentication and runs model code you load. Start it with `bash run.sh`, or pass "
             f"`--server.address 127.0.0.1`; to serve on another address on purpose, set {ADDRESS_ENV} to it.")
    st.stop()


@contextlib.contextmanager
def through_entry() -> Iterator[None]:
    """app.py runs the page inside this block, after the refusal check passed."""
    _entry.active = True
    try:
        yield
    finally:
        _entry.active = False


def require_entry() -> None:
    """Called first by every page (in page_setup): a page run other than through app.py shows how to open
    the app and renders nothing else."""
    if getattr(_entry, "active", False):
        return
    st.error("This page of compress lab opens only through the app itself: start it with `bash run.sh` "
             "(or `streamlit run app.py`) and open http://127.0.0.1:8501.", icon=":material/block:")
    st.stop()
