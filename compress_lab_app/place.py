"""The user's place, kept across a reload, a bookmark, a deep link and a second tab.

Kept: the model choice (sample name; or path, weights and metadata; or the folder of the uploaded
files), the validation and training folders, the validation subset size, the preprocessing
overrides, the user's metric file, the results store, the sweep, and the selections in REMEMBERED_WIDGETS /
REMEMBERED_PREFIXES (results axes, accuracy budget and chosen run, the export run, the grid being
built and its number of workers; not the sweep name, which follows the model). Not kept: files
picked in an upload box but not yet used, measurements shown on a page (convert and measure, a
sensitivity ranking), a page's scroll position.

How: every browser session has its own place id, shown in the address as ``?place=<id>``, and
its own small JSON file ``<the lab's store>/app-places/<id>.json``, written atomically (temporary
file + rename) whenever the place changes. A session opened on an address with a place id starts
from that file (a reload, a bookmark); one without starts from the most recently saved place on
this computer (a second tab, a typed deep link). Either way it then saves under a fresh id of its
own, so two tabs never write the same file and cannot undo each other's choices. A restored path
that no longer exists is dropped with a note in the sidebar saying what was not restored."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import streamlit as st

from compress_lab_app.session import (DATA_KEY, DEFAULT_SAMPLE, MODEL_KEY, STORE_KEY, SWEEP_KEY, DataChoice,
                                      ModelChoice, default_data, default_store_folder, metric_file, store_folder)

log = logging.getLogger("compress_lab_app")

PARAM = "place"
PLACES_DIR = "app-places"
KEEP = 50  # place files kept (the newest); older ones are removed
VERSION = 1
STATE_KEY = "lab.place"
NOTES_KEY = "lab.place.notes"
REMEMBERED_WIDGETS = ("results.x", "results.y", "results.budget_kind", "results.budget_top1",
                      "results.budget_agreement", "results.run", "export.run", "sweep.workers")
REMEMBERED_PREFIXES = ("grid.",)
_ID = re.compile(r"^[0-9a-f]{16}$")


def places_folder() -> Path:
    return default_store_folder() / PLACES_DIR


def remembered(key: str) -> bool:
    return key in REMEMBERED_WIDGETS or key.startswith(REMEMBERED_PREFIXES)


def _plain(value: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value))


@contextlib.contextmanager
def keep_place() -> Iterator[None]:
    """Around the sidebar and the page in app.py: restore once per session, save after every run
    (also a run ended early by st.rerun or st.stop)."""
    begin()
    try:
        yield
    finally:
        try:
            save()
        except Exception:  # noqa: BLE001 - never let saving the place break the page
            log.exception("saving the place")


def begin() -> None:
    state = st.session_state.get(STATE_KEY)
    if state is None:
        state = {"id": uuid.uuid4().hex[:16], "saved": None, "widgets": {}, "restored_from": None}
        st.session_state[STATE_KEY] = state
        st.session_state[NOTES_KEY] = _restore(state)
    if st.query_params.get(PARAM) != state["id"]:
        st.query_params[PARAM] = state["id"]
    for key, value in state["widgets"].items():  # selections of pages left in this session come back too
        if key not in st.session_state:
            st.session_state[key] = value
    show_notes(state)


def show_notes(state: dict) -> None:
    notes = st.session_state.get(NOTES_KEY) or []
    if not notes:
        return
    with st.sidebar:
        for note in notes:
            st.warning(note, icon=":material/history:")
        if st.button("Dismiss", key="place.dismiss"):
            st.session_state[NOTES_KEY] = []
            st.rerun()


def _restore(state: dict) -> list[str]:
    """Fill the session from the place named in the address, else from the newest saved place."""
    notes: list[str] = []
    asked = st.query_params.get(PARAM)
    path = None
    if asked:
        candidate = places_folder() / f"{asked}.json"
        if _ID.match(asked) and candidate.is_file():
            path = candidate
        else:
            notes.append(f"The place in this page's address ({asked[:40]!r}) is not saved in {places_folder()}; "
                         "starting from your most recent place instead.")
    path = path or _newest()
    if path is None:
        return notes
    try:
        place = json.loads(path.read_text())
        if not isinstance(place, dict) or place.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} place file")
        notes.extend(apply(place))
        state["restored_from"] = path.stem
    except Exception as e:  # noqa: BLE001 - a broken place file never breaks the app
        log.exception("restoring the place from %s", path)
        notes.append(f"Could not read your saved place {path} ({type(e).__name__}: {e}); starting from the "
                     "defaults. Delete the file if it keeps coming back.")
    return notes


def _newest() -> Path | None:
    try:
        files = [p for p in places_folder().glob("*.json") if _ID.match(p.stem)]
        return max(files, key=lambda p: p.stat().st_mtime, default=None)
    except OSError:
        return None


def apply(place: dict) -> list[str]:
    """Put a saved place into the session; returns notes on what could not be restored."""
    from compress_lab.models.handle import list_sample_models

    notes = []
    model = place.get("model") or {}
    choice = ModelChoice(str(model["source"]), model.get("weights"), model.get("metadata"),
                         str(model.get("origin", "sample"))) if model.get("source") else None
    if choice is not None:
        missing = _missing_model_paths(choice, list_sample_models())
        if missing:
            notes.append(f"Your last model, {missing}, no longer exists; showing the sample {DEFAULT_SAMPLE} "
                         "(and its data folders) instead. Choose the model again on the Model page.")
            choice = None
    if choice is not None:
        st.session_state[MODEL_KEY] = choice
        st.session_state[DATA_KEY] = _data(place.get("data") or {}, choice, notes)
    folder = place.get("store")
    if folder and Path(folder) != default_store_folder():
        from compress_lab.store.locate import STORE_FILE
        if (Path(folder) / STORE_FILE).is_file():
            st.session_state[STORE_KEY] = str(Path(folder))
        else:
            notes.append(f"Your last results store, {folder}, no longer exists; showing the lab's store "
                         f"{default_store_folder()} instead.")
    sweep_id = place.get("sweep_id")
    if sweep_id:
        from compress_lab_app import cached
        if cached.store(str(store_folder())).get_sweep(str(sweep_id)) is not None:
            st.session_state[SWEEP_KEY] = str(sweep_id)
        else:
            notes.append(f"Your last sweep, {sweep_id}, is not in the store {store_folder()} any more; "
                         "showing its newest sweep instead.")
    widgets = {k: v for k, v in (place.get("widgets") or {}).items() if remembered(k) and _plain(v)}
    st.session_state[STATE_KEY]["widgets"] = widgets
    for key, value in widgets.items():
        st.session_state[key] = value
    return notes


def _missing_model_paths(choice: ModelChoice, samples: list[str]) -> str | None:
    if choice.origin == "sample":
        return None if choice.source in samples else f"the sample {choice.source!r}"
    for path in (choice.source, choice.weights, choice.metadata):
        if path and not Path(path).expanduser().exists():
            return path
    return None


def _data(data: dict, choice: ModelChoice, notes: list[str]) -> DataChoice:
    restored = DataChoice(data.get("validation"), data.get("train"), dict(data.get("preprocessing") or {}),
                          int(data["max_val_images"]) if data.get("max_val_images") else None,
                          data.get("metric") or None)
    defaults = default_data(choice)
    for name, title in (("validation", "validation"), ("train", "training")):
        folder = getattr(restored, name)
        if folder and not Path(folder).expanduser().exists():   # a folder, or an array source (.npz)
            fallback = getattr(defaults, name)
            notes.append(f"Your last {title} folder, {folder}, no longer exists; "
                         + (f"using the model's {fallback} instead." if fallback else "none is set now.")
                         + " Set it again on the Data page.")
            restored = replace(restored, **{name: fallback})
    if restored.metric and not metric_file(restored.metric).is_file():
        notes.append(f"Your last metric file, {metric_file(restored.metric)}, no longer exists; no metric is set now. "
                     "Set it again on the Data page.")
        restored = replace(restored, metric=None)
    return restored



def current() -> dict:
    """The session's place, as saved (and compared) in the place file."""
    from compress_lab_app.session import current_data, current_model, current_sweep_id
    model, data = current_model(), current_data()
    state = st.session_state[STATE_KEY]
    return {
        "version": VERSION,
        "model": {"source": model.source, "weights": model.weights, "metadata": model.metadata, "origin": model.origin},
        "data": {"validation": data.validation, "train": data.train, "preprocessing": dict(data.preprocessing),
                 "max_val_images": data.max_val_images, "metric": data.metric},
        "store": str(store_folder()),
        "sweep_id": current_sweep_id(),
        "widgets": dict(sorted(state["widgets"].items())),
    }


