"""The grid spec of a sweep: which model, which data, how to run, and one or
more grids of technique settings. Written as TOML or built from Python.

```toml
[model]
source = "../sample_models/mnist_cnn"   # sample name, folder, model.py, TorchScript, .mlpackage
# weights = "weights.pt"                 # for a model.py definition
# metadata = "metadata.json"

[data]
validation = "../sample_models/mnist_cnn/val"
train = "../sample_models/mnist_cnn/train"     # needed by training-time / calibrated techniques
batch_size = 64
# [data.preprocessing]                  # overrides of the model's preprocessing
# resize = 32

[run]
name = "mnist"
workers = 2            # default: os.cpu_count()
executor = "local"     # or "ray"
timeout_s = 600        # per run; default: no limit

[[grid]]
technique = "palettize"
nbits = [2, 4, 8]      # a list expands: three points
mode = "kmeans"
```

**List rule.** Each setting given as a list is one axis of a cartesian product,
except where the technique's field itself holds a list/tuple (e.g.
`n_m_ratio = [2, 4]`): there a plain list is ONE value, and a list of lists is an
axis (`n_m_ratio = [[2, 4], [1, 4]]` is two points). Likewise a table (dict) is
one value for a dict-typed field (`op_overrides = {...}`) and a list of tables is
an axis. For a technique or setting the lab does not know, a list expands.

Relative paths resolve against the spec file's folder (or `base_dir` when built
from Python)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress_lab.errors import ConfigError

EXECUTORS = ("local", "ray")
TOP_LEVEL_KEYS = ("model", "data", "run", "grid")
LARGE_GRID = 1000
# Rough per-run seconds when nothing better is known; used only for the large-grid warning.
ESTIMATE_S = {"post_training": 10.0, "training_time": 120.0}


def _reject_unknown(table: dict, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__} {table!r}")
    unknown = sorted((k for k in table if k not in allowed), key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {list(allowed)}")


def _check_preprocessing(overrides: dict) -> None:
    """Type and range checks of [data.preprocessing] that need no model (the rest is checked against the model's)."""
    from compress_lab.models.metadata import COLOR_MODES

    def finite(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    for key, value in overrides.items():
        if key == "color" and value not in COLOR_MODES:
            raise ConfigError(f"[data.preprocessing] color = {value!r} is not supported; use one of {list(COLOR_MODES)}")
        if key == "resize" and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"[data.preprocessing] resize = {value!r} must be a positive integer (pixels)")
        if key == "scale" and not (finite(value) and value != 0):
            raise ConfigError(f"[data.preprocessing] scale = {value!r} must be a finite non-zero number (e.g. 0.00392 = 1/255)")
        if key in ("mean", "std"):
            if not isinstance(value, (list, tuple)) or not value or not all(finite(v) for v in value):
                raise ConfigError(f"[data.preprocessing] {key} = {value!r} must be a list of 1 or 3 finite numbers")
            if key == "std" and any(v == 0 for v in value):
                raise ConfigError(f"[data.preprocessing] std = {value!r} contains 0; every std must be non-zero")


def _path(value: Any, base: Path, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{where} = {value!r} must be a path (a string)")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


@dataclass(frozen=True)
class ModelSpec:
    source: str
    weights: Path | None = None
    metadata: Path | None = None

    @classmethod
    def from_dict(cls, data: dict, base: Path) -> "ModelSpec":
        _reject_unknown(data, ("source", "weights", "metadata"), "[model]")
        if "source" not in data:
            raise ConfigError("[model] needs `source`: a sample model name, model folder, model.py, TorchScript file or .mlpackage")
        source = data["source"]
        if not isinstance(source, str) or not source:
            raise ConfigError(f"[model] source = {source!r} must be a non-empty string")
        resolved = _path(source, base, "[model] source")
        # a bare sample-model name stays a name when no such path exists
        if not resolved.exists() and "/" not in source and not source.endswith((".py", ".pt", ".mlpackage")):
            resolved_source = source
        else:
            resolved_source = str(resolved)
        return cls(resolved_source, _path(data.get("weights"), base, "[model] weights"),
                   _path(data.get("metadata"), base, "[model] metadata"))

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"source": self.source}
        if self.weights is not None:
            out["weights"] = str(self.weights)
        if self.metadata is not None:
            out["metadata"] = str(self.metadata)
        return out


@dataclass(frozen=True)
class DataSpec:
    validation: Path
    train: Path | None = None
    preprocessing: dict = field(default_factory=dict)
    batch_size: int = 64
    metric: str | None = None       # a user metric, "path/to/metric.py[:function]" (compress_lab/metrics)
    loss: str | None = None         # a user training loss, "path/to/loss.py[:function]" (compress_lab/metrics)

    def __post_init__(self) -> None:
        for key in ("metric", "loss"):
            value = getattr(self, key)
            if value is not None:
                path = Path(str(value).rsplit(":", 1)[0] if not Path(str(value)).is_file() else str(value))
                if not path.is_file():
                    raise ConfigError(f"[data] {key} = {value!r}: {path} does not exist; give path/to/{key}.py or "
                                      f"path/to/{key}.py:function (relative to the spec file)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"[data] batch_size = {self.batch_size!r} must be a positive integer")
        if not isinstance(self.preprocessing, dict):
            raise ConfigError(f"[data] preprocessing must be a table, got {self.preprocessing!r}")
        if self.preprocessing:
            from compress_lab.models.metadata import Preprocessing
            allowed = tuple(f.name for f in dataclasses.fields(Preprocessing))
            _reject_unknown(self.preprocessing, allowed, "[data.preprocessing]")
            _check_preprocessing(self.preprocessing)

    @classmethod
    def from_dict(cls, data: dict, base: Path) -> "DataSpec":
        _reject_unknown(data, ("validation", "train", "preprocessing", "batch_size", "metric", "loss"), "[data]")
        if "validation" not in data:
            raise ConfigError("[data] needs `validation`: the folder of validation images (<class>/<image>)")
        files = {}
        for key in ("metric", "loss"):
            value = data.get(key)
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"[data] {key} = {value!r} must be a path string: \"{key}.py\" or "
                                      f"\"{key}.py:function\"")
                file_part, name = value.rsplit(":", 1) if ":" in Path(value).name else (value, "")
                value = str(_path(file_part, base, f"[data] {key}")) + (f":{name}" if name else "")
            files[key] = value
        return cls(_path(data["validation"], base, "[data] validation"), _path(data.get("train"), base, "[data] train"),
                   dict(data.get("preprocessing") or {}), data.get("batch_size", 64), files["metric"], files["loss"])

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"validation": str(self.validation), "batch_size": self.batch_size}
        if self.train is not None:
            out["train"] = str(self.train)
        if self.preprocessing:
            out["preprocessing"] = dict(self.preprocessing)
        if self.metric is not None:
            out["metric"] = self.metric
        if self.loss is not None:
            out["loss"] = self.loss
        return out


