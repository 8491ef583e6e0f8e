"""metadata.json declares a task and named inputs/outputs; today's metadata keeps working unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress_lab.errors import ConfigError
from compress_lab.models.io_spec import FLEXIBLE, shape_matches
from compress_lab.models.metadata import ModelMetadata

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"

TEXT = {"name": "tiny_text", "task": "tensors",
        "inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                   {"name": "attention_mask", "shape": [None], "dtype": "int32"},
                   {"name": "scale", "shape": [-1, 4]}],
        "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [8]},
                    {"name": "scores", "meaning": "class_scores"}]}


@pytest.mark.parametrize("sample", ["mnist_cnn", "dog_mobilenetv2"])
def test_todays_sample_metadata_is_a_classifier_with_derived_io_and_writes_back_the_same(sample, mnist_dir, dog_handle):
    data = json.loads((SAMPLES / sample / "metadata.json").read_text())
    meta = ModelMetadata.from_dict(data)
    assert meta.task == "classification"
    io = meta.io
    assert [(i.name, i.shape, i.dtype) for i in io.inputs] == [("input", tuple(data["input_shape"]), "float32")]
    assert [(o.name, o.meaning, o.shape) for o in io.outputs] == [("logits", "class_scores", (len(data["class_names"]),))]
    assert meta.to_dict() == data            # nothing new is written for today's models
    assert ModelMetadata.from_dict(meta.to_dict()) == meta


def test_a_tensors_declaration_round_trips_with_flexible_dimensions_marked():
    meta = ModelMetadata.from_dict(TEXT)
    assert meta.task == "tensors" and meta.input_shape is None and meta.class_names == ()
    ids, mask, scale = meta.io.inputs
    assert ids.shape == ("T",) and ids.dtype == "int32" and ids.flexible
    assert mask.shape == (FLEXIBLE,) and scale.shape == (FLEXIBLE, 4) and scale.dtype == "float32"
    assert meta.io.output("embedding").shape == (8,) and meta.io.output("scores").shape is None
    again = ModelMetadata.from_dict(json.loads(meta.to_json()))
    assert again == meta and again.to_dict() == meta.to_dict()
    assert meta.to_dict()["inputs"][1]["shape"] == [None]
    assert shape_matches(scale.shape, (7, 4)) and not shape_matches(scale.shape, (7, 5))


def test_a_classifier_may_declare_its_one_input_instead_of_input_shape():
    meta = ModelMetadata.from_dict({"name": "c", "class_names": ["a", "b"], "preprocessing": {"color": "L"},
                                    "inputs": [{"name": "image", "shape": [1, 8, 8]}]})
    assert meta.input_shape == (1, 8, 8) and meta.io.inputs[0].name == "image"
    assert ModelMetadata.from_dict(meta.to_dict()) == meta


@pytest.mark.parametrize("change,words", [
    ({"inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int64"}]},
     ["inputs[0].dtype", "'int64'", "float32", "int32"]),
    ({"inputs": [{"name": "x", "shape": [0]}]}, ["inputs[0].shape[0]", "0", "positive integer"]),
    ({"inputs": [{"name": "x", "shape": [2]}, {"name": "x", "shape": [2]}]}, ["inputs", "'x'", "own name"]),
    ({"inputs": [{"shape": [2]}]}, ["inputs[0]", "'name'"]),
    ({"inputs": [{"name": "x", "shape": [2], "size": 3}]}, ["inputs[0]", "'size'", "allowed"]),
    ({"outputs": [{"name": "y", "meaning": "logit"}]}, ["outputs[0].meaning", "'logit'", "class_scores"]),
    ({"task": "tensor"}, ["task", "'tensor'", "did you mean 'tensors'"]),
    ({"task": "sound"}, ["task", "'sound'", "known tasks are", "classification"]),
])
def test_a_bad_declaration_names_the_field_the_value_and_the_fix(change, words):
    with pytest.raises(ConfigError) as err:
        ModelMetadata.from_dict({**TEXT, **change})
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_a_tensors_model_must_declare_inputs_and_outputs_and_a_classifier_one_image_input():
    with pytest.raises(ConfigError, match="task 'tensors' needs name, inputs and outputs"):
        ModelMetadata.from_dict({"name": "m", "task": "tensors", "inputs": TEXT["inputs"]})
    with pytest.raises(ConfigError, match=r"declares 2 inputs .*set \"task\": \"tensors\""):
        ModelMetadata.from_dict({"name": "m", "class_names": ["a"], "inputs": TEXT["inputs"][:2]})
    with pytest.raises(ConfigError, match="input_shape"):
        ModelMetadata.from_dict({"name": "m", "class_names": ["a"]})
