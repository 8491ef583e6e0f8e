"""Joint post-training compression (iOS18): two coremltools passes, the second with
joint_compression=True so it compresses the first one's output.

- prune_palettize: prune, then palettize the remaining non-zero values.
- prune_quantize: prune, then linearly quantize the non-zero values.
- palettize_quantize_lut: palettize, then quantize the look-up tables (per tensor; a LUT
  quantized per channel is refused by coremltools).

Each is composed of the single-technique configs: its fields map onto theirs (prefixed
where two steps share a name), and those configs do the validating."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from compress_lab.errors import ConfigError
from compress_lab.techniques._coreml_common import PostTrainingConfig, run_post_training
from compress_lab.techniques.base import register
from compress_lab.techniques.palettize import PALETTIZE, PalettizeConfig
from compress_lab.techniques.prune import PRUNE, PruneConfig
from compress_lab.techniques.quantize import QUANTIZE, QuantizeConfig

QUANTIZE_LUT = dataclasses.replace(QUANTIZE, kind="quantize_lut", problem=lambda layer, c: None, only_compressed=True)


@dataclass(frozen=True)
class JointConfig(PostTrainingConfig):
    # (single config class, {joint field: single field}, fixed single fields, step)
    PARTS: ClassVar[tuple] = ()

    def validate(self) -> None:
        self.parts()

    def parts(self) -> list[PostTrainingConfig]:
        out = []
        for cls, mapping, fixed, _ in self.PARTS:
            kwargs = {single: getattr(self, joint) for joint, single in mapping.items()}
            kwargs.update(fixed, weight_threshold=self.weight_threshold, precision=self.precision)
            try:
                out.append(cls(**kwargs))
            except ConfigError as e:
                raise ConfigError(self._rename(str(e), cls, mapping)) from None
        return out

    def steps(self):
        return [(step, part) for (_, _, _, step), part in zip(self.PARTS, self.parts())]

    def _rename(self, message: str, cls, mapping: dict[str, str]) -> str:
        to_joint = {single: joint for joint, single in mapping.items()}
        message = message.replace(f"technique {cls.name!r}:", f"technique {self.name!r} ({cls.name} step):", 1)
        pattern = r"\b(" + "|".join(re.escape(k) for k in to_joint) + r")="
        return re.sub(pattern, lambda m: to_joint[m.group(1)] + "=", message)


_PRUNE_FIELDS = {"prune_mode": "mode", "target_sparsity": "target_sparsity", "n_m_ratio": "n_m_ratio",
                 "prune_block_size": "block_size", "threshold": "threshold"}


@dataclass(frozen=True)
class PrunePalettizeConfig(JointConfig):
    """Prune (magnitude by default, 50%), then palettize the non-zero weights."""

    name = "prune_palettize"
    summary = "Pruning then palettization of the remaining weights (joint, sparse LUT storage)"
    PARTS = (
        (PruneConfig, _PRUNE_FIELDS, {}, PRUNE),
        (PalettizeConfig, {"palettize_mode": "mode", "nbits": "nbits", "granularity": "granularity",
                           "group_size": "group_size", "num_kmeans_workers": "num_kmeans_workers"}, {}, PALETTIZE),
    )

    prune_mode: Literal["magnitude", "threshold"] = "magnitude"
    target_sparsity: float | None = None
    n_m_ratio: tuple[int, int] | None = None
    prune_block_size: int | None = None
    threshold: float | None = None
    palettize_mode: Literal["kmeans", "uniform", "unique", "fast_kmeans"] = "kmeans"
    nbits: int | None = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    num_kmeans_workers: int = 1


@dataclass(frozen=True)
class PruneQuantizeConfig(JointConfig):
    """Prune (magnitude by default, 50%), then linearly quantize the non-zero weights."""

    name = "prune_quantize"
    summary = "Pruning then linear quantization of the remaining weights (joint, sparse int storage)"
    PARTS = (
        (PruneConfig, _PRUNE_FIELDS, {}, PRUNE),
        (QuantizeConfig, {"dtype": "dtype", "quantize_mode": "mode", "granularity": "granularity",
                          "quantize_block_size": "block_size"}, {}, QUANTIZE),
    )

    prune_mode: Literal["magnitude", "threshold"] = "magnitude"
    target_sparsity: float | None = None
    n_m_ratio: tuple[int, int] | None = None
    prune_block_size: int | None = None
    threshold: float | None = None
    dtype: Literal["int8", "uint8", "int4", "uint4"] = "int8"
    quantize_mode: Literal["linear_symmetric", "linear"] = "linear_symmetric"
    granularity: Literal["per_tensor", "per_channel", "per_block"] = "per_channel"
    quantize_block_size: int | None = None


@dataclass(frozen=True)
class PalettizeQuantizeLutConfig(JointConfig):
    """Palettize, then quantize each look-up table to `lut_dtype` (per tensor). Pays off
    when LUTs are a visible share of the size: per-grouped-channel, vector, or 6/8-bit LUTs.
    (No per-channel scales here: coremltools folds them into the LUT, leaving none to quantize.)"""

    name = "palettize_quantize_lut"
    summary = "Palettization with the look-up tables themselves quantized to 8 or 4 bits (joint)"
    PARTS = (
        (PalettizeConfig, {"palettize_mode": "mode", "nbits": "nbits", "granularity": "granularity",
                           "group_size": "group_size", "cluster_dim": "cluster_dim",
                           "num_kmeans_workers": "num_kmeans_workers"}, {}, PALETTIZE),
        (QuantizeConfig, {"lut_dtype": "dtype", "lut_mode": "mode"}, {"granularity": "per_tensor"}, QUANTIZE_LUT),
    )

    palettize_mode: Literal["kmeans", "uniform", "unique", "fast_kmeans"] = "kmeans"
    nbits: int | None = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    cluster_dim: int = 1
    num_kmeans_workers: int = 1
    lut_dtype: Literal["int8", "uint8", "int4", "uint4"] = "int8"
    lut_mode: Literal["linear_symmetric", "linear"] = "linear_symmetric"


for _cls in (PrunePalettizeConfig, PruneQuantizeConfig, PalettizeQuantizeLutConfig):
    register(_cls)(lambda config, ctx, out_path: run_post_training(config, ctx, out_path))
