"""The Pareto frontier of runs on two axes."""

from __future__ import annotations

from typing import Any, Sequence

from compress_lab.analysis.table import lower_is_better
from compress_lab.store.base import compressed_runs, reference_baseline


def pareto_front(rows: Sequence[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    """Rows not dominated on (x, y), sorted by x. Direction per axis from table.lower_is_better
    (e.g. fewer bytes and higher top-1 are better). Rows missing either value are ignored."""
    x_sign = 1 if lower_is_better(x) else -1
    y_sign = 1 if lower_is_better(y) else -1
    points = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    # Sort by x best-first, ties by y best-first; keep a point if it strictly improves y.
    points.sort(key=lambda r: (x_sign * r[x], y_sign * r[y]))
    front, best_y = [], None
    for r in points:
        value = y_sign * r[y]
        if best_y is None or value < best_y:
            front.append(r)
            best_y = value
    return sorted(front, key=lambda r: r[x])


def smallest_within_budget(rows: Sequence[dict[str, Any]], metric: str, threshold: float,
                           size_key: str = "bytes") -> dict[str, Any] | None:
    """The smallest run (by size_key) whose metric is >= threshold (or <= for SMALLER_IS_BETTER metrics)."""
    smaller_better = lower_is_better(metric)
    ok = [r for r in rows if r.get(metric) is not None and r.get(size_key) is not None
          and (r[metric] <= threshold if smaller_better else r[metric] >= threshold)]
    return min(ok, key=lambda r: r[size_key]) if ok else None


def smallest_meeting_budget(rows: Sequence[dict[str, Any]], metric: str, value: float) -> dict[str, Any] | None:
    """The smallest compressed run within an accuracy budget: `top1_drop` (at most `value`
    points below the uncompressed top-1) or `agreement` (at least `value`)."""
    compressed = compressed_runs(rows)
    if metric == "agreement":
        return smallest_within_budget(compressed, "agreement", value)
    reference = reference_baseline(rows)
    if reference is None or reference.get("top1") is None:
        return None
    return smallest_within_budget(compressed, "top1", reference["top1"] - value / 100 - 1e-12)
