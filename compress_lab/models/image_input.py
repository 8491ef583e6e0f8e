"""Core ML image inputs (`ct.ImageType`): what the spec says about them and how the
lab feeds them.

How Core ML runs an image input of an ML program: the app hands it an image; Core
ML turns it into a (1, C, H, W) tensor of pixel values 0..255 in the declared
colour layout (RGB, BGR, or one grayscale channel; 8-bit except
GRAYSCALE_FLOAT16), and the program itself begins with the preprocessing that
`ct.ImageType(scale=..., bias=...)` asked for: coremltools inserts `mul` (scale,
op `<input>__scaled__`) and `add` (per-channel bias, op `<input>__biased__`)
before the first op of the program.

The lab's contract: it feeds pixel values 0..255 in RGB order as (N, C, H, W)
float arrays (C = 1 for a grayscale input; 3 RGB channels are also taken and
turned to luma as Pillow's "L" does), read from an image folder resized to the
declared size. The runtime rounds them to 8-bit as an image holds them, puts the
channels in the declared order, and runs the program, which applies the scale
and bias. A classifier of such a package therefore has identity normalisation
(scale 1, mean 0, std 1): the package holds its normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_lab.errors import ConfigError
from compress_lab.mil import iter_ops

COLOR_LAYOUTS = ("RGB", "BGR", "GRAYSCALE", "GRAYSCALE_FLOAT16")
IMAGE_KEYS = ("color_layout", "scale", "bias")


@dataclass(frozen=True)
class ImageInput:
    """An image input's preprocessing, as the package declares it. `bias` has one
    value per channel (one for grayscale)."""

    color_layout: str = "RGB"
    scale: float = 1.0
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.color_layout not in COLOR_LAYOUTS:
            raise ConfigError(f"image color_layout {self.color_layout!r} is not a Core ML colour layout; use one of "
                              f"{list(COLOR_LAYOUTS)}")
        try:
            object.__setattr__(self, "scale", float(self.scale))
            bias = self.bias if isinstance(self.bias, (list, tuple)) else [self.bias]
            object.__setattr__(self, "bias", tuple(float(b) for b in bias))
        except (TypeError, ValueError):
            raise ConfigError(f"image scale {self.scale!r} / bias {self.bias!r} must be numbers") from None
        if len(self.bias) not in (1, self.channels):
            raise ConfigError(f"image bias {list(self.bias)} has {len(self.bias)} values; colour layout "
                              f"{self.color_layout} has {self.channels} channel(s)")
        if len(self.bias) == 1 and self.channels == 3:
            object.__setattr__(self, "bias", self.bias * 3)

    @property
    def grayscale(self) -> bool:
        return self.color_layout.startswith("GRAYSCALE")

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def eight_bit(self) -> bool:
        return self.color_layout != "GRAYSCALE_FLOAT16"

    def describe(self) -> str:
        bias = ", ".join(f"{b:.6g}" for b in self.bias)
        return f"image {self.color_layout}, pixels 0..255 x {self.scale:.6g} + [{bias}]"

    def to_dict(self) -> dict[str, Any]:
        return {"color_layout": self.color_layout, "scale": self.scale, "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, data: Any, field: str = "image") -> "ImageInput":
        if isinstance(data, ImageInput):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{field} = {data!r:.80} must be an object such as "
                              '{"color_layout": "RGB", "scale": 0.00392, "bias": [0, 0, 0]}')
        unknown = sorted(k for k in data if k not in IMAGE_KEYS)
        if unknown:
            raise ConfigError(f"{field} has unknown key(s) {unknown}; allowed keys are {list(IMAGE_KEYS)}")
        return cls(**data)


def image_inputs(spec) -> dict[str, tuple[ImageInput, tuple[int, int, int]]]:
    """The image inputs of a Core ML model spec: name -> (ImageInput, (C, H, W)).
    The scale and bias are read from the ops coremltools put at the start of the program."""
    from coremltools.proto import FeatureTypes_pb2

    found = {}
    for desc in spec.description.input:
        if desc.type.WhichOneof("Type") != "imageType":
            continue
        image = desc.type.imageType
        layout = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
        if layout not in COLOR_LAYOUTS:
            raise ConfigError(f"image input {desc.name!r} has colour space {layout}, which Core ML image inputs do "
                              f"not take; re-convert it with one of {list(COLOR_LAYOUTS)}")
        scale, bias = _program_preprocessing(spec, desc.name)
        info = ImageInput(layout, 1.0 if scale is None else scale,
                          (0.0,) * (1 if layout.startswith("GRAYSCALE") else 3) if bias is None else bias)
        found[desc.name] = (info, (info.channels, int(image.height), int(image.width)))
    return found


def _program_preprocessing(spec, name: str) -> tuple[float | None, tuple[float, ...] | None]:
    """(scale, bias) of the `<name>__scaled__` / `<name>__biased__` ops, None where absent."""
    if spec.WhichOneof("Type") != "mlProgram":
        return None, None
    from coremltools.converters.mil.frontend.milproto.load import _load_value

    scale = bias = None
    for function in spec.mlProgram.functions.values():
        block = function.block_specializations.get(function.opset)
        if block is None:
            continue
        consts = {}
        for op in iter_ops(block):
            outputs = [o.name for o in op.outputs]
            if op.type == "const" and "val" in op.attributes:
                consts[outputs[0]] = op.attributes["val"]
                continue
            if op.type not in ("mul", "add") or not outputs or outputs[0] not in (f"{name}__scaled__", f"{name}__biased__"):
                continue
            value = _argument(op, "y", consts, _load_value)
            if value is None:
                continue
            if op.type == "mul":
                scale = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
            else:
                bias = tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
        break  # the main function
    return scale, bias


def _argument(op, key: str, consts: dict, load_value):
    if key not in op.inputs or not op.inputs[key].arguments:
        return None
    binding = op.inputs[key].arguments[0]
    try:
        if binding.WhichOneof("binding") == "value":
            return load_value(None, binding.value)
        if binding.name in consts:
            return load_value(None, consts[binding.name])
    except Exception:  # a value stored another way: the description stays without it
        return None
    return None


LUMA = (19595, 38470, 7471)  # Pillow's "L" conversion: ITU-R 601-2 luma in 16-bit fixed point


def to_program_layout(pixels: np.ndarray, image: ImageInput) -> np.ndarray:
    """RGB pixels 0..255, (N, 3, H, W) or (N, 1, H, W) for grayscale, as Core ML hands
    the image to the program: rounded and clipped to 8 bits (float16 for
    GRAYSCALE_FLOAT16), channels in the declared order; float32."""
    x = np.asarray(pixels, dtype=np.float32)
    if image.eight_bit:
        x = np.clip(np.rint(x), 0, 255)
    if image.grayscale:
        if x.shape[1] == 3:
            if image.eight_bit:
                r, g, b = (x[:, i:i + 1].astype(np.int64) for i in range(3))
                x = ((r * LUMA[0] + g * LUMA[1] + b * LUMA[2] + 0x8000) >> 16).astype(np.float32)
            else:
                x = (x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114).astype(np.float32)
        if not image.eight_bit:
            x = x.astype(np.float16)
        return np.ascontiguousarray(x, dtype=np.float32)
    if image.color_layout == "BGR":
        x = x[:, ::-1]
    return np.ascontiguousarray(x, dtype=np.float32)


def accepted_channels(image: ImageInput) -> tuple[int, ...]:
    """The channel counts the lab takes for `image`: 3 (RGB); 1 or 3 for grayscale."""
    return (1, 3) if image.grayscale else (3,)