@dataclass(frozen=True)
class RunOptions:
    name: str = "sweep"
    workers: int | None = None
    executor: str = "local"
    timeout_s: float | None = None
    address: str | None = None
    plugins: tuple[str, ...] = ()   # Python files that register extra techniques (imported in every worker)

    def __post_init__(self) -> None:
        if not isinstance(self.plugins, (list, tuple)) or not all(isinstance(p, (str, Path)) for p in self.plugins):
            raise ConfigError(f"[run] plugins = {self.plugins!r} must be a list of Python file paths")
        object.__setattr__(self, "plugins", tuple(str(p) for p in self.plugins))
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"[run] name = {self.name!r} must be a non-empty string")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"[run] workers = {self.workers!r} must be a positive integer")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"[run] executor = {self.executor!r} is not known; use one of {list(EXECUTORS)}")
        if self.timeout_s is not None and (isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float))
                                           or not math.isfinite(self.timeout_s) or self.timeout_s <= 0):
            raise ConfigError(f"[run] timeout_s = {self.timeout_s!r} must be a finite positive number of seconds "
                              "(leave it out for no limit)")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError(f"[run] address = {self.address!r} must be a Ray address string such as 'ray://host:10001'")

    @classmethod
    def from_dict(cls, data: dict, base: Path | None = None) -> "RunOptions":
        _reject_unknown(data, tuple(f.name for f in dataclasses.fields(cls)), "[run]")
        data = dict(data)
        plugins = data.get("plugins", ())
        if base is not None and isinstance(plugins, list):
            data["plugins"] = tuple(str(_path(p, base, "[run] plugins")) for p in plugins)
        return cls(**data)

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != ()}
        if self.plugins:
            out["plugins"] = list(self.plugins)
        return out


@dataclass(frozen=True)
class SweepSpec:
    model: ModelSpec
    data: DataSpec
    grid: tuple[dict, ...]
    run: RunOptions = field(default_factory=RunOptions)
    base_dir: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(dict(g) for g in self.grid))
        if not self.grid:
            raise ConfigError("the spec has no [[grid]] table: add at least one, e.g. [[grid]] technique = \"palettize\" nbits = [4, 8]")
        for i, g in enumerate(self.grid):
            if not isinstance(g.get("technique"), str) or not g["technique"]:
                raise ConfigError(f"[[grid]] #{i} needs `technique = \"...\"` (a technique name)")

    @property
    def name(self) -> str:
        return self.run.name

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path | None = None) -> "SweepSpec":
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        _reject_unknown(data, TOP_LEVEL_KEYS, "the sweep spec (top level)")
        for key in ("model", "data"):
            if key not in data:
                raise ConfigError(f"the sweep spec needs a [{key}] table")
        grid = data.get("grid", [])
        if isinstance(grid, dict):
            grid = [grid]
        if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
            raise ConfigError("`grid` must be one or more [[grid]] tables")
        return cls(ModelSpec.from_dict(data["model"], base), DataSpec.from_dict(data["data"], base), tuple(grid),
                   RunOptions.from_dict(data.get("run", {}), base), base)

    def to_dict(self) -> dict:
        """Plain data with absolute paths (so it reloads from anywhere)."""
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "run": self.run.to_dict(),
                "grid": [dict(g) for g in self.grid]}

    def with_run(self, **changes) -> "SweepSpec":
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))


