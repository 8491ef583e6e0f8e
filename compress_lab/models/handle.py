"""One handle for every way a user gives a model: a sample model name, a folder
(model.py + weights.pt + metadata.json), a Python definition plus weights, a
TorchScript file, or a Core ML `.mlpackage`.

Loading a Python definition runs that file: it is code, treat it as such."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compress_lab.errors import ModelLoadError
from compress_lab.models.metadata import ModelMetadata

SAMPLE_MODELS_DIR = Path(os.environ.get("COMPRESS_LAB_SAMPLES", Path(__file__).resolve().parents[2] / "sample_models"))
METADATA_KEY = "compress_lab.metadata"
FACTORY_NAMES = ("build_model", "create_model", "get_model", "model_fn")


@dataclass
class ModelHandle:
    """A loaded model. `kind` is "torch" (a PyTorch module is available, so both
    workflows apply) or "coreml" (an `.mlpackage` only: post-training only)."""

    source: str
    kind: str
    metadata: ModelMetadata
    fingerprint: str
    module: torch.nn.Module | None = field(default=None, repr=False)
    mlpackage: Path | None = None
    notes: list[str] = field(default_factory=list)  # what the lab decided at load that a user should know

    @property
    def name(self) -> str:
        return self.metadata.name

    def torch_copy(self) -> torch.nn.Module:
        """A fresh copy of the PyTorch model in eval mode; the handle's own is never mutated."""
        if self.module is None:
            raise ModelLoadError(
                f"model {self.source} is a Core ML package; this needs the PyTorch model. "
                "Load the Python definition + weights or TorchScript instead.")
        return copy.deepcopy(self.module).eval()

    def parameter_count(self) -> int | None:
        if self.module is None:
            return None
        return sum(p.numel() for p in self.module.parameters())


def list_sample_models() -> list[str]:
    if not SAMPLE_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in SAMPLE_MODELS_DIR.iterdir() if (p / "model.py").is_file())


def load_model(source: str | Path, weights: str | Path | None = None,
               metadata: ModelMetadata | str | Path | None = None) -> ModelHandle:
    """Load `source` into a ModelHandle (see module docstring for the accepted forms)."""
    src = str(source)
    path = Path(src).expanduser()
    if not path.exists() and (SAMPLE_MODELS_DIR / src).is_dir():
        path = SAMPLE_MODELS_DIR / src
    if not path.exists():
        samples = list_sample_models()
        raise ModelLoadError(
            f"model source {src!r} does not exist. Give a path to a .mlpackage, a TorchScript file, a model.py "
            f"(with --weights), a model folder, or a sample model name ({', '.join(samples) or 'run the set-up to build them'}).")
    meta = _resolve_metadata(metadata, path)
    if path.is_dir() and path.suffix == ".mlpackage":
        return _load_mlpackage(path, meta)
    if path.is_dir():
        return _load_folder(path, weights, meta)
    if path.suffix == ".py":
        return _load_python(path, weights, meta)
    return _load_torchscript_or_state(path, meta)


def _resolve_metadata(metadata, path: Path) -> ModelMetadata | None:
    if isinstance(metadata, ModelMetadata):
        return metadata
    if metadata is not None:
        return ModelMetadata.load(metadata)
    folder = path if path.is_dir() and path.suffix != ".mlpackage" else path.parent
    candidate = folder / "metadata.json"
    return ModelMetadata.load(candidate) if candidate.is_file() else None


def _require_metadata(meta: ModelMetadata | None, path: Path) -> ModelMetadata:
    if meta is None:
        raise ModelLoadError(
            f"no metadata for {path}: put a metadata.json beside it (input_shape, class_names, preprocessing) "
            "or pass one with --metadata.")
    return meta


def _load_folder(folder: Path, weights, meta) -> ModelHandle:
    definition = folder / "model.py"
    if not definition.is_file():
        raise ModelLoadError(f"model folder {folder} has no model.py; a model folder holds model.py, weights.pt and metadata.json")
    if weights is None:
        weights = folder / "weights.pt"
        if not weights.is_file():
            raise ModelLoadError(
                f"model folder {folder} has no weights.pt; for the sample models run the set-up "
                "(python sample_models/build.py) to build them")
    return _load_python(definition, weights, meta)


def _import_definition(path: Path):
    module_name = "compress_lab_user_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import model definition {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # needed for deepcopy/pickling of classes defined there
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a definition calling exit() must not end the lab
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"model definition {path} raised {type(e).__name__}: {e}; fix the file and load it again") from e
    return module


