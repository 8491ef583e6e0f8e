"""A model's declared inputs and outputs (metadata.json `inputs` / `outputs`).

An input is a name, a per-sample shape (without the batch dimension) and a
dtype. A dimension is a positive integer (fixed) or flexible: written `null`,
`-1` or a name such as `"T"` (a flexible dimension with the same name must have
the same size in every input and output of one sample). An output is a name,
what it means (`meaning`, which decides the fidelity measures that apply) and an
optional shape checked the same way.

`batch_axis` (default 0) is where the batch sits in the model's own tensor, for a
model whose convention is not batch-first: a PyTorch LSTM's h0/c0 are
(num_layers, batch, hidden), declared `"shape": [2, 16], "batch_axis": 1`. The lab
keeps samples on the first axis everywhere (.npz arrays, batches, metrics) and moves
the axis only at the model boundary (`to_model_layout` / `from_model_layout`).

    "inputs":  [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                {"name": "attention_mask", "shape": ["T"], "dtype": "int32"}],
    "outputs": [{"name": "embedding", "meaning": "embedding"}]

Errors name the field (`inputs[1].dtype`), the value found and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from compress_lab.errors import ConfigError
from compress_lab.models.image_input import ImageInput

DTYPES = ("float32", "float16", "int32")
FLEXIBLE = "?"   # a flexible dimension given as null or -1
MAX_DIM = 1 << 24
# What an output holds. "class_scores" adds top-1 agreement to its fidelity measures.
MEANINGS = {
    "class_scores": "one score (logit) per class, last axis",
    "logits_per_position": "class scores per position (e.g. next-token logits, last axis = vocabulary)",
    "embedding": "a vector per sample (compared by cosine similarity)",
    "values": "any numbers (regression values, dense maps, detections, ...)",
    "state": "a recurrent state handed back in as an input on the next step",
}
INPUT_KEYS = ("name", "shape", "dtype", "description", "image", "batch_axis")
OUTPUT_KEYS = ("name", "meaning", "shape", "description", "batch_axis")

Dim = "int | str"


def _check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field} = {value!r} must be a non-empty name (the model's own input/output name, e.g. \"input_ids\")")
    if any(c.isspace() for c in value) or not all(c.isalnum() or c in "_-.:/" for c in value):
        raise ConfigError(f"{field} = {value!r} has characters a Core ML input/output name cannot hold; "
                          "use letters, digits and _ (e.g. \"attention_mask\")")
    return value


def _check_shape(value: Any, field: str, *, allow_missing: bool = False) -> tuple[int | str, ...] | None:
    if value is None and allow_missing:
        return None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field} = {value!r} must be a list of dimensions without the batch dimension, "
                          "each a positive integer or null / -1 / a name such as \"T\" for a flexible one "
                          "(e.g. [3, 224, 224] or [\"T\"])")
    dims: list[int | str] = []
    for i, d in enumerate(value):
        if d is None or (not isinstance(d, bool) and isinstance(d, int) and d == -1):
            dims.append(FLEXIBLE)
        elif isinstance(d, str) and d.strip():
            if not (d == FLEXIBLE or d.replace("_", "").isalnum()):
                raise ConfigError(f"{field}[{i}] = {d!r} is not a dimension name; name a flexible dimension with "
                                  "letters, digits and _ (e.g. \"T\"), or write null")
            dims.append(d)
        elif isinstance(d, float) and d.is_integer() and 0 < d <= MAX_DIM:
            dims.append(int(d))
        elif not isinstance(d, bool) and isinstance(d, int) and 0 < d <= MAX_DIM:
            dims.append(d)
        else:
            raise ConfigError(f"{field}[{i}] = {d!r} is not a dimension; give a positive integer (at most {MAX_DIM}), "
                              "or null / -1 / a name such as \"T\" for a flexible one")
    return tuple(dims)


def _check_batch_axis(value: Any, shape: tuple | None, field: str) -> int:
    rank = None if shape is None else len(shape)
    allowed = f"0..{rank}" if rank is not None else "0 or more"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (rank is not None and value > rank):
        where = f"out of range for shape {format_shape(shape)}" if isinstance(value, int) and not isinstance(value, bool) \
            and rank is not None else "not a position"
        raise ConfigError(f"{field} = {value!r} is {where}; give an integer {allowed}, the position of the batch in the "
                          "model's own tensor (0 = batch first; 1 for an LSTM's h0/c0 of shape [layers, batch, hidden])")
    return value


def _reject_unknown(data: Any, allowed: Sequence[str], field: str, example: str) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{field} = {data!r:.120} must be an object such as {example}")
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise ConfigError(f"{field} has unknown key(s) {unknown}; allowed keys are {list(allowed)}")
    return data


@dataclass(frozen=True)
class TensorSpec:
    """One declared input."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    description: str = ""
    image: ImageInput | None = None  # a Core ML image input (ct.ImageType): pixels 0..255, RGB order
    batch_axis: int = 0              # where the batch sits in the model's tensor (1 for an LSTM's h0/c0)

    def __post_init__(self) -> None:
        self.validate("input")

    def validate(self, field: str) -> None:
        _check_name(self.name, f"{field}.name")
        object.__setattr__(self, "shape", _check_shape(self.shape, f"{field}.shape"))
        if self.dtype not in DTYPES:
            raise ConfigError(f"{field}.dtype = {self.dtype!r} is not supported; use one of {list(DTYPES)}")
        if not isinstance(self.description, str):
            raise ConfigError(f"{field}.description = {self.description!r} must be a string")
        _check_batch_axis(self.batch_axis, self.shape, f"{field}.batch_axis")
        if self.image is not None:
            image = ImageInput.from_dict(self.image, f"{field}.image")
            object.__setattr__(self, "image", image)
            if (len(self.shape) != 3 or isinstance(self.shape[0], str) or int(self.shape[0]) != image.channels
                    or self.dtype == "int32"):
                raise ConfigError(f"{field} is an image input ({image.color_layout}) but has shape "
                                  f"{format_shape(self.shape)} and dtype {self.dtype}; an image input is float "
                                  f"[{image.channels}, height, width]")
            if self.batch_axis:
                raise ConfigError(f"{field}.batch_axis = {self.batch_axis} on an image input; an image input is "
                                  "batch first (leave batch_axis out)")

    @property
    def flexible(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": [None if s == FLEXIBLE else s for s in self.shape],
                             "dtype": self.dtype}
        if self.description:
            d["description"] = self.description
        if self.image is not None:
            d["image"] = self.image.to_dict()
        if self.batch_axis:
            d["batch_axis"] = self.batch_axis
        return d

    @classmethod
    def from_dict(cls, data: Any, field: str = "input") -> "TensorSpec":
        data = _reject_unknown(data, INPUT_KEYS, field, '{"name": "input_ids", "shape": ["T"], "dtype": "int32"}')
        for key in ("name", "shape"):
            if key not in data:
                raise ConfigError(f"{field} lacks {key!r}; an input needs a name and a shape (and a dtype, "
                                  f"default float32), e.g. {{\"name\": \"input\", \"shape\": [3, 224, 224]}}")
        spec = cls.__new__(cls)
        for key, default in (("name", None), ("shape", None), ("dtype", "float32"), ("description", ""),
                             ("image", None), ("batch_axis", 0)):
            object.__setattr__(spec, key, data.get(key, default))
        spec.validate(field)
        return spec


