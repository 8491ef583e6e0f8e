"""Panels that depend on what a model does: its task and named inputs/outputs (Model
page), and a preview of an array source (Data page). The rows are plain data built
here (tested); the pages only draw them."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import streamlit as st

from compress_lab.models.io_spec import FLEXIBLE, MEANINGS


def shape_text(shape: Sequence | None, batch: bool = True, batch_axis: int = 0) -> str:
    """A shape for a person: `N × T (flexible) × 24`; null dims are `any (flexible)`; the
    batch N where the model takes it (`batch_axis`: `2 × N × 16` for an LSTM's h0)."""
    if shape is None:
        return "any"
    dims = []
    for d in shape:
        if d is None or d == FLEXIBLE:
            dims.append("any (flexible)")
        elif isinstance(d, str):
            dims.append(f"{d} (flexible)")
        else:
            dims.append(str(d))
    if batch:
        dims.insert(min(int(batch_axis or 0), len(dims)), "N")
    return " × ".join(dims)


def io_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per input and output of a model summary (compress_lab.models.summary)."""
    rows = []
    for spec in summary.get("inputs") or []:
        image = spec.get("image")
        if image:
            bias = ", ".join(f"{b:.4g}" for b in image["bias"])
            meaning = (f"image, {image['color_layout']}: fed RGB pixels 0..255, the package applies "
                       f"x {image['scale']:.4g} + [{bias}]")
        else:
            meaning = spec.get("description") or ("token ids / indices" if spec.get("dtype") == "int32" else "tensor")
        rows.append({"": "input", "name": spec["name"], "shape": shape_text(spec.get("shape"), True,
                                                                            spec.get("batch_axis", 0)),
                     "dtype": spec.get("dtype", "float32"), "meaning": meaning})
    for spec in summary.get("outputs") or []:
        meaning = spec.get("meaning", "values")
        rows.append({"": "output", "name": spec["name"], "shape": shape_text(spec.get("shape"), True,
                                                                             spec.get("batch_axis", 0)),
                     "dtype": "float32", "meaning": f"{meaning}: {MEANINGS.get(meaning, '')}".rstrip(": ")})
    return rows


def show_task_and_io(summary: dict[str, Any], notes: Sequence[str] = ()) -> None:
    from compress_lab.tasks import get_task
    task = get_task(summary.get("task") or "classification")
    st.markdown(f"**Task: {task.name}** ({task.label}): {task.description}")
    for note in notes:
        st.info(note)
    st.dataframe(pd.DataFrame(io_rows(summary)), hide_index=True, width="stretch", key="model.io")
    st.caption("N = samples (the batch); a flexible dimension takes any size.")


def array_rows(preview) -> list[dict[str, Any]]:
    """One row per array of an ArrayPreview."""
    per_sample = preview.layout == "folder"
    return [{"array": a.name, "role": a.role,
             "shape" + (" per sample" if per_sample else ""): " × ".join(map(str, a.shape)) or "scalar",
             "dtype": a.dtype, "min": a.min, "max": a.max, "mean": a.mean} for a in preview.arrays]


def sample_rows(preview) -> list[dict[str, str]]:
    """The first samples: one row each, one column per array."""
    count = max((len(a.samples) for a in preview.arrays), default=0)
    return [{"sample": str(i), **{a.name: (a.samples[i] if i < len(a.samples) else "") for a in preview.arrays}}
            for i in range(count)]


def show_array_source(title: str, path: str, input_names: Sequence[str]) -> None:
    from compress_lab.arrays_preview import preview_arrays
    preview = preview_arrays(path, input_names)
    layout = "one .npz, first axis = sample" if preview.layout == "stacked" else "a folder of one-sample .npz files"
    st.caption(f"`{path}`: {preview.samples:,} samples ({layout}), {len(preview.arrays)} arrays")
    for note in preview.notes:
        st.warning(note)
    missing = [n for n in input_names if n not in {a.name for a in preview.arrays}]
    if missing:
        st.warning(f"no array for input(s) {missing}: save one array per input name")
    st.dataframe(pd.DataFrame(array_rows(preview)), hide_index=True, width="stretch", key=f"arrays-{title}")
    if "Validation" in title:
        st.markdown("**First samples** (values flattened)")
        st.dataframe(pd.DataFrame(sample_rows(preview)), hide_index=True, width="stretch", key=f"samples-{title}")
