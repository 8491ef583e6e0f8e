"""The lab as a library: the whole flow in a few calls, for scripts and notebooks.

```python
import compress_lab as lab

model = lab.load_model("mnist_cnn")
spec = lab.sweep_spec({"model": "mnist_cnn", "data": "sample_models/mnist_cnn/val",
                       "run": {"name": "quickstart", "workers": 2},
                       "grid": [{"technique": "palettize", "nbits": [4, 8]}]})   # or a TOML file's path
results = lab.run(spec)              # same store, cache, resume and executors as `compress-lab sweep`
results.table()                      # pandas DataFrame, the columns of `compress-lab results`
results.figure()                     # the trade-off figure of the app's Results page (plotly)
best = results.best(top1_drop=1.0)   # the smallest run within 1 point of top-1
results.export(best, "best.mlpackage")
```

Everything here calls the engine the CLI and the app use (sweep/, cli/results.py, plots.py,
analysis/, export.py); nothing is measured or tabulated a second way."""

from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import Any, Mapping

from compress_lab.errors import ConfigError, StoreError
from compress_lab.quiet import import_coremltools

import_coremltools()  # a notebook cell shows no coremltools import noise

__all__ = ["load_model", "sweep_spec", "run", "open_results", "Results", "RunRow", "compress", "config_from_dict",
           "evaluate_model", "default_store"]

# The app's Results page: its axes, and its default budget (top-1 drop at most 1 point).
X_AXES = ("bytes", "ratio_fp16", "ratio_fp32", "bits_per_weight")
Y_AXES = ("top1", "top5", "agreement", "snr_db")
FRACTION_AXES = ("top1", "top5", "agreement")
DEFAULT_TOP1_DROP = 1.0


# --------------------------------------------------------------------------- models and single runs

def load_model(source: str | Path, weights: str | Path | None = None, metadata: str | Path | None = None):
    """A ModelHandle: a sample name (`"mnist_cnn"`), a model folder, a model.py (+ `weights`),
    a TorchScript file or a Core ML `.mlpackage` (see the README's "Your own model")."""
    from compress_lab.models import load_model as _load
    return _load(source, weights=weights, metadata=metadata)


def config_from_dict(data: dict[str, Any]):
    """A technique config from `{"technique": NAME, setting: value, ...}` (checked: a bad value names the fix)."""
    from compress_lab.techniques import config_from_dict as _config
    return _config(data)


def compress(model, config, out: str | Path, **context):
    """Compress `model` (a handle, a path or a sample name) with `config` (a technique config or its dict)
    into the `.mlpackage` at `out`; returns the CompressOutcome (its `path`, `timings`)."""
    from compress_lab.techniques import TechniqueConfig
    from compress_lab.techniques import compress as _compress

    handle = model if hasattr(model, "fingerprint") else load_model(model)
    if not isinstance(config, TechniqueConfig):
        config = config_from_dict(dict(config))
    return _compress(handle, config, out, **context)


def evaluate_model(model, data: str | Path, **options):
    """Evaluate a model (handle, path or sample name) on a validation folder: an EvalResult
    (shown as a table in a notebook). Options as compress_lab.evaluate.evaluate_model."""
    from compress_lab.evaluate import evaluate_model as _evaluate
    return _evaluate(model, data, **options)


# --------------------------------------------------------------------------- grids

def sweep_spec(spec, *, base_dir: str | Path | None = None):
    """A SweepSpec from a TOML file's path, a dict of the TOML's shape, or a SweepSpec.

    In a dict, `model` may be a sample name, a path or a loaded model (its source), and `data` the
    validation folder alone; `grid` is a list of tables (one table is a list of one). Relative
    paths resolve against `base_dir` (default: the current folder)."""
    from compress_lab.sweep.spec import SweepSpec, load_spec

    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, (str, Path)):
        return load_spec(spec)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a sweep spec is a TOML file's path or a dict with model, data, run and grid; got "
                          f"{type(spec).__name__} {spec!r:.80}")
    data = {key: value for key, value in spec.items()}
    model = data.get("model")
    if isinstance(model, (str, Path)):
        data["model"] = {"source": str(model)}
    elif model is not None and hasattr(model, "fingerprint"):  # a loaded ModelHandle
        if Path(model.source).suffix == ".py":
            raise ConfigError(f"the model {model.source} is a model.py with separate weights: give the spec "
                              f"'model': {{'source': {model.source!r}, 'weights': 'WEIGHTS.pt'}}")
        data["model"] = {"source": str(model.source)}
    if isinstance(data.get("data"), (str, Path)):
        data["data"] = {"validation": str(data["data"])}
    if isinstance(data.get("grid"), Mapping):
        data["grid"] = [data["grid"]]
    return SweepSpec.from_dict(_plain_paths(data), base_dir)


