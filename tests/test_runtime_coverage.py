"""Runtime coverage of common layers (issue 12, item 5): each layer / op in a tiny model is
converted with ct.convert and run by the lab's runtime, against eager PyTorch (fp32 within
1e-4 x the output scale, fp16 within 2%); the runtime takes several named inputs (int32
too); an op it cannot run is named at load, and a sweep records that run as failed."""

from __future__ import annotations

import textwrap

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb

from compress_lab.errors import DataError, UnsupportedOpError
from compress_lab.runtime import load_program
from compress_lab.runtime.coverage import CASES, FP16_TOLERANCE, FP32_TOLERANCE, convert_case, run_case

SLOW = ("nn.Transformer",)  # the larger conversions (about 10 s each on a 2-core machine)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name.startswith(SLOW) else [])
                                  for c in CASES])
def test_layer_converts_runs_and_matches_eager_pytorch(case, tmp_path):
    result = run_case(case, tmp_path)
    assert result.converts, result.problem
    assert result.runs, result.problem
    assert result.errors["fp32"] <= FP32_TOLERANCE, result.errors
    assert result.errors["fp16"] <= FP16_TOLERANCE, result.errors


def test_every_listed_layer_is_covered():
    names = " ".join(c.name for c in CASES)
    for layer in ("nn.LSTM, 1 layer", "nn.LSTM, 2 layers, bidirectional", "nn.GRU", "nn.MultiheadAttention",
                  "nn.TransformerEncoder", "nn.TransformerDecoder", "nn.Embedding", "nn.Conv1d", "nn.ConvTranspose1d",
                  "nn.ConvTranspose2d", "nn.GroupNorm", "nn.PReLU", "log_softmax", "GELU (tanh",
                  "nearest, scale_factor", "nearest, size", "bilinear, scale_factor", "bilinear, size",
                  "pad reflect", "pad replicate", "topk", "argmax", "where + masked_fill", "cumsum",
                  "broadcasting matmul", "einsum"):
        assert layer in names, layer


# --------------------------------------------------------------------------- several named inputs

@pytest.fixture(scope="module")
def lstm_program(tmp_path_factory):
    case = next(c for c in CASES if c.name.startswith("nn.LSTM, 2 layers"))
    return case, load_program(convert_case(case, "fp32", tmp_path_factory.mktemp("lstm"), flexible=True))


