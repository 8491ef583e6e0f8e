"""Palettization-aware training with coremltools' DKMPalettizer (differentiable
k-means): each weight becomes a lookup table of 2^n_bits values plus indices,
learned while fine-tuning; exported as constexpr_lut_to_dense weights.

DKM's forward pass computes soft assignments of every weight to every centroid,
so a step costs far more than a plain training step (30-100x on a CPU) and the
first step runs k-means. `estimate_seconds` accounts for both."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress_lab.errors import ConfigError
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
    def prepare(model: nn.Module, example: torch.Tensor, total_steps: int) -> _training.Prepared:
        prepared, palettizer = prepare_palettizer(config, model)
        return _training.Prepared(model=prepared, steppers=[palettizer],
                                  finalize=lambda m: palettizer.finalize(m, inplace=True))
    return prepare


def finetune(config: DKMConfig, ctx: CompressContext) -> _training.FinetuneResult:
    return _training.finetune(config, ctx, _prepare(config))


@register(DKMConfig)
def compress_dkm(config: DKMConfig, ctx: CompressContext, out_path: Path) -> CompressOutcome:
    return _training.run_training_technique(config, ctx, out_path, _prepare(config), _training.PALETTIZED_OPS)


# --------------------------------------------------------------------------- estimate

_UNIT_COST: dict[tuple, tuple[float, float]] = {}
_UNIT_LOCK = threading.Lock()
UNIT_SHAPE = (64, 256)  # a probe Linear layer of 16k weights


def palettized_weight_count(config: DKMConfig, model: nn.Module) -> int:
    """Elements of the weights DKM will palettize (Conv/Linear weights above the threshold)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if module.weight.numel() > config.weight_threshold:
                total += module.weight.numel()
    return total


def dkm_unit_cost(config: DKMConfig) -> tuple[float, float]:
    """(first-step, later-step) seconds of DKM on a 16k-weight probe layer at this
    setting, measured once per process: the per-weight cost that scales to a model."""
    key = (config.n_bits, config.granularity, config.group_size, config.enable_per_channel_scale,
           _training.pick_device().type)
    with _UNIT_LOCK:
        if key in _UNIT_COST:
            return _UNIT_COST[key]
    probe_config = DKMConfig(n_bits=config.n_bits, granularity=config.granularity,
                             group_size=min(config.group_size, UNIT_SHAPE[0]) if config.group_size else None,
                             enable_per_channel_scale=config.enable_per_channel_scale, weight_threshold=0)
    device = _training.pick_device()
    times = []
    with _training.quiet_coremltools():
        torch.manual_seed(0)
        probe = nn.Sequential(nn.Linear(UNIT_SHAPE[1], UNIT_SHAPE[0]))
        prepared, palettizer = prepare_palettizer(probe_config, probe)
        prepared = prepared.to(device).train()
        x = torch.randn(8, UNIT_SHAPE[1], device=device)
        for _ in range(3):
            started = time.perf_counter()
            prepared(x).square().mean().backward()
            palettizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    cost = (times[0], min(times[1:]))
    with _UNIT_LOCK:
        _UNIT_COST[key] = cost
    return cost


def estimate_seconds(config: DKMConfig, handle: ModelHandle, train_count: int) -> float:
    """Plain fine-tuning cost of the model plus DKM's cost scaled from a probe layer
    by the number of palettized weights (k-means once, then soft assignment each step)."""
    plain = _training.FinetuneConfig(batch_size=config.batch_size)
    first_plain, step_plain = _training.measure_step_cost(plain, handle, _plain_prepare)
    unit_first, unit_step = dkm_unit_cost(config)
    scale = palettized_weight_count(config, handle.module) / (UNIT_SHAPE[0] * UNIT_SHAPE[1])
    steps = config.total_steps(train_count)
    active = max(steps - config.milestone, 0)
    return (first_plain + step_plain * max(steps - 1, 0) + unit_first * scale + unit_step * scale * max(active - 1, 0)
            + _training.DECODE_S_PER_IMAGE * train_count + _training.CONVERT_OVERHEAD_S)


def _plain_prepare(model: nn.Module, example: torch.Tensor, total_steps: int) -> _training.Prepared:
    return _training.Prepared(model=model, steppers=[], finalize=lambda m: m)
