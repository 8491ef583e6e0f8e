"""The `embedding` task: any inputs, one embedding out (the output declared with
meaning "embedding", else the model's only output; several axes are flattened per
sample). Measured by the cosine similarity of each sample's embedding to the
uncompressed model's (fidelity, per output, with SNR / PSNR / max abs error), and,
when the source pairs queries with keys, by retrieval: top-1 accuracy and MRR.

Validation data is an array source (compress_lab/arrays.py): one `.npz` with one
stacked array per input, or a folder of one-sample `.npz` files. Queries and keys
are samples of the same source, embedded by the same model. Pairs are an optional
integer array `pair`, one value per sample:

    pair[i] = j   sample i is a query whose matching key is sample j;
    pair[i] = -1  sample i is a key (a candidate: every key is searched, so keys
                  that no query points to are distractors).

    np.savez("val.npz", input_ids=ids, attention_mask=mask, pair=pair)

(a folder holds `pair` as a scalar in each file; j is then the position of the key's
file in sorted file-name order). A query's key must be a key (pair[j] = -1). Each
query's rank is 1 + the number of keys more similar to it by cosine similarity:
top-1 = the share of rank 1, MRR = the mean of 1 / rank.

Loss (for training-time techniques): in-batch contrastive InfoNCE over the query/key
pairs of a batch (`pair` then indexes the batch; `pair_batches` makes such batches
from a source). A source without `pair` has no loss to train with."""

from __future__ import annotations

import numpy as np

from compress_lab.arrays import ArraySource, read_arrays
from compress_lab.errors import DataError, ModelLoadError
from compress_lab.metrics.builtin import retrieval_metrics, retrieval_ranks
from compress_lab.tasks import register_task
from compress_lab.tasks.base import FIDELITY_METRICS, Metric, Task, TaskBatch
from compress_lab.tasks.tensors import ArrayData, TensorsAccumulator

PAIR = "pair"
TEMPERATURE = 0.05   # InfoNCE: similarities are cosines divided by this (as in SimCSE / E5 training)


def embedding_output(io) -> str:
    named = [o.name for o in io.outputs if o.meaning == "embedding"]
    if named:
        return named[0]
    if len(io.outputs) == 1:
        return io.outputs[0].name
    raise ModelLoadError(f"task 'embedding' needs to know which output is the embedding; metadata.json declares "
                         f"{list(io.output_names)} and none has meaning \"embedding\"; mark one with "
                         "\"meaning\": \"embedding\"")


def check_pairs(pair: np.ndarray, where: str) -> np.ndarray:
    """`pair` as int64 (N,), or a DataError naming `where`, the array and the fix."""
    pair = np.asarray(pair)
    if pair.ndim != 1 or pair.dtype.kind not in "iu":
        raise DataError(f"array 'pair' in {where} has shape {list(pair.shape)} and dtype {pair.dtype}; give one integer "
                        "per sample: the index of the query's key, or -1 for a key")
    pair = pair.astype(np.int64)
    n = len(pair)
    bad = np.flatnonzero((pair < -1) | (pair >= n))
    if bad.size:
        raise DataError(f"array 'pair' in {where} holds {int(pair[bad[0]])} at sample {int(bad[0])} but the source has "
                        f"{n} samples; pair[i] is a sample index 0..{n - 1} (the key of query i) or -1 (a key)")
    queries = np.flatnonzero(pair >= 0)
    if not queries.size:
        raise DataError(f"array 'pair' in {where} is -1 everywhere, so there is no query; set pair[i] = j for each "
                        "query i whose key is sample j (or leave 'pair' out for fidelity only)")
    chained = queries[pair[pair[queries]] != -1]
    if chained.size:
        i = int(chained[0])
        raise DataError(f"array 'pair' in {where}: query {i} points to sample {int(pair[i])}, which is itself a query "
                        f"(pair[{int(pair[i])}] = {int(pair[pair[i]])}); a query's key must be a key (pair = -1)")
    return pair


