"""The arithmetic of the built-in task metrics, in NumPy, streaming where the
metric allows (add a batch, read the result at the end). The tasks in
compress_lab/tasks/ use these; other callers (subsets, reports) can too, so a
metric has one definition.

- ErrorAccumulator: MAE = mean |out - target|, RMSE = sqrt(mean (out - target)^2),
  over every element;
- TokenAccumulator: next-token cross-entropy (nats per scored token), perplexity =
  exp(cross-entropy) over all scored tokens of all windows (corpus-level, not a mean
  of per-window perplexities), next-token accuracy (argmax = the next token);
- retrieval_ranks: the rank of each query's key among all keys by cosine
  similarity (1 = first; ties counted in the query's favour), giving top-1 accuracy
  (rank 1) and MRR (mean of 1 / rank)."""

from __future__ import annotations

import math

import numpy as np

IGNORE = -100   # a position of `next_token` that is not scored (HF's ignore_index)


class ErrorAccumulator:
    def __init__(self) -> None:
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.count = 0

    def add(self, output: np.ndarray, target: np.ndarray) -> None:
        diff = np.asarray(output, dtype=np.float64) - np.asarray(target, dtype=np.float64)
        self.abs_sum += float(np.abs(diff).sum())
        self.sq_sum += float((diff ** 2).sum())
        self.count += int(diff.size)

    def result(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"mae": self.abs_sum / self.count, "rmse": math.sqrt(self.sq_sum / self.count)}


def next_token_targets(ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """int64 (N, T): at position t the token at t + 1, or IGNORE where there is none
    (the last position) or where the mask says position t or t + 1 is padding."""
    ids = np.asarray(ids, dtype=np.int64)
    target = np.full(ids.shape, IGNORE, dtype=np.int64)
    target[:, :-1] = ids[:, 1:]
    if mask is not None:
        mask = np.asarray(mask) != 0
        keep = np.zeros(ids.shape, dtype=bool)
        keep[:, :-1] = mask[:, :-1] & mask[:, 1:]
        target[~keep] = IGNORE
    return target


class TokenAccumulator:
    def __init__(self) -> None:
        self.nll_sum = 0.0
        self.correct = 0
        self.count = 0

    def add(self, logits: np.ndarray, target: np.ndarray) -> None:
        """`logits` (N, T, V), `target` (N, T) from next_token_targets."""
        target = np.asarray(target, dtype=np.int64)
        scored = target != IGNORE
        if not scored.any():
            return
        rows = np.asarray(logits)[scored].astype(np.float64)          # (M, V)
        y = target[scored]
        shifted = rows - rows.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=1))
        self.nll_sum += float((log_z - shifted[np.arange(len(y)), y]).sum())
        self.correct += int((rows.argmax(axis=1) == y).sum())
        self.count += int(len(y))

    def result(self) -> dict[str, float]:
        if not self.count:
            return {}
        ce = self.nll_sum / self.count
        return {"perplexity": math.exp(min(ce, 700.0)), "next_token_accuracy": self.correct / self.count,
                "cross_entropy": ce}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def retrieval_ranks(queries: np.ndarray, keys: np.ndarray, positives: np.ndarray,
                    chunk_elements: int = 1 << 21) -> np.ndarray:
    """For query i, the rank (1-based) of keys[positives[i]] among all keys by cosine
    similarity: 1 + the number of keys strictly more similar than it. Queries are
    scored a chunk at a time (about `chunk_elements` similarities), so memory grows
    with the keys, not with queries x keys."""
    k = _unit_rows(keys)
    positives = np.asarray(positives, dtype=np.int64)
    ranks = np.empty(len(queries), dtype=np.int64)
    chunk = max(1, chunk_elements // max(1, len(k)))
    for start in range(0, len(queries), chunk):
        sims = _unit_rows(queries[start:start + chunk]) @ k.T
        own = sims[np.arange(len(sims)), positives[start:start + chunk]]
        ranks[start:start + chunk] = 1 + (sims > own[:, None]).sum(axis=1)
    return ranks


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    if not len(ranks):
        return {}
    return {"retrieval_top1": float((ranks == 1).mean()), "mrr": float((1.0 / ranks).mean())}
