"""One weight tensor compressed the way coremltools' passes compress it, using
coremltools' own per-tensor functions, then decompressed: what the runtime would
see for that op. Used to search per-op settings quickly; every chosen
configuration is then compressed for real and measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_lab.errors import ConfigError

# What a sensitivity analysis or mixed-precision search compresses each op with (a "compression";
# "family" in the lab means the workflow: post-training or training-time).
SEARCH_COMPRESSIONS = ("palettize", "quantize", "prune")

# Candidate levels per compression, least to most aggressive. Each is the settings of the
# lab's technique config for that op (see techniques/palettize.py etc.).
DEFAULT_LEVELS: dict[str, list[dict[str, Any]]] = {
    "palettize": [{"nbits": 8}, {"nbits": 6}, {"nbits": 4}, {"nbits": 3}, {"nbits": 2}, {"nbits": 1}],
    "quantize": [{"dtype": "int8"}, {"dtype": "int4", "granularity": "per_block", "block_size": 32}],
    "prune": [{"target_sparsity": 0.5}, {"target_sparsity": 0.75}, {"target_sparsity": 0.9}],
}
AGGRESSIVE: dict[str, dict[str, Any]] = {
    "palettize": {"nbits": 2},
    "quantize": {"dtype": "int4", "granularity": "per_block", "block_size": 32},
    "prune": {"target_sparsity": 0.75},
}


@dataclass(frozen=True)
class Level:
    compression: str
    settings: dict[str, Any]

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.settings.items())


def check_compression(compression: str) -> None:
    if compression not in SEARCH_COMPRESSIONS:
        raise ConfigError(f"compression {compression!r} is not searchable; use one of {list(SEARCH_COMPRESSIONS)}")



def compressed_bits(compression: str, settings: dict[str, Any], numel: int, out_channels: int) -> float:
    """Storage of one weight tensor in bits under `settings` (the payload coremltools writes)."""
    if compression == "palettize":
        nbits = settings["nbits"]
        return numel * nbits + (2 ** nbits) * 16
    if compression == "quantize":
        nbits = 4 if "4" in settings.get("dtype", "int8") else 8
        block = settings.get("block_size") or 0
        scales = out_channels * (max(numel // out_channels // block, 1) if block else 1)
        return numel * nbits + scales * 16
    sparsity = settings["target_sparsity"]
    return numel * (1 - sparsity) * 16 + numel  # non-zeros at fp16 + a 1-bit mask


def simulate(weight: np.ndarray, compression: str, settings: dict[str, Any]) -> np.ndarray:
    """`weight` (Cout, ...) compressed and decompressed with coremltools' own functions."""
    from coremltools.optimize.coreml._quantization_passes import (
        linear_quantize_weights, palettize_weights, prune_weights,
    )
    w = np.asarray(weight)
    rank = w.ndim
    if compression == "palettize":
        block_sizes = [0] * rank
        if settings.get("granularity") == "per_grouped_channel":
            block_sizes[0] = int(settings.get("group_size", 16))
        mode = settings.get("mode", "kmeans")
        if mode == "fast_kmeans":  # the lab's exact k-means, through the same coremltools pass code
            from compress_lab.techniques.fast_palettize import ExactKMeansLut
            params = palettize_weights.blockwise_compress(w, "CUSTOM", None, block_sizes,
                                                          lut_function=ExactKMeansLut(settings["nbits"]))
        else:
            params = palettize_weights.blockwise_compress(w, mode.upper(), settings["nbits"], block_sizes)
        if params is None:
            return w
        return palettize_weights.decompress(params).astype(w.dtype)
    if compression == "quantize":
        dtype = settings.get("dtype", "int8")
        block_sizes = [1] + [0] * (rank - 1)
        if settings.get("granularity") == "per_block" and rank >= 2:
            block_sizes[1] = int(settings.get("block_size", 32))
        params = linear_quantize_weights.blockwise_compress_by_dtype(w, dtype, "LINEAR_SYMMETRIC", block_sizes)
        if params is None:
            return w
        return linear_quantize_weights.decompress(params).astype(w.dtype)
    params = prune_weights.compress_by_magnitude(w, settings["target_sparsity"])
    return prune_weights.decompress(params).astype(w.dtype)
