"""The technique contract: one frozen config dataclass per technique, a registry,
and one verb, `compress(model, config, out)`.

A technique module defines its config (subclass of TechniqueConfig, validated in
__post_init__) and a handler, and registers them with `@register(ConfigClass)`.
Adding a technique = adding one module and importing it in techniques/__init__.py."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from compress_lab.errors import CancelledError, ConfigError
from compress_lab.models.handle import ModelHandle

FAMILIES = ("post_training", "training_time")


class DataNeed(str, enum.Enum):
    NONE = "none"
    CALIBRATION = "calibration"
    TRAINING = "training"


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config. Subclasses set the class attributes and
    validate their fields in __post_init__ (raise ConfigError naming the value
    and the allowed ones)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    data_need: ClassVar[DataNeed] = DataNeed.NONE
    summary: ClassVar[str] = ""
    label_fields: ClassVar[tuple[str, ...]] = ()  # always shown in the label, default or not
    needs_loss: ClassVar[bool] = False  # minimises the task's (or the user's) loss: refused for tasks without one

    def train_folder_needed(self) -> bool:
        """Whether this config reads the training folder (runs without one are refused before any work)."""
        return self.data_need is not DataNeed.NONE

    def extra_data_folder(self) -> str | None:
        """A folder this config reads besides the validation and training ones (e.g. a calibration folder)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"technique": self.name}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TechniqueConfig":
        data = dict(data)
        technique = data.pop("technique", cls.name)
        if technique != cls.name:
            raise ConfigError(f"config is for technique {technique!r}, not {cls.name!r}")
        allowed = {f.name: f for f in dataclasses.fields(cls)}
        not_names = [k for k in data if not isinstance(k, str)]
        if not_names:
            raise ConfigError(f"unknown setting(s) {not_names!r} for technique {cls.name!r}: setting names are strings; "
                              f"allowed: {sorted(allowed)}")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, allowed, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"unknown setting(s) {', '.join(hints)} for technique {cls.name!r}; allowed: {sorted(allowed)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(cls.name, k, v, hints.get(k)) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"technique {cls.name!r}: {e}") from None

    def label(self) -> str:
        """A short human label: the technique, its `label_fields`, and the other settings that differ from the defaults."""
        parts = [self.name]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            if f.name in self.label_fields or value != default:
                parts.append(f"{f.name}={_plain(value)}")
        return " ".join(str(p) for p in parts)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _coerce(technique: str, key: str, value: Any, hint: Any) -> Any:
    """Check a plain value against the field's annotation; coerce only lossless cases (int -> float, list -> tuple)."""
    if hint is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(technique, key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} has the wrong type; expected {_type_name(hint)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} is not allowed; use one of {list(args)}")
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} must be a list")
        inner = args[0] if args else None
        items = [_coerce(technique, key, v, inner) for v in value]
        return tuple(items) if tuple in (origin, hint) else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} must be a table/dict")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} must be a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} must be an integer")
        return int(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} must be true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"technique {technique!r}: setting {key!r} = {value!r} must be a string")
        return value
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# --------------------------------------------------------------------------- running

@dataclass(frozen=True)
class Progress:
    """One progress report: `stage` (e.g. "compress", "finetune", "convert"), `done` of `total` steps."""

    stage: str
    done: int
    total: int
    message: str = ""
    loss: float | None = None
    elapsed_s: float = 0.0

    @property
    def eta_s(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        return self.elapsed_s / self.done * max(self.total - self.done, 0)


@dataclass
class CompressContext:
    """What a handler may use besides its config."""

    handle: ModelHandle
    workdir: Path
    train_dir: Path | None = None
    calibration_dir: Path | None = None
    validation_dir: Path | None = None
    preprocessing_overrides: dict[str, Any] | None = None
    loss: str | None = None          # the user's loss, "path/to/loss.py[:function]" (compress_lab/metrics)
    progress: Callable[[Progress], None] | None = None
    cancel_event: threading.Event | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self, event: Progress) -> None:
        if self.progress is not None:
            self.progress(event)

    def check_cancelled(self) -> None:
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise CancelledError("cancelled by the user")

    def float_package(self, precision: str = "fp16") -> Path:
        """The uncompressed Core ML package of the model at `precision`, converted once per model and cached."""
        if self.handle.kind == "coreml":
            return self.handle.mlpackage
        from compress_lab.models.convert import convert_module
        path = Path(self.workdir) / "float" / f"{self.handle.fingerprint[:16]}_{precision}.mlpackage"
        with self._lock:
            if not (path / "Manifest.json").is_file():
                # other processes (workers, a second sweep on the same store) may convert it at the same
                # time: convert beside it, then move into place unless one of them got there first
                import os
                import shutil
                import uuid
                tmp = path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.mlpackage")
                try:
                    convert_module(self.handle.torch_copy(), self.handle.metadata, tmp, precision=precision)
                    if not (path / "Manifest.json").is_file():
                        if path.exists():  # a leftover without a manifest (a crash mid-move)
                            shutil.rmtree(path, ignore_errors=True)
                        try:
                            tmp.rename(path)
                        except OSError:
                            if not (path / "Manifest.json").is_file():
                                raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return path


