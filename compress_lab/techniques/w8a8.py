"""Post-training activation quantization (W8A8): 8-bit activations calibrated on real
inputs, plus 8-bit weights, or 4-bit or palettized weights.

coremltools' `linear_quantize_activations` inserts a quantize / dequantize pair at the
inputs of conv, linear, pooling and add ops, with ranges taken from calibration data.
coremltools measures those ranges with Core ML's own `predict` (macOS only); here the
lab's runtime measures them (compress_lab/runtime/activation_quantization.py), so this
runs on any OS. The weights are compressed afterwards, as Core ML Tools' guide does it
(activations first, then `linear_quantize_weights` or `palettize_weights`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from compress_lab.errors import ConfigError
from compress_lab.techniques._coreml_common import PostTrainingConfig, run_post_training
from compress_lab.techniques.base import CompressContext, DataNeed, Progress, register
from compress_lab.techniques.palettize import PALETTIZE, PalettizeConfig
from compress_lab.techniques.quantize import QUANTIZE, QuantizeConfig

WEIGHTS = ("int8", "int4", "palettize")
ACTIVATION_DTYPES = ("int8", "uint8")
ACTIVATION_MODES = ("linear_symmetric", "linear")
CALIBRATION_SOURCES = ("validation", "train")
MAX_CALIBRATION = 4096
CALIBRATION_BATCH = 32
DOCS_URL = "https://apple.github.io/coremltools/docs-guides/source/opt-quantization-perf.html"

# settings that shape the whole run: an op override may not change them
_RUN_SETTINGS = ("weights", "activation_dtype", "activation_mode", "calibration", "calibration_samples", "seed")


@dataclass(frozen=True)
class W8A8Config(PostTrainingConfig):
    """weights: int8 (W8A8) or int4 (W4A8), per-channel scales by default as in the quantize
    technique (granularity "per_block" with `block_size`, default 32, suits 4 bits when the
    channels divide), or palettize (an `nbits` look-up table, default 4). granularity /
    block_size / group_size / nbits apply to that weight step, as in the quantize and
    palettize techniques.

    calibration: where the activation ranges come from. "validation" (the validation
    folder), "train" (the training folder) or the path of a folder of images (absolute, or
    relative to the working directory; its contents are part of the run's identity in a
    sweep); `calibration_samples` images of it, chosen by `seed`.

    Speed: Core ML Tools' guide (opt-quantization-perf) says devices with the A17 Pro or
    M4 chip (iPhone 15 Pro onwards) have increased int8-int8 compute throughput on the
    Neural Engine, so W8A8 can run faster there than W16A16; on the CPU, and sometimes
    the GPU, activation quantization can slow inference down. The lab measures accuracy
    and size; latency must be measured on the device."""

    name = "w8a8"
    data_need = DataNeed.CALIBRATION
    label_fields = ("weights",)
    summary = ("Post-training activation quantization (W8A8): int8 activations calibrated on real images, with "
               "int8 (or int4 / palettized) weights. Fast on the Neural Engine of A17 Pro and M4 chips "
               "(iPhone 15 Pro onwards), per Core ML Tools' docs; measure latency on the device.")

    precision: Literal["fp16"] = "fp16"
    weights: Literal["int8", "int4", "palettize"] = "int8"
    granularity: Literal["per_tensor", "per_channel", "per_block", "per_grouped_channel"] | None = None
    block_size: int | None = None
    nbits: int | None = None
    group_size: int | None = None
    activation_dtype: Literal["int8", "uint8"] = "int8"
    activation_mode: Literal["linear_symmetric", "linear"] = "linear_symmetric"
    calibration: str = "validation"
    calibration_samples: int = 128
    seed: int = 0

    def validate(self) -> None:
        if self.precision != "fp16":
            self._fail("precision", self.precision, "is not allowed: activation quantization needs an fp16 ML program "
                                                    "(coremltools writes activation scales in fp16); use 'fp16'")
        if self.weights not in WEIGHTS:
            self._fail("weights", self.weights, f"is not allowed; use one of {list(WEIGHTS)}")
        if self.activation_dtype not in ACTIVATION_DTYPES:
            self._fail("activation_dtype", self.activation_dtype, f"is not allowed; use one of {list(ACTIVATION_DTYPES)}")
        if self.activation_mode not in ACTIVATION_MODES:
            self._fail("activation_mode", self.activation_mode, f"is not allowed; use one of {list(ACTIVATION_MODES)}")
        if not isinstance(self.calibration, str) or not self.calibration.strip():
            self._fail("calibration", self.calibration, "must be 'validation', 'train' or a folder of images")
        if isinstance(self.calibration_samples, bool) or not isinstance(self.calibration_samples, int) \
                or not 1 <= self.calibration_samples <= MAX_CALIBRATION:
            self._fail("calibration_samples", self.calibration_samples, f"must be an integer between 1 and {MAX_CALIBRATION}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            self._fail("seed", self.seed, "must be an integer >= 0")
        self.weight_part()

    # ---- the weight step, validated by the single technique's config
    def weight_part(self) -> PostTrainingConfig:
        common = dict(weight_threshold=self.weight_threshold, precision="fp16")
        if self.weights == "palettize":
            for key in ("block_size",):
                if getattr(self, key) is not None:
                    self._fail(key, getattr(self, key), "applies to weights 'int8' / 'int4', not 'palettize'")
            cls, kwargs = PalettizeConfig, dict(nbits=4 if self.nbits is None else self.nbits,
                                                granularity=self.granularity or "per_tensor", group_size=self.group_size)
        else:
            for key in ("nbits", "group_size"):
                if getattr(self, key) is not None:
                    self._fail(key, getattr(self, key), "applies to weights 'palettize' only")
            granularity = self.granularity or "per_channel"
            cls, kwargs = QuantizeConfig, dict(dtype=self.weights, granularity=granularity, block_size=self.block_size)
        try:
            return cls(**kwargs, **common)
        except ConfigError as e:
            message = str(e).replace(f"technique {cls.name!r}:", f"technique {self.name!r} ({self.weights} weights):", 1)
            raise ConfigError(message.replace("dtype=", "weights=", 1)) from None

    def steps(self):
        return [(PALETTIZE if self.weights == "palettize" else QUANTIZE, self.weight_part())]

    def settings_fields(self) -> list[str]:
        return [f for f in super().settings_fields() if f not in _RUN_SETTINGS]

    # ---- which data it reads (the runner and the app ask)
    def train_folder_needed(self) -> bool:
        return self.calibration == "train"

    def extra_data_folder(self) -> str | None:
        return None if self.calibration in CALIBRATION_SOURCES else self.calibration

    def activation_config(self):
        import coremltools.optimize.coreml as cto
        return cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode=self.activation_mode, dtype=self.activation_dtype, weight_threshold=self.weight_threshold))


def calibration_folder(config: W8A8Config, ctx: CompressContext) -> Path:
    """The folder the activation ranges are measured on; a clear error when it is not given."""
    if config.calibration == "validation":
        if ctx.validation_dir is None:
            raise ConfigError(f"technique 'w8a8': calibration='validation' needs the validation folder, which this run "
                              "was not given; set calibration to 'train' (with a training folder) or to a folder of images")
        return Path(ctx.validation_dir)
    if config.calibration == "train":
        folder = ctx.train_dir or ctx.calibration_dir
        if folder is None:
            raise ConfigError("technique 'w8a8': calibration='train' needs a training folder (--train DIR / "
                              "[data] train = ...); or set calibration to 'validation' or to a folder of images")
        return Path(folder)
    folder = Path(config.calibration).expanduser()
    if not (folder.is_dir() or (folder.is_file() and folder.suffix == ".npz")):
        raise ConfigError(f"technique 'w8a8': calibration={config.calibration!r} is not a folder or an .npz file; give "
                          "'validation', 'train' or the path of a folder of images (or of arrays, or an .npz)")
    return folder


def calibration_batches(config: W8A8Config, ctx: CompressContext) -> tuple[list, Path, int]:
    """`calibration_samples` samples of the calibration source (chosen by the seed), read by
    the model's task, in batches as the program takes them: arrays for a one-input model
    (batch first), {input name: array} otherwise (each input's batch at its `batch_axis`)."""
    import torch

    from compress_lab.techniques._training import load_training_data

    folder = calibration_folder(config, ctx)
    data = load_training_data(ctx, folder, labelled=False)
    generator = torch.Generator().manual_seed(config.seed)
    index = torch.randperm(len(data), generator=generator)[:config.calibration_samples]
    inputs, _ = data.batch(index)
    arrays = {name: value.numpy() for name, value in inputs.items()}
    arrays = {name: a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int32) for name, a in arrays.items()}
    count = len(next(iter(arrays.values())))
    io = ctx.handle.metadata.io
    specs = {s.name: s for s in io.inputs}
    batches = [{name: _as_program_takes(a[i:i + CALIBRATION_BATCH], specs.get(name))
                for name, a in arrays.items()} for i in range(0, count, CALIBRATION_BATCH)]
    if len(arrays) == 1 and not any(s.batch_axis for s in io.inputs):   # batch first: one array per batch
        batches = [next(iter(b.values())) for b in batches]
    return batches, folder, count


