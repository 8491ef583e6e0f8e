"""The built-in `embedding`, `regression` and `language_model` tasks, each on a small
real PyTorch model built here and on a Core ML package the lab compressed from it
(int8 weights, run by the lab's runtime). Every metric is checked against a plain
NumPy computation of the same formula on outputs obtained independently (the module
called directly, the runtime's `predict_all`), over several batches; bad sources get
errors that name the file, the array and the fix; each loss trains its model."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from compress_lab.errors import DataError
from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.runtime import load_program
from compress_lab.tasks import get_task
from compress_lab.tasks.base import metric_value
from compress_lab.techniques import compress, config_from_dict
from tests.test_tasks import TEXT_MODEL, make_model

REGRESSOR = textwrap.dedent('''
    import torch
    from torch import nn

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))

        def forward(self, x):
            return self.net(x)

    def build_model():
        return Regressor()
''')
REGRESSOR_META = {"name": "regressor", "task": "regression", "inputs": [{"name": "x", "shape": [6]}],
                  "outputs": [{"name": "value", "meaning": "values", "shape": [2]}]}

BIGRAM = textwrap.dedent('''
    import torch
    from torch import nn

    class Bigram(nn.Module):
        """Token ids -> next-token logits per position (a tiny real language model)."""
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(24, 16)
            self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24))

        def forward(self, input_ids):
            return self.head(self.embed(input_ids))

    def build_model():
        return Bigram()
''')
LM_META = {"name": "bigram", "task": "language_model", "inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"}],
           "outputs": [{"name": "logits", "meaning": "logits_per_position", "shape": ["T", 24]}]}
EMBED_META = {"name": "tiny_text", "task": "embedding",
              "inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                         {"name": "attention_mask", "shape": ["T"], "dtype": "int32"}],
              "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [8]}]}


def quantized(handle, tmp_path):
    return compress(handle, config_from_dict({"technique": "quantize"}), tmp_path / "int8.mlpackage").path


def numpy_cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_built_in_task_declares_its_metrics_with_directions_and_one_primary():
    for name, primary, lower in (("regression", "mae", {"mae", "rmse"}),
                                 ("embedding", "retrieval_top1", set()),
                                 ("language_model", "perplexity", {"perplexity", "cross_entropy"})):
        metrics = get_task(name).metrics(None)
        assert [m.name for m in metrics if m.primary] == [primary]
        assert {m.name for m in metrics if not m.higher_is_better} == lower
        assert all(m.label and not m.fidelity for m in metrics)
    from compress_lab.models.metadata import ModelMetadata
    meta = ModelMetadata.from_dict(EMBED_META)
    assert get_task("embedding").fidelity_metrics(meta)[0].name == "cosine"   # unpaired sources rank by cosine
    assert get_task("embedding").primary_metric(meta, labelled=False).name == "cosine"


# ----------------------------------------------------------------------------- regression

def test_regression_mae_and_rmse_match_numpy_in_pytorch_and_in_the_compressed_core_ml_model(tmp_path):
    folder = make_model(tmp_path / "reg", REGRESSOR, REGRESSOR_META)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    y = rng.normal(size=(30, 2)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, value=y)
    handle = load_model(folder)
    with torch.no_grad():
        eager = handle.module(torch.from_numpy(x)).numpy()
    result = evaluate_model(handle, tmp_path / "val.npz", batch_size=7)       # 5 batches, accumulated
    assert result.task == "regression" and result.n == 30
    assert result.values["mae"] == pytest.approx(np.abs(eager - y).mean(), rel=1e-5)
    assert result.values["rmse"] == pytest.approx(np.sqrt(((eager - y) ** 2).mean()), rel=1e-5)

    package = quantized(handle, tmp_path)
    coreml = np.asarray(load_program(package).predict_all({"x": x})["value"], dtype=np.float64)
    compressed = evaluate_model(package, tmp_path / "val.npz", reference=handle, batch_size=7)
    assert compressed.values["mae"] == pytest.approx(np.abs(coreml - y).mean(), rel=1e-5)
    assert compressed.values["rmse"] == pytest.approx(np.sqrt(((coreml - y) ** 2).mean()), rel=1e-5)
    assert compressed.values["mae"] != result.values["mae"]                  # int8 weights change the values a little
    assert compressed.fidelity["value"]["cosine"] > 0.999
    assert metric_value(compressed.to_dict(), "mae", higher_is_better=False) == compressed.values["mae"]
    assert compressed.to_dict()["values"]["rmse"] == compressed.values["rmse"]


def test_regression_sources_with_missing_or_misshapen_targets_are_refused_naming_file_and_array(tmp_path):
    meta = dict(REGRESSOR_META, outputs=[{"name": "value", "meaning": "values", "shape": [2]},
                                         {"name": "extra", "meaning": "values", "shape": [2]}])
    two = textwrap.dedent(REGRESSOR).replace("return self.net(x)", "return self.net(x), -self.net(x)")
    folder = make_model(tmp_path / "two", two, meta)
    x = np.zeros((4, 6), np.float32)
    np.savez(tmp_path / "half.npz", x=x, value=np.zeros((4, 2), np.float32))
    with pytest.raises(DataError) as err:
        evaluate_model(folder, tmp_path / "half.npz")
    assert all(w in str(err.value) for w in ("half.npz", "'extra'", "numpy.savez", "value=..., extra=..."))
    single = make_model(tmp_path / "one", REGRESSOR, REGRESSOR_META)
    np.savez(tmp_path / "shape.npz", x=x, target=np.zeros((4, 3), np.float32))
    with pytest.raises(DataError, match=r"array 'target' in .*shape.npz has shape \[4, 3\].*output 'value' has shape "
                                        r"\[4, 2\]; save one target per output value"):
        evaluate_model(single, tmp_path / "shape.npz")
    np.savez(tmp_path / "nan.npz", x=x, value=np.full((4, 2), np.nan, np.float32))
    with pytest.raises(DataError, match=r"array 'value' in .*nan.npz has a NaN.*fill their targets"):
        evaluate_model(single, tmp_path / "nan.npz")


# ----------------------------------------------------------------------------- embedding

def numpy_retrieval(emb, pair):
    keys = [j for j in range(len(pair)) if pair[j] == -1]
    ranks = []
    for i in range(len(pair)):
        if pair[i] < 0:
            continue
        sims = {j: float(numpy_cosine(emb[i:i + 1], emb[j:j + 1])[0]) for j in keys}
        ranks.append(1 + sum(s > sims[pair[i]] for s in sims.values()))
    ranks = np.array(ranks)
    return (ranks == 1).mean(), (1.0 / ranks).mean()


def embedding_source(path, n_keys=16, n_queries=12, length=6, seed=2):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 50, (n_keys, length))
    targets = rng.permutation(n_keys)[:n_queries]
    queries = keys[targets].copy()
    queries[:, :2] = rng.integers(0, 50, (n_queries, 2))           # a query shares 4 of its key's 6 tokens
    ids = np.concatenate([queries, keys]).astype(np.int32)
    pair = np.concatenate([n_queries + targets, np.full(n_keys, -1)])
    mask = np.ones_like(ids)
    np.savez(path, input_ids=ids, attention_mask=mask, pair=pair)
    return ids, mask, pair


def test_embedding_cosine_and_retrieval_match_numpy_in_pytorch_and_in_the_compressed_core_ml_model(tmp_path):
    folder = make_model(tmp_path / "emb", TEXT_MODEL, EMBED_META)
    ids, mask, pair = embedding_source(tmp_path / "val.npz")
    handle = load_model(folder)
    with torch.no_grad():
        eager = handle.module(torch.from_numpy(ids).long(), torch.from_numpy(mask).long()).numpy()
    result = evaluate_model(handle, tmp_path / "val.npz", reference=handle, batch_size=5)
    top1, mrr = numpy_retrieval(eager, pair)
    assert result.task == "embedding" and result.n == 28
    assert result.values["retrieval_top1"] == pytest.approx(top1) and result.values["mrr"] == pytest.approx(mrr)
    assert 0 < top1 < 1 and result.fidelity["embedding"]["cosine"] == pytest.approx(1.0)

    package = quantized(handle, tmp_path)
    coreml = np.asarray(load_program(package).predict_all({"input_ids": ids, "attention_mask": mask})["embedding"])
    compressed = evaluate_model(package, tmp_path / "val.npz", reference=handle, batch_size=5)
    top1, mrr = numpy_retrieval(coreml, pair)
    assert compressed.values["retrieval_top1"] == pytest.approx(top1) and compressed.values["mrr"] == pytest.approx(mrr)
    cosine = numpy_cosine(eager, coreml).mean()
    assert compressed.fidelity["embedding"]["cosine"] == pytest.approx(cosine, abs=1e-7) and 0.999 < cosine < 1.0
    assert metric_value(compressed, "cosine") == compressed.fidelity["embedding"]["cosine"]

    np.savez(tmp_path / "unpaired.npz", input_ids=ids, attention_mask=mask)   # no pairs: cosine only
    unpaired = evaluate_model(package, tmp_path / "unpaired.npz", reference=handle)
    assert not unpaired.values and unpaired.fidelity["embedding"]["cosine"] == pytest.approx(cosine, abs=1e-7)


def test_embedding_pairs_that_do_not_make_sense_are_refused_naming_file_array_and_fix(tmp_path):
    folder = make_model(tmp_path / "emb", TEXT_MODEL, EMBED_META)
    ids = np.zeros((4, 3), np.int32)
    for name, pair, words in (("chain.npz", [1, 2, -1, -1], ("query 0 points to sample 1", "must be a key")),
                              ("range.npz", [7, -1, -1, -1], ("holds 7 at sample 0", "0..3")),
                              ("none.npz", [-1, -1, -1, -1], ("no query", "leave 'pair' out")),
                              ("float.npz", [0.5, -1, -1, -1], ("dtype float64", "one integer per sample"))):
        np.savez(tmp_path / name, input_ids=ids, attention_mask=ids, pair=np.array(pair))
        with pytest.raises(DataError) as err:
            evaluate_model(folder, tmp_path / name)
        assert all(w in str(err.value) for w in (name, "array 'pair'", *words)), str(err.value)


# ----------------------------------------------------------------------------- language model

def numpy_next_token(logits, ids, mask):
    nll, correct, count = 0.0, 0, 0
    for n in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if not (mask[n, t] and mask[n, t + 1]):
                continue
            row = logits[n, t].astype(np.float64)
            log_p = row - row.max() - np.log(np.exp(row - row.max()).sum())
            nll -= log_p[ids[n, t + 1]]
            correct += int(row.argmax() == ids[n, t + 1])
            count += 1
    return np.exp(nll / count), correct / count, count


def test_language_model_perplexity_and_accuracy_match_numpy_with_a_mask_in_pytorch_and_core_ml(tmp_path):
    folder = make_model(tmp_path / "lm", BIGRAM, LM_META)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 24, (10, 8)).astype(np.int32)
    ids[:, 1::2] = (ids[:, 0::2] + 1) % 24                          # some structure to predict
    mask = np.ones_like(ids)
    mask[::3, 5:] = 0                                               # right-padded windows
    np.savez(tmp_path / "val.npz", input_ids=ids, attention_mask=mask)
    handle = load_model(folder)
    with torch.no_grad():
        eager = handle.module(torch.from_numpy(ids).long()).numpy()
    result = evaluate_model(handle, tmp_path / "val.npz", batch_size=4)
    ppl, acc, count = numpy_next_token(eager, ids, mask)
    assert count == 10 * 7 - 4 * 3                                  # 4 padded windows lose 3 scored positions each
    assert result.values["perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert result.values["next_token_accuracy"] == pytest.approx(acc)
    assert result.values["cross_entropy"] == pytest.approx(np.log(ppl), rel=1e-5)

    package = quantized(handle, tmp_path)
    coreml = np.asarray(load_program(package).predict_all({"input_ids": ids})["logits"])
    compressed = evaluate_model(package, tmp_path / "val.npz", reference=handle, batch_size=4)
    ppl, acc, _ = numpy_next_token(coreml, ids, mask)
    assert compressed.values["perplexity"] == pytest.approx(ppl, rel=1e-5)
    assert compressed.values["next_token_accuracy"] == pytest.approx(acc)
    assert compressed.fidelity["logits"]["agreement"] > 0.9 and compressed.fidelity["logits"]["snr_db"] > 20

    np.savez(tmp_path / "oov.npz", input_ids=np.full((2, 4), 30, np.int32))
    with pytest.raises(DataError, match=r"token id 30 in array 'input_ids' of .*oov.npz is outside the model's "
                                        r"vocabulary of 24"):
        evaluate_model(handle, tmp_path / "oov.npz")


# ----------------------------------------------------------------------------- losses

def _train(module, batches, loss, steps=40):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        inputs, targets = batches[step % len(batches)]
        value = loss(module(*inputs), targets)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    return losses


def test_each_task_loss_trains_its_model_and_only_a_source_its_loss_cannot_use_is_refused(tmp_path):
    from compress_lab.tasks.embedding import pair_batches
    torch.manual_seed(0)
    reg = load_model(make_model(tmp_path / "reg", REGRESSOR, REGRESSOR_META))
    x = torch.randn(64, 6)
    y = torch.stack([x[:, 0] * 2, x[:, 1] - x[:, 2]], 1)
    losses = _train(reg.module, [((x,), {"value": y})], get_task("regression").loss(reg.metadata))
    assert losses[-1] < 0.5 * losses[0]

    lm = load_model(make_model(tmp_path / "lm", BIGRAM, LM_META))
    ids = (torch.randint(0, 24, (16, 1)) + torch.arange(8)) % 24     # next token = this token + 1
    from compress_lab.metrics.builtin import next_token_targets
    targets = {"next_token": torch.from_numpy(next_token_targets(ids.numpy()))}
    losses = _train(lm.module, [((ids,), targets)], get_task("language_model").loss(lm.metadata), steps=80)
    assert losses[-1] < 0.5 * losses[0]

    emb = load_model(make_model(tmp_path / "emb", TEXT_MODEL, EMBED_META))
    embedding = get_task("embedding")
    embedding_source(tmp_path / "pairs.npz", n_keys=24, n_queries=24)
    batches = [((torch.from_numpy(b.inputs["input_ids"]).long(), torch.from_numpy(b.inputs["attention_mask"]).long()),
                b.targets) for b in pair_batches(embedding.open_source(tmp_path / "pairs.npz", emb.metadata), 8)]
    assert len(batches) == 3 and all(len(b[1]["pair"]) == 16 for b in batches)
    losses = _train(emb.module, batches, embedding.loss(emb.metadata), steps=30)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])

    for handle in (reg, lm, emb):       # the lab's fine-tuning loop trains each of them (tests/test_training_tasks.py)
        assert get_task(handle.metadata.task).training_refusal(handle.metadata) is None
    np.savez(tmp_path / "nopairs.npz", input_ids=np.zeros((4, 3), np.int32), attention_mask=np.ones((4, 3), np.int32))
    assert "has no array 'pair'" in embedding.training_refusal(emb.metadata, tmp_path / "nopairs.npz")


def test_embedding_pairs_in_a_folder_of_one_sample_files_score_as_the_stacked_source(tmp_path):
    folder = make_model(tmp_path / "emb", TEXT_MODEL, EMBED_META)
    ids, mask, pair = embedding_source(tmp_path / "val.npz", n_keys=6, n_queries=4)
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(len(ids)):                       # `pair` as a scalar per file; j = the key's file position
        np.savez(samples / f"{i:03d}.npz", input_ids=ids[i], attention_mask=mask[i], pair=np.int64(pair[i]))
    stacked = evaluate_model(folder, tmp_path / "val.npz", batch_size=3)
    files = evaluate_model(folder, samples, batch_size=3)
    assert files.n == stacked.n == 10
    assert files.values == pytest.approx(stacked.values) and set(files.values) == {"retrieval_top1", "mrr"}
