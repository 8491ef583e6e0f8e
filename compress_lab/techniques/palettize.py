"""Post-training palettization: each weight becomes an n-bit index into a look-up table
(coremltools.optimize.coreml.palettize_weights)."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Literal

from compress_lab.techniques._coreml_common import (
    PostTrainingConfig, Step, WeightLayer, one_of, positive_or_none, run_post_training,
)
from compress_lab.techniques.base import register

MODES = ("kmeans", "uniform", "unique", "fast_kmeans")
NBITS = (1, 2, 3, 4, 6, 8)
GRANULARITIES = ("per_tensor", "per_grouped_channel")
DEFAULT_GROUP_SIZE = 32
FAST_MODULE = "compress_lab.techniques.fast_palettize"


@dataclass(frozen=True)
class PalettizeConfig(PostTrainingConfig):
    """mode: kmeans (coremltools' k-means), uniform (evenly spaced LUT), unique (the weights'
    own distinct values; nbits picked from the data, so leave nbits unset), fast_kmeans (the
    lab's exact k-means palettizer). granularity per_grouped_channel gives each group of
    `group_size` output channels its own LUT (default 32). cluster_dim > 1 is vector
    palettization (kmeans/unique only)."""

    name = "palettize"
    label_fields = ("nbits",)
    summary = "Palettization: weights as n-bit indices into a look-up table (k-means, uniform or unique values)"

    mode: Literal["kmeans", "uniform", "unique", "fast_kmeans"] = "kmeans"
    nbits: int | None = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    enable_per_channel_scale: bool = False
    cluster_dim: int = 1
    num_kmeans_workers: int = 1

    def validate(self) -> None:
        validate_palettize(self, self.mode, self.nbits, self.granularity, self.group_size, self.cluster_dim,
                           self.num_kmeans_workers)
        if self.mode == "fast_kmeans":
            if importlib.util.find_spec(FAST_MODULE) is None:
                self._fail("mode", self.mode, f"needs the lab's fast palettizer ({FAST_MODULE}), which is not available; "
                                              "use mode 'kmeans'")
            if self.cluster_dim != 1:
                self._fail("cluster_dim", self.cluster_dim, "is not supported by mode 'fast_kmeans' (scalar LUTs only); use mode 'kmeans'")
        modes = {s.get("mode", self.mode) for s in self.op_overrides.values() if isinstance(s, dict)}
        if ("fast_kmeans" in modes | {self.mode}) and modes - {"fast_kmeans"}:
            self._fail("op_overrides", self.op_overrides, "cannot mix mode 'fast_kmeans' with other modes in one model")

    @property
    def effective_group_size(self) -> int:
        return self.group_size if self.group_size is not None else DEFAULT_GROUP_SIZE

    def steps(self):
        return [(PALETTIZE, self)]


def validate_palettize(config: PostTrainingConfig, mode, nbits, granularity, group_size, cluster_dim, num_kmeans_workers,
                       *, modes: tuple = MODES) -> None:
    one_of(config, "mode", mode, modes)
    if mode == "unique":
        if nbits is not None:
            config._fail("nbits", nbits, "cannot be set with mode 'unique' (it picks the bits from the number of distinct "
                                         "values); leave nbits unset (null)")
    elif nbits is None:
        config._fail("nbits", nbits, f"is required with mode {mode!r}; use one of {list(NBITS)}")
    elif isinstance(nbits, bool) or nbits not in NBITS:
        config._fail("nbits", nbits, f"is not allowed; use one of {list(NBITS)}")
    one_of(config, "granularity", granularity, GRANULARITIES)
    positive_or_none(config, "group_size", group_size)
    if group_size is not None and granularity != "per_grouped_channel":
        config._fail("group_size", group_size, "only applies with granularity 'per_grouped_channel'")
    positive_or_none(config, "cluster_dim", cluster_dim)
    if cluster_dim > 1:
        if mode not in ("kmeans", "unique"):
            config._fail("cluster_dim", cluster_dim, f"(vector palettization) works with mode 'kmeans' or 'unique', not {mode!r}")
        size = group_size if group_size is not None else DEFAULT_GROUP_SIZE
        if granularity == "per_grouped_channel" and size % cluster_dim:
            config._fail("cluster_dim", cluster_dim, f"must divide group_size={size}")
    positive_or_none(config, "num_kmeans_workers", num_kmeans_workers)


def palettize_op_config(c: PalettizeConfig):
    import coremltools.optimize.coreml as cto
    kwargs = dict(mode="kmeans" if c.mode == "fast_kmeans" else c.mode, nbits=c.nbits, granularity=c.granularity,
                  cluster_dim=c.cluster_dim, enable_per_channel_scale=c.enable_per_channel_scale,
                  num_kmeans_workers=c.num_kmeans_workers, weight_threshold=c.weight_threshold)
    if c.granularity == "per_grouped_channel":
        kwargs["group_size"] = c.effective_group_size
    return cto.OpPalettizerConfig(**kwargs)


def palettize_problem(layer: WeightLayer, c: PalettizeConfig) -> str | None:
    axis = layer.output_axis
    if axis is None or layer.input_axis is None:
        return "coremltools cannot tell its channel axes (the ops using it disagree)"
    channels = layer.shape[axis]
    if c.granularity == "per_grouped_channel" and channels % c.effective_group_size:
        return f"group_size={c.effective_group_size} does not divide its {channels} output channels"
    if c.cluster_dim > 1:
        effective = channels // layer.groups if axis == 0 and layer.groups > 1 else channels
        if effective % c.cluster_dim:
            return f"cluster_dim={c.cluster_dim} does not divide its {effective} output channels per group"
    return None


def palettize_apply(mlmodel, opt_config, joint: bool, c: PalettizeConfig):
    _fix_fp16_unique_count()
    if c.mode == "fast_kmeans":
        from compress_lab.techniques.fast_palettize import fast_palettize_weights
        return fast_palettize_weights(mlmodel, opt_config, joint_compression=joint)
    import coremltools.optimize.coreml as cto
    return cto.palettize_weights(mlmodel, opt_config, joint_compression=joint)


@functools.lru_cache(maxsize=1)
def _fix_fp16_unique_count() -> None:
    """numpy 2.3 sorts some float16 arrays wrongly on AVX-512 CPUs, so np.unique of fp16
    weights over-counts distinct values and mode 'unique' picks too many bits (a 4-value
    tensor stored with 8-bit indices). Count them in fp32 (exact for fp16 values)."""
    import numpy as np
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    original = palettize_weights._get_nbits_for_unique_mode
    if getattr(original, "lab_fp16_fix", False):
        return

    def count_in_fp32(val, allowed_nbits, cluster_dim=1, vector_axis=None):
        if getattr(val, "dtype", None) == np.float16:
            val = val.astype(np.float32)
        return original(val, allowed_nbits, cluster_dim, vector_axis)

    count_in_fp32.lab_fp16_fix = True
    palettize_weights._get_nbits_for_unique_mode = staticmethod(count_in_fp32)


PALETTIZE = Step("palettize", palettize_op_config, palettize_problem, palettize_apply)


@register(PalettizeConfig)
def palettize(config: PalettizeConfig, ctx, out_path):
    return run_post_training(config, ctx, out_path)