def _as_program_takes(array: np.ndarray, spec) -> np.ndarray:
    from compress_lab.models.io_spec import to_model_layout
    return array if spec is None else to_model_layout(array, spec)


@register(W8A8Config)
def w8a8(config: W8A8Config, ctx: CompressContext, out_path: Path):
    from compress_lab.runtime.activation_quantization import linear_quantize_activations

    info: dict = {}

    def quantize_activations(mlmodel):
        t = time.perf_counter()
        ctx.report(Progress("calibrate", 0, 1, "activation ranges"))
        batches, folder, count = calibration_batches(config, ctx)
        ctx.check_cancelled()
        try:
            quantized = linear_quantize_activations(mlmodel, config.activation_config(), batches)
        except ConfigError:
            raise
        except (ValueError, NotImplementedError) as e:
            raise ConfigError(f"technique 'w8a8': coremltools refused the activation settings {config.label()!r}: "
                              f"{type(e).__name__}: {e}") from e
        ctx.report(Progress("calibrate", 1, 1, "activation ranges", elapsed_s=time.perf_counter() - t))
        info.update(calibration_folder=str(folder), calibration_samples=count, calibrate_s=time.perf_counter() - t)
        return quantized

    outcome = run_post_training(config, ctx, out_path, before_steps=quantize_activations)
    outcome.timings["calibrate_s"] = info.pop("calibrate_s", 0.0)
    outcome.details["activations"] = {"dtype": config.activation_dtype, "mode": config.activation_mode, **info}
    outcome.details["latency_note"] = (f"A8W8 runs fastest on the Neural Engine of A17 Pro / M4 chips ({DOCS_URL}); "
                                       "measure latency on the device")
    return outcome
