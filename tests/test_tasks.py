"""The task seam: the registry, the `tensors` task on real PyTorch models and
real .npz sources, fidelity per output, and the errors for bad array sources,
mismatched declarations and training-time techniques on a task with no loss."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_lab.errors import ConfigError, DataError, ModelLoadError
from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.tasks import get_task, task_for, task_names

TWO_OUTPUT_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class TwoHeads(nn.Module):
        """A small real model: a feature vector -> (class scores, a dense map)."""
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            self.classes = nn.Linear(64, 3)
            self.dense = nn.Linear(64, 4)

        def forward(self, x):
            h = self.body(x)
            return self.classes(h), torch.tanh(self.dense(h))

    def build_model():
        return TwoHeads()
''')

TEXT_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyText(nn.Module):
        """Token ids + attention mask (int32) -> a mean-pooled embedding."""
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.proj = nn.Linear(8, 8)

        def forward(self, input_ids, attention_mask):
            h = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
            return self.proj(pooled)

    def build_model():
        return TinyText()
''')

TWO_OUTPUT_META = {"name": "two_heads", "task": "tensors",
                   "inputs": [{"name": "x", "shape": [6]}],
                   "outputs": [{"name": "scores", "meaning": "class_scores", "shape": [3]},
                               {"name": "dense", "meaning": "values", "shape": [4]}]}
TEXT_META = {"name": "tiny_text", "task": "tensors",
             "inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                        {"name": "attention_mask", "shape": ["T"], "dtype": "int32"}],
             "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [8]}]}


def make_model(folder: Path, code: str, meta: dict, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(code)
    (folder / "metadata.json").write_text(json.dumps(meta))
    namespace: dict = {}
    exec(compile(code, str(folder / "model.py"), "exec"), namespace)
    torch.manual_seed(seed)
    torch.save(namespace["build_model"]().state_dict(), folder / "weights.pt")
    return folder


def swept_store(folder: Path, spec_text: str) -> Path:
    """The store of a real sweep of `spec_text` (a TOML spec, dedented here) run in `folder`; every run must succeed."""
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec
    spec = folder / "spec.toml"
    spec.write_text(textwrap.dedent(spec_text))
    result = run_sweep(load_spec(spec), folder / "store")
    assert result.status == "done" and result.ok, [(r.label, r.error) for r in result.runs]
    return folder / "store"


def runs_by_technique(store: Path) -> dict:
    """The runs of the store's first sweep by technique (baselines by label) of a sweep with one run each."""
    from compress_lab.store import open_store
    opened = open_store(store)
    runs = opened.list_runs(opened.list_sweeps()[0].sweep_id)
    return {r.config["technique"] if r.config["technique"] != "baseline" else r.label: r for r in runs}


@pytest.fixture
def two_heads(tmp_path):
    return make_model(tmp_path / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META)


def test_the_registry_holds_the_built_in_tasks_and_names_close_matches():
    assert {"classification", "tensors"} <= set(task_names())
    assert get_task("tensors").name == "tensors"
    with pytest.raises(ConfigError, match="did you mean 'classification'"):
        get_task("clasification")
    classification = get_task("classification")
    assert [m.name for m in classification.metrics(None) if m.primary] == ["top1"]
    assert classification.metrics(None)[2].higher_is_better is False      # cross-entropy: lower is better


def test_fidelity_against_itself_is_perfect_and_against_another_model_is_measured_per_output(tmp_path, two_heads):
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    same = evaluate_model(two_heads, tmp_path / "val.npz", reference=two_heads, batch_size=16)
    assert same.n == 40 and same.task == "tensors"
    assert set(same.fidelity) == {"scores", "dense"}
    for measures in same.fidelity.values():
        assert measures["snr_db"] == 200.0 and measures["psnr_db"] == 200.0
        assert measures["cosine"] == pytest.approx(1.0) and measures["max_abs_error"] == 0.0
    assert same.fidelity["scores"]["agreement"] == 1.0 and "agreement" not in same.fidelity["dense"]

    other = make_model(tmp_path / "other", TWO_OUTPUT_MODEL, TWO_OUTPUT_META, seed=0)
    handle = load_model(other)
    with torch.no_grad():  # a "compressed" copy: every weight rounded to fp16 and back
        for p in handle.module.parameters():
            p.copy_(p.half().float() + 1e-3 * torch.sign(p))
    result = evaluate_model(handle, tmp_path / "val.npz", reference=two_heads)
    reference = evaluate_model(two_heads, tmp_path / "val.npz")
    with torch.no_grad():
        want = handle.module(torch.from_numpy(x))
    for name, out in zip(("scores", "dense"), want):
        ref = reference.outputs[name].astype(np.float64)
        noise = ((ref - out.numpy()) ** 2).sum()
        assert result.fidelity[name]["snr_db"] == pytest.approx(10 * np.log10((ref ** 2).sum() / noise), rel=1e-4)
        assert result.fidelity[name]["max_abs_error"] == pytest.approx(np.abs(ref - out.numpy()).max(), rel=1e-4)
        assert 0.9 < result.fidelity[name]["cosine"] < 1.0
    assert result.snr_db == min(v["snr_db"] for v in result.fidelity.values())   # the worst output leads
    stored = result.to_dict()
    assert stored["task"] == "tensors" and stored["fidelity"]["dense"]["psnr_db"] > 0 and "outputs" not in stored


