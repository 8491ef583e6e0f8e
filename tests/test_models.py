"""Loading models every way a user gives them, and the errors for bad ones."""

import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from compress_lab.errors import ConfigError, ModelLoadError
from compress_lab.models import ModelMetadata, load_model
from compress_lab.models.convert import convert_module
from compress_lab.models.summary import summarize


def test_sample_model_by_name_and_folder(mnist_dir):
    by_name = load_model("mnist_cnn")
    by_folder = load_model(mnist_dir)
    assert by_name.kind == "torch" and by_name.metadata.num_classes == 10
    assert by_name.fingerprint == by_folder.fingerprint
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(by_name.module(x), by_folder.module(x))


def test_python_definition_plus_weights(mnist_dir, tmp_path):
    handle = load_model(mnist_dir / "model.py", weights=mnist_dir / "weights.pt", metadata=mnist_dir / "metadata.json")
    assert handle.parameter_count() == 390_410


def test_torchscript_with_metadata(mnist_handle, mnist_dir, tmp_path):
    scripted = torch.jit.trace(mnist_handle.torch_copy(), torch.zeros(1, 1, 28, 28))
    path = tmp_path / "mnist.pt"
    scripted.save(str(path))
    shutil.copy(mnist_dir / "metadata.json", tmp_path / "metadata.json")
    handle = load_model(path)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(handle.module(x), mnist_handle.module(x), atol=1e-6)


def test_mlpackage_keeps_metadata(mnist_handle, tmp_path):
    out = convert_module(mnist_handle.torch_copy(), mnist_handle.metadata, tmp_path / "m.mlpackage", precision="fp32")
    handle = load_model(out)
    assert handle.kind == "coreml"
    assert handle.metadata == mnist_handle.metadata
    with pytest.raises(ModelLoadError, match="PyTorch model"):
        handle.torch_copy()


def test_torch_copy_never_mutates(mnist_handle):
    copy = mnist_handle.torch_copy()
    with torch.no_grad():
        for p in copy.parameters():
            p.zero_()
    assert any(p.abs().sum() > 0 for p in mnist_handle.module.parameters())


def test_summary_marks_touched_layers(mnist_handle):
    summary = summarize(mnist_handle)
    layers = {l.name: l for l in summary.layers}
    assert layers["conv_layers.0"].parameters == 320 and not layers["conv_layers.0"].touched_post_training
    assert layers["fc_layers.0"].touched_post_training and layers["fc_layers.0"].touched_training_time
    assert summary.parameters == 390_410


def test_summary_marks_an_embedding_table_and_lstm_weights_that_core_ml_compresses(tmp_path):
    from compress_lab.mil import COMPRESSED_OPS
    from compress_lab.techniques import _training, compress, config_from_dict
    from tests.test_tasks import make_model

    code = """
import torch
from torch import nn

class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, input_ids):
        return self.head(self.lstm(self.embed(input_ids))[0])

def build_model():
    return Tagger()
"""
    meta = {"name": "tagger", "task": "tensors", "inputs": [{"name": "input_ids", "shape": [6], "dtype": "int32"}],
            "outputs": [{"name": "tags", "meaning": "values", "shape": [6, 4]}]}
    handle = load_model(make_model(tmp_path / "tagger", code, meta))
    layers = {l.name: l for l in summarize(handle).layers}
    assert layers["embed"].touched_post_training and layers["lstm"].touched_post_training
    assert not layers["head"].touched_post_training  # 128 weights: under the threshold
    out = compress(handle, config_from_dict({"technique": "palettize", "nbits": 4}), tmp_path / "p4.mlpackage",
                   workdir=tmp_path / "work")
    ops = {op: n for op, n in _training.op_counts(out.path).items() if op in COMPRESSED_OPS}
    assert sum(ops.values()) >= 2, ops  # the embedding table and the LSTM's weights are palettized for real


# ----------------------------------------------------------------- bad input

def test_missing_source_names_it():
    with pytest.raises(ModelLoadError, match="no_such_model.*does not exist"):
        load_model("no_such_model")


