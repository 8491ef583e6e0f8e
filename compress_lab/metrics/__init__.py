"""User metrics: a Python file with a function

    def metric(outputs, targets):      # dicts of NumPy arrays, by output / target name
        return {"mae": float(abs(outputs["value"] - targets["value"]).mean())}

    DIRECTIONS = {"mae": "lower"}      # "higher" or "lower" is better, one per returned value

given as `path/to/metric.py` (function `metric`) or `path/to/metric.py:name`.
The directions may also be an attribute of the function (`metric.directions = {...}`).
`outputs` hold every output of the model over the whole validation source, in
sample order; `targets` the source's target arrays (empty when it has none).

A metric file is code: loading it runs it with your user's rights, exactly like
`import` (and like a model definition). Only load files you trust.

An exception, a non-finite value or a result that is not a dict of numbers is a
MetricError naming the file (and for an exception the line in it)."""

from __future__ import annotations

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
    fn: Callable[[dict, dict], Any]
    directions: dict[str, bool]        # value name -> higher is better

    @property
    def where(self) -> str:
        return f"{self.path}:{self.name}"

    def descriptions(self) -> list[Metric]:
        return [Metric(k, k, "", v) for k, v in self.directions.items()]

    def __call__(self, outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        try:
            values = self.fn(outputs, targets)
        except Exception as e:  # noqa: BLE001 - a user's metric may raise anything
            line = _line_in(self.path, e)
            raise MetricError(f"metric {self.where} raised {type(e).__name__}: {str(e)[:300]}"
                              f"{f' (at {self.path.name} line {line})' if line else ''}; fix the metric file") from e
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


def _line_in(path: Path, error: BaseException) -> int | None:
    resolved = str(path.resolve())
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if str(Path(f.filename).resolve()) == resolved]
    return lines[-1] if lines else None


def load_metric(spec: str | Path) -> UserMetric:
    """Load `path/to/metric.py[:name]` (see the module docstring). Runs the file."""
    path, name, fn, module = _load_function(spec, "metric")
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
    return UserMetric(path=path, name=name, fn=fn, directions=directions)


def _load_function(spec: str | Path, kind: str):
    """Import `path/to/<kind>.py[:name]` (default function: `kind`); (path, name, function, module)."""
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
    if not callable(fn):
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