class EmbeddingAccumulator(TensorsAccumulator):
    def __init__(self, task: Task, meta, data: ArrayData, reference):
        super().__init__(task, meta, data, reference)
        self.output = embedding_output(self.io)
        self.pairs: list[np.ndarray] = []
        self.has_pairs: bool | None = None
        self.where = str(data.source.root)

    def add(self, batch: TaskBatch, outputs: dict[str, np.ndarray]) -> None:
        here = PAIR in batch.targets
        if self.has_pairs is not None and here != self.has_pairs:
            raise DataError(f"some samples of {self.where} have an array 'pair' and some do not; give every sample "
                            "one (-1 for a key), or none")
        self.has_pairs = here
        if here:
            self.pairs.append(np.asarray(batch.targets[PAIR]).reshape(-1))
        super().add(batch, outputs)

    def result(self) -> dict:
        result = super().result()
        if self.has_pairs and self.n:
            pair = check_pairs(np.concatenate(self.pairs), self.where)
            embeddings = np.concatenate(self.kept[self.output])
            keys = np.flatnonzero(pair == -1)
            queries = np.flatnonzero(pair >= 0)
            position = np.full(len(pair), -1, dtype=np.int64)
            position[keys] = np.arange(len(keys))
            ranks = retrieval_ranks(embeddings[queries], embeddings[keys], position[pair[queries]])
            result["values"] = retrieval_metrics(ranks)
        return result


