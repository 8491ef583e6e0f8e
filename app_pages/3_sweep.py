"""Sweep: build a grid of techniques and settings, start it in the background,
and watch its runs fill in. The sweep keeps running when the tab is closed;
reopening the page (or starting one from the CLI) shows it here."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from compress_lab.analysis.table import runs_table
from compress_lab.techniques import REGISTRY
from compress_lab_app import cached, sweep_control
from compress_lab_app.edge import error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.fmt import human_seconds
from compress_lab_app.grid_widgets import technique_table
from compress_lab_app.session import current_data, current_model, set_sweep_id, store_folder
from compress_lab_app.sweeps import choose_sweep, open_lab_store

POLL_S = 2.0
CANCELLED_KEY = "sweep.cancelled"
DEFAULT_ON = ("palettize",)
GROUPS = (("post_training", "Post-training (data-free)",
           "Compress the weights of the Core ML model directly: seconds per run, no data needed."),
          ("training_time", "Training-time (fine-tunes with the training folder)",
           "Fine-tune the PyTorch model while compressing, then convert: minutes per run, needs training images."))


# ----------------------------------------------------------------------------- watching

def watch() -> None:
    st.subheader("Progress")
    sweep = choose_sweep("sweep.watch", label="Sweep in the store",
                         empty="No sweep in the store yet: build one below and start it.")
    if sweep is None:
        return
    progress_panel(sweep.sweep_id, live=sweep.status == "running")


def progress_panel(sweep_id: str, live: bool) -> None:
    @st.fragment(run_every=POLL_S if live else None)
    def panel() -> None:
        with error_edge("Reading the sweep's progress"):
            store = open_lab_store()
            sweep = store.get_sweep(sweep_id)
            counts = store.counts(sweep_id)
            total = sum(counts.values())
            finished = counts["COMPLETE"] + counts["FAILED"]
            state = sweep_control.process_state(store_folder(), sweep_id)
            st.progress(finished / total if total else 0.0,
                        text=f"{finished} of {total} runs finished · {counts['RUNNING']} running · "
                             f"{counts['PENDING']} waiting · {counts['FAILED']} failed · sweep {sweep.status}")
            if sweep.status == "running" and state.alive is False:
                st.warning("The sweep is marked running but its process is not alive (it stopped or crashed). "
                           "Resume it to finish the remaining runs.")
                if st.button("Resume", key="sweep.resume"):
                    sweep_control.resume(store, sweep_id, store_folder())
                    st.rerun(scope="app")
            elif sweep.status == "running" and st.session_state.get(CANCELLED_KEY) == sweep_id:
                st.info("Cancelling: the runs in flight are stopped; finished runs stay in the store.")
            elif sweep.status == "running" and st.button("Cancel the sweep", key="sweep.cancel",
                                                         help="stops the runs in flight; finished runs stay in the store"):
                sweep_control.cancel(store_folder(), sweep_id)
                st.session_state[CANCELLED_KEY] = sweep_id
                st.rerun()
            rows = [dict(r, error=r["error"] or "") for r in runs_table(store.list_runs(sweep_id))]
            frame = pd.DataFrame(rows, columns=["label", "family", "state", "top1", "bytes", "ratio_fp16", "total_s", "error"])
            st.dataframe(frame, hide_index=True, width="stretch", key="sweep.table", column_config={
                "top1": st.column_config.NumberColumn("top-1", format="%.4f"),
                "bytes": st.column_config.NumberColumn("bytes on disk", format="%d"),
                "ratio_fp16": st.column_config.NumberColumn("x vs fp16", format="%.2f"),
                "total_s": st.column_config.NumberColumn("time (s)", format="%.1f")})
            if state.log_tail:
                with st.expander("Sweep log (last lines)"):
                    st.code(state.log_tail, language="text")
            if live and sweep.status != "running":
                st.rerun(scope="app")  # finished: render once more without polling

    panel()


# ----------------------------------------------------------------------------- building

def training_count(path: str, metadata) -> int:
    """Samples in the training source: an array source (.npz) or an image folder."""
    from compress_lab.arrays import read_arrays
    from compress_lab.arrays_preview import is_array_source
    if is_array_source(path):
        return read_arrays(path, metadata.io).n
    return len(cached.scan_folder_cached(path, metadata.class_names))


def build() -> None:
    st.subheader("New sweep")
    model, data = current_model(), current_data()
    with st.spinner("Loading the model…"):
        handle = cached.load_handle(model)
    is_torch = handle.kind == "torch"
    subset = f"at most {data.max_val_images} images of " if data.max_val_images else ""
    st.caption(f"Model **{handle.name}** · validation: {subset}`{data.validation or 'not set'}` · "
               f"training: `{data.train or 'none'}`" + (f" · your metric: `{data.metric}`" if data.metric else "")
               + " (change them on the Model and Data pages)")
    grid: list[dict] = []
    for family, title, blurb in GROUPS:
        with st.container(border=True):
            st.markdown(f"#### {title}")
            st.caption(blurb)
            usable = True
            if family == "training_time" and not is_torch:
                st.warning("Training-time techniques need the PyTorch model; this model is a Core ML package.")
                usable = False
            elif family == "training_time" and not data.train:
                st.warning("Training-time techniques need a training folder: set one on the Data page.")
                usable = False
            names = REGISTRY.names(family)
            if not names:
                st.info("No technique of this family is installed.")
            for name in names:
                config_cls = REGISTRY.config_class(name)
                on = st.checkbox(f"**{name}**: {config_cls.summary}", value=name in DEFAULT_ON and usable,
                                 disabled=not usable, key=f"grid.use.{name}")
                if on and usable:
                    with error_edge(name):
                        grid.append(technique_table(name, config_cls))
    left, right = st.columns(2)
    name = left.text_input("Sweep name", value=handle.name, key="sweep.name")
    workers = right.number_input("Parallel workers", min_value=1, max_value=16, value=sweep_control.default_workers(),
                                 key="sweep.workers")
    if not grid:
        st.info("Include at least one technique to build a grid.")
        return
    spec = sweep_control.build_spec(model, data, grid, name.strip() or handle.name, int(workers), store_folder())
    plan, refused = sweep_control.plan(spec, has_train=bool(data.train), is_torch=is_torch)
    runs = len(plan.points) - len(refused)
    baselines = sweep_control.baseline_count(is_torch)
    train_count = training_count(data.train, handle.metadata) if data.train else 0
    with st.spinner("Estimating the time (measuring a few training steps)…"):
        seconds = sweep_control.estimate(plan, int(workers), handle, train_count)
    cols = st.columns(3)
    cols[0].metric("Runs", runs, help=f"grid points, plus {baselines} uncompressed baselines")
    cols[1].metric("Baselines", baselines)
    cols[2].metric("Estimated time", human_seconds(seconds))
    for point in plan.invalid:
        st.warning(f"Left out (invalid): {point.settings} — {point.error}")
    for line in refused:
        st.warning(f"Left out: {line}")
    for line in plan.warnings:
        st.warning(line)
    busy = sweep_control.running_elsewhere(store_folder())
    if busy is not None:
        st.info(f"A sweep is running on this store (pid {busy}); start the next one when it has finished.")
    if st.button("Start the sweep", type="primary", disabled=runs == 0 or busy is not None, key="sweep.start"):
        with st.spinner("Starting the sweep in the background…"):
            sweep_id = sweep_control.launch(spec, store_folder())
        set_sweep_id(sweep_id)
        st.session_state.pop("sweep.watch", None)
        st.rerun()


page_setup("Sweep")
with error_edge("Sweeps in the store"):
    watch()
st.divider()
with error_edge("Building the grid"):
    build()
