"""Runs as flat rows: one place that knows where each column lives in a stored run."""

from __future__ import annotations

import math
from typing import Any, Iterable

from compress_lab.store.base import baseline_format

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


# Axes the Results page offers, in this order, when runs have them: these, then the task's own
# and user metrics, then LATER, then per-output fidelity.
METRIC_ORDER = ("top1", "top5")
LATER = ("agreement", "snr_db", "loss")
FIDELITY_MEASURES = ("snr_db", "psnr_db", "cosine", "max_abs_error", "agreement")
_declared: dict[str, bool] = {}   # column -> higher is better, as the runs' stored metrics declare it


def _builtin_directions() -> dict[str, tuple[bool, str]]:
    """metric name -> (higher is better, label), from the task registry and the fidelity measures."""
    from compress_lab.tasks import get_task, task_names
    from compress_lab.tasks.base import AGREEMENT, FIDELITY_METRICS
    out = {m.name: (m.higher_is_better, m.label) for m in (*FIDELITY_METRICS, AGREEMENT)}
    for name in task_names():
        try:
            metrics = get_task(name).metrics(None)
        except Exception:  # a task whose metrics depend on the model: nothing to add here
            continue
        for m in metrics:
            out.setdefault(m.name, (m.higher_is_better, m.label))
    return out


def _measure(column: str) -> str:
    """The metric a column measures: `scores.snr_db` -> `snr_db`, `value.top1` -> `top1`."""
    return column.rsplit(".", 1)[-1]


def lower_is_better(column: str) -> bool:
    """The direction of any column: sizes, times and losses from SMALLER_IS_BETTER; a task's
    metric or a fidelity measure from the registry; a user metric as its file declares it."""
    if column in SMALLER_IS_BETTER:
        return True
    if column in _declared:
        return not _declared[column]
    known = _builtin_directions().get(_measure(column))
    return known is not None and not known[0]


def axis_label(column: str) -> str:
    if column in AXIS_LABELS:
        return AXIS_LABELS[column]
    known = _builtin_directions().get(_measure(column))
    label = known[1] if known else _measure(column)
    if "." in column and not column.startswith("value."):
        return f"{column.rsplit('.', 1)[0]}: {label}"
    return label


def metric_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The measured columns of completed runs (y-axis candidates): top-1 and the lab's fidelity
    columns first, then the task's and user metrics, then per-output fidelity."""
    rows = [r for r in rows if r.get("state") == "COMPLETE"]
    present = [c for r in rows for c, v in r.items() if v is not None and isinstance(v, (int, float))
               and not isinstance(v, bool)]
    values = list(dict.fromkeys(c for r in rows for c in r.get("_value_columns", ())))
    extra = list(dict.fromkeys(c for r in rows for c in r.get("_metric_columns", ())))
    ordered = [c for c in (*METRIC_ORDER, *values, *LATER, *extra) if c in present]
    return list(dict.fromkeys(ordered))


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
    row["_metric_columns"] = _task_columns(_get(run, "metrics"), row)
    row["_baseline_format"] = baseline_format(run)
    return row


def _task_columns(metrics: dict, row: dict) -> list[str]:
    """A task's own metrics and a user metric's values (`mae`, `perplexity`, ...; `value.NAME`
    where NAME is a lab column) and per-output fidelity (`psnr_db`, ... for one output;
    `OUTPUT.snr_db`, ... for several) as columns of `row`; their names, in order."""
    columns = []
    directions = metrics.get("higher_is_better") or {}
    values = metrics.get("values") or {}
    ordered = [n for n in metrics.get("value_order") or () if n in values] + sorted(values)
    for name in dict.fromkeys(ordered):  # the task's primary metric first
        value = values[name]
        column = f"value.{name}" if name in COLUMNS or name in row else name
        row[column] = _number(value)
        columns.append(column)
        if name in directions:
            _declared[column] = bool(directions[name])
    row["_value_columns"] = list(columns)
    fidelity = metrics.get("fidelity") or {}
    for output, measures in fidelity.items():
        for measure in FIDELITY_MEASURES:
            if measure not in (measures or {}):
                continue
            column = measure if len(fidelity) == 1 else f"{output}.{measure}"
            if len(fidelity) == 1 and column in COLUMNS:
                continue   # snr_db, agreement: already the run's own columns
            row[column] = _number(measures[measure])
            columns.append(column)
    return columns


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value


def runs_table(runs: Iterable[Any]) -> list[dict[str, Any]]:
    return [run_row(r) for r in runs]
