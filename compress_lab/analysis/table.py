"""Runs as flat rows: one place that knows where each column lives in a stored run."""

from __future__ import annotations

import math
from typing import Any, Iterable

# column -> (section of the run, key)
COLUMNS: dict[str, tuple[str, str]] = {
    "top1": ("metrics", "top1"),
    "top5": ("metrics", "top5"),
    "loss": ("metrics", "loss"),
    "agreement": ("metrics", "agreement"),
    "snr_db": ("metrics", "snr_db"),
    "n": ("metrics", "n"),
    "bytes": ("sizes", "bytes"),
    "weight_bytes": ("sizes", "weights_bytes"),
    "ratio_fp16": ("sizes", "ratio_fp16"),
    "ratio_fp32": ("sizes", "ratio_fp32"),
    "bits_per_weight": ("sizes", "bits_per_weight"),
    "compress_s": ("timings", "compress_s"),
    "finetune_s": ("timings", "finetune_s"),
    "convert_s": ("timings", "convert_s"),
    "evaluate_s": ("timings", "evaluate_s"),
    "total_s": ("timings", "total_s"),
}

AXIS_LABELS = {
    "bytes": "size on disk (bytes)",
    "weight_bytes": "weights on disk (bytes)",
    "ratio_fp16": "compression ratio vs fp16",
    "ratio_fp32": "compression ratio vs fp32",
    "bits_per_weight": "bits per weight",
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "agreement": "top-1 agreement with the uncompressed model",
    "snr_db": "output SNR (dB)",
    "loss": "mean loss",
}

# For the Pareto frontier: smaller is better on these axes, larger on the rest.
SMALLER_IS_BETTER = {"bytes", "weight_bytes", "bits_per_weight", "loss", "total_s"}


def _get(run: Any, section: str) -> dict:
    value = run.get(section) if isinstance(run, dict) else getattr(run, section, None)
    return value or {}


def _attr(run: Any, key: str, default=None):
    return run.get(key, default) if isinstance(run, dict) else getattr(run, key, default)


def run_row(run: Any) -> dict[str, Any]:
    """A flat dict for one run (a store Run or its to_dict())."""
    row = {
        "run_id": _attr(run, "run_id"),
        "label": _attr(run, "label") or _attr(run, "technique"),
        "technique": _attr(run, "technique"),
        "family": _attr(run, "family"),
        "state": _attr(run, "state"),
    }
    for column, (section, key) in COLUMNS.items():
        value = _get(run, section).get(key)
        row[column] = None if isinstance(value, float) and math.isnan(value) else value
    error = _attr(run, "error")
    row["error"] = (error or "").strip().splitlines()[-1][:300] if error else None
    return row


def runs_table(runs: Iterable[Any]) -> list[dict[str, Any]]:
    return [run_row(r) for r in runs]
