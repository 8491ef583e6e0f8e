"""Content keys: a run's id is a hash of everything its result depends on, so an
identical run is found in the store and reused instead of recomputed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import compress_lab

RUN_ID_CHARS = 32


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def folder_fingerprint(folder: str | Path) -> str:
    """Hash of a data folder's file list (relative paths, sizes, mtimes).

    Cheap (stat only): editing, adding or removing an image changes it."""
    root = Path(folder)
    digest = hashlib.sha256()
    if root.is_file():  # an array source (.npz): its own name, size and mtime
        st = root.stat()
        digest.update(f"{root.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    for rel, size, mtime in sorted(entries):
        digest.update(f"{rel}|{size}|{mtime}\n".encode())
    return digest.hexdigest()


def data_fingerprint(validation: str | Path, preprocessing: dict, train: str | Path | None = None,
                     _cache: dict | None = None, metric: str | None = None, loss: str | None = None) -> str:
    """The data a run depends on: the validation folder (+ the train folder for a
    technique that reads data) and the effective preprocessing."""
    parts = {"validation": folder_fingerprint(validation), "preprocessing": preprocessing}
    if train is not None:
        parts["train"] = folder_fingerprint(train)
    if metric is not None:  # a user metric file: its name and content (runs without one keep their ids)
        file_part = metric.rsplit(":", 1)[0] if ":" in Path(metric).name else metric
        parts["metric"] = [Path(metric).name, hashlib.sha256(Path(file_part).read_bytes()).hexdigest()]
    if loss is not None:  # a user loss file (training runs only): its name and content
        file_part = loss.rsplit(":", 1)[0] if ":" in Path(loss).name else loss
        parts["loss"] = [Path(loss).name, hashlib.sha256(Path(file_part).read_bytes()).hexdigest()]
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def run_id(model_fingerprint: str, config: dict, data_fp: str, version: str | None = None) -> str:
    payload = {"model": model_fingerprint, "config": config, "data": data_fp,
               "version": version or compress_lab.__version__}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:RUN_ID_CHARS]


def sweep_id(name: str, spec: dict, model_fingerprint: str) -> str:
    """Same spec + same model = same sweep (so running it again resumes it)."""
    digest = hashlib.sha256(canonical_json({"spec": {k: v for k, v in spec.items() if k != "run"},
                                            "model": model_fingerprint}).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60] or "sweep"
    return f"{safe}-{digest}"