@dataclass
class CompressOutcome:
    """A compressed Core ML package and how long each stage took (seconds)."""

    path: Path
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[TechniqueConfig, CompressContext, Path], CompressOutcome]


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[type[TechniqueConfig], Handler]] = {}

    def add(self, config_cls: type[TechniqueConfig], handler: Handler) -> None:
        name = config_cls.name
        if not name:
            raise ValueError(f"{config_cls.__name__} has no technique name")
        if config_cls.family not in FAMILIES:
            raise ValueError(f"{config_cls.__name__}.family {config_cls.family!r} must be one of {FAMILIES}")
        if name in self._entries:
            raise ValueError(f"technique {name!r} is registered twice ({self._entries[name][0].__name__} and {config_cls.__name__})")
        self._entries[name] = (config_cls, handler)

    def config_class(self, name: str) -> type[TechniqueConfig]:
        return self._entry(name)[0]

    def handler(self, name: str) -> Handler:
        return self._entry(name)[1]

    def names(self, family: str | None = None) -> list[str]:
        return sorted(n for n, (cls, _) in self._entries.items() if family is None or cls.family == family)

    def _entry(self, name: str):
        if not isinstance(name, str):
            raise ConfigError(f"unknown technique {name!r}: a technique is named by a string, one of: {', '.join(self.names())}")
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"unknown technique {name!r}.{hint} Known techniques: {', '.join(self.names())}") from None


REGISTRY = Registry()


def register(config_cls: type[TechniqueConfig]) -> Callable[[Handler], Handler]:
    def decorator(handler: Handler) -> Handler:
        REGISTRY.add(config_cls, handler)
        return handler
    return decorator


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    if not isinstance(data, dict) or "technique" not in data:
        raise ConfigError(f"a technique config needs a 'technique' key naming one of: {', '.join(REGISTRY.names())}")
    return REGISTRY.config_class(data["technique"]).from_dict(data)


def compress(handle: ModelHandle, config: TechniqueConfig, out_path: str | Path, *,
             context: CompressContext | None = None, workdir: str | Path | None = None, **context_kwargs) -> CompressOutcome:
    """Apply `config` to the model in `handle`, writing a compressed `.mlpackage` at `out_path`.

    Never mutates the handle's model."""
    out_path = Path(out_path)
    if context is None:
        context = CompressContext(handle=handle, workdir=Path(workdir or out_path.parent / ".lab-work"), **context_kwargs)
    if config.family == "training_time" and handle.kind != "torch":
        raise ConfigError(
            f"technique {config.name!r} fine-tunes the PyTorch model, but {handle.source} is a Core ML package; "
            "load the PyTorch model (definition + weights or TorchScript) to use training-time techniques")
    if config.data_need is DataNeed.TRAINING and context.train_dir is None:
        raise ConfigError(f"technique {config.name!r} needs training data; give a training folder or .npz "
                          "(--train PATH / [data] train = ...)")
    if config.data_need is DataNeed.CALIBRATION and config.train_folder_needed() \
            and context.calibration_dir is None and context.train_dir is None:
        raise ConfigError(f"technique {config.name!r} needs calibration data; give a training or calibration folder")
    started = time.perf_counter()
    outcome = REGISTRY.handler(config.name)(config, context, out_path)
    outcome.timings.setdefault("total_s", time.perf_counter() - started)
    return outcome
