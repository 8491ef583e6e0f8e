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

After the pass, coremltools' palettize_weights re-runs the whole default MIL pipeline
(~90 passes) on a program that was already optimised when it was converted; on the
sample models and a ResNet-18 that costs 1-5 s per call and leaves every file of the
saved package byte-identical (tests/test_kmeans1d.py checks it). By default this module
serialises the palettized program directly (coremltools' own `_apply_graph_pass` with
`return_pymil_prog=True`, then `_mil_convert` with the empty pipeline, coremltools 9.0);
`rerun_default_pipeline=True` takes the public palettize_weights route instead.
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


def fast_palettize_weights(mlmodel, config, joint_compression: bool = False, rerun_default_pipeline: bool = False):
    """Drop-in for `ct.optimize.coreml.palettize_weights(mlmodel, config)`; returns a new model."""
    import coremltools as ct
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.models.utils import _apply_graph_pass, _mil_convert

    exact = exact_config(config)
    if rerun_default_pipeline:
        return ct.optimize.coreml.palettize_weights(mlmodel, config=exact, joint_compression=joint_compression)
    if mlmodel._is_multifunction():
        raise ConfigError("fast_palettize_weights cannot palettize a multifunction model (coremltools cannot either); "
                          "palettize each function's model before combining them")
    palettizer = PASS_REGISTRY["compression::palettize_weights"]
    palettizer.set_options([PassOption("config", exact), PassOption("joint_compression", joint_compression)])
    spec = mlmodel.get_spec()
    spec_version = max(spec.specificationVersion, ct._SPECIFICATION_VERSION_IOS_16)
    program = _apply_graph_pass(mlmodel, palettizer, spec_version=spec_version, return_pymil_prog=True)
    return _mil_convert(program, convert_to="mlprogram", convert_from="milinternal",
                        specification_version=spec_version, compute_units=mlmodel.compute_unit,
                        model_description=spec.description, skip_model_load=mlmodel.__proxy__ is None,
                        pass_pipeline=ct.PassPipeline.EMPTY)
