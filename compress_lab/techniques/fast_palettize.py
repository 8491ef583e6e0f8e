"""`palettize_weights(mode="kmeans")` with the lab's exact histogram k-means.

How it plugs in: every OpPalettizerConfig with mode "kmeans" (global, per op type,
per op name) is replaced by the same config with mode "custom" and a `lut_function`
that runs `kmeans1d.palettize_flat` with that config's nbits; then coremltools' own
`palettize_weights` runs. The custom mode goes through exactly the same pass code as
k-means (block sizes from granularity/group_size/channel_axis, per-channel scale,
weight_threshold, the grouped-channel split, LUT/indices layout, the
constexpr_lut_to_dense op, joint compression); only the per-group
`_get_lut_and_indices` call differs. The pass hands lut_function one group's values and
expects (lut with 2**nbits entries in the weight's dtype, uint8 index per element);
it infers nbits from the LUT length, so the emitted ops and package layout are the
ones coremltools emits for k-means. Configs the lab cannot serve (other modes,
vector palettization with cluster_dim > 1) are passed through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress_lab.errors import ConfigError
from compress_lab.techniques.kmeans1d import palettize_flat


@dataclass(frozen=True)
class ExactKMeansLut:
    """A coremltools `lut_function`: exact k-means LUT for one group of weights.

    A value object (equal for equal nbits), so two ops sharing a weight with equal
    configs still compare equal inside coremltools."""

    nbits: int

    def __call__(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return palettize_flat(np.asarray(weight), self.nbits)


def exact_op_config(op_config):
    """The OpPalettizerConfig to use in place of `op_config` (None stays None)."""
    import attrs
    import coremltools as ct

    if op_config is None:
        return None
    if not isinstance(op_config, ct.optimize.coreml.OpPalettizerConfig):
        raise ConfigError(f"fast_palettize_weights takes OpPalettizerConfig entries; got {type(op_config).__name__}")
    if op_config.mode.upper() != "KMEANS" or op_config.cluster_dim > 1:
        return op_config
    return attrs.evolve(op_config, mode="custom", nbits=None, lut_function=ExactKMeansLut(op_config.nbits))


def exact_config(config):
    """The OptimizationConfig with every scalar k-means entry served by the exact solver."""
    import coremltools as ct

    if not isinstance(config, ct.optimize.coreml.OptimizationConfig):
        raise ConfigError(f"fast_palettize_weights takes a ct.optimize.coreml.OptimizationConfig; got {type(config).__name__}")
    return ct.optimize.coreml.OptimizationConfig(
        global_config=exact_op_config(config.global_config),
        op_type_configs={name: exact_op_config(c) for name, c in (config.op_type_configs or {}).items()},
        op_name_configs={name: exact_op_config(c) for name, c in (config.op_name_configs or {}).items()},
    )


def fast_palettize_weights(mlmodel, config, joint_compression: bool = False):
    """Drop-in for `ct.optimize.coreml.palettize_weights(mlmodel, config)`; returns a new model."""
    import coremltools as ct

    return ct.optimize.coreml.palettize_weights(mlmodel, config=exact_config(config),
                                                joint_compression=joint_compression)