class Embedding(Task):
    name = "embedding"
    label = "embedding"
    description = ("an embedding out; cosine similarity to the uncompressed embeddings, retrieval top-1 / MRR when "
                   "the source pairs queries with keys")
    calibration_units = 4    # InfoNCE compares a query with the other keys of its batch

    def metrics(self, meta) -> list[Metric]:
        return [Metric("retrieval_top1", "retrieval top-1 accuracy", "", True, primary=True),
                Metric("mrr", "mean reciprocal rank", "", True)]

    def fidelity_metrics(self, meta) -> list[Metric]:
        cosine = [m for m in FIDELITY_METRICS if m.name == "cosine"]
        return cosine + [m for m in super().fidelity_metrics(meta) if m.name != "cosine"]

    def check_io(self, meta, inputs, outputs, source="the model") -> None:
        super().check_io(meta, inputs, outputs, source)
        try:
            embedding_output(self.io(meta))
        except ModelLoadError as e:
            raise ModelLoadError(f"{source}: {e}") from None

    def open_source(self, source, meta) -> ArraySource:
        if isinstance(source, ArraySource):
            return source
        arrays = read_arrays(source, self.io(meta))
        if arrays.inputs is not None and PAIR in arrays.targets:
            arrays.targets[PAIR] = check_pairs(arrays.targets[PAIR], str(arrays.root))
        return arrays

    def subset_source(self, source, meta, max_samples: int):
        """Evenly spaced queries with their keys (pairs renumbered), then distractor keys
        evenly spaced up to `max_samples`; without pairs, evenly spaced samples."""
        from compress_lab.arrays import evenly_spaced, take
        source = self.open_source(source, meta)
        if source.n <= max_samples or source.inputs is None or PAIR not in source.targets:
            return super().subset_source(source, meta, max_samples)
        pair = source.targets[PAIR]
        queries = np.flatnonzero(pair >= 0)
        queries = queries[evenly_spaced(len(queries), max(1, max_samples // 2))]
        keys = sorted(set(pair[queries].tolist()))
        others = [int(k) for k in np.flatnonzero(pair < 0) if int(k) not in set(keys)]
        room = max(0, max_samples - len(queries) - len(keys))
        keys = sorted(keys + [others[i] for i in evenly_spaced(len(others), room)] if room and others else keys)
        order = [int(q) for q in queries] + keys
        subset = take(source, order)
        position = {old: new for new, old in enumerate(order)}
        subset.targets[PAIR] = np.array([position[int(pair[i])] if pair[i] >= 0 else -1 for i in order], dtype=np.int64)
        return subset

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache=None, progress=None) -> ArrayData:
        return ArrayData(self.open_source(source, meta), int(batch_size))

    def accumulator(self, meta, data, reference) -> EmbeddingAccumulator:
        return EmbeddingAccumulator(self, meta, data, reference)

    def source_refusal(self, meta, source) -> str | None:
        names = source.targets if source.inputs is not None else source._folder_targets
        if PAIR not in names:
            return (f"training source {source.root} has no array 'pair', so task 'embedding' has no contrastive "
                    "loss to fine-tune with; add 'pair' (pair[i] = j: the key of query i, -1 for keys; "
                    "numpy.savez(..., pair=pair)) or use post-training techniques")
        return None

    def training_count(self, meta, inputs, targets) -> int:
        """Units are queries: a batch of B units holds B queries and their keys."""
        if PAIR not in targets:
            raise DataError("the training source has no array 'pair'; task 'embedding' trains on query/key pairs "
                            "(pair[i] = j: the key of query i, -1 for keys)")
        pair = check_pairs(np.asarray(targets[PAIR]).reshape(-1), "the training source")
        return int((pair >= 0).sum())

    def training_batch(self, meta, inputs, targets, units):
        import torch
        pair = np.asarray(targets[PAIR]).reshape(-1)
        queries = np.flatnonzero(pair >= 0)[np.asarray(units, dtype=np.int64)]
        index, batch_pair = pair_batch_index(pair, queries)
        index_t = torch.as_tensor(index)
        picked = {k: v[index_t] for k, v in targets.items() if k != PAIR}
        picked[PAIR] = torch.as_tensor(batch_pair)
        return {k: v[index_t] for k, v in inputs.items()}, picked

    def loss(self, meta):
        import torch
        import torch.nn.functional as F

        io = self.io(meta)
        output = embedding_output(io)
        names = io.output_names

        def info_nce(outputs, targets):
            """Queries against every distinct key of the batch: cross-entropy of
            cos / TEMPERATURE with each query's own key as the class."""
            if isinstance(outputs, torch.Tensor):
                emb = outputs
            elif isinstance(outputs, (tuple, list)):
                emb = dict(zip(names, outputs))[output]
            else:
                emb = outputs[output]
            if PAIR not in targets:
                raise DataError("the training batch has no 'pair' target; the embedding loss needs query/key pairs "
                                "in each batch (see compress_lab.tasks.embedding.pair_batches)")
            pair = torch.as_tensor(targets[PAIR]).reshape(-1).long()
            queries = torch.nonzero(pair >= 0).reshape(-1)
            if not len(queries):
                raise DataError("the training batch holds no query (pair is -1 everywhere)")
            key_index, labels = torch.unique(pair[queries], return_inverse=True)
            z = F.normalize(emb.reshape(len(emb), -1), dim=1)
            logits = z[queries] @ z[key_index].T / TEMPERATURE
            return F.cross_entropy(logits, labels)
        return info_nce


def pair_batches(source: ArraySource, pairs_per_batch: int, seed: int = 0):
    """TaskBatches for contrastive training from a stacked source with `pair`: each
    holds up to `pairs_per_batch` queries (in a seeded order) followed by their keys,
    with `pair` re-indexed to the batch."""
    if source.inputs is None or PAIR not in source.targets:
        raise DataError(f"array source {source.root} needs to be one .npz with an array 'pair' to make training pairs")
    pair = check_pairs(source.targets[PAIR], str(source.root))
    queries = np.random.default_rng(seed).permutation(np.flatnonzero(pair >= 0))
    for start in range(0, len(queries), int(pairs_per_batch)):
        index, batch_pair = pair_batch_index(pair, queries[start:start + int(pairs_per_batch)])
        yield TaskBatch(inputs={k: v[index] for k, v in source.inputs.items()},
                        targets={PAIR: batch_pair}, ids=[int(i) for i in index])


def pair_batch_index(pair: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples of a batch of `queries` (the queries, then their distinct keys) and
    `pair` re-indexed to that batch."""
    keys, local = np.unique(pair[queries], return_inverse=True)
    index = np.concatenate([queries, keys]).astype(np.int64)
    batch_pair = np.concatenate([len(queries) + local.reshape(-1), np.full(len(keys), -1)]).astype(np.int64)
    return index, batch_pair


register_task(Embedding())