def save() -> None:
    state = st.session_state.get(STATE_KEY)
    if state is None:
        return
    for key in list(st.session_state.keys()):
        key = str(key)
        if remembered(key):
            value = st.session_state[key]
            if _plain(value):
                state["widgets"][key] = list(value) if isinstance(value, tuple) else value
    place = current()
    text = json.dumps(place, sort_keys=True, default=str)
    if text == state["saved"]:
        return
    try:
        write(state["id"], dict(place, saved_at=time.time(), restored_from=state.get("restored_from")))
    except OSError as e:
        if state.get("write_error") != str(e):
            state["write_error"] = str(e)
            st.session_state[NOTES_KEY] = [*(st.session_state.get(NOTES_KEY) or []),
                                           f"Could not save your place in {places_folder()} ({e}); a reload will "
                                           "start from the defaults. Make that folder writable or set COMPRESS_LAB_STORE."]
        return
    first = state["saved"] is None
    state["saved"] = text
    if first:
        prune()


def write(place_id: str, place: dict) -> Path:
    """Atomically (a reader sees the old file or the new one, never half of one)."""
    folder = places_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{place_id}.json"
    tmp = folder / f".{place_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(place, indent=1, sort_keys=True, default=str))
    tmp.replace(path)
    return path


def prune(keep: int = KEEP) -> None:
    try:
        files = sorted((p for p in places_folder().glob("*.json") if _ID.match(p.stem)),
                       key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in files[keep:]:
        with contextlib.suppress(OSError):  # another tab may remove it at the same time
            old.unlink()
