"""A two-input int32 text encoder (token ids + attention mask -> an embedding; task
`embedding`), the small real model of tests/test_training_tasks.py, on query/key pairs
(`pair`): swept with 4-bit palettized weights and a 75% pruned projection (post-training)
and the projection 75% pruned while fine-tuned with the task's InfoNCE loss on the pairs
(which then retrieves better than the float model and than pruning alone), scored by the
built-in retrieval
top-1 and MRR (higher is better) and by a user metric file, the mean rank of each query's
true key among all keys (1 = first; lower is better). The Results page budgets that mean
rank; `compress-lab results` answers a budget on it."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from compress_lab.evaluate import evaluate_model
from compress_lab.metrics.builtin import retrieval_ranks
from compress_lab.mil import COMPRESSED_OPS
from compress_lab.techniques import _training
from tests.test_tasks import make_model, runs_by_technique, swept_store
from tests.test_training_tasks import ENCODER, ENCODER_META, pair_arrays

ROOT = Path(__file__).resolve().parents[1]
MEAN_RANK = textwrap.dedent('''
    import numpy as np

    DIRECTIONS = {"mean_rank": "lower"}

    def metric(outputs, targets):
        """The mean rank (1 = first) of each query's true key among all keys, by cosine similarity."""
        e = outputs["embedding"] / np.linalg.norm(outputs["embedding"], axis=1, keepdims=True)
        pair = targets["pair"]
        queries, keys = np.flatnonzero(pair >= 0), np.flatnonzero(pair < 0)
        similarity = e[queries] @ e[keys].T
        own = similarity[np.arange(len(queries)), np.searchsorted(keys, pair[queries])]   # the same rounding
        return {"mean_rank": float(1 + (similarity > own[:, None]).sum(axis=1).mean())}
''')

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """The model folder (untrained weights) with train.npz (128 pairs), val.npz (128 pairs) and mean_rank.py."""
    root = tmp_path_factory.mktemp("encoder")
    model = make_model(root / "model", ENCODER, ENCODER_META)
    pair_arrays(model / "train.npz", n=128)
    pair_arrays(model / "val.npz", n=128, seed=7)
    (root / "mean_rank.py").write_text(MEAN_RANK)
    return model


def test_the_users_mean_rank_is_the_mean_of_the_ranks_behind_the_built_in_retrieval_metrics(encoder):
    result = evaluate_model(encoder, encoder / "val.npz", metric=encoder.parent / "mean_rank.py")
    assert result.higher_is_better == {"retrieval_top1": True, "mrr": True, "mean_rank": False}
    embeddings = result.outputs["embedding"]
    assert embeddings.shape == (256, 32)                         # 128 queries, then their 128 keys, in sample order
    ranks = retrieval_ranks(embeddings[:128], embeddings[128:], np.arange(128))
    assert result.values["mean_rank"] == pytest.approx(ranks.mean())
    assert result.values["retrieval_top1"] == pytest.approx((ranks == 1).mean())
    assert 1 < result.values["mean_rank"] and result.values["retrieval_top1"] < 1   # untrained: room to learn


@pytest.fixture(scope="module")
def encoder_store(encoder, tmp_path_factory) -> Path:
    """A real sweep: baselines, 4-bit palettized weights, the projection pruned 75% (the embedding table
    kept, as the training-time pruner keeps it), and the projection pruned 75% while fine-tuned with
    InfoNCE on the pairs."""
    return swept_store(tmp_path_factory.mktemp("encoder-store"), f"""
        [model]
        source = "{encoder}"
        [data]
        validation = "{encoder / 'val.npz'}"
        train = "{encoder / 'train.npz'}"
        metric = "{encoder.parent / 'mean_rank.py'}"
        [run]
        name = "text-encoder"
        workers = 1
        [[grid]]
        technique = "palettize"
        nbits = 4
        weight_threshold = 0
        [[grid]]
        technique = "prune"
        target_sparsity = 0.75
        weight_threshold = 0
        op_overrides = {{ "type:gather" = "skip" }}
        [[grid]]
        technique = "magnitude_pruning"
        target_sparsity = 0.75
        schedule = "constant"
        steps = 40
        batch_size = 32
        learning_rate = 0.01
    """)


def test_a_sweep_palettizes_and_prunes_while_fine_tuning_on_pairs_scored_by_retrieval_and_mean_rank(encoder_store):
    runs = runs_by_technique(encoder_store)
    assert {"baseline PyTorch", "baseline fp16", "palettize", "magnitude_pruning"} <= set(runs)
    for run in runs.values():
        values = run.metrics["values"]
        assert run.state == "COMPLETE" and run.metrics["task"] == "embedding"
        assert set(values) == {"retrieval_top1", "mrr", "mean_rank"}
        assert run.metrics["higher_is_better"] == {"retrieval_top1": True, "mrr": True, "mean_rank": False}
        assert values["mean_rank"] >= 1 and (values["mean_rank"] == 1) == (values["retrieval_top1"] == 1)
        assert values["mrr"] >= 1 / values["mean_rank"] - 1e-9         # mean of 1/rank >= 1/mean of ranks

    palettized = runs["palettize"]
    ops = {op: n for op, n in _training.op_counts(encoder_store / palettized.artifact_path).items()
           if op in COMPRESSED_OPS}
    assert ops == {"constexpr_lut_to_dense": 2}                        # the embedding table and the projection
    assert palettized.sizes["weights_bytes"] < 0.5 * runs["baseline fp16"].sizes["weights_bytes"]
    assert palettized.metrics["fidelity"]["embedding"]["cosine"] > 0.95

    pruned, fine_tuned = runs["prune"], runs["magnitude_pruning"]
    for run in (pruned, fine_tuned):                                   # the projection, the same 75%
        ops = _training.op_counts(encoder_store / run.artifact_path)
        assert {op for op in ops if op in COMPRESSED_OPS} == {"constexpr_sparse_to_dense"}
        assert ops["constexpr_sparse_to_dense"] == 1
    assert fine_tuned.family == "training_time" and pruned.family == "post_training"
    untrained, alone, trained = (r.metrics["values"] for r in (runs["baseline PyTorch"], pruned, fine_tuned))
    for better in (untrained, alone):                                  # InfoNCE on the training pairs
        assert trained["mean_rank"] < better["mean_rank"] - 0.5 and trained["mrr"] > better["mrr"] + 0.03


def test_results_budget_the_encoders_mean_rank_and_the_cli_answers_a_budget_on_it(encoder_store, monkeypatch,
                                                                                   capsys):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from compress_lab.cli import main
    from tests.test_app_tasks import results_budget_a_lower_is_better_metric

    results_budget_a_lower_is_better_metric(encoder_store, monkeypatch, "mean_rank", "mean_rank",
                                            also=("retrieval_top1", "mrr"), default="retrieval_top1")

    assert main(["results", "--store", str(encoder_store), "--json", "--budget-metric", "mean_rank=0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    reference = next(r for r in out["runs"] if r["config"].get("format") == "pytorch")["metrics"]["mean_rank"]
    answer = out["answer"]["run"]
    fits = [r for r in out["runs"] if r["workflow"] != "baseline" and r["metrics"]["mean_rank"] <= reference + 0.5]
    assert answer is not None and answer["metrics"]["mean_rank"] <= reference + 0.5 + 1e-9   # a rise of at most 0.5
    assert answer["size_bytes"] == min(r["size_bytes"] for r in fits)