def test_a_multi_input_program_takes_a_dict_and_returns_every_output(lstm_program):
    case, program = lstm_program
    assert program.input_names == ["x", "h0", "c0"] and len(program.output_names) == 3
    assert [f.flexible for f in program.inputs] == [(True, False, False), (False, True, False), (False, True, False)]
    for n in (1, 4):  # the flexible batch, on the first axis of x and the second of h0 / c0
        inputs = case.inputs(n)
        outputs = program.predict_all({k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            want = case.build()(*inputs.values())
        for name, expected in zip(program.output_names, want):
            assert outputs[name].shape == tuple(expected.shape)
            np.testing.assert_allclose(outputs[name], expected.numpy(), atol=1e-5)
    first = program.predict({k: v.numpy() for k, v in case.inputs(2).items()})
    assert first.shape == (2, 5, 16)  # predict: the first output, as for one array


def test_named_inputs_are_checked_with_errors_that_name_them(lstm_program):
    case, program = lstm_program
    inputs = {k: v.numpy() for k, v in case.inputs(2).items()}
    with pytest.raises(DataError, match=r"missing \['c0'\]"):
        program.predict_all({k: v for k, v in inputs.items() if k != "c0"})
    with pytest.raises(DataError, match=r"unknown \['state'\]"):
        program.predict_all({**inputs, "state": inputs["h0"]})
    with pytest.raises(DataError, match=r"input 'h0' of shape \(3, 2, 8\) does not fit .* \(4, \*, 8\)"):
        program.predict_all({**inputs, "h0": np.zeros((3, 2, 8), np.float32)})
    with pytest.raises(DataError, match=r"takes 3 inputs \['x', 'h0', 'c0'\]; pass a dict"):
        program.predict(inputs["x"])


def test_int32_ids_are_an_int32_input(tmp_path):
    case = next(c for c in CASES if c.name.startswith("nn.Embedding"))
    program = load_program(convert_case(case, "fp32", tmp_path, flexible=True))
    assert program.inputs[0].dtype == "int32"
    ids = case.inputs(3)["ids"]
    with torch.no_grad():
        want = case.build()(ids).numpy()
    np.testing.assert_allclose(program.predict({"ids": ids.numpy()}), want, atol=1e-5)
    with pytest.raises(DataError, match="takes int32 values"):
        program.predict({"ids": ids.numpy().astype(np.float32) + 0.5})


def test_a_single_array_still_works_for_a_one_input_program(tmp_path):
    case = next(c for c in CASES if c.name == "nn.Conv1d")
    program = load_program(convert_case(case, "fp32", tmp_path, flexible=True))
    x = case.inputs(5)["x"]
    with torch.no_grad():
        want = case.build()(x).numpy()
    np.testing.assert_allclose(program.predict(x.numpy()), want, atol=1e-5)
    np.testing.assert_allclose(program.predict({"x": x.numpy()}), want, atol=1e-5)


# --------------------------------------------------------------------------- an op that cannot run

def _argsort_program(shape):
    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS18)
    def prog(x):
        order = mb.argsort(x=x, axis=-1, name="class_order")
        return mb.cast(x=order, dtype="fp32", name="scores")
    return prog


def test_an_op_the_runtime_cannot_run_is_named_at_load_with_where_it_is(tmp_path):
    from compress_lab.models.convert import save_mlmodel
    mlmodel = ct.convert(_argsort_program((2, 10)), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    path = save_mlmodel(mlmodel, tmp_path / "argsort.mlpackage")
    with pytest.raises(UnsupportedOpError) as error:
        load_program(path)
    message = str(error.value)
    assert "'argsort'" in message and "named 'class_order" in message and "function 'main', top-level block, op #" in message
    assert str(path) in message


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from compress_lab.techniques.base import REGISTRY, CompressOutcome, TechniqueConfig, register

    @dataclass(frozen=True)
    class ArgsortConfig(TechniqueConfig):
        name = "test_argsort_package"
        family = "post_training"

    def write_argsort_package(config, ctx, out):
        from compress_lab.models.convert import save_mlmodel
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 28, 28))], opset_version=ct.target.iOS18)
        def prog(x):
            flat = mb.reshape(x=x, shape=[1, 784])
            scores = mb.slice_by_size(x=flat, begin=[0, 0], size=[1, 10])
            order = mb.argsort(x=scores, axis=-1, name="class_order")
            return mb.cast(x=order, dtype="fp32", name="scores")
        save_mlmodel(ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18), out)
        return CompressOutcome(out, {})

    if "test_argsort_package" not in REGISTRY.names():
        register(ArgsortConfig)(write_argsort_package)
''')


def test_a_sweep_records_a_package_with_an_unsupported_op_as_a_failed_run_with_the_reason(tmp_path, mnist_dir):
    import shutil

    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec

    for class_dir in sorted((mnist_dir / "val").iterdir())[:3]:
        (tmp_path / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:2]:
            shutil.copy2(image, tmp_path / "val" / class_dir.name / image.name)
    (tmp_path / "plugin.py").write_text(PLUGIN)
    spec = tmp_path / "unsupported.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{mnist_dir}"
        [data]
        validation = "val"
        [run]
        name = "unsupported"
        workers = 1
        plugins = ["plugin.py"]
        [[grid]]
        technique = "test_argsort_package"
        [[grid]]
        technique = "quantize"
    """))
    result = run_sweep(load_spec(spec), tmp_path / "store")
    runs = {r.label: r for r in result.runs}
    failed = runs["test_argsort_package"]
    assert failed.state == "FAILED" and failed.error.startswith("UnsupportedOpError")
    assert "'argsort'" in failed.error and "named 'class_order" in failed.error and "op #" in failed.error
    assert runs["quantize dtype=int8"].state == "COMPLETE" and runs["quantize dtype=int8"].metrics["n"] == 6
    assert result.status == "done"