def load_spec(path: str | Path) -> SweepSpec:
    """Read a TOML spec (or the JSON of SweepSpec.to_dict(), as the app writes it)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep spec {path} does not exist; see examples/mnist_sweep.toml") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"sweep spec {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read sweep spec {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"sweep spec {path} is not valid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"sweep spec {path} is not valid JSON: {e}") from None
    try:
        return SweepSpec.from_dict(data, path.resolve().parent)
    except ConfigError as e:
        raise ConfigError(f"sweep spec {path}: {e}") from None


# --------------------------------------------------------------------------- expansion

@dataclass(frozen=True)
class GridPoint:
    grid_index: int
    config: Any  # TechniqueConfig

    @property
    def technique(self) -> str:
        return self.config.name

    @property
    def label(self) -> str:
        return self.config.label()


@dataclass(frozen=True)
class InvalidPoint:
    grid_index: int
    settings: dict
    error: str

    def __str__(self) -> str:
        return f"[[grid]] #{self.grid_index} {self.settings}: {self.error}"


@dataclass(frozen=True)
class SweepPlan:
    spec: SweepSpec
    points: tuple[GridPoint, ...]
    invalid: tuple[InvalidPoint, ...]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.points)


def _holds_sequence(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_holds_sequence(a) for a in typing.get_args(hint) if a is not type(None))
    return origin in (tuple, list) or hint in (tuple, list)


def _holds_dict(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_holds_dict(a) for a in typing.get_args(hint) if a is not type(None))
    return origin is dict or hint is dict


def _field_hints(technique: str) -> dict[str, Any]:
    from compress_lab.techniques import REGISTRY
    try:
        cls = REGISTRY.config_class(technique)
    except ConfigError:
        return {}
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {f.name: f.type for f in dataclasses.fields(cls)}


def axis_values(key: str, value: Any, hint: Any) -> list[Any]:
    """The values one setting takes across the grid (see the module's list rule)."""
    if isinstance(value, list):
        if hint is not None and _holds_sequence(hint):
            if value and all(isinstance(v, list) for v in value):
                return list(value)
            return [value]
        if not value:
            raise ConfigError(f"setting {key!r} is an empty list: give at least one value")
        return list(value)
    return [value]


def expand_grid(table: dict) -> list[dict]:
    """All settings dicts of one [[grid]] table (each with its `technique`)."""
    table = dict(table)
    technique = table.pop("technique")
    hints = _field_hints(technique)
    keys = list(table)
    axes = [axis_values(k, table[k], hints.get(k)) for k in keys]
    return [{"technique": technique, **dict(zip(keys, combo))} for combo in itertools.product(*axes)]


def count_points(spec: SweepSpec) -> int:
    total = 0
    for table in spec.grid:
        hints = _field_hints(table["technique"])
        n = 1
        for k, v in table.items():
            if k != "technique":
                try:
                    n *= len(axis_values(k, v, hints.get(k)))
                except ConfigError:
                    pass
        total += n
    return total


def estimate_seconds(points, workers: int) -> float:
    per_run = sum(ESTIMATE_S.get(getattr(p.config, "family", ""), 10.0) for p in points)
    return per_run / max(1, workers)


def expand(spec: SweepSpec, workers: int | None = None) -> SweepPlan:
    """Validate every point; invalid ones are collected (with grid index and error),
    not raised, so the rest can run. Duplicate points (same config) are kept once."""
    from compress_lab.sweep.task import load_plugins
    from compress_lab.techniques import config_from_dict

    load_plugins(spec.run.plugins)
    points: list[GridPoint] = []
    invalid: list[InvalidPoint] = []
    seen: set[str] = set()
    for index, table in enumerate(spec.grid):
        try:
            settings_list = expand_grid(table)
        except ConfigError as e:
            invalid.append(InvalidPoint(index, dict(table), str(e)))
            continue
        for settings in settings_list:
            try:
                config = config_from_dict(dict(settings))
            except ConfigError as e:
                invalid.append(InvalidPoint(index, settings, str(e)))
                continue
            except Exception as e:  # a config class raising something else is still a bad point
                invalid.append(InvalidPoint(index, settings, f"{type(e).__name__}: {e}"))
                continue
            key = json.dumps(config.to_dict(), sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            points.append(GridPoint(index, config))
    warnings = []
    if len(points) >= LARGE_GRID:
        import os
        n_workers = workers or spec.run.workers or os.cpu_count() or 1
        seconds = estimate_seconds(points, n_workers)
        warnings.append(
            f"the grid has {len(points)} points; at a rough {seconds / len(points) * n_workers:.0f} s per run on "
            f"{n_workers} worker(s) it would take about {_duration(seconds)}. Narrow the grid, add workers or a Ray "
            "cluster (--executor ray), or confirm with --yes")
    return SweepPlan(spec, tuple(points), tuple(invalid), tuple(warnings))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{math.ceil(hours / 24)} days"
