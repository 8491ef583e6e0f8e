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
        if self.color not in COLOR_MODES:
            raise ConfigError(f"preprocessing color {self.color!r} is not supported; use one of {COLOR_MODES}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
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
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
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
        return cls.from_dict(data)


def _reject_unknown(cls: type, data: dict[str, Any], what: str) -> None:
    import dataclasses
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; allowed keys are {sorted(allowed)}")
