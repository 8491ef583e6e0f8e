"""Session keys and what the user has chosen so far (model, data, sweep).

Every page reads the choices through these functions, so a page opened first
(or a fresh browser tab) starts from the same defaults: the sample model
`mnist_cnn` with its own validation and training folders."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import streamlit as st

from compress_lab.models.handle import SAMPLE_MODELS_DIR
from compress_lab.store.locate import STORE_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = "mnist_cnn"

MODEL_KEY = "lab.model"
DATA_KEY = "lab.data"
SWEEP_KEY = "lab.sweep_id"
SESSION_ID_KEY = "lab.session_id"
STORE_KEY = "lab.store_folder"


@dataclass(frozen=True)
class ModelChoice:
    """A model source as load_model takes it: sample name, folder, file or .mlpackage."""

    source: str
    weights: str | None = None
    metadata: str | None = None
    origin: str = "sample"  # "sample" | "path" | "upload"

    @property
    def sample_dir(self) -> Path | None:
        folder = SAMPLE_MODELS_DIR / self.source
        return folder if self.origin == "sample" and folder.is_dir() else None

    @property
    def folder(self) -> Path | None:
        """Where the model's files are (for default data folders)."""
        if self.sample_dir is not None:
            return self.sample_dir
        path = Path(self.source).expanduser()
        if path.is_dir() and path.suffix != ".mlpackage":
            return path
        return path.parent if path.exists() else None

    def spec_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": str(self.sample_dir or self.source)}
        if self.weights:
            out["weights"] = self.weights
        if self.metadata:
            out["metadata"] = self.metadata
        return out


@dataclass(frozen=True)
class DataChoice:
    validation: str | None
    train: str | None = None
    preprocessing: dict = field(default_factory=dict)  # overrides of the model's preprocessing
    max_val_images: int | None = None
    metric: str | None = None   # the user's metric file, "path/to/metric.py[:function]" (compress_lab.metrics)


def metric_file(spec: str) -> Path:
    """The file of a metric spec `path/to/metric.py[:function]`."""
    path = Path(spec).expanduser()
    return path if path.is_file() or ":" not in path.name else path.with_name(path.name.rsplit(":", 1)[0])


def default_store_folder() -> Path:
    """The lab's own store: $COMPRESS_LAB_STORE or ./lab-store in the repository."""
    return Path(os.environ.get("COMPRESS_LAB_STORE") or REPO_ROOT / "lab-store").expanduser().resolve()


def store_folder() -> Path:
    """The results store this session looks at: the one picked in the sidebar, else the default."""
    chosen = st.session_state.get(STORE_KEY)
    return Path(chosen) if chosen else default_store_folder()


def choose_store_folder(folder: str | Path) -> None:
    folder = Path(folder).resolve()
    if folder != store_folder():
        st.session_state[STORE_KEY] = str(folder)
        st.session_state.pop(SWEEP_KEY, None)  # that sweep lives in the other store


def known_store_folders() -> list[Path]:
    """The default store plus the stores `compress-lab sweep` writes by default (<spec folder>/.lab/<name>)
    in the repository, one folder down (e.g. examples/.lab/mnist), and in the current folder."""
    found = [default_store_folder()]
    for base in dict.fromkeys([REPO_ROOT, Path.cwd().resolve()]):
        for pattern in ("lab-store", ".lab/*", "*/.lab/*"):
            found.extend(p.parent.resolve() for p in sorted(base.glob(f"{pattern}/{STORE_FILE}")))
    chosen = st.session_state.get(STORE_KEY)
    if chosen:
        found.append(Path(chosen))
    return list(dict.fromkeys(found))


def session_id() -> str:
    if SESSION_ID_KEY not in st.session_state:
        st.session_state[SESSION_ID_KEY] = uuid.uuid4().hex[:16]
    return st.session_state[SESSION_ID_KEY]


def current_model() -> ModelChoice:
    if MODEL_KEY not in st.session_state:
        st.session_state[MODEL_KEY] = ModelChoice(DEFAULT_SAMPLE)
    return st.session_state[MODEL_KEY]


def set_model(choice: ModelChoice) -> None:
    """Choose a model; the data folders go back to that model's defaults."""
    st.session_state[MODEL_KEY] = choice
    st.session_state[DATA_KEY] = default_data(choice)


# Where a model's own data lies beside it: an image folder or an array source (.npz), first found wins.
DEFAULT_SOURCES = {"validation": ("val", "val.npz"), "train": ("train", "train.npz")}


def default_source(folder: Path, role: str) -> str | None:
    """The model folder's validation or training source: `val/` or `val.npz` (`train/`, `train.npz`)."""
    for name in DEFAULT_SOURCES[role]:
        path = folder / name
        if (path.is_dir() and not name.endswith(".npz")) or (path.is_file() and name.endswith(".npz")):
            return str(path)
    return None


def default_data(choice: ModelChoice) -> DataChoice:
    folder = choice.folder
    if folder is None:
        return DataChoice(None, None)
    return DataChoice(default_source(folder, "validation"), default_source(folder, "train"))


def current_data() -> DataChoice:
    if DATA_KEY not in st.session_state:
        st.session_state[DATA_KEY] = default_data(current_model())
    return st.session_state[DATA_KEY]


def set_data(**changes) -> DataChoice:
    data = replace(current_data(), **changes)
    st.session_state[DATA_KEY] = data
    return data


def current_sweep_id() -> str | None:
    return st.session_state.get(SWEEP_KEY)


def set_sweep_id(sweep_id: str | None) -> None:
    st.session_state[SWEEP_KEY] = sweep_id