def _load_python(path: Path, weights, meta) -> ModelHandle:
    meta = _require_metadata(meta, path)
    if weights is None:
        raise ModelLoadError(f"model definition {path} needs a weights file (a state_dict saved with torch.save); pass --weights")
    weights = Path(weights)
    definition = _import_definition(path)
    factory = next((getattr(definition, n) for n in FACTORY_NAMES if callable(getattr(definition, n, None))), None)
    if factory is None:
        raise ModelLoadError(f"model definition {path} defines none of {FACTORY_NAMES}; add a factory function returning the nn.Module")
    try:
        model = factory()
    except (Exception, SystemExit) as e:
        raise ModelLoadError(f"factory {factory.__name__}() in {path} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"factory {factory.__name__}() in {path} returned {type(model).__name__}, not a torch.nn.Module")
    state = load_state_dict(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelLoadError(
            f"weights {weights} do not fit the model defined in {path}: {' '.join(first[:3])[:400]}; "
            "check that the weights were saved from this definition") from None
    model.eval()
    check_torch_io(model, meta, path)
    return ModelHandle(source=str(path.parent if path.name == "model.py" else path), kind="torch", metadata=meta,
                       fingerprint=_hash_files([path, weights]), module=model)


def load_state_dict(weights: Path) -> dict:
    """Load a state_dict safely (weights_only=True: a pickle that runs code is refused)."""
    if not weights.is_file():
        raise ModelLoadError(f"weights file {weights} does not exist")
    if weights.stat().st_size == 0:
        raise ModelLoadError(f"weights file {weights} is empty (0 bytes); save it again with torch.save(model.state_dict(), path)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text or "weights_only" in text:
            raise ModelLoadError(
                f"weights file {weights} holds more than tensors (it would run code when unpickled) and was refused. "
                "Save only the state_dict: torch.save(model.state_dict(), path)") from None
        raise ModelLoadError(f"weights file {weights} cannot be read ({type(e).__name__}: {text[:200]}); is it truncated or not a torch file?") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"weights file {weights} is not a state_dict (a dict of tensors)")
    return state


def _load_torchscript_or_state(path: Path, meta) -> ModelHandle:
    meta = _require_metadata(meta, path)
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"model file {path} is neither a TorchScript archive, a .py definition nor a .mlpackage")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        if _looks_like_state_dict(path):
            raise ModelLoadError(
                f"{path} is a state_dict, not a TorchScript model: load it with the Python file that defines "
                "the model (compress-lab ... model.py --weights THIS_FILE)") from None
        raise ModelLoadError(f"{path} cannot be loaded as TorchScript ({type(e).__name__}: {str(e)[:200]})") from None
    module.eval()
    check_torch_io(module, meta, path)
    return ModelHandle(source=str(path), kind="torch", metadata=meta, fingerprint=_hash_files([path]), module=module)


IO_HELP = ("the lab works with image classifiers: forward(x) takes one image batch (N, C, H, W) with (C, H, W) = "
           "metadata input_shape, and returns (N, classes) logits, one per class name in metadata")


def check_torch_io(module: torch.nn.Module, meta: ModelMetadata, source) -> None:
    """Run one blank image through `module` (no gradients, eval mode; nothing changes) and check
    that it takes a single image tensor and returns one logit per class of `meta`. A model
    of another task is run on blank declared inputs and checked by its task."""
    if meta.task != "classification":
        return _check_task_torch_io(module, meta, source)
    try:
        param = next(p for p in module.parameters() if p.is_floating_point())
        dtype = param.dtype
    except StopIteration:
        dtype = torch.float32
    x = torch.zeros((1, *meta.input_shape), dtype=dtype)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise ModelLoadError(
            f"model {source} cannot run on one image of shape {list(x.shape)} ({type(e).__name__}: {detail}); "
            f"{IO_HELP}. Fix input_shape in metadata.json, or wrap a model with several or non-image inputs "
            "in a module whose forward takes one image batch") from None
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values()), None))
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(f"model {source} returned {type(out).__name__}, not a tensor of logits; {IO_HELP}")
    if tuple(out.shape) != (1, meta.num_classes):
        raise ModelLoadError(
            f"model {source} returns outputs of shape {list(out.shape)} for one image, but its metadata names "
            f"{meta.num_classes} classes (expected [1, {meta.num_classes}]); make class_names in metadata.json list "
            "exactly one name per model output, in output order")


def _check_task_torch_io(module: torch.nn.Module, meta: ModelMetadata, source) -> None:
    from compress_lab.evaluate import named_torch_predictor
    from compress_lab.models.io_spec import FLEXIBLE
    from compress_lab.tasks import task_for
    import numpy as np

    io = meta.io
    arrays = {spec.name: np.zeros((1, *[2 if isinstance(d, str) or d == FLEXIBLE else int(d) for d in spec.shape]),
                                  dtype=np.int32 if spec.dtype == "int32" else np.float32) for spec in io.inputs}
    try:
        outputs = named_torch_predictor(module, io)(arrays)
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        shapes = {k: list(v.shape) for k, v in arrays.items()}
        raise ModelLoadError(
            f"model {source} cannot run on blank inputs {shapes} built from metadata.json 'inputs' "
            f"({type(e).__name__}: {detail}); forward() takes the declared inputs positionally, in declared order. "
            "Fix 'inputs' (names, shapes, dtypes) to what the model takes") from None
    task_for(meta).check_io(meta, {k: list(v.shape) for k, v in arrays.items()},
                            {k: list(v.shape) for k, v in outputs.items()}, source=f"model {source}")


