"""Cached wrappers of the engine calls pages make more than once per session.
Keys include file modification times so a changed file is read again."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from compress_lab_app.session import ModelChoice


def _mtime(path: str | None) -> float:
    if not path:
        return 0.0
    p = Path(path).expanduser()
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def model_key(choice: ModelChoice) -> tuple:
    source = str(choice.sample_dir or choice.source)
    return (source, choice.weights, choice.metadata, _mtime(source), _mtime(choice.weights), _mtime(choice.metadata))


@st.cache_resource(max_entries=4, show_spinner=False)
def _load(key: tuple):
    from compress_lab.models.handle import load_model
    source, weights, metadata = key[:3]
    return load_model(source, weights=weights, metadata=metadata)


def load_handle(choice: ModelChoice):
    """The ModelHandle of the choice (loaded once per file version; never mutated by the lab)."""
    return _load(model_key(choice))


@st.cache_data(max_entries=8, show_spinner=False)
def _summary(key: tuple) -> dict[str, Any]:
    from compress_lab.models.summary import summarize
    return summarize(_load(key)).to_dict()


def model_summary(choice: ModelChoice) -> dict[str, Any]:
    return _summary(model_key(choice))


@st.cache_data(max_entries=8, show_spinner=False)
def _measured_sizes(key: tuple) -> dict[str, dict]:
    from compress_lab.models.convert import convert_module
    from compress_lab.models.size import package_size
    handle = _load(key)
    if handle.kind == "coreml":
        return {"as given": package_size(handle.mlpackage).to_dict()}
    out = {}
    with tempfile.TemporaryDirectory(prefix="compress-lab-measure-") as tmp:
        for precision in ("fp32", "fp16"):
            path = convert_module(handle.torch_copy(), handle.metadata, Path(tmp) / f"model_{precision}.mlpackage",
                                  precision=precision)
            out[precision] = package_size(path).to_dict()
    return out


def measured_sizes(choice: ModelChoice) -> dict[str, dict]:
    """Convert the model to fp32 and fp16 Core ML packages and measure them on disk (slow: seconds)."""
    return _measured_sizes(model_key(choice))


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def scan(path: str, class_names: tuple[str, ...] | None, mtime: float):
    from compress_lab.data import scan_folder
    return scan_folder(path, class_names=class_names)


def scan_folder_cached(path: str, class_names) -> Any:
    """scan_folder, cached for 30 s per folder version."""
    return scan(str(path), tuple(class_names) if class_names else None, _mtime(path))


@st.cache_resource(show_spinner=False)
def store(folder: str):
    from compress_lab.store import open_store
    return open_store(folder)


@st.cache_data(max_entries=8, show_spinner=False)
def _metric_directions(spec: str, mtime: float) -> list[tuple[str, bool]]:
    from compress_lab.metrics import load_metric
    return [(m.name, m.higher_is_better) for m in load_metric(spec).descriptions()]


def metric_directions(spec: str) -> list[tuple[str, bool]]:
    """The user metric's value names and whether higher is better; loading runs the file
    (once per file version). A file that does not load raises its ConfigError (not cached)."""
    from compress_lab_app.session import metric_file
    return _metric_directions(spec, _mtime(str(metric_file(spec))))
