"""Model: choose a sample model or your own, and see what the lab will compress."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from compress_lab.models.handle import SAMPLE_MODELS_DIR, list_sample_models
from compress_lab_app import cached
from compress_lab_app.edge import error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.fmt import human_bytes
from compress_lab_app.session import ModelChoice, current_model, session_id, set_model, store_folder
from compress_lab_app.task_panels import show_task_and_io
from compress_lab_app.uploads import MODEL_SUFFIXES, model_from_folder, save_files, upload_folder

SOURCES = ("Sample model", "A path on this computer", "Upload files")


def choose_model() -> None:
    current = current_model()
    default = {"sample": 0, "path": 1, "upload": 2}.get(current.origin, 0)
    where = st.radio("Where is the model?", SOURCES, index=default, horizontal=True, key="model.where")
    if where == SOURCES[0]:
        samples = list_sample_models()
        if not samples:
            st.warning(f"No sample models in {SAMPLE_MODELS_DIR}. Build them with `python sample_models/build.py` "
                       "(run.sh does this).")
            return
        index = samples.index(current.source) if current.origin == "sample" and current.source in samples else 0
        name = st.selectbox("Sample model", samples, index=index, key="model.sample")
        if current.origin != "sample" or current.source != name:
            set_model(ModelChoice(name))
            st.rerun()  # the sidebar, drawn before the page, shows the new model too
    elif where == SOURCES[1]:
        st.session_state.setdefault("model.path.source", "" if current.origin == "sample" else current.source)
        st.session_state.setdefault("model.path.weights", current.weights or "")
        st.session_state.setdefault("model.path.metadata", current.metadata or "")
        with st.form("model.path_form"):
            source = st.text_input("Model path", key="model.path.source",
                                   help="a folder (model.py + weights.pt + metadata.json), a model.py, "
                                        "a TorchScript file or an .mlpackage")
            weights = st.text_input("Weights (for a model.py)", key="model.path.weights")
            metadata = st.text_input("metadata.json (if not beside the model)", key="model.path.metadata")
            if st.form_submit_button("Load model", type="primary"):
                if not source.strip():
                    st.error("Give the path of the model first.")
                    return
                set_model(ModelChoice(source.strip(), weights.strip() or None, metadata.strip() or None, origin="path"))
                st.rerun()
    else:
        files = st.file_uploader(
            "Upload an .mlpackage as a zip, a TorchScript .pt + metadata.json, or model.py + weights.pt + metadata.json",
            type=[s.lstrip(".") for s in MODEL_SUFFIXES], accept_multiple_files=True, key="model.upload")
        if st.button("Use the uploaded files", disabled=not files, type="primary"):
            with st.spinner("Saving the upload…"):
                folder = upload_folder(store_folder() / "uploads", session_id())
                save_files(folder, [(f.name, f.getvalue()) for f in files])
                set_model(model_from_folder(folder))
            st.rerun()


def show_summary() -> None:
    choice = current_model()
    with st.spinner(f"Loading {choice.source}…"):
        summary = cached.model_summary(choice)
    st.subheader(f"{summary['name']}")
    st.caption(f"{'PyTorch model: post-training and training-time techniques apply' if summary['kind'] == 'torch' else 'Core ML package: post-training techniques only'} · {summary['source']}")
    cols = st.columns(5)
    if summary["task"] == "classification":
        cols[0].metric("Input (C×H×W)", "×".join(map(str, summary["input_shape"][1:])))
        cols[1].metric("Classes", summary["num_classes"])
    else:
        cols[0].metric("Inputs", len(summary["inputs"]))
        cols[1].metric("Outputs", len(summary["outputs"]))
    cols[2].metric("Parameters", f"{summary['parameters']:,}" if summary["parameters"] else "?")
    cols[3].metric("fp16 weights (est.)", human_bytes(summary["fp16_weight_bytes_estimate"]))
    cols[4].metric("fp32 weights (est.)", human_bytes(summary["fp32_weight_bytes_estimate"]))
    if summary["class_names"]:
        st.caption("Classes: " + ", ".join(summary["class_names"][:40]) + (" …" if summary["num_classes"] > 40 else ""))
    show_task_and_io(summary, cached.load_handle(choice).notes)

    measure(choice)
    touched(summary)
    st.markdown("**Layers**")
    layers = pd.DataFrame([{
        "layer": layer["name"], "type": layer["type"], "parameters": layer["parameters"],
        "weight shape": "x".join(map(str, layer["weight_shape"] or [])),
        "post-training": layer["touched_post_training"], "training-time": layer["touched_training_time"],
    } for layer in summary["layers"]])
    st.dataframe(layers, hide_index=True, width="stretch",
                 column_config={"parameters": st.column_config.NumberColumn(format="localized")})
    if summary["task"] == "classification":
        with st.expander("Preprocessing (from the model's metadata)"):
            st.json(summary["preprocessing"])


def measure(choice: ModelChoice) -> None:
    key = ("model.measured",) + cached.model_key(choice)
    if st.button("Convert and measure", help="convert to Core ML fp32 and fp16 and report the real bytes on disk"):
        with st.status("Converting to Core ML and measuring…", expanded=False) as status:
            st.session_state[str(key)] = cached.measured_sizes(choice)
            status.update(label="Converted and measured", state="complete")
    sizes = st.session_state.get(str(key))
    if sizes:
        st.dataframe(pd.DataFrame([{"package": name, "bytes on disk": s.get("package_bytes"),
                                    "weights file (bytes)": s.get("weights_bytes"), "size": human_bytes(s.get("package_bytes")),
                                    "bits per weight": round(s.get("bits_per_weight") or 0, 2)}
                                   for name, s in sizes.items()]), hide_index=True,
                     column_config={"bytes on disk": st.column_config.NumberColumn(format="localized"),
                                    "weights file (bytes)": st.column_config.NumberColumn(format="localized")})


def touched(summary: dict) -> None:
    layers = summary["layers"]
    total = sum(layer["parameters"] for layer in layers) or 1
    post = [layer for layer in layers if layer["touched_post_training"]]
    train = [layer for layer in layers if layer["touched_training_time"]]
    left, right = st.columns(2)
    left.info(f"**Post-training** techniques touch {len(post)} of {len(layers)} layers "
              f"({sum(layer['parameters'] for layer in post) / total:.1%} of the parameters); "
              "weights with fewer than 2,048 elements stay in float.")
    if summary["kind"] == "torch":
        right.info(f"**Training-time** techniques wrap {len(train)} of {len(layers)} layers "
                   f"({sum(layer['parameters'] for layer in train) / total:.1%} of the parameters): "
                   "the Conv and Linear layers.")
    else:
        right.warning("**Training-time** techniques need the PyTorch model; load model.py + weights or TorchScript.")


page_setup("Model")
with error_edge("Choosing the model"):
    choose_model()
with error_edge(f"Loading {current_model().source}"):
    show_summary()
