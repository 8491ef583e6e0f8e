"""Pruning while fine-tuning with coremltools' MagnitudePruner: the smallest weights
(or blocks, or n of every m) are zeroed on a schedule and the rest recover by
training; exported as constexpr_sparse_to_dense weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress_lab.errors import ConfigError
from compress_lab.mil import SPARSE, ops_for
from compress_lab.models.handle import ModelHandle
from compress_lab.techniques import _training
from compress_lab.techniques.base import CompressContext, CompressOutcome, register

SCHEDULES = ("polynomial_decay", "constant")
RAMP_FRACTION = 0.75  # polynomial decay reaches the target after this share of the steps
MAX_UPDATES = 10


@dataclass(frozen=True)
class MagnitudePruningConfig(_training.FinetuneConfig):
    """`schedule` "polynomial_decay" raises sparsity from 0 to `target_sparsity` over
    the first 75% of the steps (then trains at the target); "constant" prunes to the
    target at step 0. `block_size` > 1 prunes blocks of output channels; `n_m` =
    [n, m] zeroes n of every m weights (target_sparsity is then n/m)."""

    name = "magnitude_pruning"
    label_fields = ("target_sparsity",)
    summary = ("Magnitude pruning with fine-tuning (coremltools MagnitudePruner): unstructured, block or n:m "
               "sparsity reached on a schedule while training on the training folder.")

    target_sparsity: float = 0.5
    schedule: Literal["polynomial_decay", "constant"] = "polynomial_decay"
    block_size: int = 1
    n_m: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pruning(self.name, self.target_sparsity, self.schedule, self.block_size, self.n_m)
        if self.n_m is not None:
            object.__setattr__(self, "n_m", tuple(self.n_m))


def check_pruning(technique: str, target_sparsity, schedule, block_size, n_m) -> None:
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) or not (0 < target_sparsity < 1):
        raise ConfigError(f"technique {technique!r}: target_sparsity = {target_sparsity!r} must be a fraction in (0, 1), e.g. 0.75")
    _training.check_choice(technique, "schedule", schedule, SCHEDULES)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"technique {technique!r}: block_size = {block_size!r} must be an integer >= 1 (1: unstructured)")
    if n_m is not None:
        values = tuple(n_m)
        if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in values) \
                or not (0 < values[0] < values[1]):
            raise ConfigError(f"technique {technique!r}: n_m = {list(values)!r} must be [n, m] with 0 < n < m, e.g. [3, 4]")
        if block_size != 1:
            raise ConfigError(f"technique {technique!r}: n_m and block_size = {block_size} cannot be combined; "
                              "use one kind of structure (set block_size = 1 for n:m)")


def update_steps(total_steps: int) -> list[int]:
    """Steps at which the polynomial schedule raises sparsity, evenly spread over the
    ramp. coremltools' pruner counts steps from 1 (step() increments, then updates)."""
    end = max(1, int(total_steps * RAMP_FRACTION))
    count = min(MAX_UPDATES, end)
    if count <= 1:
        return [end]
    return sorted({1 + round(i * (end - 1) / (count - 1)) for i in range(count)})


def target_of(target_sparsity: float, n_m) -> float:
    return float(target_sparsity if n_m is None else n_m[0] / n_m[1])


def pruner_config(target_sparsity: float, schedule: str, block_size: int, n_m, total_steps: int):
    import coremltools.optimize.torch as cto
    module: dict = {"target_sparsity": target_of(target_sparsity, n_m),
                    "block_size": block_size}
    if n_m is not None:
        module["n_m_ratio"] = list(n_m)
    if schedule == "polynomial_decay":
        module["scheduler"] = {"update_steps": update_steps(total_steps)}
    else:
        module["scheduler"] = {"begin_step": 0}
    return cto.pruning.MagnitudePrunerConfig.from_dict({"global_config": module})


def prepare_pruner(target_sparsity, schedule, block_size, n_m, model: nn.Module, total_steps: int):
    """Attach pruning masks to `model` (in place); return it and the pruner."""
    import coremltools.optimize.torch as cto
    pruner = cto.pruning.MagnitudePruner(model, pruner_config(target_sparsity, schedule, block_size, n_m, total_steps))
    return pruner.prepare(inplace=True), pruner


def _prepare(config: MagnitudePruningConfig):
    def prepare(model: nn.Module, example: tuple, total_steps: int) -> _training.Prepared:
        prepared, pruner = prepare_pruner(config.target_sparsity, config.schedule, config.block_size, config.n_m,
                                          model, total_steps)
        return _training.Prepared(model=prepared, steppers=[pruner],
                                  finalize=lambda m: pruner.finalize(m, inplace=True))
    return prepare


def finetune(config: MagnitudePruningConfig, ctx: CompressContext) -> _training.FinetuneResult:
    return _training.finetune(config, ctx, _prepare(config))


def estimate_seconds(config: MagnitudePruningConfig, handle: ModelHandle, train_count: int, train=None) -> float:
    return _training.estimate_finetune_seconds(config, handle, train_count, _prepare(config), train)


@register(MagnitudePruningConfig)
def compress_magnitude_pruning(config: MagnitudePruningConfig, ctx: CompressContext, out_path: Path) -> CompressOutcome:
    return _training.run_training_technique(config, ctx, out_path, _prepare(config), ops_for(SPARSE),
                                            target_sparsity=target_of(config.target_sparsity, config.n_m))
