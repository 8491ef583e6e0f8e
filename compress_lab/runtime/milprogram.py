"""Read the MIL program of a Core ML ML program from disk, with its input and output facts.

`MLModel._mil_program` is None for a model loaded from disk, so the program is
rebuilt from the spec with coremltools' milproto loader (the same route
`coremltools.optimize.coreml` takes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress_lab.quiet import quiet_coremltools
from compress_lab.errors import ModelLoadError
from compress_lab.models.image_input import ImageInput, image_inputs


@dataclass(frozen=True)
class InputFact:
    """One input of a program: its name, default shape (flexible dimensions at their
    default), which dimensions are flexible, and the dtype it takes."""

    name: str
    shape: tuple[int, ...]
    flexible: tuple[bool, ...]
    dtype: str  # "float32", "float16" or "int32"
    image: ImageInput | None = None  # an image input: fed RGB pixels 0..255 (see models/image_input.py)


@dataclass(frozen=True)
class MilSource:
    """A loaded ML program: the pymil function to run and what its caller needs to know."""

    origin: str
    mlmodel: Any  # coremltools.models.MLModel (not loaded into a native runtime)
    program: Any  # coremltools.converters.mil.mil.Program, the runtime's own copy
    function: Any  # coremltools.converters.mil.mil.Function
    function_name: str
    input_name: str
    output_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # batch entry: the fixed batch, or the default batch of a flexible one
    fixed_batch: int | None
    max_batch: int | None  # upper bound of a flexible batch (None: unbounded or fixed)
    inputs: tuple[InputFact, ...] = ()  # every input, in the model's order (the facts above are the first one's)


def load_mil_source(source) -> MilSource:
    """`source`: a path to an `.mlpackage` (or `.mlmodel`), or a `coremltools.models.MLModel`."""
    import coremltools as ct

    mlmodel, origin = _open_mlmodel(source, ct)
    spec = mlmodel.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise ModelLoadError(
            f"{origin} is a Core ML {kind!r} model; the lab's runtime runs ML programs only. "
            "Re-convert it with ct.convert(..., convert_to='mlprogram').")
    function_name = spec.description.defaultFunctionName or "main"
    program = _load_pymil(mlmodel, spec, origin)
    if function_name not in program.functions:
        raise ModelLoadError(
            f"{origin} has no function {function_name!r} (functions: {sorted(program.functions)}); "
            "give a single-function ML program")
    function = program.functions[function_name]
    if not spec.description.input:
        raise ModelLoadError(f"{origin} has no input; the lab's runtime runs models with at least one tensor input")
    for desc in spec.description.input:
        if desc.type.WhichOneof("Type") not in ("multiArrayType", "imageType"):
            raise ModelLoadError(
                f"input {desc.name!r} of {origin} is a {desc.type.WhichOneof('Type')}; "
                "the lab's runtime needs multi-array (tensor) or image inputs")
    images = {name: info for name, (info, _) in image_inputs(spec).items()}
    input_desc = spec.description.input[0]
    fixed_batch, input_shape, max_batch = _input_facts(function, input_desc)
    inputs = tuple(_input_fact(function, desc, images.get(desc.name)) for desc in spec.description.input)
    output_names = tuple(o.name for o in spec.description.output)
    return MilSource(origin=origin, mlmodel=mlmodel, program=program, function=function, function_name=function_name,
                     input_name=input_desc.name, output_names=output_names, input_shape=input_shape,
                     fixed_batch=fixed_batch, max_batch=max_batch, inputs=inputs)


def _open_mlmodel(source, ct):
    if isinstance(source, ct.models.MLModel):
        return source, "the given MLModel"
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"Core ML model {path} does not exist; give the path of an .mlpackage")
    try:
        with quiet_coremltools():
            return ct.models.MLModel(str(path), skip_model_load=True), str(path)
    except Exception as e:
        raise ModelLoadError(f"cannot read Core ML model {path}: {type(e).__name__}: {e}") from e


def _load_pymil(mlmodel, spec, origin):
    from coremltools.converters.mil.frontend.milproto import load as milproto

    try:
        with quiet_coremltools():
            return milproto.load(spec, specification_version=spec.specificationVersion,
                                 file_weights_dir=mlmodel.weights_dir)
    except (AttributeError, NotImplementedError, KeyError) as e:
        # an op type unknown to coremltools itself (custom layer, newer opset) fails here
        from compress_lab.errors import UnsupportedOpError
        raise UnsupportedOpError(
            f"coremltools cannot read the MIL program of {origin} ({type(e).__name__}: {e}); "
            "it uses an op this coremltools version does not know. Re-convert it with coremltools 9.") from e
    except Exception as e:
        raise ModelLoadError(f"cannot read the MIL program of {origin}: {type(e).__name__}: {e}") from e


def _input_facts(function, input_desc):
    array = input_desc.type.multiArrayType
    var = function.inputs[input_desc.name]
    shape = var.shape
    default = list(array.shape) or [d if _is_int(d) else 1 for d in shape]
    batch_dim = shape[0] if shape else None
    fixed_batch = int(batch_dim) if _is_int(batch_dim) else None
    max_batch = None
    if (fixed_batch is None and input_desc.type.WhichOneof("Type") == "multiArrayType"
            and array.WhichOneof("ShapeFlexibility") == "shapeRange"):
        upper = array.shapeRange.sizeRanges[0].upperBound
        max_batch = int(upper) if upper > 0 else None
    input_shape = tuple(int(d) if _is_int(d) else int(default[i]) for i, d in enumerate(shape))
    return fixed_batch, input_shape, max_batch


_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float32"}  # FLOAT32, FLOAT16, INT32, DOUBLE


def _input_fact(function, desc, image: ImageInput | None = None) -> InputFact:
    var = function.inputs[desc.name]
    array = desc.type.multiArrayType
    default = list(array.shape) or [d if _is_int(d) else 1 for d in var.shape]
    shape = tuple(int(d) if _is_int(d) else int(default[i]) for i, d in enumerate(var.shape))
    flexible = tuple(not _is_int(d) for d in var.shape)
    if image is not None:
        return InputFact(desc.name, shape, flexible, "float16" if not image.eight_bit else "float32", image)
    return InputFact(desc.name, shape, flexible, _ARRAY_DTYPES.get(int(array.dataType), "float32"))


def _is_int(d) -> bool:
    try:
        int(d)
    except TypeError:
        return False
    return not hasattr(d, "free_symbols")