def _looks_like_state_dict(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict)


def _load_mlpackage(path: Path, meta) -> ModelHandle:
    manifest = path / "Manifest.json"
    if not manifest.is_file():
        raise ModelLoadError(f"{path} is not a valid .mlpackage (no Manifest.json)")
    import coremltools as ct
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} cannot be read as a Core ML package ({type(e).__name__}: {str(e)[:200]})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ModelLoadError(
            f"{path} is a '{spec.WhichOneof('Type')}' Core ML model, not an ML program; the lab compresses ML programs. "
            "Re-convert it with ct.convert(..., convert_to='mlprogram').")
    stored = spec.description.metadata.userDefined.get(METADATA_KEY)
    if meta is None and stored:
        meta = ModelMetadata.from_dict(json.loads(stored))
    from compress_lab.models.package_metadata import metadata_from_spec, with_image_inputs
    notes: list[str] = []
    if meta is None:
        meta = metadata_from_spec(spec, path)
        notes.append(f"{path.name} carries no compress-lab metadata and none is beside it: loaded as task 'tensors' "
                     "with the inputs and outputs its spec declares (fidelity to the uncompressed model is measured); "
                     "put a metadata.json beside it for a task with metrics (e.g. class_names for a classifier)")
    meta = with_image_inputs(meta, spec, path, notes)
    _check_coreml_io(spec, meta, path)
    meta = _named_as_the_package(meta, spec)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return ModelHandle(source=str(path), kind="coreml", metadata=meta, fingerprint=_hash_files(files), mlpackage=path,
                       notes=notes)


def _check_coreml_io(spec, meta: ModelMetadata, path: Path) -> None:
    """One tensor input (N, C, H, W) agreeing with the metadata; an output with one value per class where its shape is declared.
    A model of another task: its inputs and outputs checked by its task against the declaration."""
    from compress_lab.models.package_metadata import spec_shape
    inputs = list(spec.description.input)
    if meta.task != "classification":
        from compress_lab.tasks import task_for

        task_for(meta).check_io(meta, _sample_first_shapes(inputs, meta.io.inputs),
                                _sample_first_shapes(spec.description.output, meta.io.outputs), source=str(path))
        return
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{path} has {len(inputs)} inputs {[i.name for i in inputs]}; {IO_HELP}. Re-convert it with a single image input")
    kind = inputs[0].type.WhichOneof("Type")
    if kind not in ("multiArrayType", "imageType"):
        raise ModelLoadError(
            f"input {inputs[0].name!r} of {path} is a {kind}, not a tensor or an image; re-convert it with a "
            "ct.TensorType or ct.ImageType input")
    shape = spec_shape(inputs[0]) or []
    if shape and (len(shape) != 4 or tuple(shape[1:]) != tuple(meta.input_shape)):
        raise ModelLoadError(
            f"input {inputs[0].name!r} of {path} has shape {shape} but the metadata says (N, {', '.join(map(str, meta.input_shape))}); "
            f"{IO_HELP}. Fix input_shape in the metadata")
    outputs = list(spec.description.output)
    if not outputs:
        raise ModelLoadError(f"{path} declares no output; {IO_HELP}")
    out_shape = [int(d) for d in outputs[0].type.multiArrayType.shape] if outputs[0].type.WhichOneof("Type") == "multiArrayType" else []
    if out_shape and out_shape[-1] != meta.num_classes:
        raise ModelLoadError(
            f"output {outputs[0].name!r} of {path} has shape {out_shape} but its metadata names {meta.num_classes} classes; "
            "make class_names list exactly one name per model output")


def _named_as_the_package(meta: ModelMetadata, spec) -> ModelMetadata:
    """A classifier package whose metadata declares no outputs: its class scores under the
    package's own output name (a user's metric reads outputs["scores"] as the package names it)."""
    from compress_lab.models.metadata import DEFAULT_OUTPUT_NAME
    if meta.task != "classification" or meta.outputs or not spec.description.output:
        return meta
    name = spec.description.output[0].name
    if name == DEFAULT_OUTPUT_NAME:
        return meta   # the lab's own name: the metadata stays as written
    from compress_lab.models.io_spec import OutputSpec
    return dataclasses.replace(meta, outputs=(OutputSpec(name, "class_scores", (meta.num_classes,)),))


def _sample_first_shapes(features, declared) -> dict[str, list[int] | None]:
    """A Core ML spec's input/output shapes (the model's layout) by name, batch first as the
    declaration's `batch_axis` says (matched by name, else by position)."""
    from compress_lab.models.io_spec import sample_first_shape
    from compress_lab.models.package_metadata import spec_shape
    features = list(features)
    by_name = {d.name: d for d in declared}
    shapes = {}
    for index, feature in enumerate(features):
        spec = by_name.get(feature.name) or (declared[index] if index < len(declared) else None)
        shapes[feature.name] = sample_first_shape(spec_shape(feature), spec)
    return shapes


def _hash_files(paths) -> str:
    digest = hashlib.sha256()
    for p in paths:
        p = Path(p)
        digest.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
