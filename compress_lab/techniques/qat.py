"""Quantization-aware training with coremltools' LinearQuantizer: weights to int8
or int4 per output channel, optionally activations to int8 (W8A8), fine-tuned on
the training source, exported as constexpr_blockwise_shift_scale weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress_lab.errors import ConfigError
from compress_lab.mil import QUANTIZED, ops_for
from compress_lab.models.handle import ModelHandle
from compress_lab.techniques import _training
from compress_lab.techniques.base import CompressContext, CompressOutcome, register

WEIGHT_DTYPES = {"int8": "qint8", "int4": "qint4"}
ACTIVATION_DTYPES = {"float": "float32", "int8": "quint8"}


@dataclass(frozen=True)
class QATConfig(_training.FinetuneConfig):
    """`milestones` (4 step numbers): observers on, fake quantization on, observers
    off, batch-norm statistics frozen; None turns everything on from step 0."""

    name = "qat"
    label_fields = ("weight_dtype",)
    summary = ("Quantization-aware training (coremltools LinearQuantizer): int8/int4 per-channel weights, "
               "optionally int8 activations (W8A8), fine-tuned on the training folder.")

    weight_dtype: Literal["int8", "int4"] = "int8"
    activations: Literal["float", "int8"] = "float"
    scheme: Literal["symmetric", "affine"] = "symmetric"
    milestones: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _training.check_choice(self.name, "weight_dtype", self.weight_dtype, WEIGHT_DTYPES)
        _training.check_choice(self.name, "activations", self.activations, ACTIVATION_DTYPES)
        _training.check_choice(self.name, "scheme", self.scheme, ("symmetric", "affine"))
        if self.milestones is not None:
            values = tuple(self.milestones)
            if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
                raise ConfigError(
                    f"technique 'qat': milestones = {list(values)!r} must be 4 non-negative step numbers "
                    "[observers on, fake quantization on, observers off, batch-norm frozen], or null")
            object.__setattr__(self, "milestones", values)


def quantizer_config(config: QATConfig):
    import coremltools.optimize.torch as cto
    module = {
        "weight_dtype": WEIGHT_DTYPES[config.weight_dtype],
        "activation_dtype": ACTIVATION_DTYPES[config.activations],
        "quantization_scheme": config.scheme,
        "weight_per_channel": True,
    }
    if config.milestones is not None:
        module["milestones"] = list(config.milestones)
    return cto.quantization.LinearQuantizerConfig.from_dict({"global_config": module})


def prepare_quantizer(config: QATConfig, model: nn.Module, example) -> tuple[nn.Module, object]:
    """Insert fake-quantization into `model` (in place); return it and the quantizer.
    `example`: the example inputs torch.fx traces with (a tuple in declared order, or one tensor)."""
    import coremltools.optimize.torch as cto
    quantizer = cto.quantization.LinearQuantizer(model, quantizer_config(config))
    example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    prepared = quantizer.prepare(example_inputs=example, inplace=True)
    return prepared, quantizer


def _prepare(config: QATConfig):
    def prepare(model: nn.Module, example: tuple, total_steps: int) -> _training.Prepared:
        prepared, quantizer = prepare_quantizer(config, model, example)
        return _training.Prepared(model=prepared, steppers=[quantizer],
                                  finalize=lambda m: quantizer.finalize(m, inplace=True))
    return prepare


def finetune(config: QATConfig, ctx: CompressContext) -> _training.FinetuneResult:
    return _training.finetune(config, ctx, _prepare(config))


def estimate_seconds(config: QATConfig, handle: ModelHandle, train_count: int, train=None) -> float:
    return _training.estimate_finetune_seconds(config, handle, train_count, _prepare(config), train)


@register(QATConfig)
def compress_qat(config: QATConfig, ctx: CompressContext, out_path: Path) -> CompressOutcome:
    return _training.run_training_technique(config, ctx, out_path, _prepare(config), ops_for(QUANTIZED))
