"""Post-training linear weight quantization to 8 or 4 bits
(coremltools.optimize.coreml.linear_quantize_weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compress_lab.techniques._coreml_common import (
    PostTrainingConfig, Step, WeightLayer, one_of, positive_or_none, run_post_training,
)
from compress_lab.techniques.base import register

DTYPES = ("int8", "uint8", "int4", "uint4")
MODES = ("linear_symmetric", "linear")
GRANULARITIES = ("per_tensor", "per_channel", "per_block")
DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class QuantizeConfig(PostTrainingConfig):
    """granularity per_block gives each run of `block_size` input channels of each output
    channel its own scale (default 32)."""

    name = "quantize"
    label_fields = ("dtype",)
    summary = "Linear quantization of weights to int8/uint8/int4/uint4 with per-tensor, per-channel or per-block scales"

    dtype: Literal["int8", "uint8", "int4", "uint4"] = "int8"
    mode: Literal["linear_symmetric", "linear"] = "linear_symmetric"
    granularity: Literal["per_tensor", "per_channel", "per_block"] = "per_channel"
    block_size: int | None = None

    def validate(self) -> None:
        validate_quantize(self, self.dtype, self.mode, self.granularity, self.block_size)

    @property
    def effective_block_size(self) -> int:
        return self.block_size if self.block_size is not None else DEFAULT_BLOCK_SIZE

    def steps(self):
        return [(QUANTIZE, self)]


def validate_quantize(config: PostTrainingConfig, dtype, mode, granularity, block_size, *,
                      granularities: tuple = GRANULARITIES) -> None:
    one_of(config, "dtype", dtype, DTYPES)
    one_of(config, "mode", mode, MODES)
    one_of(config, "granularity", granularity, granularities)
    positive_or_none(config, "block_size", block_size)
    if block_size is not None and granularity != "per_block":
        config._fail("block_size", block_size, "only applies with granularity 'per_block'")


def quantize_op_config(c: QuantizeConfig):
    import coremltools.optimize.coreml as cto
    kwargs = dict(mode=c.mode, dtype=c.dtype, granularity=c.granularity, weight_threshold=c.weight_threshold)
    if c.granularity == "per_block":
        kwargs["block_size"] = c.effective_block_size
    return cto.OpLinearQuantizerConfig(**kwargs)


def quantize_problem(layer: WeightLayer, c: QuantizeConfig) -> str | None:
    if layer.output_axis is None or layer.input_axis is None:
        return "coremltools cannot tell its channel axes (the ops using it disagree)"
    if c.granularity == "per_block":
        channels = layer.shape[layer.input_axis]
        if channels % c.effective_block_size:
            return f"block_size={c.effective_block_size} does not divide its {channels} input channels"
    return None


def quantize_apply(mlmodel, opt_config, joint: bool, c: QuantizeConfig):
    import coremltools.optimize.coreml as cto
    return cto.linear_quantize_weights(mlmodel, opt_config, joint_compression=joint)


QUANTIZE = Step("quantize", quantize_op_config, quantize_problem, quantize_apply)


@register(QuantizeConfig)
def quantize(config: QuantizeConfig, ctx, out_path):
    return run_post_training(config, ctx, out_path)