def test_a_two_input_int32_text_model_reads_a_folder_of_one_sample_npz_files(tmp_path):
    model = make_model(tmp_path / "text", TEXT_MODEL, TEXT_META)
    folder = tmp_path / "samples"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, length in enumerate([5, 5, 5, 7, 7]):   # flexible length: batched by equal shapes
        np.savez(folder / f"{i:03d}.npz", input_ids=rng.integers(0, 50, length).astype(np.int64),
                 attention_mask=np.ones(length, dtype=np.int32))
    result = evaluate_model(model, folder, reference=model, batch_size=2)
    assert result.n == 5 and result.fidelity["embedding"]["cosine"] == pytest.approx(1.0)
    assert result.outputs["embedding"].shape == (5, 8)


def test_a_two_input_int32_text_model_is_compressed_and_evaluated_through_the_core_ml_runtime(tmp_path):
    from compress_lab.techniques import compress, config_from_dict
    model = make_model(tmp_path / "text", TEXT_MODEL, TEXT_META)
    rng = np.random.default_rng(1)
    mask = np.ones((12, 6), np.int32)
    mask[:, 4:] = 0                                                    # padded positions
    np.savez(tmp_path / "val.npz", input_ids=rng.integers(0, 50, (12, 6)).astype(np.int32), attention_mask=mask)
    handle = load_model(model)
    outcome = compress(handle, config_from_dict({"technique": "quantize"}), tmp_path / "int8.mlpackage")
    result = evaluate_model(outcome.path, tmp_path / "val.npz", reference=handle)
    assert result.n == 12 and result.outputs["embedding"].shape == (12, 8)
    measures = result.fidelity["embedding"]
    assert measures["cosine"] > 0.999 and 30 < measures["snr_db"] < 200     # int8 weights: close, not identical


def test_an_npz_missing_an_input_or_with_mismatched_sample_counts_is_refused_naming_the_file(tmp_path, two_heads):
    np.savez(tmp_path / "wrong_name.npz", features=np.zeros((4, 6), np.float32))
    with pytest.raises(DataError) as err:
        evaluate_model(two_heads, tmp_path / "wrong_name.npz")
    assert all(w in str(err.value) for w in ("wrong_name.npz", "'x'", "'features'", "numpy.savez"))
    np.savez(tmp_path / "counts.npz", x=np.zeros((4, 6), np.float32), target=np.zeros(3))
    with pytest.raises(DataError) as err:
        evaluate_model(two_heads, tmp_path / "counts.npz")
    assert all(w in str(err.value) for w in ("counts.npz", "'x': 4", "'target': 3", "same length"))
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 5), np.float32))
    with pytest.raises(DataError, match=r"array 'x' in .*shape.npz has shape \[4, 5\].*declared \[6\]"):
        evaluate_model(two_heads, tmp_path / "shape.npz")
    text = make_model(tmp_path / "text", TEXT_MODEL, TEXT_META)
    np.savez(tmp_path / "floats.npz", input_ids=np.full((2, 3), 0.5), attention_mask=np.ones((2, 3), np.int32))
    with pytest.raises(DataError, match="float64 values but input 'input_ids' is declared int32"):
        evaluate_model(text, tmp_path / "floats.npz")


def test_a_model_that_does_not_match_its_declaration_is_refused_at_load_naming_the_output(tmp_path):
    meta = dict(TWO_OUTPUT_META, outputs=[{"name": "scores", "meaning": "class_scores", "shape": [5]},
                                         {"name": "dense", "meaning": "values"}])
    folder = make_model(tmp_path / "bad", TWO_OUTPUT_MODEL, meta)
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    assert all(w in str(err.value) for w in ("output 'scores'", "[1, 3]", "[5]", "fix 'outputs'"))
    folder = make_model(tmp_path / "bad_in", TWO_OUTPUT_MODEL, dict(TWO_OUTPUT_META, inputs=[{"name": "x", "shape": [7]}]))
    with pytest.raises(ModelLoadError, match=r"cannot run on blank inputs \{'x': \[1, 7\]\}.*Fix 'inputs'"):
        load_model(folder)


def test_a_task_with_no_loss_refuses_training_time_techniques_up_front_with_the_reason(tmp_path, two_heads):
    handle = load_model(two_heads)
    task = task_for(handle.metadata)
    assert task.loss(handle.metadata) is None
    with pytest.raises(ConfigError, match="task 'tensors' defines no loss.*post-training"):
        task.require_training(handle.metadata)
    assert get_task("classification").training_refusal(None) is None


def test_a_classifier_reads_samples_from_arrays_with_class_labels_and_scores_them_as_its_image_folder(tmp_path, mnist_dir):
    from compress_lab.data import load_image, scan_folder
    handle = load_model("mnist_cnn")
    meta = handle.metadata
    folder = tmp_path / "val"
    for class_dir in sorted((mnist_dir / "val").iterdir())[:4]:
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            (folder / class_dir.name / image.name).write_bytes(image.read_bytes())
    scanned = scan_folder(folder, class_names=meta.class_names)
    x = np.stack([load_image(p, meta.preprocessing, meta.input_shape) for p, _ in scanned.samples])
    labels = np.array([label for _, label in scanned.samples])
    np.savez(tmp_path / "val.npz", input=x, label=labels)
    from_images = evaluate_model(handle, folder)
    from_arrays = evaluate_model(handle, tmp_path / "val.npz", reference=handle)
    assert from_arrays.n == from_images.n == 16
    assert from_arrays.confusion == from_images.confusion
    for key in ("top1", "top5", "loss", "per_class"):
        assert getattr(from_arrays, key) == pytest.approx(getattr(from_images, key)), key
    assert from_arrays.agreement == 1.0 and from_arrays.snr_db == 200.0
    np.savez(tmp_path / "bad_labels.npz", input=x, label=labels + 10)
    with pytest.raises(DataError, match=r"array 'label' in .*bad_labels.npz holds 10..13 but the model has 10 classes"):
        evaluate_model(handle, tmp_path / "bad_labels.npz")
