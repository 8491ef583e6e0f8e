"""The public face of the runtime: load an ML program, predict with any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress_lab.errors import ConfigError, DataError
from compress_lab.runtime.constants import decompress_constants, weight_values
from compress_lab.runtime.interpreter import COMPUTE_PRECISIONS, Interpreter
from compress_lab.runtime.milprogram import MilSource, load_mil_source

BACKENDS = ("torch", "native")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


class CoreMLProgram:
    """A Core ML ML program run by the lab's PyTorch interpreter.

    `input_shape` includes the batch: the fixed batch of a fixed-batch program, or
    the default batch (1) of a flexible one (then `fixed_batch` is None). A
    fixed-batch program is run in chunks of its batch, the last chunk padded with
    zeros and its padding trimmed from the outputs."""

    backend = "torch"

    def __init__(self, source: MilSource, compute_precision: str = "fp32"):
        if compute_precision not in COMPUTE_PRECISIONS:
            raise ConfigError(f"compute_precision {compute_precision!r} is not supported; use one of {COMPUTE_PRECISIONS}")
        self._init_facts(source, compute_precision)
        self._interpreter = Interpreter(source, compute_precision)

    def _init_facts(self, source: MilSource, compute_precision: str) -> None:
        self._source = source
        self.origin = source.origin
        self.compute_precision = compute_precision
        self.input_name = source.input_name
        self.inputs = tuple(source.inputs)
        self.input_names = [i.name for i in self.inputs] or [source.input_name]
        self.output_names = list(source.output_names)
        self.input_shape = tuple(source.input_shape)
        self.fixed_batch = source.fixed_batch
        self.max_batch = source.max_batch
        self.image_inputs = {f.name: f.image for f in self.inputs if f.image is not None}

    def __repr__(self) -> str:
        batch = self.fixed_batch if self.fixed_batch is not None else "flexible"
        return (f"{type(self).__name__}({self.origin!r}, input={self.input_name!r}{list(self.input_shape[1:])}, "
                f"batch={batch}, outputs={self.output_names}, compute={self.compute_precision})")

    # --- prediction -----------------------------------------------------------------------
    def predict(self, x, batch_size: int | None = None) -> np.ndarray:
        """(N, C, H, W) float32 -> float32 array of the first output, (N, K) for a classifier.
        `x` may also be a dict {input name: array} (see `predict_all`)."""
        return self.predict_all(x, batch_size)[self.output_names[0]]

    def predict_all(self, x, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """All outputs, by name. `batch_size` caps how many samples run at once (flexible programs).

        `x`: one array for a single-input program, or a dict {input name: array} for any
        program (several inputs, int32 inputs such as token ids, state inputs whose batch is
        not their first axis). A dict runs in one call, as given: no batching, no padding."""
        if isinstance(x, dict):
            named = self._check_named(x)
            outputs = self._run_named(named)
            return {name: _to_numpy(outputs[name]) for name in self.output_names}
        if len(self.input_names) > 1:
            raise DataError(f"{self.origin} takes {len(self.input_names)} inputs {self.input_names}; "
                            "pass a dict {input name: array}")
        x = self._check_input(x)
        n = x.shape[0]
        if self.fixed_batch is not None:
            chunk = self.fixed_batch
        else:
            chunk = min(batch_size or n, self.max_batch or n)
        if chunk < 1:
            raise ConfigError(f"batch_size {batch_size!r} must be >= 1")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            real = part.shape[0]
            if real < chunk and self.fixed_batch is not None:
                pad = torch.zeros((chunk - real, *part.shape[1:]), dtype=part.dtype)
                part = torch.cat([part, pad])
            outputs = self._run_batch(part)
            for name in self.output_names:
                value = _to_numpy(outputs[name])
                parts[name].append(value[:real] if self.fixed_batch is not None and value.ndim else value)
        return {name: np.concatenate(values) if values[0].ndim else values[0] for name, values in parts.items()}

    def _run_batch(self, x: torch.Tensor) -> dict:
        return self._interpreter.run(self._as_program_input(self.input_name, x))

    def _run_named(self, named: dict[str, torch.Tensor]) -> dict:
        return self._interpreter.run({k: self._as_program_input(k, v) for k, v in named.items()})

    def _as_program_input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """An image input as Core ML hands it to the program (8-bit, declared channel order);
        the program's own first ops then apply the scale and bias. Other inputs as they are."""
        image = self.image_inputs.get(name)
        if image is None:
            return x
        from compress_lab.models.image_input import to_program_layout
        return torch.from_numpy(to_program_layout(x.numpy(), image))

    def observe(self, x, callback) -> None:
        """Run one batch, calling `callback(var_name, torch_value)` for the inputs and every
        computed value (activation calibration records ranges with it). `x`: an array or a dict."""
        if isinstance(x, dict):
            named = {k: self._as_program_input(k, v) for k, v in self._check_named(x).items()}
        else:
            named = self._as_program_input(self.input_name, self._check_input(x))
        self._interpreter.run(named, observe=callback)

    def _check_named(self, x: dict) -> dict[str, torch.Tensor]:
        """Named inputs as tensors of the dtype each input takes; shapes checked against the
        program (flexible dimensions may take any size)."""
        facts = {f.name: f for f in self.inputs}
        missing = [n for n in self.input_names if n not in x]
        unknown = sorted(str(k) for k in x if k not in facts)
        if missing or unknown:
            raise DataError(f"{self.origin} takes inputs {self.input_names}; "
                            + (f"missing {missing}" if missing else "") + ("; " if missing and unknown else "")
                            + (f"unknown {unknown}" if unknown else ""))
        out = {}
        for name in self.input_names:
            fact, value = facts[name], x[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if fact.dtype == "int32":
                if value.dtype.kind not in "iub":
                    raise DataError(f"input {name!r} of {self.origin} takes int32 values, got {value.dtype}")
                tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.int32))
            else:
                if value.dtype.kind not in "fiub":
                    raise DataError(f"input {name!r} of {self.origin} takes float values, got {value.dtype}")
                tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            wrong = tensor.dim() != len(fact.shape) or any(
                not flex and int(got) != want and not _other_channels(fact, axis, int(got))
                for axis, (got, want, flex) in enumerate(zip(tensor.shape, fact.shape, fact.flexible)))
            if wrong:
                shape = ", ".join("*" if flex else str(d) for d, flex in zip(fact.shape, fact.flexible))
                raise DataError(f"input {name!r} of shape {tuple(tensor.shape)} does not fit {self.origin}, which takes "
                                f"({shape}) (* = any size); reshape the input")
            out[name] = tensor
        return out

    @property
    def mil_function(self):
        """The pymil function being run (constexpr ops already decompressed to const)."""
        return self._source.function

    def _check_input(self, x) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        elif isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).contiguous()
        else:
            raise DataError(f"input must be a numpy array or torch tensor, got {type(x).__name__}")
        expected = self.input_shape[1:]
        fact = self.inputs[0] if self.inputs else None
        if x.dim() != len(self.input_shape) or any(
                int(got) != want and not (fact is not None and _other_channels(fact, axis + 1, int(got)))
                for axis, (got, want) in enumerate(zip(x.shape[1:], expected))):
            raise DataError(
                f"input of shape {tuple(x.shape)} does not fit input {self.input_name!r} of {self.origin}, "
                f"which takes (N, {', '.join(map(str, expected))}); resize or reshape the input")
        if x.shape[0] < 1:
            raise DataError("input has no samples (N = 0); give at least one")
        return x

    # --- weights --------------------------------------------------------------------------
    def with_constants(self, overrides: dict[str, np.ndarray]) -> "CoreMLProgram":
        """The same program with some weight constants replaced (keys as in `weights()`)."""
        clone = object.__new__(type(self))
        clone._init_facts(self._source, self.compute_precision)
        clone._interpreter = self._interpreter.with_constants(overrides)
        return clone

    def keep_checkpoints(self, count: int = 16, max_bytes: int | None = None) -> None:
        """Keep, for each input run from now on, the values before `count` evenly spaced steps, so
        that copies with some weights replaced can `resume_from` this program (see interpreter.py);
        none once they would hold more than `max_bytes`."""
        self._interpreter.keep_checkpoints(count, max_bytes)

    def resume_from(self, anchor: "CoreMLProgram") -> None:
        """Inputs `anchor` has run (with checkpoints kept) start at the first step whose weights
        differ from the anchor's; same outputs as a whole run."""
        self._interpreter.resume_from(anchor._interpreter)

    def weights(self) -> dict[str, np.ndarray]:
        """Decompressed constant weights keyed by the const / constexpr op's output name,
        in their stored dtype (an fp16 program's weights are fp16)."""
        values = weight_values(self._source.function, self._interpreter.constants)
        return {name: value.copy() for name, value in values.items()}


