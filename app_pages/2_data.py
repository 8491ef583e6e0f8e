"""Data: the validation source every compressed model is evaluated on, and the
training source training-time techniques fine-tune with: image folders, or array
sources (.npz) previewed array by array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from compress_lab.arrays import image_input_of, image_preprocessing
from compress_lab.arrays_preview import is_array_source
from compress_lab.data import check_preprocessing, load_image
from compress_lab.errors import DataError
from compress_lab.models.metadata import COLOR_MODES
from compress_lab.plots import bar_figure
from compress_lab_app import cached
from compress_lab_app.edge import describe, error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.session import current_data, current_model, default_data, metric_file, session_id, set_data, store_folder
from compress_lab_app.uploads import save_files, upload_folder
from compress_lab_app.task_panels import shape_text, show_array_source

SAMPLES_SHOWN = 20


def choose_folders() -> None:
    data = current_data()
    defaults = default_data(current_model())
    with st.form("data.folders"):
        val = st.text_input("Validation folder", value=data.validation or "",
                            help="<class>/<image> folders (class folder name = class name), a flat folder of images, "
                                 "or an array source: an .npz (one array per input name) or a folder of .npz files")
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


METRIC_ERROR_KEY = "data.metric.error"
METRIC_SHOWN_KEY = "data.metric.shown"   # the metric the text field was last filled with
CODE_WARNING = ("A metric file is code: using it runs it with your user's rights, exactly like `import` (and like a "
                "model definition). Only use files you trust.")


def choose_metric() -> None:
    """The user's metric file (`path/to/metric.py[:function]`): its values are stored with every run of a sweep."""
    data = current_data()
    with st.expander("Your metric (optional)" + (f": `{data.metric}`" if data.metric else ""),
                     expanded=bool(data.metric) or METRIC_ERROR_KEY in st.session_state):
        st.caption("A Python file with `def metric(outputs, targets) -> dict of numbers` and `DIRECTIONS = "
                   "{\"name\": \"higher\" or \"lower\"}`; sweeps store its values with every run, and Results "
                   "offers them as axes and budgets.")
        st.info(CODE_WARNING, icon=":material/warning:")   # a box, not st.warning: warnings are for what went wrong
        with st.form("data.metric"):
            if ("data.metric.path" not in st.session_state   # first visit, back from another page, restored
                    or st.session_state.get(METRIC_SHOWN_KEY, "unset") != data.metric):   # set, or reset by a new model
                st.session_state["data.metric.path"] = data.metric or ""
                st.session_state[METRIC_SHOWN_KEY] = data.metric
            text = st.text_input("Metric file (path/to/metric.py, or path/to/metric.py:function)",
                                 key="data.metric.path")
            upload = st.file_uploader("…or upload a metric .py file", type=["py"], key="data.metric.upload")
            left, right = st.columns([1, 4])
            use = left.form_submit_button("Use metric", type="primary")
            clear = right.form_submit_button("No metric", disabled=not data.metric)
        if clear:
            st.session_state.pop(METRIC_ERROR_KEY, None)
            set_data(metric=None)
            st.rerun()
        if use:
            spec = text.strip()
            if upload is not None:
                folder = upload_folder(store_folder() / "uploads", session_id())
                (saved,) = save_files(folder, [(upload.name, upload.getvalue())])
                spec = str(saved) + (f":{spec.rsplit(':', 1)[1]}" if ":" in Path(spec).name else "")
            if not spec:
                set_data(metric=None)
                st.session_state.pop(METRIC_ERROR_KEY, None)
                st.rerun()
            spec = _absolute(spec)
            try:
                cached.metric_directions(spec)
            except Exception as e:  # noqa: BLE001 - the user's file may raise anything; shown, not set
                st.session_state[METRIC_ERROR_KEY] = f"{describe(e)} Fix the file and press Use metric again, " \
                                                     "or clear the field to use no metric."
            else:
                st.session_state.pop(METRIC_ERROR_KEY, None)
                set_data(metric=spec)
                st.rerun()
        if METRIC_ERROR_KEY in st.session_state:
            st.error(f"Your metric: {st.session_state[METRIC_ERROR_KEY]}", icon=":material/error:")
        elif data.metric:
            try:
                directions = cached.metric_directions(data.metric)
            except Exception as e:  # noqa: BLE001 - it loaded before; the file has changed since
                st.error(f"Your metric {data.metric}: {describe(e)} Fix the file, or press No metric.",
                         icon=":material/error:")
                return
            st.success(f"Metric `{data.metric}` gives: " + "; ".join(
                f"**{name}**: {'higher' if higher else 'lower'} is better" for name, higher in directions))


