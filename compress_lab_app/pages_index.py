"""The pages of the app, the home page, and the at-a-glance sidebar."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from compress_lab_app.edge import error_edge
from compress_lab_app.entry import require_entry
from compress_lab_app.session import (choose_store_folder, current_data, current_model, current_sweep_id,
                                      known_store_folders, store_folder)


@dataclass(frozen=True)
class PageInfo:
    path: str
    title: str
    icon: str
    url: str
    blurb: str


ORIGINS = {"sample": "sample model", "path": "from a path", "upload": "uploaded"}

PAGES = (
    PageInfo("app_pages/1_model.py", "Model", ":material/memory:", "model",
             "Choose a sample model or your own; see its layers, sizes, and what each technique would touch."),
    PageInfo("app_pages/2_data.py", "Data", ":material/photo_library:", "data",
             "Pick validation and training folders, check class counts and preprocessed samples."),
    PageInfo("app_pages/3_sweep.py", "Sweep", ":material/tune:", "sweep",
             "Build a grid of post-training and training-time techniques, start it, watch it run."),
    PageInfo("app_pages/4_results.py", "Results", ":material/scatter_plot:", "results",
             "Accuracy vs size, both families side by side, the Pareto frontier, per-run details."),
    PageInfo("app_pages/5_export.py", "Export", ":material/download:", "export",
             "Download a compressed .mlpackage with its config and metrics, or the results as CSV."),
    PageInfo("app_pages/6_sensitivity.py", "Sensitivity", ":material/equalizer:", "sensitivity",
             "Per-layer sensitivity, and the smallest mixed-precision model within an accuracy budget."),
)


def home_page() -> None:
    st.title("compress lab")
    st.markdown(
        "Compress a neural network with **Core ML Tools**, evaluate every compressed model the same way, "
        "and compare accuracy against size on disk.\n\n"
        "- **Post-training** (data-free): palettize, quantize and prune the weights of a Core ML model. Seconds per run.\n"
        "- **Training-time**: fine-tune the PyTorch model while compressing (DKM, QAT, magnitude pruning), then convert. "
        "Slower, needs training images, usually keeps more accuracy.\n\n"
        "Both end as a Core ML `.mlpackage` and are evaluated on the same validation images, so the two curves are comparable.")
    with error_edge("current state"):
        _glance_columns()
    st.subheader("Where to go")
    for page in PAGES:
        st.page_link(page.path, label=f"**{page.title}**: {page.blurb}", icon=page.icon)


def _glance_columns() -> None:
    model, data = current_model(), current_data()
    left, middle, right = st.columns(3)
    with left.container(border=True):
        st.caption("Model")
        st.markdown(f"**{_short(model.source)}**  \n{ORIGINS.get(model.origin, model.origin)}")
    with middle.container(border=True):
        st.caption("Data")
        st.markdown(f"validation: `{_short(data.validation or 'not set')}`  \ntraining: `{_short(data.train or 'none')}`")
    with right.container(border=True):
        st.caption("Sweep")
        sweep_id = current_sweep_id()
        st.markdown(f"**{sweep_id or 'none yet'}**  \nstore: `{_short(str(store_folder()))}`")


SWEEP_PICKERS = ("results.sweep", "export.sweep", "sensitivity.sweep", "sweep.watch")  # choose_sweep keys


def glance_sweep():
    """The sweep the pages show: a sweep picker's value changed on this rerun, else the session's
    sweep if it is in the chosen store, else that store's newest (what choose_sweep defaults to)."""
    from compress_lab_app import cached
    from compress_lab_app.session import STORE_FILE
    if not (store_folder() / STORE_FILE).is_file():
        return None
    try:
        sweeps = cached.store(str(store_folder())).list_sweeps()
    except Exception:  # an unreadable store: the page itself says why
        return None
    by_id = {s.sweep_id: s for s in sweeps}
    current = current_sweep_id()
    for key in SWEEP_PICKERS:
        picked = st.session_state.get(key)
        if picked in by_id and picked != current:
            return by_id[picked]
    return by_id.get(current) or (sweeps[0] if sweeps else None)


def sidebar_glance() -> None:
    model, data = current_model(), current_data()
    sweep = glance_sweep()
    with st.sidebar:
        st.caption("At a glance")
        spec = (sweep.spec or {}) if sweep is not None else {}
        swept_model = (spec.get("model") or {}).get("source")
        swept_data = spec.get("data") or {}
        if swept_model and not (_same(swept_model, model.source, by_name=True)
                                and _same(swept_data.get("validation"), data.validation)):
            # the chosen sweep was made from another model or data (e.g. a store from `compress-lab sweep`)
            st.markdown(f"sweep `{sweep.name}` ({sweep.sweep_id[:12]})  \nmodel **{_short(swept_model)}**  \n"
                        f"validation `{_short(swept_data.get('validation') or 'not set')}`  \n"
                        f"training `{_short(swept_data.get('train') or 'none')}`")
            st.caption(f"The app's own model: {_short(model.source)} (Model and Data pages)")
        else:
            st.markdown(f"model **{_short(model.source)}**  \nvalidation `{_short(data.validation or 'not set')}`"
                        + (f" (≤ {data.max_val_images} images)" if data.max_val_images else "")
                        + f"  \ntraining `{_short(data.train or 'none')}`"
                        + (f"  \nsweep `{sweep.sweep_id}`" if sweep is not None else ""))
        _store_picker()


def _store_picker() -> None:
    """Sweeps started with `compress-lab sweep` land in <spec folder>/.lab/<name>: list those stores too."""
    stores = [str(p) for p in known_store_folders()]
    current = str(store_folder())
    if len(stores) > 1:
        picked = st.selectbox("Results store", stores, index=stores.index(current), format_func=lambda p: _short(p, 3),
                              help="The app's own store, and the stores of sweeps started with `compress-lab sweep` "
                                   "(<spec folder>/.lab/<name>). Pick one to see its sweeps.")
        if picked != current:
            choose_store_folder(picked)
            st.rerun()


def _same(a: str | None, b: str | None, by_name: bool = False) -> bool:
    """Two model sources / folders are the same one (a sample's name matches its folder)."""
    from pathlib import Path
    if not a or not b:
        return a == b
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.resolve() == pb.resolve() or (by_name and pa.name == pb.name)


def _short(text: str, keep: int = 2) -> str:
    parts = str(text).replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-keep:]) if len(parts) > keep else str(text)


def page_setup(title: str) -> None:
    """What every page does first: refuse unless run through app.py (the one entry), then its title."""
    require_entry()
    st.set_page_config(page_title=f"{title} · compress lab", page_icon=":material/compress:", layout="wide")
    st.title(title)