def test_truncated_weights(mnist_dir, tmp_path):
    data = (mnist_dir / "weights.pt").read_bytes()
    bad = tmp_path / "weights.pt"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="cannot be read|truncated"):
        load_model(mnist_dir / "model.py", weights=bad, metadata=mnist_dir / "metadata.json")


def test_empty_weights(mnist_dir, tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(mnist_dir / "model.py", weights=bad, metadata=mnist_dir / "metadata.json")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_PATH'], 'w').write('pwned')",))


def test_malicious_pickle_is_refused(mnist_dir, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_PATH", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"weight": _RunsCode()}, evil, _use_new_zipfile_serialization=True)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(mnist_dir / "model.py", weights=evil, metadata=mnist_dir / "metadata.json")
    assert not marker.exists(), "the pickle's code ran"


def test_weights_that_do_not_fit(mnist_dir, tmp_path):
    state = torch.load(mnist_dir / "weights.pt", weights_only=True)
    state["fc_layers.0.weight"] = torch.zeros(7, 7)
    bad = tmp_path / "w.pt"
    torch.save(state, bad)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(mnist_dir / "model.py", weights=bad, metadata=mnist_dir / "metadata.json")


def test_definition_that_raises(mnist_dir, tmp_path):
    definition = tmp_path / "model.py"
    definition.write_text("raise RuntimeError('boom in definition')\n")
    with pytest.raises(ModelLoadError, match="boom in definition"):
        load_model(definition, weights=mnist_dir / "weights.pt", metadata=mnist_dir / "metadata.json")


def test_definition_without_factory(mnist_dir, tmp_path):
    definition = tmp_path / "model.py"
    definition.write_text("import torch\nnet = torch.nn.Linear(2, 2)\n")
    with pytest.raises(ModelLoadError, match="build_model"):
        load_model(definition, weights=mnist_dir / "weights.pt", metadata=mnist_dir / "metadata.json")


def test_state_dict_given_as_torchscript(mnist_dir, tmp_path):
    shutil.copy(mnist_dir / "weights.pt", tmp_path / "model.pt")
    shutil.copy(mnist_dir / "metadata.json", tmp_path / "metadata.json")
    with pytest.raises(ModelLoadError, match="state_dict, not a TorchScript"):
        load_model(tmp_path / "model.pt")


def test_wrong_format_file(tmp_path, mnist_dir):
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelLoadError, match="neither a TorchScript"):
        load_model(bogus, metadata=mnist_dir / "metadata.json")


def test_neural_network_mlpackage_is_refused(tmp_path, mnist_dir):
    import coremltools as ct
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 1, 28, 28))
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(1, 1, 28, 28))],
                         convert_to="neuralnetwork", minimum_deployment_target=ct.target.iOS14)
    path = tmp_path / "nn.mlpackage"
    # A neural network can only be saved as .mlmodel; wrap the spec in a package to mimic a user's mistake.
    from coremltools.models.utils import save_spec
    save_spec(mlmodel.get_spec(), str(tmp_path / "nn.mlmodel"))
    pkg = ct.models.MLModel(str(tmp_path / "nn.mlmodel"), skip_model_load=True)
    try:
        save_spec(pkg.get_spec(), str(path))
    except Exception:
        pytest.skip("coremltools cannot package a neural network here")
    with pytest.raises(ModelLoadError, match="not an ML program"):
        load_model(path, metadata=mnist_dir / "metadata.json")


def test_missing_metadata_explains(mnist_handle, tmp_path):
    scripted = torch.jit.trace(mnist_handle.torch_copy(), torch.zeros(1, 1, 28, 28))
    path = tmp_path / "m.pt"
    scripted.save(str(path))
    with pytest.raises(ModelLoadError, match="metadata.json"):
        load_model(path)


def test_metadata_validation(tmp_path):
    with pytest.raises(ConfigError, match="channel"):
        ModelMetadata.from_dict({"name": "x", "input_shape": [3, 8, 8], "class_names": ["a"], "preprocessing": {"color": "L"}})
    with pytest.raises(ConfigError, match="unknown model metadata key"):
        ModelMetadata.from_dict({"name": "x", "input_shape": [1, 8, 8], "class_names": ["a"], "colour": "L"})
    bad = tmp_path / "metadata.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelMetadata.load(bad)
