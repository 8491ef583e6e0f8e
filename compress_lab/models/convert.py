"""PyTorch -> Core ML ML program, the one way the lab converts.

Conventions every other module relies on: the input is named "input" with shape
(batch, C, H, W) where batch is flexible (ct.RangeDim) when the traced program
allows it; the output is named "logits"; the target is iOS18 so every
compression mode is available; the model's metadata is stored in the package's
user-defined metadata under METADATA_KEY."""

from __future__ import annotations

from pathlib import Path

import torch

from compress_lab.errors import ConfigError, ModelLoadError
from compress_lab.models.handle import METADATA_KEY
from compress_lab.models.metadata import ModelMetadata
from compress_lab.quiet import MIL_LOCK, quiet_coremltools

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096
PRECISIONS = ("fp16", "fp32")


def coreml_precision(precision: str):
    import coremltools as ct
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
    return ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32


def convert_module(module: torch.nn.Module, metadata: ModelMetadata, out_path: str | Path, *,
                   precision: str = "fp16", flexible_batch: bool = True, pass_pipeline=None,
                   traced: torch.jit.ScriptModule | None = None) -> Path:
    """Trace (unless `traced` is given) and convert `module`; save to `out_path` and return it.

    Falls back to a fixed batch of 1 when the program cannot take a flexible batch."""
    import coremltools as ct

    out_path = Path(out_path)
    compute_precision = coreml_precision(precision)
    if metadata.task != "classification":
        mlmodel = _convert_declared(module, metadata, compute_precision, flexible_batch, pass_pipeline, traced)
        return _finish(mlmodel, metadata, out_path)
    example = torch.zeros((1, *metadata.input_shape))
    if traced is None:
        module = module.eval()
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, example)
        except Exception as e:
            raise ModelLoadError(f"cannot trace model {metadata.name} with an input of shape {list(example.shape)}: {e}") from e
    shapes = []
    if flexible_batch:
        shapes.append((ct.RangeDim(lower_bound=1, upper_bound=MAX_BATCH, default=1), *metadata.input_shape))
    shapes.append(tuple(example.shape))
    last_error = None
    for shape in shapes:
        kwargs = dict(
            inputs=[ct.TensorType(name=INPUT_NAME, shape=shape)],
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=compute_precision,
        )
        if pass_pipeline is not None:
            kwargs["pass_pipeline"] = pass_pipeline
        try:
            with quiet_coremltools(), MIL_LOCK:
                mlmodel = ct.convert(traced, **kwargs)
            break
        except Exception as e:  # a program whose shape arithmetic needs a static batch
            last_error = e
    else:
        raise ModelLoadError(f"ct.convert failed for model {metadata.name}: {type(last_error).__name__}: {last_error}") from last_error
    return _finish(mlmodel, metadata, out_path)


def _finish(mlmodel, metadata: ModelMetadata, out_path: Path) -> Path:
    mlmodel.user_defined_metadata[METADATA_KEY] = metadata.to_json()
    mlmodel.short_description = metadata.description or metadata.name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_mlmodel(mlmodel, out_path)
    return out_path


EXAMPLE_FLEXIBLE = 4   # the size a flexible dimension is traced with


def _convert_declared(module, metadata: ModelMetadata, compute_precision, flexible_batch: bool, pass_pipeline, traced):
    """Convert a model of declared named inputs/outputs (task other than classification):
    inputs in declared order and dtype, flexible dimensions (and the batch, at each input's
    `batch_axis`) as ct.RangeDim, outputs named as declared."""
    import coremltools as ct
    import numpy as np

    io = metadata.io
    dtypes = {"float32": (torch.float32, np.float32), "float16": (torch.float32, np.float16), "int32": (torch.int32, np.int32)}
    examples = tuple(torch.zeros(_with_batch([EXAMPLE_FLEXIBLE if isinstance(d, str) else int(d) for d in spec.shape],
                                             1, spec), dtype=dtypes[spec.dtype][0]) for spec in io.inputs)
    if traced is None:
        module = module.eval()
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, examples)
        except Exception as e:
            shapes = {s.name: list(x.shape) for s, x in zip(io.inputs, examples)}
            raise ModelLoadError(f"cannot trace model {metadata.name} with inputs {shapes}: {e}") from e

    def input_types(flexible: bool):
        types = []
        for spec, example in zip(io.inputs, examples):
            if flexible:
                shape = _with_batch([ct.RangeDim(1, 1 << 16, EXAMPLE_FLEXIBLE) if isinstance(d, str) else int(d)
                                     for d in spec.shape], ct.RangeDim(1, MAX_BATCH, 1), spec)
            else:
                shape = tuple(example.shape)
            types.append(ct.TensorType(name=spec.name, shape=shape, dtype=dtypes[spec.dtype][1]))
        return types

    last_error = None
    for flexible in ((True, False) if flexible_batch else (False,)):
        kwargs = dict(inputs=input_types(flexible), outputs=[ct.TensorType(name=o.name) for o in io.outputs],
                      convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                      compute_precision=compute_precision)
        if pass_pipeline is not None:
            kwargs["pass_pipeline"] = pass_pipeline
        try:
            with quiet_coremltools(), MIL_LOCK:
                return ct.convert(traced, **kwargs)
        except Exception as e:  # a program whose shape arithmetic needs static shapes
            last_error = e
    raise ModelLoadError(f"ct.convert failed for model {metadata.name}: {type(last_error).__name__}: {last_error}") from last_error


def _with_batch(dims: list, batch, spec) -> tuple:
    """A declared per-sample shape with the batch dimension put where the model takes it (`batch_axis`)."""
    dims = list(dims)
    dims.insert(spec.batch_axis, batch)
    return tuple(dims)


def save_mlmodel(mlmodel, out_path: str | Path) -> Path:
    """Save atomically: write beside the target, then rename, so a crash never leaves half a package."""
    import shutil
    out_path = Path(out_path)
    import os
    import uuid
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.mlpackage")
    try:
        with quiet_coremltools():
            mlmodel.save(str(tmp))
        if out_path.exists():
            shutil.rmtree(out_path)
        tmp.rename(out_path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from compress_lab.errors import StoreError
        raise StoreError(f"cannot save the Core ML package {out_path}: {e.strerror or e}; check that the folder is "
                         "writable and the disk has space") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_path