class NativeProgram(CoreMLProgram):
    """The same interface backed by Core ML itself (`MLModel.predict`; macOS only)."""

    backend = "native"

    def __init__(self, source: MilSource, compute_units: str = "ALL"):
        import coremltools as ct
        if compute_units not in COMPUTE_UNITS:
            raise ConfigError(f"compute_units {compute_units!r} is not supported; use one of {COMPUTE_UNITS}")
        self._init_facts(source, "native")
        spec = source.mlmodel.get_spec()
        self._input_fp16 = spec.description.input[0].type.multiArrayType.dataType == \
            ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
        self._mlmodel = ct.models.MLModel(source.mlmodel.package_path or source.origin,
                                          compute_units=getattr(ct.ComputeUnit, compute_units))
        self._constants = None

    def _run_batch(self, x: torch.Tensor) -> dict:
        if self.image_inputs:
            return self._run_named({self.input_name: x})
        array = x.numpy().astype(np.float16 if self._input_fp16 else np.float32)
        return self._mlmodel.predict({self.input_name: array})

    def _run_named(self, named: dict[str, torch.Tensor]) -> dict:
        dtypes = {f.name: {"float16": np.float16, "int32": np.int32}.get(f.dtype, np.float32) for f in self.inputs}
        if not self.image_inputs:
            return self._mlmodel.predict({k: v.numpy().astype(dtypes[k]) for k, v in named.items()})
        # Core ML takes image inputs as images, one sample per prediction: RGB pixels -> PIL images
        n = len(next(iter(named.values())))
        samples = [{k: (_pil_image(v.numpy()[i], self.image_inputs[k]) if k in self.image_inputs
                        else v.numpy()[i:i + 1].astype(dtypes[k])) for k, v in named.items()} for i in range(n)]
        results = [self._mlmodel.predict(sample) for sample in samples]
        return {name: np.concatenate([np.asarray(r[name]) for r in results]) for name in results[0]}

    def weights(self) -> dict[str, np.ndarray]:
        if self._constants is None:
            self._constants = decompress_constants(self._source.program, self._source.function, self.origin)
        return {name: value.copy() for name, value in weight_values(self._source.function, self._constants).items()}


