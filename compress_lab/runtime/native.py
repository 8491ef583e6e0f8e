"""Whether Core ML's own runtime can predict on this system (macOS only)."""

from __future__ import annotations

import platform


def native_runtime_available() -> tuple[bool, str]:
    """(available, reason). Core ML predicts only on macOS, through coremltools' compiled bridge."""
    system = platform.system()
    if system != "Darwin":
        return False, (f"Core ML's native runtime runs only on macOS; this system is {system} "
                       f"{platform.release()}. The lab's PyTorch runtime (backend='torch') runs here")
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except Exception as e:
        return False, f"coremltools' native bridge (libcoremlpython) failed to load on macOS: {e}"
    return True, f"macOS {platform.mac_ver()[0]} with coremltools' native Core ML runtime"
