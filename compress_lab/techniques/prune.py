"""Post-training pruning: weights set to zero and stored sparsely
(coremltools.optimize.coreml.prune_weights, magnitude or threshold)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from compress_lab.techniques._coreml_common import (
    PostTrainingConfig, Step, WeightLayer, one_of, positive_or_none, run_post_training,
)
from compress_lab.techniques.base import register

MODES = ("magnitude", "threshold")
DEFAULT_SPARSITY = 0.5
DEFAULT_MINIMUM_SPARSITY = 0.5
STRUCTURED_OP_TYPES = ("conv", "linear")


@dataclass(frozen=True)
class PruneConfig(PostTrainingConfig):
    """mode magnitude: zero the `target_sparsity` fraction of smallest weights (default 0.5),
    or n of every m (`n_m_ratio`), optionally in blocks of `block_size` along `dim`.
    mode threshold: zero weights with |w| <= `threshold`; a tensor is stored sparse only if
    at least `minimum_sparsity_percentile` (default 0.5) of it is zero."""

    name = "prune"
    summary = "Pruning: zero the smallest weights (magnitude, n:m, block) or those under a threshold; sparse storage"

    mode: Literal["magnitude", "threshold"] = "magnitude"
    target_sparsity: float | None = None
    n_m_ratio: tuple[int, int] | None = None
    block_size: int | None = None
    dim: int | None = None
    threshold: float | None = None
    minimum_sparsity_percentile: float | None = None

    def validate(self) -> None:
        validate_prune(self, self.mode, self.target_sparsity, self.n_m_ratio, self.block_size, self.dim,
                       self.threshold, self.minimum_sparsity_percentile)

    @property
    def effective_sparsity(self) -> float | None:
        if self.mode != "magnitude" or self.n_m_ratio is not None:
            return None
        return self.target_sparsity if self.target_sparsity is not None else DEFAULT_SPARSITY

    @property
    def effective_dim(self) -> int | None:
        if self.dim is not None:
            return self.dim
        if self.n_m_ratio is not None:
            return 1
        return 0 if self.block_size is not None else None

    def steps(self):
        return [(PRUNE, self)]


def validate_prune(config: PostTrainingConfig, mode, target_sparsity, n_m_ratio, block_size, dim, threshold,
                   minimum_sparsity_percentile) -> None:
    one_of(config, "mode", mode, MODES)
    if mode == "threshold":
        for k, v in (("target_sparsity", target_sparsity), ("n_m_ratio", n_m_ratio), ("block_size", block_size), ("dim", dim)):
            if v is not None:
                config._fail(k, v, "only applies with mode 'magnitude'")
        if threshold is None:
            config._fail("threshold", threshold, "is required with mode 'threshold' (weights with |w| <= threshold become 0)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            config._fail("threshold", threshold, "must be a number >= 0")
        if minimum_sparsity_percentile is not None and not (0.0 <= minimum_sparsity_percentile <= 1.0):
            config._fail("minimum_sparsity_percentile", minimum_sparsity_percentile, "must be in [0, 1]")
        return
    for k, v in (("threshold", threshold), ("minimum_sparsity_percentile", minimum_sparsity_percentile)):
        if v is not None:
            config._fail(k, v, "only applies with mode 'threshold'")
    if target_sparsity is not None:
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) or not (0.0 <= target_sparsity < 1.0):
            config._fail("target_sparsity", target_sparsity, "must be in [0, 1)")
        if n_m_ratio is not None:
            config._fail("n_m_ratio", n_m_ratio, "cannot be combined with target_sparsity; set one of them")
    if n_m_ratio is not None:
        ok = isinstance(n_m_ratio, (list, tuple)) and len(n_m_ratio) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in n_m_ratio)
        if not ok or not (1 <= n_m_ratio[0] < n_m_ratio[1]):
            config._fail("n_m_ratio", n_m_ratio,
                         "must be [n, m] with 1 <= n < m (n of every m weights are zeroed), e.g. [2, 4]")
        if block_size is not None:
            config._fail("block_size", block_size, "cannot be combined with n_m_ratio")
    positive_or_none(config, "block_size", block_size, minimum=2)
    if dim is not None:
        if block_size is None and n_m_ratio is None:
            config._fail("dim", dim, "only applies with block_size or n_m_ratio")
        one_of(config, "dim", dim, (0, 1))


def prune_op_config(c: PruneConfig):
    import coremltools.optimize.coreml as cto
    if c.mode == "threshold":
        minimum = c.minimum_sparsity_percentile if c.minimum_sparsity_percentile is not None else DEFAULT_MINIMUM_SPARSITY
        return cto.OpThresholdPrunerConfig(threshold=float(c.threshold), minimum_sparsity_percentile=float(minimum),
                                           weight_threshold=c.weight_threshold)
    if c.n_m_ratio is not None:
        return cto.OpMagnitudePrunerConfig(n_m_ratio=tuple(c.n_m_ratio), dim=c.effective_dim, weight_threshold=c.weight_threshold)
    return cto.OpMagnitudePrunerConfig(target_sparsity=float(c.effective_sparsity), block_size=c.block_size,
                                       dim=c.effective_dim, weight_threshold=c.weight_threshold)


def prune_problem(layer: WeightLayer, c: PruneConfig) -> str | None:
    structured = c.mode == "magnitude" and (c.n_m_ratio is not None or c.block_size is not None)
    if not structured:
        return None
    bad_users = [t for _, t in layer.consumers if t not in STRUCTURED_OP_TYPES]
    if bad_users:
        return f"block and n:m pruning apply to conv and linear weights only, not {bad_users[0]}"
    channels = layer.shape[c.effective_dim]
    if c.n_m_ratio is not None and c.n_m_ratio[1] > channels / 2:
        return f"n_m_ratio m={c.n_m_ratio[1]} is more than half of its {channels} channels on dim {c.effective_dim}"
    if c.block_size is not None and c.block_size > channels / 2:
        return f"block_size={c.block_size} is more than half of its {channels} channels on dim {c.effective_dim}"
    return None


def prune_apply(mlmodel, opt_config, joint: bool, c: PruneConfig):
    import coremltools.optimize.coreml as cto
    _fix_fp16_percentile()
    return cto.prune_weights(mlmodel, opt_config, joint_compression=joint)


@functools.lru_cache(maxsize=1)
def _fix_fp16_percentile() -> None:
    """coremltools 9.0 + numpy 2 bug: magnitude pruning takes np.percentile of the fp16
    weights, whose index arithmetic overflows fp16 above 65,504 elements and returns NaN, so
    large fp16 tensors silently stay dense. Rank the magnitudes in fp32 (exact for fp16
    values) and store the kept values in the original dtype."""
    import numpy as np
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    original = prune_weights.compress_by_magnitude

    def compress_by_magnitude(val, target_sparsity, block_size=None, dim=None):
        if getattr(val, "dtype", None) != np.float16:
            return original(val, target_sparsity, block_size, dim)
        params = original(val.astype(np.float32), target_sparsity, block_size, dim)
        return None if params is None else params._replace(nonzero_data=params.nonzero_data.astype(np.float16))

    compress_by_magnitude.lab_fp16_fix = True
    if not getattr(original, "lab_fp16_fix", False):
        prune_weights.compress_by_magnitude = staticmethod(compress_by_magnitude)


PRUNE = Step("prune", prune_op_config, prune_problem, prune_apply)


@register(PruneConfig)
def prune(config: PruneConfig, ctx, out_path):
    return run_post_training(config, ctx, out_path)