@dataclass(frozen=True)
class OutputSpec:
    """One declared output."""

    name: str
    meaning: str = "values"
    shape: tuple[int | str, ...] | None = None
    description: str = ""
    batch_axis: int = 0              # where the batch sits in the model's tensor (1 for an LSTM's hn/cn)

    def __post_init__(self) -> None:
        self.validate("output")

    def validate(self, field: str) -> None:
        _check_name(self.name, f"{field}.name")
        if self.meaning not in MEANINGS:
            raise ConfigError(f"{field}.meaning = {self.meaning!r} is not known; use one of {sorted(MEANINGS)} "
                              f"({'; '.join(f'{k}: {v}' for k, v in MEANINGS.items())})")
        object.__setattr__(self, "shape", _check_shape(self.shape, f"{field}.shape", allow_missing=True))
        if not isinstance(self.description, str):
            raise ConfigError(f"{field}.description = {self.description!r} must be a string")
        _check_batch_axis(self.batch_axis, self.shape, f"{field}.batch_axis")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "meaning": self.meaning}
        if self.shape is not None:
            d["shape"] = [None if s == FLEXIBLE else s for s in self.shape]
        if self.description:
            d["description"] = self.description
        if self.batch_axis:
            d["batch_axis"] = self.batch_axis
        return d

    @classmethod
    def from_dict(cls, data: Any, field: str = "output") -> "OutputSpec":
        data = _reject_unknown(data, OUTPUT_KEYS, field, '{"name": "logits", "meaning": "class_scores"}')
        if "name" not in data:
            raise ConfigError(f"{field} lacks 'name'; an output needs a name and a meaning, "
                              f"e.g. {{\"name\": \"embedding\", \"meaning\": \"embedding\"}}")
        spec = cls.__new__(cls)
        for key, default in (("name", None), ("meaning", "values"), ("shape", None), ("description", ""),
                             ("batch_axis", 0)):
            object.__setattr__(spec, key, data.get(key, default))
        spec.validate(field)
        return spec


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def input(self, name: str) -> TensorSpec:
        return next(i for i in self.inputs if i.name == name)

    def output(self, name: str) -> OutputSpec:
        return next(o for o in self.outputs if o.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [i.to_dict() for i in self.inputs], "outputs": [o.to_dict() for o in self.outputs]}


