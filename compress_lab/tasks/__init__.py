"""Tasks: what a model does, as one seam. A task says how a data source becomes
batches of named input arrays and targets, checks a model's inputs and outputs
against its declaration, names its metrics (with their direction) and the
fidelity measures against the uncompressed model, and gives the loss that
training-time techniques fine-tune with (or the reason there is none).

The engine (techniques, runtime, store, executors) never needs to know what a
model does; everything that does goes through `task_for(metadata)`.

Adding a task is one module in this folder that subclasses `Task` and calls
`register_task(...)` on import, plus its name in BUILTIN_MODULES (or a plugin
file that registers it)."""

from __future__ import annotations

import importlib
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any

from compress_lab.errors import ConfigError

if TYPE_CHECKING:
    from compress_lab.tasks.base import Task

BUILTIN_MODULES = ("classification", "tensors", "embedding", "regression", "language_model", "pitch")
_TASKS: dict[str, "Task"] = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in BUILTIN_MODULES:
            importlib.import_module(f"compress_lab.tasks.{name}")


def register_task(task: "Task") -> "Task":
    """Add a task instance to the registry (its `name` must be new)."""
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"task name {name!r} must be an identifier such as 'classification'")
    if name in _TASKS and type(_TASKS[name]) is not type(task):
        raise ConfigError(f"a task named {name!r} is already registered ({type(_TASKS[name]).__name__})")
    _TASKS[name] = task
    return task


def task_names() -> list[str]:
    _load_builtins()
    return sorted(_TASKS)


def check_task_name(name: Any) -> str:
    """`name` if it is a registered task; else a ConfigError naming close matches."""
    _load_builtins()
    if not isinstance(name, str) or name not in _TASKS:
        close = get_close_matches(str(name), list(_TASKS), n=3, cutoff=0.5) if isinstance(name, str) else []
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"model metadata task = {name!r} is not a known task; {hint}known tasks are {task_names()} "
                          "(leave 'task' out for an image classifier)")
    return name


def get_task(name: str) -> "Task":
    return _TASKS[check_task_name(name)]


def task_for(metadata) -> "Task":
    """The task of a ModelMetadata (or a ModelHandle)."""
    meta = getattr(metadata, "metadata", metadata)
    return get_task(meta.task)
