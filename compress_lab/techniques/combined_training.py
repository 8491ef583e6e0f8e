"""Joint compression while fine-tuning, as coremltools supports it: the
palettizer or quantizer is prepared first, the MagnitudePruner second on the same
model; both act during training; finalize in that order too (palettizer or
quantizer, then pruner). The exported weights are sparse *and* palettized
(constexpr_lut_to_sparse) or sparse *and* quantized
(constexpr_sparse_blockwise_shift_scale); the achieved sparsity is checked.

- `prune_dkm`: MagnitudePruner + DKMPalettizer (pruned zeros keep a zero centroid).
- `prune_qat`: MagnitudePruner + LinearQuantizer (int8/int4 weights, optional int8 activations).

Other pairs are not offered: palettization + quantization of the same weights
is a quantized lookup table, and a palettized model cannot also be QAT-prepared
(coremltools refuses to insert a second fake-quantization)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress_lab.errors import ConfigError
from compress_lab.models.handle import ModelHandle
from compress_lab.techniques import _training, dkm, magnitude_pruning, qat
from compress_lab.techniques.base import CompressContext, CompressOutcome, register


@dataclass(frozen=True)
class PruneDKMConfig(_training.FinetuneConfig):
    name = "prune_dkm"
    summary = ("Joint pruning + palettization while fine-tuning (coremltools MagnitudePruner + DKMPalettizer): "
               "sparse lookup-table weights. Slow per step on a CPU, like dkm.")

    target_sparsity: float = 0.5
    schedule: Literal["polynomial_decay", "constant"] = "polynomial_decay"
    block_size: int = 1
    n_m: tuple[int, ...] | None = None
    n_bits: Literal[1, 2, 3, 4, 6, 8] = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    weight_threshold: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        magnitude_pruning.check_pruning(self.name, self.target_sparsity, self.schedule, self.block_size, self.n_m)
        dkm.check_palettization(self.name, self.n_bits, self.granularity, self.group_size)
        if self.n_m is not None:
            object.__setattr__(self, "n_m", tuple(self.n_m))
        if isinstance(self.weight_threshold, bool) or not isinstance(self.weight_threshold, int) or self.weight_threshold < 0:
            raise ConfigError(f"technique {self.name!r}: weight_threshold = {self.weight_threshold!r} must be an integer >= 0")

    def dkm_config(self) -> dkm.DKMConfig:
        return dkm.DKMConfig(n_bits=self.n_bits, granularity=self.granularity, group_size=self.group_size,
                             weight_threshold=self.weight_threshold, batch_size=self.batch_size)


@dataclass(frozen=True)
class PruneQATConfig(_training.FinetuneConfig):
    name = "prune_qat"
    summary = ("Joint pruning + int8/int4 weight quantization (optionally int8 activations) while fine-tuning "
               "(coremltools MagnitudePruner + LinearQuantizer): sparse quantized weights.")

    target_sparsity: float = 0.5
    schedule: Literal["polynomial_decay", "constant"] = "polynomial_decay"
    block_size: int = 1
    n_m: tuple[int, ...] | None = None
    weight_dtype: Literal["int8", "int4"] = "int8"
    activations: Literal["float", "int8"] = "float"
    scheme: Literal["symmetric", "affine"] = "symmetric"

    def __post_init__(self) -> None:
        super().__post_init__()
        magnitude_pruning.check_pruning(self.name, self.target_sparsity, self.schedule, self.block_size, self.n_m)
        if self.n_m is not None:
            object.__setattr__(self, "n_m", tuple(self.n_m))
        _training.check_choice(self.name, "activations", self.activations, qat.ACTIVATION_DTYPES)
        _training.check_choice(self.name, "weight_dtype", self.weight_dtype, qat.WEIGHT_DTYPES)
        _training.check_choice(self.name, "scheme", self.scheme, ("symmetric", "affine"))

    def qat_config(self) -> qat.QATConfig:
        return qat.QATConfig(weight_dtype=self.weight_dtype, activations=self.activations, scheme=self.scheme,
                             batch_size=self.batch_size)


def _prepare_prune_dkm(config: PruneDKMConfig):
    def prepare(model: nn.Module, example: tuple, total_steps: int) -> _training.Prepared:
        prepared, palettizer = dkm.prepare_palettizer(config.dkm_config(), model, keep_zeros=True)
        prepared, pruner = magnitude_pruning.prepare_pruner(
            config.target_sparsity, config.schedule, config.block_size, config.n_m, prepared, total_steps)

        def finalize(m: nn.Module) -> nn.Module:
            m = palettizer.finalize(m, inplace=True)
            return pruner.finalize(m, inplace=True)

        # The palettizer is not stepped: with milestone 0 it is active from the start, and its step() would
        # switch to a magnitude threshold whose update fails in coremltools 9.0 (FakePalettize.palettize()
        # called without its arguments). Zeros are kept by the zero centroid instead (keep_zeros).
        return _training.Prepared(model=prepared, steppers=[pruner], finalize=finalize)
    return prepare


def _prepare_prune_qat(config: PruneQATConfig):
    def prepare(model: nn.Module, example: tuple, total_steps: int) -> _training.Prepared:
        prepared, quantizer = qat.prepare_quantizer(config.qat_config(), model, example)
        prepared, pruner = magnitude_pruning.prepare_pruner(
            config.target_sparsity, config.schedule, config.block_size, config.n_m, prepared, total_steps)

        def finalize(m: nn.Module) -> nn.Module:
            m = quantizer.finalize(m, inplace=True)
            return pruner.finalize(m, inplace=True)

        return _training.Prepared(model=prepared, steppers=[quantizer, pruner], finalize=finalize)
    return prepare


_PREPARERS = {PruneDKMConfig: (_prepare_prune_dkm, ("constexpr_lut_to_sparse",)),
              PruneQATConfig: (_prepare_prune_qat, ("constexpr_sparse_blockwise_shift_scale",))}


def finetune(config: PruneDKMConfig | PruneQATConfig, ctx: CompressContext) -> _training.FinetuneResult:
    return _training.finetune(config, ctx, _PREPARERS[type(config)][0](config))


def estimate_seconds(config: PruneDKMConfig | PruneQATConfig, handle: ModelHandle, train_count: int, train=None) -> float:
    return _training.estimate_finetune_seconds(config, handle, train_count, _PREPARERS[type(config)][0](config), train)


def _handle(config, ctx: CompressContext, out_path: Path) -> CompressOutcome:
    prepare, expected = _PREPARERS[type(config)]
    return _training.run_training_technique(config, ctx, out_path, prepare(config), expected,
                                            target_sparsity=magnitude_pruning.target_of(config.target_sparsity, config.n_m))


for _config_cls in _PREPARERS:
    register(_config_cls)(_handle)
