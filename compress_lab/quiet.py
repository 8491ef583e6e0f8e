"""Quiet coremltools: the one place that silences it. No import noise, progress bars, info logging
(k-means progress, layer names) or Python warnings on the console; its logged warnings
(e.g. "Skipped this op") can be captured per thread. Also the lock every MIL-building call holds."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from typing import Any

_log_lock = threading.Lock()
_log_users = 0
_log_state: dict[str, Any] = {}
_capture = threading.local()


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        sink = getattr(_capture, "messages", None)
        if sink is not None and record.levelno >= logging.WARNING:
            sink.append(record.getMessage())


_HANDLER = _CaptureHandler()


@contextlib.contextmanager
def _silenced_logger():
    """Route coremltools' log records to the capturing handler instead of stderr."""
    global _log_users
    logger = logging.getLogger("coremltools")
    with _log_lock:
        if _log_users == 0:
            _log_state.update(level=logger.level, propagate=logger.propagate, detached=_detach_loggers())
            logger.setLevel(logging.WARNING)
            logger.propagate = False
            logger.addHandler(_HANDLER)
        _log_users += 1
    try:
        yield
    finally:
        with _log_lock:
            _log_users -= 1
            if _log_users == 0:
                logger.removeHandler(_HANDLER)
                logger.setLevel(_log_state["level"])
                logger.propagate = _log_state["propagate"]
                for child, level in _log_state["detached"]:
                    child.setLevel(level)


def _detach_loggers() -> list[tuple[logging.Logger, int]]:
    """coremltools loggers with handlers of their own (coremltools.optimize.torch logs INFO straight
    to stderr, not through "coremltools"): raised to ERROR. Returns (logger, level) to restore."""
    children = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                if name.startswith("coremltools.")]
    detached = [(lg, lg.level) for lg in children if isinstance(lg, logging.Logger) and not lg.propagate]
    for lg, _ in detached:
        lg.setLevel(logging.ERROR)
    return detached


@functools.lru_cache(maxsize=1)
def _disable_progress_bars() -> None:
    """coremltools draws tqdm bars for every pass and conversion; the lab reports progress itself.
    (Process-wide: swaps the `tqdm` those modules imported for one that is disabled.)"""
    import importlib

    import tqdm
    quiet_tqdm = functools.partial(tqdm.tqdm, disable=True)
    for module_name, attr in (("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
                              ("coremltools.optimize.coreml._post_training_quantization", "tqdm"),
                              ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
                              ("coremltools.converters.mil.frontend.torch.ops", "_tqdm")):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if getattr(module, attr, None) is tqdm.tqdm:
            setattr(module, attr, quiet_tqdm)


@contextlib.contextmanager
def quiet_coremltools(messages: list[str] | None = None):
    """No progress bars or version warnings; coremltools' warnings (e.g. "Skipped this op")
    from this thread are appended to `messages`."""
    previous = getattr(_capture, "messages", None)
    _capture.messages = messages if messages is not None else []
    try:
        with warnings.catch_warnings(), _silenced_logger():
            warnings.simplefilter("ignore")
            _disable_progress_bars()
            yield _capture.messages
    finally:
        _capture.messages = previous


def import_coremltools():
    """`import coremltools` without its import-time noise on the console (the missing native
    runtime off macOS, the untested torch / scikit-learn versions). `compress_lab.api` calls it on
    import, so preloading that module (the sweep's worker processes) imports coremltools quietly."""
    with quiet_coremltools():
        import coremltools
    return coremltools


# coremltools builds and rewrites MIL programs on one global block stack
# (coremltools/converters/mil/mil/block.py, BLOCK_STACK): two threads doing it at once
# put ops into each other's programs, which then fail at run time with a KeyError on a
# variable name (e.g. 'input_cast_fp16'). A sweep does it from two threads (the reference
# evaluation loads the package while the driver measures it), and so can the app.
# Every lab call that loads, converts or rewrites a MIL program holds this lock.
MIL_LOCK = threading.RLock()