def _plain_paths(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_paths(v) for v in value]
    return value


def default_store(spec) -> Path:
    """Where `run` keeps a sweep's results: `<spec folder>/.lab/<sweep name>`, as `compress-lab sweep`
    does (a dict spec's folder is its base_dir, by default the current folder)."""
    from compress_lab.sweep.runner import default_store_folder
    spec = sweep_spec(spec)
    return default_store_folder(Path(spec.base_dir) / "spec.toml", spec)


def run(spec, store: str | Path | None = None, *, workers: int | None = None, executor: str | None = None,
        address: str | None = None, timeout_s: float | None = None, retry_failed: bool = False,
        progress: bool = True, yes: bool = False) -> "Results":
    """Run (or resume) a sweep exactly as `compress-lab sweep` does, and return its Results.

    `spec`: a TOML file's path, a dict or a SweepSpec (see sweep_spec). `store`: the results folder
    (default: default_store(spec)). Running the same spec again reuses every finished run.
    `workers`, `executor` ("local" or "ray"), `address`, `timeout_s` override the spec's [run].
    `progress`: an overall bar (a widget in Jupyter, tqdm's bar in a terminal) and one line per run.
    A grid of 1000 points or more needs `yes=True`."""
    from compress_lab.cli.sweep import _Reporter
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import expand

    source = spec
    spec = sweep_spec(spec).with_run(workers=workers, executor=executor, timeout_s=timeout_s, address=address)
    plan = expand(spec)
    for bad in plan.invalid:
        print(f"invalid point (skipped): {bad}", file=sys.stderr)
    if not plan.points:
        raise ConfigError(f"no valid point in the spec{_where(source)}: fix the {len(plan.invalid)} invalid point(s) "
                          "listed above")
    if plan.warnings and not yes:
        raise ConfigError(f"{plan.warnings[0]}; to run it anyway pass yes=True")
    if store is None:
        store = default_store(spec)
    reporter = _Reporter(quiet=not progress, bar_class=_auto_tqdm())
    try:
        outcome = run_sweep(spec, store, plan=plan, retry_failed=retry_failed, progress=reporter.progress,
                            on_event=reporter.event)
    finally:
        reporter.close()
    return Results(outcome.store_folder, outcome.sweep_id, outcome=outcome)


def _where(source) -> str:
    return f" {source}" if isinstance(source, (str, Path)) else ""


def _auto_tqdm():
    from tqdm.auto import tqdm
    return tqdm


def open_results(store: str | Path | None = None, sweep: str | None = None) -> "Results":
    """The Results of a sweep already in a store: `store` as `compress-lab results --store` (default:
    the one store under the current folder), `sweep` its id (default: the store's newest)."""
    from compress_lab.store import open_store
    from compress_lab.store.locate import find_store_folder, pick_sweep

    folder = find_store_folder(store)
    return Results(folder, pick_sweep(open_store(folder), sweep).sweep_id)


# --------------------------------------------------------------------------- results

class RunRow(dict):
    """One run as a row of `compress-lab results` (a dict of its columns); a table in a notebook."""

    @property
    def run_id(self) -> str:
        return self["run_id"]

    def _repr_html_(self) -> str:
        from compress_lab.cli.results import COLUMNS
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(c)}</th><td style='text-align:left'>"
                        f"{html.escape(_html_cell(c, self.get(c)))}</td></tr>" for c in COLUMNS)
        return f"<table><caption>{html.escape(str(self.get('label') or self.run_id))}</caption>{cells}</table>"