def _absolute(spec: str) -> str:
    """The spec with its file made absolute (a sweep runs in another process and folder)."""
    path = Path(spec).expanduser()
    if path.is_file() or ":" not in path.name:
        return str(path.resolve())
    file, name = spec.rsplit(":", 1)
    return f"{Path(file).expanduser().resolve()}:{name}"


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


def show_folder(title: str, path: str | None, metadata, preprocessing, limit: int | None = None,
                image_shape=None) -> None:
    st.subheader(title)
    if not path:
        st.info("No folder set." + (" Training-time techniques will be unavailable." if "Training" in title else ""))
        return
    if image_shape is None:
        raise DataError(f"{path} is not an array source, and task {metadata.task!r} reads arrays: give an .npz file "
                        "(one array per input name, first axis = sample) or a folder of .npz files")
    with st.spinner(f"Scanning {path}…"):
        folder = cached.scan_folder_cached(path, metadata.class_names or None)
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
        show_samples(folder, image_shape, preprocessing)


def show_samples(folder, image_shape, preprocessing) -> None:
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
            cols[i % 10].image(_displayable(load_image(path, preprocessing, image_shape), preprocessing),
                               caption=caption, width="stretch")
        except DataError as e:
            cols[i % 10].caption(f"{Path(path).name}: {e}")


def _displayable(x: np.ndarray, preprocessing) -> np.ndarray:
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(-1, 1, 1)
    pixels = (x * std + mean) / np.float32(preprocessing.scale)
    image = np.clip(pixels, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return image[:, :, 0] if image.shape[2] == 1 else image


def show_source(title: str, path: str | None, metadata, preprocessing, image_shape, limit: int | None = None) -> None:
    """An array source (.npz, folder of .npz) as its arrays; anything else as an image folder."""
    if path and is_array_source(path):
        st.subheader(title)
        show_array_source(title, path, metadata.io.input_names)
        return
    show_folder(title, path, metadata, preprocessing, limit, image_shape)


def model_caption(metadata) -> str:
    if metadata.task == "classification":
        return f"Model **{metadata.name}**: input {list(metadata.input_shape)}, {metadata.num_classes} classes"
    inputs = ", ".join(f"{i.name} {shape_text(i.shape)} {i.dtype}" for i in metadata.io.inputs)
    return (f"Model **{metadata.name}** (task {metadata.task}): inputs {inputs}. Its validation source is an .npz "
            "(one array per input name, first axis = sample; other arrays are targets) or a folder of one-sample "
            ".npz files" + (", or a folder of images" if image_input_of(metadata.io) is not None else ""))


page_setup("Data")
with error_edge("Choosing folders"):
    choose_folders()
with error_edge("Your metric"):
    choose_metric()
with error_edge("Reading the model"):
    handle = cached.load_handle(current_model())
    metadata = handle.metadata
    image_spec = image_input_of(metadata.io)
    if image_spec is not None:   # a Core ML image input: the package holds its normalisation
        preprocessing = metadata.preprocessing if metadata.task == "classification" else image_preprocessing(image_spec)
        image_shape = tuple(image_spec.shape)
        st.caption(f"Image input {image_spec.name!r} ({image_spec.image.describe()}): images are resized to "
                   f"{image_shape[2]}x{image_shape[1]} and fed as pixels 0..255; the package applies its own scale "
                   "and bias.")
    elif metadata.task == "classification":
        adjust_preprocessing(metadata)
        preprocessing = metadata.preprocessing.with_overrides(current_data().preprocessing)
        image_shape = metadata.input_shape
    else:
        preprocessing, image_shape = None, None
    st.caption(model_caption(metadata))
with error_edge("Validation source"):
    show_source("Validation", current_data().validation, metadata, preprocessing, image_shape,
                current_data().max_val_images)
with error_edge("Training source"):
    show_source("Training", current_data().train, metadata, preprocessing, image_shape)
