"""Sweeps: a grid spec of techniques x settings, run (or resumed) into a results store
by local worker processes or a Ray cluster. See spec.py for the TOML format."""

from compress_lab.sweep.spec import (
    DataSpec, GridPoint, InvalidPoint, ModelSpec, RunOptions, SweepPlan, SweepSpec, expand, load_spec,
)

__all__ = ["DataSpec", "GridPoint", "InvalidPoint", "ModelSpec", "RunOptions", "SweepPlan", "SweepSpec",
           "expand", "load_spec", "run_sweep", "request_cancel", "SweepResult"]


def __getattr__(name):  # the runner imports the store and numpy: load it on first use
    if name in ("run_sweep", "request_cancel", "SweepResult", "default_store_folder"):
        from compress_lab.sweep import runner
        return getattr(runner, name)
    raise AttributeError(name)
