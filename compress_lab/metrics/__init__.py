"""User metrics: a Python file with a function

    def metric(outputs, targets):      # dicts of NumPy arrays, by output / target name
        return {"mae": float(abs(outputs["value"] - targets["value"]).mean())}

    DIRECTIONS = {"mae": "lower"}      # "higher" or "lower" is better, one per returned value

given as `path/to/metric.py` (function `metric`) or `path/to/metric.py:name`.
The directions may also be an attribute of the function (`metric.directions = {...}`).
`outputs` hold every output of the model over the whole validation source, in
sample order; `targets` the source's target arrays (empty when it has none).

For a large set, the name may instead be an accumulating metric: a class (or an
object) with `update(outputs, targets)` and `result() -> dict of floats`

    class MAE:
        directions = {"mae": "lower"}  # or the module's DIRECTIONS

        def __init__(self):            # no arguments
            self.total, self.n = 0.0, 0

        def update(self, outputs, targets):   # one batch: dicts of arrays, sample-first
            self.total += float(abs(outputs["value"] - targets["value"]).sum())
            self.n += len(targets["value"])

        def result(self):
            return {"mae": self.total / self.n}

given as `path/to/metric.py:MAE`. `update` is called once per batch, in sample
order, and `result` once at the end; the outputs are then never kept for the
metric. Each evaluation (each run of a sweep, each baseline) measures with a
fresh instance: a class is called with no arguments, an object is deep-copied,
and a function marked `factory.accumulating = True` is called with no arguments
to make one. State never leaks from one evaluation into the next.

A metric file is code: loading it runs it with your user's rights, exactly like
`import` (and like a model definition). Only load files you trust.

An exception (in the function, or in `__init__`, `update` or `result`), a
non-finite value or a result that is not a dict of numbers is a MetricError
naming the file (and for an exception the line in it)."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress_lab.errors import ConfigError, DataError
from compress_lab.tasks.base import Metric

DIRECTION_WORDS = {"higher": True, "lower": False}


class MetricError(DataError):
    """A user metric failed on a run: the run's recorded error."""


@dataclass(frozen=True)
class UserMetric:
    path: Path
    name: str
    fn: Any                            # the loaded function, or the accumulating class / object / factory
    directions: dict[str, bool]        # value name -> higher is better
    factory: Callable[[], Any] | None = None   # accumulating: makes a fresh object with update / result

    @property
    def where(self) -> str:
        return f"{self.path}:{self.name}"

    @property
    def accumulating(self) -> bool:
        return self.factory is not None

    def descriptions(self) -> list[Metric]:
        return [Metric(k, k, "", v) for k, v in self.directions.items()]

    def start(self) -> "Measuring":
        """One evaluation's measuring, fed batch by batch (a fresh state each time)."""
        return Measuring(self)

    def __call__(self, outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        """The values on the whole of `outputs` and `targets` (one batch for an accumulating metric)."""
        measuring = self.start()
        measuring.update(outputs, targets)
        return measuring.result()

    def _failed(self, error: Exception, step: str | None) -> "MetricError":
        line = _line_in(self.path, error)
        at = ", ".join(([f"in {step}"] if step else []) + ([f"at {self.path.name} line {line}"] if line else []))
        failure = MetricError(f"metric {self.where} raised {type(error).__name__}: {str(error)[:300]}"
                              f"{f' ({at})' if at else ''}; fix the metric file")
        failure.__cause__ = error
        return failure

    def checked(self, values: Any) -> dict[str, float]:
        """`values` as a dict of finite floats, each with a declared direction, or a MetricError."""
        if not isinstance(values, dict):
            raise MetricError(f"metric {self.where} returned {type(values).__name__} {values!r:.80}, not a dict; return "
                              "a dict of named numbers, e.g. {\"mae\": 0.12}")
        result: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, np.ndarray) and value.size == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise MetricError(f"metric {self.where} returned {key!r} = {value!r:.80}, not a number; return one float "
                                  "per name")
            if not math.isfinite(float(value)):
                raise MetricError(f"metric {self.where} returned {key!r} = {float(value)} (not finite); check the metric "
                                  "for a division by zero or a NaN in the outputs")
            if str(key) not in self.directions:
                raise MetricError(f"metric {self.where} returned {key!r} but declares no direction for it; add "
                                  f"DIRECTIONS = {{{str(key)!r}: \"higher\"}} (or \"lower\") to {self.path.name}")
            result[str(key)] = float(value)
        if not result:
            raise MetricError(f"metric {self.where} returned an empty dict; return at least one named value")
        return result


