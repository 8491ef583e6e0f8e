"""What the lab needs to know about a model besides its weights: input shape,
class names and how an image becomes an input tensor."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from compress_lab.errors import ConfigError
from compress_lab.models.io_spec import IOSpec, OutputSpec, TensorSpec, parse_inputs, parse_outputs

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


DEFAULT_TASK = "classification"


@dataclass(frozen=True)
class ModelMetadata:
    """What `metadata.json` declares. `task` (default "classification") says what the
    model does; `inputs` / `outputs` declare its named tensors (see io_spec.py). A
    classification model needs `input_shape` [C, H, W] (or one declared input) and
    `class_names`; its inputs/outputs default to the lab's ("input" -> "logits").
    Any other task needs `inputs` and `outputs`."""

    name: str
    input_shape: tuple[int, ...] | None = None  # (C, H, W), without the batch dimension (classification)
    class_names: tuple[str, ...] = ()
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    description: str = ""
    task: str = DEFAULT_TASK
    inputs: tuple[TensorSpec, ...] = ()     # declared; empty = derived (classification only), see `io`
    outputs: tuple[OutputSpec, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"model metadata name = {self.name!r} must be a string")
        if not isinstance(self.description, str):
            raise ConfigError(f"model metadata description = {self.description!r} must be a string")
        if not isinstance(self.preprocessing, Preprocessing):
            raise ConfigError(f"model metadata preprocessing = {self.preprocessing!r} must be a table of preprocessing settings")
        _check_task(self.task)
        object.__setattr__(self, "inputs", parse_inputs(self.inputs))
        object.__setattr__(self, "outputs", parse_outputs(self.outputs))
        if self.task == DEFAULT_TASK:
            self._check_classification()
        else:
            self._check_declared()

    def _check_declared(self) -> None:
        for key, example in (("inputs", '[{"name": "input_ids", "shape": ["T"], "dtype": "int32"}]'),
                             ("outputs", '[{"name": "embedding", "meaning": "embedding"}]')):
            if not getattr(self, key):
                raise ConfigError(f"model metadata task {self.task!r} needs {key!r}: list the model's {key} by name, "
                                  f"e.g. \"{key}\": {example}")
        if self.input_shape is not None:
            shape = self.input_shape
            if (not isinstance(shape, (list, tuple))
                    or not all(not isinstance(s, bool) and isinstance(s, int) and 0 < s <= 1 << 16 for s in shape)):
                raise ConfigError(f"input_shape {shape!r} must be a list of positive integers, or left out "
                                  f"(task {self.task!r} reads the shapes from 'inputs')")
            object.__setattr__(self, "input_shape", tuple(int(s) for s in shape))
        names = self.class_names
        if not isinstance(names, (list, tuple)) or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in names):
            raise ConfigError(f"class_names {names!r} must be a list of names, or left out")
        object.__setattr__(self, "class_names", tuple(str(c) for c in names))

    def _check_classification(self) -> None:
        if self.inputs:
            if len(self.inputs) != 1:
                raise ConfigError(
                    f"inputs declares {len(self.inputs)} inputs {[i.name for i in self.inputs]} but task 'classification' "
                    "takes one image input; declare one input, or set \"task\": \"tensors\" for a model with several inputs")
            declared = self.inputs[0]
            if declared.dtype == "int32" or len(declared.shape) != 3 or declared.flexible:
                raise ConfigError(
                    f"inputs[0] {declared.name!r} has shape {list(declared.shape)} and dtype {declared.dtype} but task "
                    "'classification' takes one float image [channels, height, width] of fixed size; fix the input, or "
                    "set \"task\": \"tensors\"")
            if self.input_shape is None:
                object.__setattr__(self, "input_shape", tuple(int(s) for s in declared.shape))
            elif tuple(self.input_shape) != tuple(declared.shape):
                raise ConfigError(f"input_shape {list(self.input_shape)} and inputs[0].shape {list(declared.shape)} "
                                  "disagree; give one of them, or make them equal")
        if self.outputs:
            if len(self.outputs) != 1 or self.outputs[0].meaning != "class_scores":
                raise ConfigError(
                    f"outputs declares {[(o.name, o.meaning) for o in self.outputs]} but task 'classification' has one "
                    "output of meaning \"class_scores\"; declare that one, or set \"task\": \"tensors\"")
        shape = self.input_shape
        if shape is None:
            raise ConfigError("model metadata lacks input_shape; a classification model needs input_shape "
                              "[channels, height, width] (or one declared input)")
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
        out = self.outputs[0].shape if self.outputs else None
        if out is not None and tuple(out) != (len(self.class_names),):
            raise ConfigError(f"outputs[0].shape {list(out)} does not match the {len(self.class_names)} class_names; "
                              f"give [{len(self.class_names)}] or leave the shape out")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def io(self) -> IOSpec:
        """The model's inputs and outputs: as declared, or (classification) the lab's
        defaults derived from input_shape and class_names."""
        inputs = self.inputs or (TensorSpec(DEFAULT_INPUT_NAME, tuple(self.input_shape or ()), "float32"),)
        outputs = self.outputs or (OutputSpec(DEFAULT_OUTPUT_NAME, "class_scores", (self.num_classes,)),)
        return IOSpec(inputs, outputs)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.input_shape is not None:
            d["input_shape"] = list(self.input_shape)
        if self.class_names or self.task == DEFAULT_TASK:
            d["class_names"] = list(self.class_names)
        d["preprocessing"] = self.preprocessing.to_dict()
        d["description"] = self.description
        if self.task != DEFAULT_TASK:  # today's metadata stays byte-for-byte what it was
            d["task"] = self.task
        if self.inputs:
            d["inputs"] = [i.to_dict() for i in self.inputs]
        if self.outputs:
            d["outputs"] = [o.to_dict() for o in self.outputs]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        _reject_unknown(cls, data, "model metadata")
        task = data.get("task", DEFAULT_TASK)
        _check_task(task)
        if task == DEFAULT_TASK:
            missing = [k for k in ("name", "class_names") if k not in data]
            if "input_shape" not in data and "inputs" not in data:
                missing.insert(1, "input_shape")
            if missing:
                raise ConfigError(f"model metadata lacks {missing}; it needs name, input_shape [C, H, W] and class_names")
        else:
            missing = [k for k in ("name", "inputs", "outputs") if k not in data]
            if missing:
                raise ConfigError(f"model metadata lacks {missing}; task {task!r} needs name, inputs and outputs "
                                  "(see README, 'Your own model')")
        data = dict(data)
        data["preprocessing"] = Preprocessing.from_dict(data.get("preprocessing", {}))
        data["inputs"] = parse_inputs(data.get("inputs", ()))
        data["outputs"] = parse_outputs(data.get("outputs", ()))
        if data.get("class_names") is None:
            data.pop("class_names", None)
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


DEFAULT_INPUT_NAME = "input"    # the names the lab gives a converted classifier (models/convert.py)
DEFAULT_OUTPUT_NAME = "logits"


def _check_task(task: Any) -> None:
    from compress_lab.tasks import check_task_name
    check_task_name(task)


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
