"""The minilm_embedder sample: its embeddings are all-MiniLM-L6-v2's (against a NumPy
reimplementation read straight from the package's safetensors), the lab's Core ML
conversion keeps them through the lab's runtime, and its WordNet retrieval data is
what sample_models/README.md states (>= 1,000 pairs, train and val disjoint, deterministic)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_lab.models.handle import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "the cat sat on the mat",
    "Core ML Tools compresses neural networks for Apple devices.",
    "large",
    "an animal that barks",
    "dog",
]


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build = _import("sample_models_build", SAMPLES / "build.py")
minilm = sys.modules["build_minilm"]


@pytest.fixture(scope="module")
def sample() -> Path:
    dest = SAMPLES / "minilm_embedder"
    if not minilm.WORDNET_NOUNS.is_file():
        pytest.skip(f"{minilm.WORDNET_NOUNS} is missing (Debian wordnet-base); the set-up installs it")
    if not minilm.is_built(dest):
        minilm.build_minilm_embedder(dest)
    return dest


@pytest.fixture(scope="module")
def handle(sample):
    return load_model("minilm_embedder")


@pytest.fixture(scope="module")
def texts(sample) -> list[str]:
    with gzip.open(sample / "pairs.json.gz", "rt") as f:
        val = json.load(f)["val"]
    return SENTENCES + [p["definition"] for p in val[:10]] + [p["word"] for p in val[:4]]


# ---------------------------------------------------------------- an independent reference

def reference_embeddings(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 in float64 NumPy from model.safetensors: BERT (post-LayerNorm,
    erf GELU) on unpadded token ids (truncated to 32), mean over the tokens, L2 normalised."""
    from safetensors.numpy import load_file

    stored = load_file(str(minilm.package_file("model/model.safetensors")))
    w = {k: (np.ascontiguousarray(v.T) if v.ndim == 2 and k.startswith("encoder.") else v).astype(np.float64)
         for k, v in stored.items() if not k.startswith("embeddings.") or "LayerNorm" in k}

    def erf(x):
        return torch.special.erf(torch.from_numpy(x)).numpy()

    def norm(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def dense(x, prefix):
        return x @ w[prefix + ".weight"] + w[prefix + ".bias"]  # stored transposed above

    tok = minilm.tokenizer(minilm.SEQUENCE_LENGTH)  # the same truncation as the data, no padding
    tok.no_padding()
    ids = [np.array(tok.encode(text).ids) for text in texts]
    spans = np.cumsum([0] + [len(i) for i in ids])    # the texts' tokens, one after another
    positions = np.concatenate([np.arange(len(i)) for i in ids])
    x = (stored["embeddings.word_embeddings.weight"][np.concatenate(ids)].astype(np.float64)
         + stored["embeddings.position_embeddings.weight"][positions].astype(np.float64)
         + stored["embeddings.token_type_embeddings.weight"][0].astype(np.float64))
    x = norm(x, "embeddings.LayerNorm")
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        context = np.zeros_like(x)
        for start, end in zip(spans[:-1], spans[1:]):  # each text attends to its own tokens only
            heads = [t[start:end].reshape(end - start, 12, 32).transpose(1, 0, 2) for t in (q, k, v)]
            scores = heads[0] @ heads[1].transpose(0, 2, 1) / math.sqrt(32)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context[start:end] = ((scores / scores.sum(-1, keepdims=True)) @ heads[2]).transpose(1, 0, 2).reshape(
                end - start, 384)
        x = norm(dense(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = norm(dense(h, p + "output.dense") + x, p + "output.LayerNorm")
    out = []
    for start, end in zip(spans[:-1], spans[1:]):
        pooled = x[start:end].mean(0)
        out.append(pooled / np.linalg.norm(pooled))
    return np.stack(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def lab_embeddings(handle, texts, length=32, dtype=torch.int64) -> np.ndarray:
    ids, mask = minilm.encode(texts, length)
    with torch.no_grad():
        return handle.torch_copy()(torch.from_numpy(ids).to(dtype), torch.from_numpy(mask).to(dtype)).numpy()


def test_tokenizer_is_the_packages_lowercase_wordpiece(sample):
    vocab = minilm.package_file("model/vocab.txt").read_text(encoding="utf-8").splitlines()
    ids, mask = minilm.encode(["The Cat sat"], 8)
    assert [vocab[i] for i in ids[0][:5]] == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert ids[0][5:].tolist() == [0, 0, 0] and mask[0].tolist() == [1] * 5 + [0] * 3


def test_embeddings_match_an_independent_reimplementation(handle, texts):
    reference = reference_embeddings(texts)
    embeddings = lab_embeddings(handle, texts)  # padded to 32: the mask must make padding irrelevant
    assert embeddings.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert cosines(embeddings, reference).min() >= 0.9999
    # int32 ids (as Core ML hands them) give the same embeddings
    assert cosines(lab_embeddings(handle, texts, dtype=torch.int32), reference).min() >= 0.9999
    # and they are meaningful: a definition is closer to its own word than to the others
    sims = embeddings @ embeddings.T
    assert sims[SENTENCES.index("an animal that barks"), SENTENCES.index("dog")] > \
        sims[SENTENCES.index("an animal that barks"), SENTENCES.index("large")]


def test_weights_are_the_checkpoints_loaded_strictly(sample, handle):
    state = handle.module.state_dict()
    from safetensors.torch import load_file
    checkpoint = load_file(str(minilm.package_file("model/model.safetensors")))
    assert set(checkpoint) - set(state) == set(minilm.UNUSED_CHECKPOINT_KEYS)
    assert all(torch.equal(state[k], checkpoint[k]) for k in state)
    assert handle.parameter_count() == 22_565_376


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_core_ml_conversion_keeps_the_embeddings(handle, texts, tmp_path, precision):
    from compress_lab.models.convert import convert_module
    from compress_lab.runtime import load_program

    package = convert_module(handle.torch_copy(), handle.metadata, tmp_path / f"minilm_{precision}.mlpackage",
                             precision=precision)
    reference = lab_embeddings(handle, texts)
    ids, mask = minilm.encode(texts, 32)
    program = load_program(package, compute_precision=precision)
    assert program.fixed_batch is None  # flexible batch (and sequence: ids of 24 tokens below)
    outputs = program.predict_all({"input_ids": ids, "attention_mask": mask})["embedding"]
    assert cosines(outputs, reference).min() >= (0.999 if precision == "fp32" else 0.99)
    short_ids, short_mask = minilm.encode(texts, 24)
    short = program.predict_all({"input_ids": short_ids, "attention_mask": short_mask})["embedding"]
    assert cosines(short, lab_embeddings(handle, texts, 24)).min() >= (0.999 if precision == "fp32" else 0.99)


# ---------------------------------------------------------------- data

def test_retrieval_sets_are_large_disjoint_and_deterministic(sample):
    val = np.load(sample / "val.npz")
    train = np.load(sample / "train.npz")
    with gzip.open(sample / "pairs.json.gz", "rt") as f:
        pairs = json.load(f)
    for arrays, split in ((val, "val"), (train, "train")):
        pair = arrays["pair"]
        queries = np.flatnonzero(pair >= 0)
        assert len(queries) == len(pairs[split])
        assert (pair[pair[queries]] == -1).all()              # every query points to a key
        assert arrays["input_ids"].shape == arrays["attention_mask"].shape == (len(pair), minilm.SEQUENCE_LENGTH)
        assert arrays["input_ids"].dtype == np.int32
    assert len(pairs["val"]) >= 1000
    val_words, train_words = {p["word"] for p in pairs["val"]}, {p["word"] for p in pairs["train"]}
    assert not val_words & train_words
    assert not {p["offset"] for p in pairs["val"]} & {p["offset"] for p in pairs["train"]}
    assert all(minilm.word_fraction(w) < minilm.VAL_SHARE for w in val_words)
    # the split and the arrays are a pure function of data.noun and the tokenizer
    again_val, again_train = minilm.split_pairs(minilm.read_wordnet_pairs())
    assert [p.offset for p in again_val] == [p["offset"] for p in pairs["val"]]
    assert len(again_train) == len(pairs["train"])
    rebuilt = minilm.retrieval_arrays(again_val)
    assert all(np.array_equal(rebuilt[k], val[k]) for k in ("input_ids", "attention_mask", "pair"))


def test_keys_are_the_words_and_queries_their_definitions(sample):
    val = np.load(sample / "val.npz")
    with gzip.open(sample / "pairs.json.gz", "rt") as f:
        first = json.load(f)["val"][0]
    ids, _ = minilm.encode([first["definition"], first["word"]])
    assert np.array_equal(val["input_ids"][0], ids[0])
    assert np.array_equal(val["input_ids"][val["pair"][0]], ids[1])


def test_second_build_is_skipped_and_stamp_checks_data_files(sample, tmp_path, capsys):
    assert minilm.is_built(sample) and build.is_built(sample)
    minilm.build_minilm_embedder(sample)
    assert "up to date" in capsys.readouterr().out
    # a stamp whose data file changed size is not a complete build
    copy = tmp_path / "minilm_embedder"
    copy.mkdir()
    for name in ("weights.pt", "metadata.json", *minilm.DATA_FILES):
        (copy / name).symlink_to(sample / name)
    stamp = json.loads(build._stamp_path(sample).read_text())
    build._stamp_path(copy).write_text(json.dumps(stamp))
    assert minilm.is_built(copy)
    stamp["data_files"]["val.npz"] += 1
    build._stamp_path(copy).write_text(json.dumps(stamp))
    assert not minilm.is_built(copy)


def test_the_sample_is_listed_and_declares_the_embedding_task(handle):
    from compress_lab.models.handle import list_sample_models
    from compress_lab.tasks import task_for

    assert "minilm_embedder" in list_sample_models()
    meta = handle.metadata
    assert meta.task == "embedding" and task_for(meta).name == "embedding"
    assert [(i.name, i.dtype) for i in meta.io.inputs] == [("input_ids", "int32"), ("attention_mask", "int32")]
    assert [(o.name, o.meaning) for o in meta.io.outputs] == [("embedding", "embedding")]


# ---------------------------------------------------------------- the example sweep

def test_the_example_sweep_mixes_both_workflows_on_the_sample(sample):
    from compress_lab.sweep.spec import expand, load_spec

    spec_path = Path(__file__).resolve().parents[1] / "examples" / "minilm_sweep.toml"
    plan = expand(load_spec(spec_path))
    assert not plan.invalid
    families = {p.config.family for p in plan.points}
    assert families == {"post_training", "training_time"}
    techniques = {(p.config.to_dict()["technique"], p.config.to_dict().get("granularity")) for p in plan.points}
    assert ("quantize", "per_block") in techniques and ("palettize", "per_grouped_channel") in techniques


def test_sweep_summary_names_the_tasks_own_metric_and_fidelity():
    from types import SimpleNamespace

    from compress_lab.cli.sweep import status_line, summary_table

    embedding = {"task": "embedding", "values": {"mrr": 0.43, "retrieval_top1": 0.345},
                 "fidelity": {"embedding": {"cosine": 0.9995, "snr_db": 30.3}}}
    classifier = {"task": "classification", "top1": 0.99, "agreement": 0.98, "snr_db": 25.0}
    run = SimpleNamespace(run_id="r", label="quantize dtype=int8", family="post_training", state="COMPLETE",
                          metrics=embedding, sizes={"bytes": 22_815_478, "ratio_fp16": 1.98},
                          timings={"total_s": 12.0}, error=None, artifact_path=None)
    table = summary_table([run])
    assert "retrieval_top1" in table.splitlines()[0] and "cosine" in table.splitlines()[0]
    assert "0.3450" in table and "0.9995" in table
    assert "retrieval_top1 0.3450  cosine 0.9995" in status_line(1, 1, run)
    run.metrics = classifier
    assert "top1 0.9900  agree 0.9800" in status_line(1, 1, run)
