"""The one place where engine errors become readable messages on the page."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import streamlit as st

from compress_lab.errors import LabError

log = logging.getLogger("compress_lab_app")


def describe(error: BaseException) -> str:
    """A one-paragraph message for any exception (LabError messages already name the fix)."""
    if isinstance(error, LabError):
        return str(error)
    text = str(error).strip().splitlines()
    first = text[0][:500] if text else ""
    return f"Unexpected {type(error).__name__}: {first or 'no details'}. The full traceback is in the terminal running the app."


@contextlib.contextmanager
def error_edge(what: str = "") -> Iterator[None]:
    """Run a page body (or part of it); any error is shown with st.error, never as a traceback.
    Streamlit's own control flow (st.rerun, st.stop, st.switch_page) passes through: it is a BaseException."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - this is the edge
        if not isinstance(e, LabError):
            log.exception("error in %s", what or "page")
        prefix = f"{what}: " if what else ""
        st.error(prefix + describe(e), icon=":material/error:")
