"""Data: the validation folder every compressed model is evaluated on, and the
training folder training-time techniques fine-tune with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from compress_lab.data import check_preprocessing, load_image
from compress_lab.errors import DataError
from compress_lab.models.metadata import COLOR_MODES
from compress_lab.plots import bar_figure
from compress_lab_app import cached
from compress_lab_app.edge import error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.session import current_data, current_model, default_data, set_data

SAMPLES_SHOWN = 20


def choose_folders() -> None:
    data = current_data()
    defaults = default_data(current_model())
    with st.form("data.folders"):
        val = st.text_input("Validation folder", value=data.validation or "",
                            help="<class>/<image> folders (class folder name = class name), or a flat folder of images")
        train = st.text_input("Training folder (optional)", value=data.train or "",
                              help="needed by training-time techniques (DKM, QAT, magnitude pruning)")
        limit = st.number_input("Use at most N validation images (0 = all)", min_value=0, step=50,
                                value=int(data.max_val_images or 0),
                                help="a class-balanced subset, for a quick sweep")
        left, right = st.columns([1, 4])
        submitted = left.form_submit_button("Scan", type="primary")
        reset = right.form_submit_button("Back to the model's defaults")
    if submitted:
        set_data(validation=val.strip() or None, train=train.strip() or None, max_val_images=int(limit) or None)
    if reset:
        set_data(validation=defaults.validation, train=defaults.train, max_val_images=None, preprocessing={})
    if submitted or reset:
        st.rerun()


def adjust_preprocessing(metadata) -> None:
    data = current_data()
    base = metadata.preprocessing
    current = base.with_overrides(data.preprocessing)
    with st.expander("Preprocessing" + (" (changed from the model's)" if data.preprocessing else ""),
                     expanded=bool(data.preprocessing)):
        with st.form("data.preprocessing"):
            cols = st.columns(5)
            color = cols[0].selectbox("Color", COLOR_MODES, index=COLOR_MODES.index(current.color))
            resize = cols[1].number_input("Resize shorter side (0 = straight to input size)", min_value=0,
                                          value=int(current.resize or 0))
            scale = cols[2].number_input("Scale", value=float(current.scale), format="%.6f")
            mean = cols[3].text_input("Mean (per channel)", value=", ".join(f"{m:g}" for m in current.mean))
            std = cols[4].text_input("Std (per channel)", value=", ".join(f"{s:g}" for s in current.std))
            apply = st.form_submit_button("Apply")
        if apply:
            overrides = {"color": color, "resize": int(resize) or None, "scale": float(scale),
                         "mean": _floats(mean, "mean"), "std": _floats(std, "std")}
            candidate = base.with_overrides(overrides)
            check_preprocessing(candidate, metadata.input_shape)
            changed = {k: v for k, v in overrides.items() if candidate.to_dict()[k] != base.to_dict()[k]}
            set_data(preprocessing=changed)
            st.rerun()


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise DataError(f"preprocessing {name} {text!r} must be numbers separated by commas, e.g. 0.485, 0.456, 0.406") from None
    if not values:
        raise DataError(f"preprocessing {name} is empty: give one value, or one per channel")
    return values


def show_folder(title: str, path: str | None, metadata, preprocessing, limit: int | None = None) -> None:
    st.subheader(title)
    if not path:
        st.info("No folder set." + (" Training-time techniques will be unavailable." if "Training" in title else ""))
        return
    with st.spinner(f"Scanning {path}…"):
        folder = cached.scan_folder_cached(path, metadata.class_names)
    counts = folder.class_counts()
    total = len(folder)
    used = min(total, limit) if limit else total
    st.caption(f"`{path}`: {total:,} images" + (f", {len(counts)} classes" if counts else " (unlabelled)")
               + (f"; a sweep uses a class-balanced {used:,}" if limit and limit < total else ""))
    for warning in folder.warnings:
        st.warning(warning)
    if folder.skipped:
        with st.expander(f"{len(folder.skipped)} file(s) skipped"):
            st.dataframe([{"file": str(p), "reason": r} for p, r in folder.skipped], hide_index=True)
    if counts:
        figure = bar_figure({"names": list(counts), "values": list(counts.values())}, "class", "images")
        figure.update_xaxes(type="category")
        figure.update_layout(height=260)
        st.plotly_chart(figure, key=f"counts-{title}")
    if "Validation" in title:
        show_samples(folder, metadata, preprocessing)


def show_samples(folder, metadata, preprocessing) -> None:
    st.markdown("**Samples after preprocessing** (what the model sees, mapped back to pixels)")
    picks, seen = [], set()
    for path, label in folder.samples:  # one per class first, then fill up
        if label not in seen:
            picks.append((path, label))
            seen.add(label)
    for item in folder.samples:
        if len(picks) >= SAMPLES_SHOWN:
            break
        if item not in picks:
            picks.append(item)
    picks = picks[:SAMPLES_SHOWN]
    cols = st.columns(10)
    for i, (path, label) in enumerate(picks):
        caption = folder.classes[label] if label is not None else Path(path).name
        try:
            cols[i % 10].image(_displayable(load_image(path, preprocessing, metadata.input_shape), preprocessing),
                               caption=caption, width="stretch")
        except DataError as e:
            cols[i % 10].caption(f"{Path(path).name}: {e}")


def _displayable(x: np.ndarray, preprocessing) -> np.ndarray:
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(-1, 1, 1)
    pixels = (x * std + mean) / np.float32(preprocessing.scale)
    image = np.clip(pixels, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return image[:, :, 0] if image.shape[2] == 1 else image


page_setup("Data")
with error_edge("Choosing folders"):
    choose_folders()
with error_edge("Reading the model"):
    handle = cached.load_handle(current_model())
    metadata = handle.metadata
    adjust_preprocessing(metadata)
    preprocessing = metadata.preprocessing.with_overrides(current_data().preprocessing)
    st.caption(f"Model **{metadata.name}**: input {list(metadata.input_shape)}, {metadata.num_classes} classes")
with error_edge("Validation folder"):
    show_folder("Validation", current_data().validation, metadata, preprocessing, current_data().max_val_images)
with error_edge("Training folder"):
    show_folder("Training", current_data().train, metadata, preprocessing)
