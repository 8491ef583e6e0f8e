"""Picking a sweep of the store, shared by the Sweep, Results and Export pages."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from compress_lab_app import cached
from compress_lab_app.session import current_sweep_id, set_sweep_id, store_folder


def open_lab_store():
    return cached.store(str(store_folder()))


def sweep_caption(sweep) -> str:
    when = dt.datetime.fromtimestamp(sweep.created_at).strftime("%Y-%m-%d %H:%M")
    return f"{sweep.name} · {sweep.status} · {when} · {sweep.sweep_id}"


def choose_sweep(key: str, label: str = "Sweep", empty: str | None = None):
    """A selectbox of the store's sweeps (newest first), defaulting to the session's sweep. None if there are none."""
    store = open_lab_store()
    sweeps = store.list_sweeps()
    if not sweeps:
        st.info(empty or f"No sweeps in the store `{store_folder()}` yet. Start one on the **Sweep** page "
                         "(or with `compress-lab sweep SPEC.toml --store " + str(store_folder()) + "`).")
        return None
    ids = [s.sweep_id for s in sweeps]
    current = current_sweep_id()
    index = ids.index(current) if current in ids else 0
    chosen = st.selectbox(label, ids, index=index, key=key,
                          format_func=lambda i: sweep_caption(sweeps[ids.index(i)]))
    if chosen != current:
        set_sweep_id(chosen)
    return sweeps[ids.index(chosen)]
