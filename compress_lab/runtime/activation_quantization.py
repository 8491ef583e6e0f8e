"""W8A8: `linear_quantize_activations` calibrated by the lab's runtime, on any OS.

coremltools' `linear_quantize_activations` records each intermediate tensor's
min / max by running the model with Core ML's `predict` (macOS only), then
inserts quantize / dequantize pairs with graph passes that take those ranges.
Here the ranges come from the lab's PyTorch runtime instead; the graph passes
are coremltools' own, run with the same options in the same order."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import torch

from compress_lab.errors import ConfigError, DataError
from compress_lab.mil import iter_ops


def activation_quantization_available() -> tuple[bool, str]:
    try:
        from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
        PASS_REGISTRY["compression::insert_prefix_quantize_dequantize_pair"]
        PASS_REGISTRY["compression::insert_suffix_quantize_dequantize_pair"]
        from coremltools.optimize.coreml.experimental._post_training_quantization import (  # noqa: F401
            _adjust_concat_surrounding_activation_stats,
        )
    except Exception as e:  # a coremltools version without these internals
        return False, f"this coremltools version lacks the activation-quantization passes ({type(e).__name__}: {e})"
    return True, "calibrated with the lab's PyTorch runtime (coremltools' own calibration needs macOS)"


def calibrate_activations(model, sample_data: Iterable, compute_precision: str = "fp32") -> dict[str, dict[str, float]]:
    """Min / max of the inputs and of every computed float tensor except the outputs, over
    `sample_data` (arrays (N, C, H, W), or dicts {input name: array}, as several inputs need), with concat inputs
    and outputs sharing one range, as coremltools' calibration does."""
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    from compress_lab.runtime.program import load_program

    program = load_program(model, compute_precision)
    outputs = set(program.output_names)
    stats: dict[str, dict[str, float]] = defaultdict(dict)

    def observe(name, value):
        if name in outputs or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return
        low, high = float(value.min()), float(value.max())
        entry = stats[name]
        entry["rmin"] = min(low, entry.get("rmin", low))
        entry["rmax"] = max(high, entry.get("rmax", high))

    count = 0
    for batch in sample_data:
        if isinstance(batch, dict) and (len(program.input_names) > 1 or program.input_name in batch):
            program.observe(batch, observe)  # named inputs, as the program takes them (checked by the program)
            count += 1
            continue
        array = batch.get(program.input_name, batch.get(None)) if isinstance(batch, dict) else batch
        if array is None:
            raise DataError(f"calibration sample {sorted(map(str, batch))} has no array for input {program.input_name!r}")
        program.observe(array, observe)
        count += 1
    if count == 0:
        raise DataError("linear_quantize_activations needs calibration data; sample_data is empty")
    concat_groups = [
        [v.name for v in op.inputs["values"]] + [op.outputs[0].name]
        for op in iter_ops(program.mil_function)
        if op.op_type == "concat" and any(v.name in stats for v in [*op.inputs["values"], op.outputs[0]])
    ]  # integer shape arithmetic has no recorded range
    _adjust_concat_surrounding_activation_stats(concat_groups, stats)
    return {name: {"rmin": np.float32(v["rmin"]), "rmax": np.float32(v["rmax"])} for name, v in stats.items()}


def linear_quantize_activations(mlmodel, config, sample_data: Iterable, compute_precision: str = "fp32"):
    """Like `coremltools.optimize.coreml.linear_quantize_activations`, calibrated by the lab's
    runtime. `mlmodel`: an fp16 ML program (MLModel); returns a new MLModel."""
    import coremltools.optimize.coreml as cto
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    from compress_lab.quiet import quiet_coremltools

    if not isinstance(config, cto.OptimizationConfig):
        raise ConfigError(f"config must be a coremltools OptimizationConfig, got {type(config).__name__}")
    stats = calibrate_activations(mlmodel, sample_data, compute_precision)
    prefix = PASS_REGISTRY["compression::insert_prefix_quantize_dequantize_pair"]
    prefix.set_options([PassOption("config", config)])
    prefix.set_options([PassOption("activation_stats", stats)])
    suffix = PASS_REGISTRY["compression::insert_suffix_quantize_dequantize_pair"]
    suffix.set_options([PassOption("config", config)])
    suffix.set_options([PassOption("activation_stats", stats)])
    passes = [prefix, suffix, PASS_REGISTRY["common::dequantize_quantize_pair_elimination"]]
    from compress_lab.quiet import MIL_LOCK
    try:
        with quiet_coremltools(), MIL_LOCK:
            return model_utils._apply_graph_pass(mlmodel, passes, spec_version=_SPECIFICATION_VERSION_IOS_17,
                                                 pymil_load_func=milproto.load,
                                                 skip_model_load=mlmodel.__proxy__ is None)
    except ValueError as e:
        if "scale has dtype fp16 whereas input has dtype fp32" in str(e):
            raise ConfigError(
                "linear_quantize_activations needs an fp16 ML program (coremltools writes activation scales "
                "in fp16); convert the model with precision='fp16' first") from e
        raise
