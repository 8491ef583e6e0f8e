"""`compress-lab evaluate MODEL --data arrays.npz` for a `tensors` model: a small
real two-output PyTorch model, converted to Core ML and run by the lab's
runtime (single input, two outputs: the runtime takes one input array today),
compressed post-training, measured by fidelity per output and by a user metric
file; a metric that raises, returns NaN or returns no dict is a clear error."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest

from compress_lab.cli import main
from compress_lab.evaluate import evaluate_model
from compress_lab.metrics import MetricError, load_metric
from compress_lab.models import load_model
from compress_lab.models.convert import convert_module
from compress_lab.errors import ConfigError
from test_tasks import TWO_OUTPUT_META, TWO_OUTPUT_MODEL, make_model

METRIC = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"dense_mae": "lower", "scores_top1": "higher"}

    def metric(outputs, targets):
        return {"dense_mae": float(np.abs(outputs["dense"] - targets["dense_target"]).mean()),
                "scores_top1": float((outputs["scores"].argmax(1) == targets["label"]).mean())}

    def raises(outputs, targets):
        return {"dense_mae": outputs["no_such_output"].mean()}

    def gives_nan(outputs, targets):
        return {"dense_mae": float("nan")}

    def gives_a_list(outputs, targets):
        return [1.0]
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensors_cli")
    model = make_model(folder / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META)
    handle = load_model(model)
    package = convert_module(handle.torch_copy(), handle.metadata, folder / "two_heads.mlpackage", precision="fp16")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    np.savez(folder / "val.npz", x=x, label=rng.integers(0, 3, 24), dense_target=rng.normal(size=(24, 4)))
    (folder / "metric.py").write_text(METRIC)
    return folder, model, package, handle


def test_the_core_ml_package_keeps_the_declaration_and_runs_both_outputs(setup):
    folder, model, package, handle = setup
    loaded = load_model(package)
    assert loaded.kind == "coreml" and loaded.metadata == handle.metadata
    result = evaluate_model(package, folder / "val.npz", reference=model)
    assert result.n == 24 and set(result.fidelity) == {"scores", "dense"}
    for measures in result.fidelity.values():   # fp16 Core ML vs fp32 PyTorch: close, not identical
        assert 40 < measures["snr_db"] < 200 and measures["cosine"] > 0.999 and 0 < measures["max_abs_error"] < 0.05
    assert result.fidelity["scores"]["agreement"] > 0.9


def test_the_cli_prints_fidelity_per_output_and_the_user_metric(setup, capsys):
    folder, model, package, _ = setup
    assert main(["evaluate", str(package), "--data", str(folder / "val.npz"), "--reference", str(model),
                 "--metric", str(folder / "metric.py")]) == 0
    out = capsys.readouterr().out
    assert "scores: " in out and "dense: " in out and "psnr_db" in out and "dense_mae" in out
    # each value of the metric file says which way is better, as its DIRECTIONS declare
    assert re.search(r"^dense_mae +[0-9.e+-]+  \(lower is better\)$", out, re.M)
    assert re.search(r"^scores_top1 +[0-9.e+-]+  \(higher is better\)$", out, re.M)
    assert main(["evaluate", str(package), "--data", str(folder / "val.npz"), "--json",
                 "--metric", str(folder / "metric.py")]) == 0
    data = json.loads(capsys.readouterr().out)
    torch_values = evaluate_model(model, folder / "val.npz", metric=folder / "metric.py").values
    assert data["task"] == "tensors" and set(data["values"]) == {"dense_mae", "scores_top1"}
    assert data["values"]["dense_mae"] == pytest.approx(torch_values["dense_mae"], rel=1e-2)
    assert load_metric(folder / "metric.py").directions == {"dense_mae": False, "scores_top1": True}


def test_a_post_training_palettized_package_is_measured_against_the_float_model(setup):
    import coremltools as ct
    from compress_lab.models.convert import save_mlmodel
    folder, model, package, _ = setup
    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpPalettizerConfig(nbits=2, weight_threshold=8))
    small = save_mlmodel(ct.optimize.coreml.palettize_weights(mlmodel, config), folder / "two_heads_2bit.mlpackage")
    loaded = load_model(small)
    assert loaded.metadata.task == "tensors"
    result = evaluate_model(loaded, folder / "val.npz", reference=model)
    full = evaluate_model(package, folder / "val.npz", reference=model)
    for name in ("scores", "dense"):
        assert result.fidelity[name]["snr_db"] < full.fidelity[name]["snr_db"]


@pytest.mark.parametrize("name,words", [
    ("raises", ["metric.py:raises", "KeyError", "'no_such_output'", "line 11"]),
    ("gives_nan", ["metric.py:gives_nan", "'dense_mae'", "nan", "not finite"]),
    ("gives_a_list", ["metric.py:gives_a_list", "list", "not a dict"]),
])
def test_a_metric_that_raises_returns_nan_or_no_dict_is_a_clear_error(setup, name, words):
    folder, model, _, _ = setup
    with pytest.raises(MetricError) as err:
        evaluate_model(model, folder / "val.npz", metric=f"{folder / 'metric.py'}:{name}")
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_a_metric_file_without_directions_or_function_is_refused_when_loaded(tmp_path):
    (tmp_path / "m.py").write_text("def metric(o, t):\n    return {'x': 1.0}\n")
    with pytest.raises(ConfigError, match="declares no directions"):
        load_metric(tmp_path / "m.py")
    with pytest.raises(ConfigError, match=r"no function 'score' \(its functions: \['metric'\]\)"):
        load_metric(f"{tmp_path / 'm.py'}:score")


def test_a_tensors_model_sweeps_post_training_and_its_training_time_points_are_refused_with_the_reason(setup, tmp_path):
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec
    folder, model, _, _ = setup
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{model}"
        [data]
        validation = "{folder / 'val.npz'}"
        train = "{folder}"
        [run]
        name = "tensors"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = [2, 8]
        [[grid]]
        technique = "dkm"
        n_bits = 2
        steps = 2
    """))
    result = run_sweep(load_spec(spec), tmp_path / "store")
    runs = {r.label: r for r in result.runs}
    assert result.status == "done" and result.counts.get("FAILED", 0) == 0, \
        [(r.label, r.error) for r in result.runs if r.state != "COMPLETE"]
    assert any("task 'tensors' defines no loss" in point.error for point in result.invalid)
    assert not any(label.startswith("dkm") for label in runs)
    two, eight = runs["palettize nbits=2"], runs["palettize nbits=8"]
    assert two.sizes["bytes"] < eight.sizes["bytes"] < runs["baseline fp16"].sizes["bytes"]
    assert two.metrics["task"] == "tensors" and set(two.metrics["fidelity"]) == {"scores", "dense"}
    assert two.metrics["snr_db"] < eight.metrics["snr_db"] < 200
    assert runs["baseline PyTorch"].metrics["snr_db"] == 200.0 and runs["baseline PyTorch"].metrics["agreement"] == 1.0


def test_info_shows_a_tensors_models_declared_inputs_and_outputs(setup, capsys):
    folder, model, package, _ = setup
    for source in (model, package):
        assert main(["info", str(source)]) == 0
        out = capsys.readouterr().out
        assert "task tensors" in out and "input  x: float32 [6]" in out
        assert "output scores: class_scores [3]" in out and "output dense: values [4]" in out
