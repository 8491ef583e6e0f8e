"""What the lab needs to know about a model besides its weights: input shape,
class names and how an image becomes an input tensor."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from compress_lab.errors import ConfigError

COLOR_MODES = ("L", "RGB")


@dataclass(frozen=True)
class Preprocessing:
    """Image -> tensor: convert to `color`, optionally resize the shorter side to
    `resize` then center-crop to the input size (or, with `resize=None`, resize
    straight to the input size), multiply pixels (0..255) by `scale`, then
    subtract `mean` and divide by `std` per channel."""

    color: str = "RGB"
    resize: int | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not isinstance(self.color, str) or self.color not in COLOR_MODES:
            raise ConfigError(f"preprocessing color {self.color!r} is not supported; use one of {COLOR_MODES}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not value or not all(_finite(v) for v in value):
                raise ConfigError(f"preprocessing {key} = {value!r} must be a list of 1 or 3 finite numbers")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if not _finite(self.scale) or self.scale == 0:
            raise ConfigError(f"preprocessing scale = {self.scale!r} must be a finite non-zero number (e.g. 1/255)")
        if isinstance(self.resize, float) and self.resize.is_integer():
            object.__setattr__(self, "resize", int(self.resize))
        if self.resize is not None and (isinstance(self.resize, bool) or not isinstance(self.resize, int)):
            raise ConfigError(f"preprocessing resize {self.resize!r} must be a positive integer or null")
        channels = 1 if self.color == "L" else 3
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) not in (1, channels):
                raise ConfigError(
                    f"preprocessing {key} has {len(value)} values but color {self.color!r} has {channels} channel(s); "
                    f"give 1 or {channels} values")
        if any(s == 0 for s in self.std):
            raise ConfigError("preprocessing std contains 0; every std must be non-zero")
        if self.resize is not None and int(self.resize) <= 0:
            raise ConfigError(f"preprocessing resize {self.resize!r} must be a positive integer or null")

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        _reject_unknown(cls, data, "preprocessing")
        return cls(**data)

    def with_overrides(self, overrides: dict[str, Any] | None) -> "Preprocessing":
        if not overrides:
            return self
        _reject_unknown(type(self), overrides, "preprocessing override")
        return replace(self, **overrides)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    input_shape: tuple[int, ...]  # (C, H, W), without the batch dimension
    class_names: tuple[str, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"model metadata name = {self.name!r} must be a string")
        if not isinstance(self.description, str):
            raise ConfigError(f"model metadata description = {self.description!r} must be a string")
        if not isinstance(self.preprocessing, Preprocessing):
            raise ConfigError(f"model metadata preprocessing = {self.preprocessing!r} must be a table of preprocessing settings")
        shape = self.input_shape
        if (not isinstance(shape, (list, tuple))
                or not all(not isinstance(s, bool) and isinstance(s, int) and 0 < s <= 1 << 16 for s in shape)):
            raise ConfigError(
                f"input_shape {shape!r} must be [channels, height, width]: positive integers (an image model input)")
        names = self.class_names
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                                      for c in names):
            raise ConfigError(f"class_names {names!r} must be a non-empty list of names, one per model output, in output order")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "class_names", tuple(str(c) for c in names))
        dupes = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
        if dupes:
            raise ConfigError(f"class_names repeat {dupes[:10]}; each model output needs its own name "
                              "(class folders are matched to outputs by name)")
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"input_shape {list(self.input_shape)} must be [channels, height, width] (an image model input)")
        if self.input_shape[0] != self.preprocessing.channels:
            raise ConfigError(
                f"input_shape has {self.input_shape[0]} channel(s) but preprocessing color "
                f"{self.preprocessing.color!r} gives {self.preprocessing.channels}; make them agree")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        _reject_unknown(cls, data, "model metadata")
        missing = [k for k in ("name", "input_shape", "class_names") if k not in data]
        if missing:
            raise ConfigError(f"model metadata lacks {missing}; it needs name, input_shape [C, H, W] and class_names")
        data = dict(data)
        data["preprocessing"] = Preprocessing.from_dict(data.get("preprocessing", {}))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> "ModelMetadata":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"model metadata file {path} does not exist; create it (see README, 'Your own model')") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"model metadata file {path} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"model metadata file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"cannot read model metadata file {path}: {e.strerror or e}") from None
        return cls.from_dict(data)


def _finite(value: Any) -> bool:
    import math
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _reject_unknown(cls: type, data: dict[str, Any], what: str) -> None:
    import dataclasses
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a table/object of settings, got {type(data).__name__} {data!r:.80}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in allowed), key=str)
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; allowed keys are {sorted(allowed)}")
