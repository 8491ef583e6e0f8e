"""Metadata from a Core ML package's own spec: for a package the lab did not write
(no compress-lab metadata inside, no metadata.json beside it), and the image
inputs (`ct.ImageType`) of any package.

A package without the lab's metadata loads as task `tensors`: its inputs and
outputs as the spec declares them (first axis = batch), so fidelity to the
uncompressed model is measured on an array source (or, for one image input, an
image folder). An image input is declared with its colour layout, scale and bias;
a classifier with an image input gets identity normalisation, since the package
holds its normalisation (models/image_input.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from compress_lab.errors import ModelLoadError
from compress_lab.models.image_input import image_inputs
from compress_lab.models.io_spec import OutputSpec, TensorSpec, format_shape
from compress_lab.models.metadata import ModelMetadata, Preprocessing

_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float32"}  # FLOAT32, FLOAT16, INT32, DOUBLE
IDENTITY = {"scale": 1.0, "mean": (0.0,), "std": (1.0,)}


def spec_shape(feature) -> list[int] | None:
    """The shape of a spec input/output with its batch dimension (defaults for flexible ones), None if unknown."""
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        return [int(d) for d in feature.type.multiArrayType.shape] or None
    if kind == "imageType":
        image = feature.type.imageType
        from coremltools.proto import FeatureTypes_pb2
        gray = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace).startswith("GRAYSCALE")
        channels = 1 if gray else 3
        return [1, channels, int(image.height), int(image.width)]
    return None


def _flexible_axes(feature) -> set[int]:
    array = feature.type.multiArrayType
    which = array.WhichOneof("ShapeFlexibility")
    if which == "shapeRange":
        return {i for i, r in enumerate(array.shapeRange.sizeRanges) if r.lowerBound != r.upperBound}
    if which == "enumeratedShapes":
        shapes = [list(s.shape) for s in array.enumeratedShapes.shapes]
        return {i for i in range(len(shapes[0])) if len({s[i] for s in shapes if i < len(s)}) > 1} if shapes else set()
    return set()


def metadata_from_spec(spec, path: Path) -> ModelMetadata:
    """Task `tensors` metadata for a package from its spec alone."""
    images = image_inputs(spec)
    inputs = []
    for feature in spec.description.input:
        kind = feature.type.WhichOneof("Type")
        if feature.name in images:
            info, chw = images[feature.name]
            inputs.append(TensorSpec(feature.name, chw, "float16" if not info.eight_bit else "float32",
                                     feature.shortDescription, image=info))
            continue
        if kind != "multiArrayType":
            raise ModelLoadError(f"input {feature.name!r} of {path} is a {kind}; the lab takes tensor and image inputs. "
                                 "Re-convert it with ct.TensorType or ct.ImageType inputs")
        shape = spec_shape(feature)
        if not shape:
            raise ModelLoadError(f"input {feature.name!r} of {path} declares no shape; re-convert it with a shape, or "
                                 "put a metadata.json beside it declaring 'inputs'")
        flexible = _flexible_axes(feature)
        per_sample = [None if i in flexible else d for i, d in enumerate(shape)][1:]
        inputs.append(TensorSpec(feature.name, tuple(per_sample),
                                 _ARRAY_DTYPES.get(int(feature.type.multiArrayType.dataType), "float32"),
                                 feature.shortDescription))
    any_flexible = any(_flexible_axes(f) - {0} for f in spec.description.input
                       if f.type.WhichOneof("Type") == "multiArrayType")
    outputs = []
    for feature in spec.description.output:
        if feature.type.WhichOneof("Type") != "multiArrayType":
            raise ModelLoadError(f"output {feature.name!r} of {path} is a {feature.type.WhichOneof('Type')}; the lab "
                                 "compares tensor outputs. Re-convert it with ct.TensorType outputs (no classifier "
                                 "config), and give class names in a metadata.json beside it")
        shape = spec_shape(feature)
        outputs.append(OutputSpec(feature.name, "values", None if any_flexible or not shape else tuple(shape[1:]) or None,
                                  feature.shortDescription))
    description = spec.description.metadata.shortDescription or f"loaded from {path.name} (no compress-lab metadata)"
    gray = len(inputs) == 1 and inputs[0].image is not None and inputs[0].image.grayscale
    return ModelMetadata(name=path.stem, task="tensors", inputs=tuple(inputs), outputs=tuple(outputs),
                         description=description, preprocessing=Preprocessing(color="L" if gray else "RGB", **IDENTITY))


def with_image_inputs(meta: ModelMetadata, spec, path: Path, notes: list[str]) -> ModelMetadata:
    """`meta` with the package's image inputs declared (colour layout, scale, bias, as the
    spec has them); a classifier's normalisation made identity (the package applies it).
    Appends to `notes` what changed."""
    images = image_inputs(spec)
    if not images:
        return meta
    if meta.task == "classification":
        if len(images) != 1 or len(spec.description.input) != 1:
            return meta  # refused by the I/O check with the reason
        (name, (info, chw)), = images.items()
        if tuple(meta.input_shape) != chw:
            raise ModelLoadError(
                f"image input {name!r} of {path} is {info.color_layout} {chw[2]}x{chw[1]} (shape [{', '.join(map(str, chw))}]) "
                f"but the metadata says input_shape {list(meta.input_shape)}; fix input_shape to {list(chw)}")
        old = meta.preprocessing
        color = "L" if info.grayscale else "RGB"
        preprocessing = Preprocessing(color=color, resize=old.resize, **IDENTITY)
        if (old.scale, tuple(old.mean), tuple(old.std)) != (1.0, (0.0,), (1.0,)):
            notes.append(f"image input {name!r} of {path.name} takes pixels 0..255 and applies its own normalisation "
                         f"({info.describe()}); the metadata's preprocessing scale {old.scale:.6g}, mean "
                         f"{list(old.mean)}, std {list(old.std)} is replaced by identity")
        inputs = (TensorSpec(name, chw, "float32", image=info),)
        outputs = meta.outputs
        return dataclasses.replace(meta, preprocessing=preprocessing, inputs=inputs, outputs=outputs)
    declared = []
    for spec_input in meta.inputs:
        found = images.get(spec_input.name)
        if found is None and len(meta.inputs) == len(spec.description.input) == 1 and len(images) == 1:
            found = next(iter(images.values()))   # one input: matched whatever its name
        if found is None:
            declared.append(spec_input)
            continue
        info, chw = found
        if not _fits(spec_input.shape, chw):
            raise ModelLoadError(
                f"input {spec_input.name!r} of {path} is an image input {info.color_layout} of shape "
                f"{list(chw)} per sample but metadata.json declares {format_shape(spec_input.shape)}; declare "
                f"[{', '.join(map(str, chw))}]")
        declared.append(dataclasses.replace(spec_input, shape=chw, image=info,
                                            dtype="float16" if not info.eight_bit else "float32"))
    return dataclasses.replace(meta, inputs=tuple(declared))


def _fits(declared, chw) -> bool:
    return len(declared) == 3 and all(isinstance(d, str) or int(d) == c for d, c in zip(declared, chw))
