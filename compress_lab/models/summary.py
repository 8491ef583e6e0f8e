"""A model summary: layers with parameter counts, input shape, sizes, and which
layers each family of techniques would touch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from compress_lab.mil import iter_ops
from compress_lab.models.handle import ModelHandle

DEFAULT_WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller weights stay uncompressed
TRAINABLE_LAYER_TYPES = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Conv1d)


@dataclass
class LayerSummary:
    name: str
    type: str
    parameters: int
    weight_shape: list[int] | None
    touched_post_training: bool
    touched_training_time: bool


@dataclass
class ModelSummary:
    name: str
    source: str
    kind: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    parameters: int | None
    fp16_weight_bytes_estimate: int | None
    fp32_weight_bytes_estimate: int | None
    layers: list[LayerSummary] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    inputs: list[dict[str, Any]] = field(default_factory=list)    # declared (or derived) inputs: name, shape, dtype
    outputs: list[dict[str, Any]] = field(default_factory=list)   # name, meaning (, shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(handle: ModelHandle, weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD) -> ModelSummary:
    meta = handle.metadata
    layers = _torch_layers(handle.module, weight_threshold) if handle.module is not None else _coreml_layers(handle, weight_threshold)
    params = handle.parameter_count()
    if params is None:
        params = sum(layer.parameters for layer in layers)
    return ModelSummary(
        name=meta.name, source=handle.source, kind=handle.kind,
        input_shape=[1, *meta.input_shape] if meta.input_shape is not None else None,
        num_classes=meta.num_classes, class_names=list(meta.class_names), parameters=params,
        fp16_weight_bytes_estimate=params * 2 if params else None,
        fp32_weight_bytes_estimate=params * 4 if params else None,
        layers=layers, preprocessing=meta.preprocessing.to_dict(), task=meta.task,
        inputs=[i.to_dict() for i in meta.io.inputs], outputs=[o.to_dict() for o in meta.io.outputs])


def _torch_layers(module: torch.nn.Module, weight_threshold: int) -> list[LayerSummary]:
    out = []
    for name, child in module.named_modules():
        own = list(child.parameters(recurse=False))
        if not own:
            continue
        weight = getattr(child, "weight", None)
        shape = list(weight.shape) if isinstance(weight, torch.Tensor) else None
        largest = max(p.numel() for p in own)  # Core ML compresses every constant weight this large, whatever its op
        out.append(LayerSummary(
            name=name or "(root)", type=type(child).__name__, parameters=sum(p.numel() for p in own),
            weight_shape=shape,
            touched_post_training=largest >= weight_threshold,
            touched_training_time=isinstance(child, TRAINABLE_LAYER_TYPES)))
    return out


def _coreml_layers(handle: ModelHandle, weight_threshold: int) -> list[LayerSummary]:
    import coremltools as ct
    import numpy as np
    spec = ct.utils.load_spec(str(handle.mlpackage))
    out = []
    for op in iter_ops(spec.mlProgram):
        if op.type != "const":
            continue
        value = op.attributes.get("val")
        if value is None or not value.type.HasField("tensorType"):
            continue
        dims = [d.constant.size for d in value.type.tensorType.dimensions]
        numel = int(np.prod(dims)) if dims else 1
        if numel < 16:
            continue
        out.append(LayerSummary(name=op.outputs[0].name, type="const", parameters=numel, weight_shape=dims,
                                touched_post_training=numel >= weight_threshold, touched_training_time=False))
    return out
