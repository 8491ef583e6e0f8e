"""Compression on the PyTorch side without fine-tuning:

- `skm`: SKMPalettizer, k-means weighted by each weight's sensitivity (Fisher
  information from a few calibration samples);
- `gptq`: layer-wise GPTQ (LayerwiseCompressor), quantizing each Conv/Linear layer
  in turn so as to minimise its output error on calibration samples, with the error
  of the layers before it already included;
- `torch_palettize` / `torch_quantize`: the data-free PostTrainingPalettizer /
  PostTrainingQuantizer, the PyTorch-side references of the Core ML post-training
  techniques.

All start from the PyTorch model, so they belong to the training-time family."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from compress_lab.errors import ConfigError, LabError
from compress_lab.mil import PALETTIZED, QUANTIZED, ops_for
from compress_lab.models.handle import ModelHandle
from compress_lab.quiet import quiet_coremltools
from compress_lab.techniques import _training
from compress_lab.techniques.base import (
    CompressContext, CompressOutcome, DataNeed, Progress, TechniqueConfig, register,
)
from compress_lab.techniques.dkm import check_palettization

QUANT_DTYPES = ("int8", "uint8", "int4", "uint4")
GPTQ_DTYPES = ("uint8", "uint4")  # coremltools' GPTQ quantizes to unsigned integers only
QUANT_GRANULARITIES = ("per_channel", "per_tensor", "per_block")
MAX_CALIBRATION = 4096


def _check_calibration(technique: str, samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or not (1 <= samples <= MAX_CALIBRATION):
        raise ConfigError(f"technique {technique!r}: calibration_samples = {samples!r} must be an integer between 1 and {MAX_CALIBRATION}")


def _check_quantization(technique: str, dtype, granularity, block_size) -> None:
    _training.check_choice(technique, "weight_dtype", dtype, QUANT_DTYPES)
    _training.check_choice(technique, "granularity", granularity, QUANT_GRANULARITIES)
    if granularity == "per_block":
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"technique {technique!r}: granularity 'per_block' needs block_size = a positive number "
                              f"of input channels per scale (got {block_size!r})")
    elif block_size is not None:
        raise ConfigError(f"technique {technique!r}: block_size = {block_size!r} applies only to granularity 'per_block'")


# --------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class SKMConfig(TechniqueConfig):
    name = "skm"
    family = "training_time"
    data_need = DataNeed.CALIBRATION
    needs_loss = True   # sensitivities are gradients of the task's loss
    summary = ("Sensitive k-means palettization (coremltools SKMPalettizer): k-means weighted by Fisher "
               "sensitivity from calibration data; no fine-tuning. Starts from the PyTorch model.")

    n_bits: Literal[1, 2, 3, 4, 6, 8] = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    enable_per_channel_scale: bool = False
    calibration_samples: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_palettization(self.name, self.n_bits, self.granularity, self.group_size)
        _check_calibration(self.name, self.calibration_samples)
        _training._check_int(self.name, "seed", self.seed, 0)


@dataclass(frozen=True)
class GPTQConfig(TechniqueConfig):
    name = "gptq"
    family = "training_time"
    data_need = DataNeed.CALIBRATION
    summary = ("Layer-wise GPTQ (coremltools LayerwiseCompressor): each Conv/Linear layer quantized in turn to "
               "minimise its output error on calibration data; no fine-tuning. Starts from the PyTorch model.")

    weight_dtype: Literal["uint8", "uint4"] = "uint4"
    granularity: Literal["per_channel", "per_tensor", "per_block"] = "per_channel"
    block_size: int | None = None
    scheme: Literal["symmetric", "affine"] = "symmetric"
    hessian_dampening: float = 0.01
    calibration_samples: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        _check_quantization(self.name, self.weight_dtype, self.granularity, self.block_size)
        _training.check_choice(self.name, "weight_dtype", self.weight_dtype, GPTQ_DTYPES)
        _training.check_choice(self.name, "scheme", self.scheme, ("symmetric", "affine"))
        if isinstance(self.hessian_dampening, bool) or not isinstance(self.hessian_dampening, (int, float)) \
                or not (0 < self.hessian_dampening < 1):
            raise ConfigError(f"technique 'gptq': hessian_dampening = {self.hessian_dampening!r} must be in (0, 1), e.g. 0.01")
        _check_calibration(self.name, self.calibration_samples)
        _training._check_int(self.name, "seed", self.seed, 0)


@dataclass(frozen=True)
class TorchPalettizeConfig(TechniqueConfig):
    name = "torch_palettize"
    family = "training_time"
    data_need = DataNeed.NONE
    summary = ("Data-free k-means palettization of the PyTorch model (coremltools PostTrainingPalettizer), "
               "then conversion: the PyTorch-side reference of Core ML palettize_weights.")

    n_bits: Literal[1, 2, 3, 4, 6, 8] = 4
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int | None = None
    enable_per_channel_scale: bool = False

    def __post_init__(self) -> None:
        check_palettization(self.name, self.n_bits, self.granularity, self.group_size)


@dataclass(frozen=True)
class TorchQuantizeConfig(TechniqueConfig):
    name = "torch_quantize"
    family = "training_time"
    data_need = DataNeed.NONE
    summary = ("Data-free linear weight quantization of the PyTorch model (coremltools PostTrainingQuantizer), "
               "then conversion: the PyTorch-side reference of Core ML linear_quantize_weights.")

    weight_dtype: Literal["int8", "uint8", "int4", "uint4"] = "int8"
    granularity: Literal["per_channel", "per_tensor", "per_block"] = "per_channel"
    block_size: int | None = None
    scheme: Literal["symmetric", "affine"] = "symmetric"

    def __post_init__(self) -> None:
        _check_quantization(self.name, self.weight_dtype, self.granularity, self.block_size)
        _training.check_choice(self.name, "scheme", self.scheme, ("symmetric", "affine"))


# --------------------------------------------------------------------------- compress (torch side)

def calibration_batches(config, ctx: CompressContext, labelled: bool) -> tuple[_training.TrainingData, torch.Tensor]:
    """The calibration (or training) source read by the model's task, and the
    `calibration_samples` units of it chosen by the seed."""
    folder = _training.training_folder(ctx, calibration=True)
    data = _training.load_training_data(ctx, folder, labelled=labelled)
    generator = torch.Generator().manual_seed(config.seed)
    return data, torch.randperm(len(data), generator=generator)[:config.calibration_samples]


def _palettizer_module(config) -> dict:
    module = {"n_bits": config.n_bits, "granularity": config.granularity,
              "enable_per_channel_scale": config.enable_per_channel_scale}
    if config.group_size is not None:
        module["group_size"] = config.group_size
    return module


def _quantizer_module(config) -> dict:
    module = {"weight_dtype": config.weight_dtype, "granularity": config.granularity,
              "quantization_scheme": config.scheme}
    if config.block_size is not None:
        module["block_size"] = config.block_size
    return module


def skm_model(config: SKMConfig, ctx: CompressContext) -> nn.Module:
    import coremltools.optimize.torch as cto
    data, units = calibration_batches(config, ctx, labelled=True)
    task_loss = _training.loss_for(ctx)
    meta = ctx.handle.metadata
    model = ctx.handle.torch_copy()
    group = max(1, int(getattr(data.task, "calibration_units", 1)))
    samples = [data.batch(units[i:i + group]) for i in range(0, len(units), group)]

    def loss_fn(module: nn.Module, sample) -> torch.Tensor:
        ctx.check_cancelled()
        inputs, targets = sample
        where = next(module.parameters()).device
        out = module(*_training.model_args(meta, inputs, where))
        return _training.loss_value(config, ctx.handle, task_loss, out, {k: v.to(where) for k, v in targets.items()})

    palettizer = cto.palettization.SKMPalettizer(model, cto.palettization.SKMPalettizerConfig.from_dict(
        {"global_config": _palettizer_module(config), "calibration_nsamples": len(samples)}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        with quiet_coremltools():
            compressed = palettizer.compress(dataloader=samples, loss_fn=loss_fn, inplace=True)
    return compressed.cpu().eval()


def gptq_model(config: GPTQConfig, ctx: CompressContext) -> nn.Module:
    """GPTQ one Conv/Linear layer at a time, in forward order: each layer's
    calibration inputs are captured from the model with the earlier layers already
    quantized. This applies GPTQ to any model, not only a plain nn.Sequential."""
    from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

    data, units = calibration_batches(config, ctx, labelled=False)
    inputs, _ = data.batch(units)
    meta = ctx.handle.metadata
    model = ctx.handle.torch_copy()
    layers = _layers_in_forward_order(model, _training.model_args(meta, {k: v[:1] for k, v in inputs.items()}))
    if not layers:
        raise ConfigError(f"gptq: model {ctx.handle.name} has no Conv2d or Linear layer to quantize")
    module = {"algorithm": "gptq", **_quantizer_module(config), "hessian_dampening": float(config.hessian_dampening)}
    for done, name in enumerate(layers):
        ctx.check_cancelled()
        ctx.report(Progress("compress", done, len(layers), f"GPTQ {name}"))
        layer_inputs = _layer_inputs(model, model.get_submodule(name), meta, inputs)
        compressor = LayerwiseCompressor(model, LayerwiseCompressorConfig.from_dict(
            {"global_config": module, "layers": [name], "calibration_nsamples": len(layer_inputs)}))
        with quiet_coremltools():
            try:
                model = compressor.compress(layer_inputs, device="cpu", inplace=True)
            except LabError:
                raise
            except Exception as e:
                raise ConfigError(f"gptq: coremltools could not quantize layer {name} of {ctx.handle.name} "
                                  f"({type(e).__name__}: {str(e)[:300]})") from e
    ctx.report(Progress("compress", len(layers), len(layers), "GPTQ done"))
    return model.eval()


def _layers_in_forward_order(model: nn.Module, example: list[torch.Tensor]) -> list[str]:
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: order.append(name) if name not in order else None))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _layer_inputs(model: nn.Module, layer: nn.Module, meta, inputs: dict[str, torch.Tensor],
                  batch: int = 64) -> list[torch.Tensor]:
    """The inputs `layer` receives for each calibration sample, one tensor per sample
    (`inputs`: the model's named inputs, first axis = sample)."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    count = len(next(iter(inputs.values())))
    try:
        with torch.no_grad():
            for start in range(0, count, batch):
                model(*_training.model_args(meta, {k: v[start:start + batch] for k, v in inputs.items()}))
    finally:
        handle.remove()
    return [row.unsqueeze(0) for chunk in captured for row in chunk]


def torch_palettize_model(config: TorchPalettizeConfig, ctx: CompressContext) -> nn.Module:
    import coremltools.optimize.torch as cto
    model = ctx.handle.torch_copy()
    palettizer = cto.palettization.PostTrainingPalettizer(model, cto.palettization.PostTrainingPalettizerConfig.from_dict(
        {"global_config": _palettizer_module(config)}))
    with quiet_coremltools():
        return palettizer.compress(inplace=True).eval()


def torch_quantize_model(config: TorchQuantizeConfig, ctx: CompressContext) -> nn.Module:
    import coremltools.optimize.torch as cto
    model = ctx.handle.torch_copy()
    quantizer = cto.quantization.PostTrainingQuantizer(model, cto.quantization.PostTrainingQuantizerConfig.from_dict(
        {"global_config": _quantizer_module(config)}))
    with quiet_coremltools():
        return quantizer.compress(inplace=True).eval()


def compressed_model(config: TechniqueConfig, ctx: CompressContext) -> nn.Module:
    """The compressed (not yet converted) PyTorch model of any technique of this module."""
    return _BUILDERS[type(config)][0](config, ctx)


_BUILDERS: dict[type, tuple[Callable, tuple[str, ...]]] = {
    SKMConfig: (skm_model, ops_for(PALETTIZED)),
    GPTQConfig: (gptq_model, ops_for(QUANTIZED)),
    TorchPalettizeConfig: (torch_palettize_model, ops_for(PALETTIZED)),
    TorchQuantizeConfig: (torch_quantize_model, ops_for(QUANTIZED)),
}


def _handle(config: TechniqueConfig, ctx: CompressContext, out_path: Path) -> CompressOutcome:
    build, expected = _BUILDERS[type(config)]
    ctx.check_cancelled()
    ctx.report(Progress("compress", 0, 1, f"{config.name} on the PyTorch model"))
    started = time.perf_counter()
    try:
        model = build(config, ctx)
    except LabError:
        raise
    except Exception as e:
        raise ConfigError(f"{config.name}: coremltools could not compress model {ctx.handle.name} "
                          f"({type(e).__name__}: {str(e)[:300]})") from e
    compress_s = time.perf_counter() - started
    path, convert_s, details = _training.export(config, ctx, model, out_path, expected)
    return CompressOutcome(path=path, timings={"finetune_s": 0.0, "convert_s": convert_s, "compress_s": compress_s + convert_s},
                           details=details)


for _config_cls in _BUILDERS:
    register(_config_cls)(_handle)


def estimate_seconds(config: TechniqueConfig, handle: ModelHandle, train_count: int, train=None) -> float:
    """A rough figure from the model size: these run once over the weights (plus a
    forward/backward per calibration image for SKM and GPTQ)."""
    params = handle.parameter_count() or 0
    samples = min(getattr(config, "calibration_samples", 0), train_count or 0)
    per_sample = 0.02 if isinstance(config, (SKMConfig, GPTQConfig)) else 0.0
    return _training.CONVERT_OVERHEAD_S + params * 2e-6 + samples * per_sample
