"""The `language_model` task: token ids in (an int32 input, `input_ids` or the
first int32 one, shape (N, T)), logits per position out (the output of meaning
"logits_per_position", else the first; shape (N, T, V)). Measured on held-out
token windows by perplexity (lower is better; exp of the mean next-token
cross-entropy over every scored token of every window), next-token accuracy and
the cross-entropy itself (nats per token), plus the fidelity of the logits to the
uncompressed model (top-1 agreement per position, SNR, PSNR, cosine, max abs error).

Validation data is an array source (compress_lab/arrays.py): one `.npz` with the
windows stacked, `np.savez("val.npz", input_ids=windows)` (cut a token stream into
windows with `stream[: n * T].reshape(n, T)`), or a folder of one-window `.npz` files.
The target at position t is the token at t + 1 (the last position is not scored).
An `attention_mask` (an input of the model, or an array beside the ids) is
respected: position t is scored only where the mask is 1 at both t and t + 1.
The targets are added to each batch as `next_token` (int64 (N, T), -100 where not
scored), which a user metric sees too. Loss: next-token cross-entropy on them."""

from __future__ import annotations

import numpy as np

from compress_lab.arrays import ArraySource, read_arrays
from compress_lab.errors import DataError, ModelLoadError
from compress_lab.metrics.builtin import IGNORE, TokenAccumulator, next_token_targets
from compress_lab.tasks import register_task
from compress_lab.tasks.base import Metric, Task, TaskBatch, check_batch_outputs
from compress_lab.tasks.tensors import ArrayData, TensorsAccumulator

MASK = "attention_mask"
TARGET = "next_token"


def ids_input(io) -> str:
    if "input_ids" in io.input_names and io.input("input_ids").dtype == "int32":
        return "input_ids"
    ints = [i.name for i in io.inputs if i.dtype == "int32" and i.name != MASK]
    if not ints:
        raise ModelLoadError(f"task 'language_model' takes token ids, but metadata.json declares no int32 input "
                             f"(inputs: {[(i.name, i.dtype) for i in io.inputs]}); declare the ids as "
                             "{\"name\": \"input_ids\", \"shape\": [\"T\"], \"dtype\": \"int32\"}")
    return ints[0]


def logits_output(io) -> str:
    named = [o.name for o in io.outputs if o.meaning == "logits_per_position"]
    return named[0] if named else io.outputs[0].name


class TokenWindows(ArrayData):
    """An array source's batches with `next_token` targets added."""

    def __init__(self, source: ArraySource, batch_size: int, io):
        super().__init__(source, batch_size)
        self.ids = ids_input(io)
        shape = io.output(logits_output(io)).shape
        self.vocabulary = shape[-1] if shape and isinstance(shape[-1], int) else None   # declared: checked up front

    @property
    def labelled(self) -> bool:
        return True

    def __iter__(self):
        for batch in self.source.batches(self.batch_size):
            ids = np.asarray(batch.inputs[self.ids])
            if ids.ndim != 2:
                raise DataError(f"array {self.ids!r} in {self.source.root} has {ids.ndim - 1} axes per sample; a "
                                "token window is one axis of ids (shape (windows, T) in one .npz)")
            if self.vocabulary is not None and ids.size and (ids.max() >= self.vocabulary or ids.min() < 0):
                bad = int(ids.max() if ids.max() >= self.vocabulary else ids.min())
                raise DataError(f"token id {bad} in array {self.ids!r} of {self.source.root} is outside the model's "
                                f"vocabulary of {self.vocabulary} (metadata.json 'outputs'); the windows must be "
                                "tokenized with the model's tokenizer")
            mask = batch.inputs.get(MASK, batch.targets.get(MASK))
            if mask is not None and np.asarray(mask).shape != ids.shape:
                raise DataError(f"array {MASK!r} in {self.source.root} has shape {list(np.asarray(mask).shape)} but "
                                f"{self.ids!r} has {list(ids.shape)}; give one mask value (1 token, 0 padding) per id")
            targets = dict(batch.targets)
            targets[TARGET] = next_token_targets(ids, mask)
            yield TaskBatch(inputs=batch.inputs, targets=targets, ids=batch.ids)