class Results:
    """The runs of one sweep in a results store. Read fresh from the store on every call, so the
    Results of a sweep still running (e.g. started from the app) show its progress."""

    def __init__(self, store_folder: str | Path, sweep_id: str, outcome=None):
        from compress_lab.store import open_store

        self.store_folder = Path(store_folder)
        self.store = open_store(self.store_folder)
        self.sweep_id = sweep_id
        self.outcome = outcome   # the SweepResult when this object came from run(): executed, reused, elapsed_s
        if self.store.get_sweep(sweep_id) is None:
            raise StoreError(f"no sweep {sweep_id!r} in the store {self.store_folder}")

    # what is stored
    @property
    def sweep(self):
        return self.store.get_sweep(self.sweep_id)

    @property
    def name(self) -> str:
        return self.sweep.name

    @property
    def status(self) -> str:
        return self.sweep.status

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.store.counts(self.sweep_id))

    @property
    def runs(self) -> list:
        """The store's Run records (config, metrics, sizes, timings, artifact)."""
        return self.store.list_runs(self.sweep_id)

    def rows(self) -> list[RunRow]:
        """One row per run, built by `compress-lab results` itself."""
        from compress_lab.cli.results import result_row
        return [RunRow(result_row(self.store_folder, r)) for r in self.runs]

    def table(self):
        """A pandas DataFrame, one row per run, with the columns of `compress-lab results`."""
        import pandas as pd

        from compress_lab.cli.results import COLUMNS
        return pd.DataFrame([{c: r[c] for c in COLUMNS} for r in self.rows()], columns=list(COLUMNS))

    # analysis
    def best(self, top1_drop: float | None = None, agreement: float | None = None) -> RunRow | None:
        """The smallest finished compressed run within an accuracy budget, as the app's Results page picks
        it: `top1_drop` (at most this many points below the uncompressed top-1; the default, 1 point) or
        `agreement` (top-1 agreement with the uncompressed model at least this fraction). None if none meets it."""
        from compress_lab.analysis.pareto import smallest_meeting_budget
        from compress_lab.analysis.table import runs_table

        if top1_drop is not None and agreement is not None:
            raise ConfigError("give one budget: top1_drop=POINTS or agreement=FRACTION, not both")
        metric, value = ("agreement", agreement) if agreement is not None else \
            ("top1_drop", DEFAULT_TOP1_DROP if top1_drop is None else top1_drop)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"budget {metric}={value!r} must be a non-negative number "
                              "(top1_drop in points, e.g. 1.0; agreement a fraction, e.g. 0.99)")
        runs = self.runs
        picked = smallest_meeting_budget(runs_table(runs), metric, float(value))
        if picked is None:
            return None
        return next(r for r in self.rows() if r["run_id"] == picked["run_id"])

    def figure(self, x: str = "bytes", y: str = "top1", top1_drop: float | None = DEFAULT_TOP1_DROP,
               agreement: float | None = None):
        """The app's trade-off figure (plotly): every finished run by workflow, the baselines, the Pareto
        frontier, and the smallest run within the budget circled (`top1_drop=None` and no `agreement`:
        none). Axes as the app's: x in X_AXES, y in Y_AXES."""
        from compress_lab.analysis.table import runs_table
        from compress_lab.plots import tradeoff_data, tradeoff_figure

        if x not in X_AXES:
            raise ConfigError(f"x={x!r} is not an axis of the trade-off figure; use one of {list(X_AXES)}")
        if y not in Y_AXES:
            raise ConfigError(f"y={y!r} is not an axis of the trade-off figure; use one of {list(Y_AXES)}")
        runs = self.runs
        rows = runs_table(runs)
        data = tradeoff_data(rows, x, y)
        if not data["series"] and not data["baselines"]:
            raise StoreError(f"no finished run of sweep {self.name!r} has both {x} and {y} yet")
        best = self.best(top1_drop, agreement) if (top1_drop is not None or agreement is not None) else None
        figure = _with_config_hover(tradeoff_figure(data, highlight_run_id=best and best["run_id"]),
                                    {r.run_id: r for r in runs})
        # what pages/4_results.py adds to the figure: config hover, baseline labels apart, axis ranges
        if y in FRACTION_AXES:
            values = [r[y] for pts in data["series"].values() for r in pts] + [r[y] for r in data["baselines"]]
            low = min(values)
            figure.update_yaxes(range=[max(0.0, low - max(0.005, (1 - low) * 0.5)), 1.005])
        if x in ("bytes", "weight_bytes"):
            figure.update_xaxes(tickformat="~s")
        return figure

    def export(self, run, out: str | Path, overwrite: bool = False) -> Path:
        """Write a run's `.mlpackage` to `out` with its config and metrics in the model's metadata, as
        `compress-lab export` does. `run`: a run id (or its first characters), a row, or a store Run."""
        from compress_lab.export import export_mlpackage
        from compress_lab.store.locate import find_run

        if run is None:
            raise StoreError("no run to export (best() returns None when no run meets the budget)")
        run_id = run if isinstance(run, str) else run["run_id"] if isinstance(run, Mapping) else getattr(run, "run_id", None)
        if not isinstance(run_id, str):
            raise ConfigError(f"export needs a run id, a row of table()/best() or a store Run; got {run!r:.80}")
        return export_mlpackage(self.store_folder, find_run(self.store, run_id), out, overwrite=overwrite)

    # display
    def summary(self) -> str:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in self.counts.items() if n) or "no runs"
        line = f"sweep {self.name} ({self.sweep_id}) {self.status}: {counts}. Store: {self.store_folder}"
        if self.outcome is not None:
            line += f"; {self.outcome.executed} run(s) computed, {self.outcome.reused} reused, {self.outcome.elapsed_s:.1f} s"
        return line

    def __repr__(self) -> str:
        from compress_lab.cli.results import text_table
        return f"{self.summary()}\n{text_table(self.rows())}"

    def _repr_html_(self) -> str:
        from compress_lab.cli.results import COLUMNS, _settings

        rows = self.rows()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(
            f"<td>{html.escape(_settings(r) if c == 'config' else _html_cell(c, r.get(c)))}</td>" for c in COLUMNS)
            + "</tr>" for r in rows)
        return (f"<p>{html.escape(self.summary())}</p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _with_config_hover(figure, runs: dict):
    """As the app's Results page: hover text with each run's full config, and baseline labels that
    would sit on top of each other alternating above and below their markers."""
    import json

    for trace in figure.data:
        if trace.name == "baseline (uncompressed)" and trace.x is not None:
            trace.textposition = ["top center" if i % 2 == 0 else "bottom center" for i in range(len(trace.x))]
        if trace.customdata is None:
            continue
        texts = []
        for run_id in trace.customdata:
            run = runs.get(run_id[0] if isinstance(run_id, (list, tuple)) else run_id)
            config = "<br>".join(f"{k} = {json.dumps(v)}" for k, v in (run.config or {}).items()) if run else ""
            texts.append(f"{run.label}<br>{config}" if run else "")
        trace.text = texts
    return figure


def _html_cell(column: str, value) -> str:
    from compress_lab.cli.results import _cell
    if column == "compression_ratio_fp32" and value is not None:
        return f"{value:.2f}x"
    if column == "config" and isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return _cell(column, value)


# --------------------------------------------------------------------------- evaluation display

EVAL_FIELDS = (("n", "images", "{:,}"), ("top1", "top-1", "{:.4f}"), ("top5", "top-5", "{:.4f}"),
               ("loss", "mean loss", "{:.4f}"), ("agreement", "top-1 agreement", "{:.4f}"),
               ("snr_db", "output SNR (dB)", "{:.1f}"), ("skipped", "files skipped", "{:,}"),
               ("elapsed_s", "seconds", "{:.1f}"))


def evaluation_html(result) -> str:
    """An EvalResult as an HTML table (its metrics; per-class accuracy and warnings below)."""
    rows = "".join(f"<tr><th style='text-align:left'>{label}</th><td>{fmt.format(getattr(result, name))}</td></tr>"
                   for name, label, fmt in EVAL_FIELDS if getattr(result, name) is not None)
    out = f"<table><caption>evaluation</caption>{rows}</table>"
    if result.per_class:
        cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.4f}</td></tr>" for k, v in result.per_class.items())
        out += (f"<details><summary>per-class accuracy ({len(result.per_class)} classes)</summary>"
                f"<table><tr><th>class</th><th>accuracy</th></tr>{cells}</table></details>")
    for warning in result.warnings:
        out += f"<p>warning: {html.escape(str(warning))}</p>"
    return out
