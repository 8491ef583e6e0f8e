"""Budgets of both kinds, on any metric: the smallest run within an accuracy budget, and
the best run within a size budget. The direction of every column (is lower better?)
comes from one place, table.lower_is_better (sizes and losses, the task registry, a user
metric's declared directions), so a loss or an error rate works as well as top-1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from compress_lab.analysis.table import lower_is_better  # noqa: F401 (re-exported: one place for directions)
from compress_lab.errors import ConfigError
from compress_lab.store.base import compressed_runs, reference_baseline

# Size budgets: the column, what the limit means, and how a user writes it.
SIZE_KEYS = {
    "bytes": "bytes on disk of the .mlpackage (at most)",
    "ratio_fp16": "times smaller than the fp16 package (at least)",
    "bits_per_weight": "bits per weight of the weights file (at most)",
}




def better(a: float, b: float, column: str) -> bool:
    """True when value a is strictly better than b on this column."""
    return a < b if lower_is_better(column) else a > b


def fits(value: float, limit: float, column: str) -> bool:
    """value is at least as good as limit on this column (within a tiny tolerance)."""
    return value <= limit + 1e-12 if lower_is_better(column) else value >= limit - 1e-12


def completed_compressed(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return compressed_runs(rows)


@dataclass(frozen=True)
class SizeBudget:
    """`key` is one of SIZE_KEYS; `limit` its value (bytes, ratio or bits per weight)."""

    key: str
    limit: float

    def __post_init__(self) -> None:
        if self.key not in SIZE_KEYS:
            raise ConfigError(f"size budget {self.key!r} is not supported; use one of {list(SIZE_KEYS)}")
        if not isinstance(self.limit, (int, float)) or self.limit <= 0:
            raise ConfigError(f"a {self.key} size budget of {self.limit!r} must be a positive number")

    def met(self, row: dict[str, Any]) -> bool:
        value = row.get(self.key)
        return value is not None and fits(value, self.limit, self.key)

    def describe(self) -> str:
        if self.key == "bytes":
            return f"at most {int(self.limit):,} bytes on disk"
        if self.key == "ratio_fp16":
            return f"at least {self.limit:g}x smaller than fp16"
        return f"at most {self.limit:g} bits per weight"


def best_within_size(rows: Sequence[dict[str, Any]], budget: SizeBudget, metric: str) -> dict[str, Any] | None:
    """The compressed run with the best `metric` among those within the size budget; ties go
    to the smaller run. None when no finished run fits or none has the metric."""
    ok = [r for r in completed_compressed(rows) if budget.met(r) and r.get(metric) is not None]
    if not ok:
        return None
    sign = 1 if lower_is_better(metric) else -1
    size_sign = 1 if lower_is_better(budget.key) else -1
    return min(ok, key=lambda r: (sign * r[metric], size_sign * r[budget.key]))


def accuracy_threshold(rows: Sequence[dict[str, Any]], metric: str, *, drop: float | None = None,
                       at_least: float | None = None) -> float | None:
    """The value of `metric` a run must reach: `drop` (in the metric's own units) worse than the
    uncompressed reference at most, or the absolute `at_least` (read as 'at most' for a
    lower-is-better metric). None when a drop is asked but there is no reference value."""
    if (drop is None) == (at_least is None):
        raise ConfigError("give exactly one of drop= or at_least= for an accuracy budget")
    if at_least is not None:
        return at_least
    reference = reference_baseline(rows)
    if reference is None or reference.get(metric) is None:
        return None
    return reference[metric] + drop if lower_is_better(metric) else reference[metric] - drop


def parse_metric_budget(text: str, option: str = "--budget-metric") -> tuple[str, float, bool]:
    """`NAME=VALUE` (at most VALUE worse than the uncompressed model, in the metric's unit and
    direction) or `NAME=VALUE%` (percent of the baseline's value): (name, value, relative)."""
    name, sep, value = str(text).partition("=")
    relative = value.strip().endswith("%")
    try:
        number = float(value.strip().rstrip("%"))
    except ValueError:
        number = None
    if not sep or not name.strip() or number is None or number < 0:
        raise ConfigError(f"{option} {text!r} must be NAME=VALUE or NAME=VALUE% with VALUE >= 0, e.g. perplexity=5% "
                          "(at most 5% above the uncompressed model) or mrr=0.01")
    return name.strip(), number, relative


def metric_threshold(rows: Sequence[dict[str, Any]], metric: str, value: float, relative: bool) -> float | None:
    """The value a run's `metric` must reach to be at most `value` (percent of the reference's
    value when `relative`) worse than the uncompressed reference; None without one."""
    reference = reference_baseline(rows)
    if reference is None or reference.get(metric) is None:
        return None
    drop = abs(reference[metric]) * value / 100 if relative else value
    return accuracy_threshold(rows, metric, drop=drop)


def smallest_within_accuracy(rows: Sequence[dict[str, Any]], metric: str, threshold: float,
                             size_key: str = "bytes") -> dict[str, Any] | None:
    """The smallest compressed run (by size_key) whose metric reaches threshold."""
    ok = [r for r in completed_compressed(rows)
          if r.get(metric) is not None and r.get(size_key) is not None and fits(r[metric], threshold, metric)]
    if not ok:
        return None
    size_sign = 1 if lower_is_better(size_key) else -1
    metric_sign = 1 if lower_is_better(metric) else -1
    return min(ok, key=lambda r: (size_sign * r[size_key], metric_sign * r[metric]))