class LanguageModelAccumulator(TensorsAccumulator):
    def __init__(self, task: Task, meta, data: TokenWindows, reference):
        super().__init__(task, meta, data, reference)
        self.output = logits_output(self.io)
        self.tokens = TokenAccumulator()
        self.where = str(data.source.root)

    def add(self, batch: TaskBatch, outputs: dict[str, np.ndarray]) -> None:
        outputs = check_batch_outputs(outputs, self.io, len(batch))
        logits = np.asarray(outputs[self.output])
        target = batch.targets[TARGET]
        if logits.ndim != 3 or logits.shape[:2] != target.shape:
            raise ModelLoadError(f"output {self.output!r} has shape {list(logits.shape)} for token windows of shape "
                                 f"{list(target.shape)}; a language model returns logits (windows, T, vocabulary)")
        scored = target[target != IGNORE]
        if scored.size and (scored.max() >= logits.shape[2] or scored.min() < 0):
            bad = int(scored.max() if scored.max() >= logits.shape[2] else scored.min())
            raise DataError(f"token id {bad} in {self.where} is outside the model's vocabulary of {logits.shape[2]} "
                            "(its logits' last axis); the windows must be tokenized with the model's tokenizer")
        self.tokens.add(logits, target)
        super().add(batch, outputs)

    def result(self) -> dict:
        result = super().result()
        values = self.tokens.result()
        if values:
            result["values"] = values
        elif self.n:
            result.setdefault("warnings", []).append(
                f"no token of {self.where} was scored (windows of one token, or masked out everywhere)")
        return result


class LanguageModel(Task):
    name = "language_model"
    label = "language model"
    description = "token ids in, logits per position out; perplexity and next-token accuracy on held-out windows"

    def metrics(self, meta) -> list[Metric]:
        return [Metric("perplexity", "perplexity", "", False, primary=True),
                Metric("next_token_accuracy", "next-token accuracy", "", True),
                Metric("cross_entropy", "next-token cross-entropy", "nats", False)]

    def check_io(self, meta, inputs, outputs, source="the model") -> None:
        super().check_io(meta, inputs, outputs, source)
        io = self.io(meta)
        try:
            ids = ids_input(io)
        except ModelLoadError as e:
            raise ModelLoadError(f"{source}: {e}") from None
        if len(io.input(ids).shape) != 1:
            raise ModelLoadError(f"{source}: input {ids!r} is declared {list(io.input(ids).shape)} per sample; token "
                                 "ids are one axis per window, e.g. \"shape\": [\"T\"]")
        name = logits_output(io)
        named = name in outputs
        shape = outputs[name] if named else (list(outputs.values())[io.output_names.index(name)]
                                             if len(outputs) == len(io.outputs) else None)
        if shape is not None and len(shape) != 3:
            raise ModelLoadError(f"{source}: output {name!r} has shape {list(shape)}; a language model returns logits "
                                 "(batch, T, vocabulary)")

    def open_source(self, source, meta) -> ArraySource:
        if isinstance(source, ArraySource):
            return source
        return read_arrays(source, self.io(meta))

    def dataset(self, source, meta, *, batch_size: int = 64, preprocessing_overrides: dict | None = None,
                cache=None, progress=None) -> TokenWindows:
        return TokenWindows(self.open_source(source, meta), int(batch_size), self.io(meta))

    def accumulator(self, meta, data, reference) -> LanguageModelAccumulator:
        return LanguageModelAccumulator(self, meta, data, reference)

    def loss(self, meta):
        import torch
        import torch.nn.functional as F

        io = self.io(meta)
        output = logits_output(io)
        names = io.output_names

        def next_token_cross_entropy(outputs, targets):
            if isinstance(outputs, torch.Tensor):
                logits = outputs
            elif isinstance(outputs, (tuple, list)):
                logits = dict(zip(names, outputs))[output]
            else:
                logits = outputs[output]
            target = torch.as_tensor(targets[TARGET]).long()
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
        return next_token_cross_entropy


register_task(LanguageModel())