def parse_inputs(value: Any) -> tuple[TensorSpec, ...]:
    if isinstance(value, tuple) and all(isinstance(v, TensorSpec) for v in value):
        return value
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"inputs = {value!r:.120} must be a list of inputs, e.g. "
                          '[{"name": "input_ids", "shape": ["T"], "dtype": "int32"}]')
    specs = tuple(v if isinstance(v, TensorSpec) else TensorSpec.from_dict(v, f"inputs[{i}]") for i, v in enumerate(value))
    _no_repeats([s.name for s in specs], "inputs")
    return specs


def parse_outputs(value: Any) -> tuple[OutputSpec, ...]:
    if isinstance(value, tuple) and all(isinstance(v, OutputSpec) for v in value):
        return value
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"outputs = {value!r:.120} must be a list of outputs, e.g. "
                          '[{"name": "embedding", "meaning": "embedding"}]')
    specs = tuple(v if isinstance(v, OutputSpec) else OutputSpec.from_dict(v, f"outputs[{i}]") for i, v in enumerate(value))
    _no_repeats([s.name for s in specs], "outputs")
    return specs


def _no_repeats(names: list[str], field: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{field} repeat the name(s) {dupes}; each {field[:-1]} needs its own name")


def shape_matches(declared: Sequence[int | str] | None, found: Sequence[int]) -> bool:
    """Whether a per-sample shape found (no batch dimension) fits a declared one."""
    if declared is None:
        return True
    if len(declared) != len(found):
        return False
    return all(isinstance(d, str) or int(d) == int(f) for d, f in zip(declared, found))


def format_shape(shape: Sequence[int | str] | None) -> str:
    if shape is None:
        return "(any)"
    return "[" + ", ".join("null" if d == FLEXIBLE else (repr(d) if isinstance(d, str) else str(d)) for d in shape) + "]"


# ---------------------------------------------------------------- the model boundary

def to_model_layout(value, spec):
    """A sample-first array or tensor (the lab's convention) as the model takes it: the
    first axis moved to `spec.batch_axis`. Unchanged (the same object) when that is 0."""
    axis = int(getattr(spec, "batch_axis", 0) or 0)
    if not axis:
        return value
    return _moveaxis(value, 0, axis)


def from_model_layout(value, spec):
    """A model's array or tensor back in the lab's sample-first convention: the axis
    `spec.batch_axis` moved to the front. Unchanged (the same object) when that is 0."""
    axis = int(getattr(spec, "batch_axis", 0) or 0)
    if not axis or getattr(value, "ndim", 0) <= axis:
        return value
    return _moveaxis(value, axis, 0)


def sample_first_shape(shape, spec):
    """A shape with its batch dimension in the model's layout (e.g. a Core ML spec's) as
    the lab sees it, batch first; None stays None."""
    axis = int(getattr(spec, "batch_axis", 0) or 0)
    if shape is None or not axis or len(shape) <= axis:
        return shape
    dims = list(shape)
    return [dims.pop(axis), *dims]


def _moveaxis(value, source: int, destination: int):
    if hasattr(value, "movedim"):   # a torch tensor; kept contiguous so the model and the runtime see a plain tensor
        return value.movedim(source, destination).contiguous()
    import numpy as np
    return np.ascontiguousarray(np.moveaxis(np.asarray(value), source, destination))