def _pil_image(pixels: np.ndarray, image):
    """One (C, H, W) RGB (or gray) sample as the PIL image Core ML takes."""
    from PIL import Image
    if image.grayscale:
        gray = pixels if pixels.shape[0] == 1 else pixels[:3]
        values = gray[0] if gray.shape[0] == 1 else (gray * np.array([0.299, 0.587, 0.114])[:, None, None]).sum(0)
        if not image.eight_bit:
            return Image.fromarray(values.astype(np.float32), mode="F")
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0), mode="RGB")


def _other_channels(fact, axis: int, got: int) -> bool:
    """Whether `got` channels on `axis` are what an image input also takes (RGB for grayscale)."""
    if fact.image is None or axis != len(fact.shape) - 3:
        return False
    from compress_lab.models.image_input import accepted_channels
    return got in accepted_channels(fact.image)


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.untyped_storage().nbytes() > value.nelement() * value.element_size():
            value = value.clone()  # a view keeps its whole buffer alive while results accumulate
        value = value.numpy()
    value = np.asarray(value)
    return value.astype(np.float32, copy=False) if value.dtype.kind == "f" else value


def load_program(path, compute_precision: str = "fp32", *, backend: str = "torch",
                 compute_units: str = "ALL") -> CoreMLProgram:
    """Load an `.mlpackage` (path or MLModel) for prediction.

    backend="torch" (any OS): the lab's interpreter; compute_precision "fp32" (fp16
    programs are upcast) or "fp16" (values rounded to fp16, approximating device numerics).
    backend="native": Core ML itself on macOS; raises RuntimeUnavailableError elsewhere."""
    from compress_lab.errors import RuntimeUnavailableError
    from compress_lab.runtime.native import native_runtime_available

    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not supported; use one of {BACKENDS}")
    if compute_precision not in COMPUTE_PRECISIONS:
        raise ConfigError(f"compute_precision {compute_precision!r} is not supported; use one of {COMPUTE_PRECISIONS}")
    from compress_lab.quiet import MIL_LOCK

    if backend == "native":
        available, reason = native_runtime_available()
        if not available:
            raise RuntimeUnavailableError(f"the native Core ML runtime is unavailable: {reason}. Use backend='torch'.")
        with MIL_LOCK:
            return NativeProgram(load_mil_source(_path_or_model(path)), compute_units)
    with MIL_LOCK:  # loading builds the MIL program and decompresses its weights with coremltools' passes
        return CoreMLProgram(load_mil_source(_path_or_model(path)), compute_precision)


def _path_or_model(path):
    return path if not isinstance(path, (str, Path)) else Path(path)
