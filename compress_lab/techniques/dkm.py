"""Palettization-aware training with coremltools' DKMPalettizer (differentiable
k-means): each weight becomes a lookup table of 2^n_bits values plus indices,
learned while fine-tuning; exported as constexpr_lut_to_dense weights.

DKM's forward pass computes soft assignments of every weight to every centroid,
so a step costs far more than a plain training step on a CPU, and the first step
runs k-means. `estimate_seconds` measures both on the model once per process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress_lab.errors import ConfigError
from compress_lab.mil import PALETTIZED, ops_for
from compress_lab.models.handle import ModelHandle
from compress_lab.techniques import _training
from compress_lab.techniques.base import CompressContext, CompressOutcome, register

N_BITS = (1, 2, 3, 4, 6, 8)
GRANULARITIES = ("per_tensor", "per_grouped_channel")


@dataclass(frozen=True)
class DKMConfig(_training.FinetuneConfig):
    """Layers whose weight has at most `weight_threshold` elements stay float.
    Palettization starts at step `milestone`."""

    name = "dkm"
    label_fields = ("n_bits",)
    summary = ("Palettization-aware training (coremltools DKMPalettizer, differentiable k-means): "
               "1-8 bit lookup tables learned while fine-tuning on the training folder. Slow per step on a CPU.")

    n_bits: Literal[1, 2, 3, 4, 6, 8] = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    enable_per_channel_scale: bool = False
    weight_threshold: int = 2048
    milestone: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_palettization(self.name, self.n_bits, self.granularity, self.group_size)
        if isinstance(self.weight_threshold, bool) or not isinstance(self.weight_threshold, int) or self.weight_threshold < 0:
            raise ConfigError(f"technique {self.name!r}: weight_threshold = {self.weight_threshold!r} must be an integer >= 0")
        if isinstance(self.milestone, bool) or not isinstance(self.milestone, int) or self.milestone < 0:
            raise ConfigError(f"technique {self.name!r}: milestone = {self.milestone!r} must be a step number >= 0")


def check_palettization(technique: str, n_bits, granularity, group_size) -> None:
    _training.check_choice(technique, "n_bits", n_bits, N_BITS)
    _training.check_choice(technique, "granularity", granularity, GRANULARITIES)
    if granularity == "per_grouped_channel":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ConfigError(
                f"technique {technique!r}: granularity 'per_grouped_channel' needs group_size = a positive number "
                f"of output channels per lookup table (got {group_size!r})")
    elif group_size is not None:
        raise ConfigError(
            f"technique {technique!r}: group_size = {group_size!r} applies only to granularity 'per_grouped_channel'; "
            "remove it or set granularity = 'per_grouped_channel'")


def module_config(config: DKMConfig) -> dict:
    # k-means initialisation: the exact 1-D solver instead of coremltools' "auto" (torch k-means++ with 10
    # restarts for layers over 1024 weights): deterministic, optimal, and ~10x faster on a CPU.
    module = {"n_bits": config.n_bits, "granularity": config.granularity, "weight_threshold": config.weight_threshold,
              "enable_per_channel_scale": config.enable_per_channel_scale, "milestone": config.milestone,
              "kmeans_init": "opt1d"}
    if config.group_size is not None:
        module["group_size"] = config.group_size
    return module


def prepare_palettizer(config: DKMConfig, model: nn.Module, keep_zeros: bool = False) -> tuple[nn.Module, object]:
    """Insert DKM fake-palettization into `model` (in place); return it and the palettizer.
    `keep_zeros`: exact zeros (pruned weights) keep a zero centroid of their own and
    no other weight joins it, so sparsity survives palettization."""
    import coremltools.optimize.torch as cto
    module = module_config(config)
    if keep_zeros:
        module.update(enforce_zero=True, prune_threshold=0.0)
    palettizer = cto.palettization.DKMPalettizer(
        model, cto.palettization.DKMPalettizerConfig.from_dict({"global_config": module}))
    return palettizer.prepare(inplace=True), palettizer


def _prepare(config: DKMConfig):
    def prepare(model: nn.Module, example: tuple, total_steps: int) -> _training.Prepared:
        prepared, palettizer = prepare_palettizer(config, model)
        return _training.Prepared(model=prepared, steppers=[palettizer],
                                  finalize=lambda m: palettizer.finalize(m, inplace=True))
    return prepare


def finetune(config: DKMConfig, ctx: CompressContext) -> _training.FinetuneResult:
    return _training.finetune(config, ctx, _prepare(config))


@register(DKMConfig)
def compress_dkm(config: DKMConfig, ctx: CompressContext, out_path: Path) -> CompressOutcome:
    return _training.run_training_technique(config, ctx, out_path, _prepare(config), ops_for(PALETTIZED))


def estimate_seconds(config: DKMConfig, handle: ModelHandle, train_count: int, train=None) -> float:
    """Measured on the model itself: its first DKM step (k-means) and a few later
    ones (DKM's cost per step is not proportional to the weight count, so a small
    probe layer does not scale honestly)."""
    return _training.estimate_finetune_seconds(config, handle, train_count, _prepare(config), train)
