"""Small formatting helpers shared by pages."""

from __future__ import annotations

FAMILY_NAMES = {"baseline": "baseline", "post_training": "post-training", "training_time": "training-time",
                "mixed": "mixed precision"}


def family_name(family: str | None) -> str:
    return FAMILY_NAMES.get(family or "", family or "?")


def human_bytes(n) -> str:
    """1,234,567 -> '1.23 MB' (decimal units, as file browsers show them)."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.2f} GB"


def human_seconds(s) -> str:
    if s is None:
        return "?"
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