class Measuring:
    """A user metric over one evaluation: `update(outputs, targets)` per batch, then
    `result()` once. A function metric keeps the batches and is called at the end; an
    accumulating one gets each batch and keeps nothing here. The first failure is kept
    in `error` (later batches are then ignored) and raised by `result()`."""

    def __init__(self, metric: UserMetric):
        self.metric = metric
        self.error: MetricError | None = None
        self._outputs: dict[str, list] = {}
        self._targets: dict[str, list] = {}
        self._state = self._guard(metric.factory, "__init__") if metric.factory is not None else None

    def _guard(self, call: Callable[[], Any], step: str | None) -> Any:
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - a user's metric may raise anything
            self.error = self.metric._failed(e, step)
            return None

    def update(self, outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            return
        if self._state is None:
            for store, values in ((self._outputs, outputs), (self._targets, targets)):
                for key, value in values.items():
                    store.setdefault(key, []).append(np.asarray(value))
            return
        self._guard(lambda: self._state.update(outputs, targets), "update")

    def result(self) -> dict[str, float]:
        if self.error is None:
            if self._state is None:
                fn = self.metric.fn
                outputs = {k: np.concatenate(v) for k, v in self._outputs.items()}
                targets = {k: np.concatenate(v) for k, v in self._targets.items()}
                self._outputs, self._targets = {}, {}
                values = self._guard(lambda: fn(outputs, targets), None)
            else:
                values = self._guard(self._state.result, "result")
        if self.error is not None:
            raise self.error
        return self.metric.checked(values)


def accumulates(value: Any) -> bool:
    """Whether a loaded metric attribute is accumulating: has update and result."""
    return callable(getattr(value, "update", None)) and callable(getattr(value, "result", None))


def _line_in(path: Path, error: BaseException) -> int | None:
    resolved = str(path.resolve())
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if str(Path(f.filename).resolve()) == resolved]
    return lines[-1] if lines else None


def load_metric(spec: str | Path) -> UserMetric:
    """Load `path/to/metric.py[:name]` (see the module docstring). Runs the file."""
    path, name, fn, module = _load_function(spec, "metric",
                                            allow=lambda v: callable(v) or accumulates(v))
    raw = getattr(fn, "directions", None) or getattr(module, "DIRECTIONS", None)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"metric file {path} declares no directions; add DIRECTIONS = {{\"name\": \"higher\" or "
                          "\"lower\"}, one per value the function returns")
    directions: dict[str, bool] = {}
    for key, value in raw.items():
        word = value if isinstance(value, str) else ("higher" if value is True else "lower" if value is False else None)
        if word not in DIRECTION_WORDS:
            raise ConfigError(f"metric file {path}: DIRECTIONS[{key!r}] = {value!r}; use \"higher\" or \"lower\"")
        directions[str(key)] = DIRECTION_WORDS[word]
    if isinstance(fn, type):
        factory = fn if accumulates(fn) else None
    elif accumulates(fn):
        factory = lambda: copy.deepcopy(fn)  # noqa: E731 - a fresh copy of the given object per evaluation
    else:
        factory = fn if getattr(fn, "accumulating", False) is True else None
    return UserMetric(path=path, name=name, fn=fn, directions=directions, factory=factory)


def _load_function(spec: str | Path, kind: str, allow: Callable[[Any], bool] = callable):
    """Import `path/to/<kind>.py[:name]` (default function: `kind`); (path, name, function, module).
    `allow` says which attributes may be named (by default, callables)."""
    text = str(spec)
    path_text, _, name = text.rpartition(":") if ":" in text and not Path(text).is_file() else (text, "", "")
    name = name or kind
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{kind} file {path} does not exist; give path/to/{kind}.py or path/to/{kind}.py:function")
    if path.suffix != ".py":
        raise ConfigError(f"{kind} file {path} is not a Python file (.py)")
    module_name = f"compress_lab_user_{kind}_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"{kind} file {path} cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        line = _line_in(path, e)
        raise ConfigError(f"{kind} file {path} raised {type(e).__name__} when loaded"
                          f"{f' (line {line})' if line else ''}: {str(e)[:300]}") from None
    fn = getattr(module, name, None)
    if not allow(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module_name)
        raise ConfigError(f"{kind} file {path} has no function {name!r} (its functions: {found or 'none'}); name it "
                          f"`{kind}` or give path:function")
    return path, name, fn, module


@dataclass(frozen=True)
class UserLoss:
    """A user's training loss: `fn(outputs, targets) -> scalar tensor`, with the model's
    outputs and the batch's targets as dicts of PyTorch tensors, by name."""

    path: Path
    name: str
    fn: Callable

    @property
    def where(self) -> str:
        return f"{self.path}:{self.name}"

    def __call__(self, outputs, targets):
        return self.fn(outputs, targets)


def load_loss(spec: str | Path) -> UserLoss:
    """Load `path/to/loss.py[:name]` (function `loss` by default), a function

        def loss(outputs, targets):     # dicts of torch tensors, by output / target name
            return torch.nn.functional.mse_loss(outputs["value"], targets["value"])

    that training-time techniques minimise instead of the task's loss. Like a metric
    file, a loss file is code: loading it runs it with your user's rights."""
    path, name, fn, _ = _load_function(spec, "loss")
    return UserLoss(path=path, name=name, fn=fn)
