"""Add one point to a sweep after the fact (e.g. the mixed-precision answer), run
and measured exactly like the sweep's own points."""

from __future__ import annotations

from pathlib import Path

from compress_lab.sweep import keys
from compress_lab.sweep.runner import _prepare_inputs, prepare
from compress_lab.sweep.spec import SweepSpec
from compress_lab.sweep.task import KIND_TECHNIQUE, RunTask, execute


def add_point(spec: SweepSpec, store_folder: str | Path, config: dict, *, family: str = "mixed",
              label: str | None = None):
    """Register `config` (a technique config dict) in the spec's sweep as a run of `family`,
    execute it unless it is already COMPLETE, and return the stored Run."""
    from compress_lab.store import COMPLETE, RunSpec, worker_name
    from compress_lab.techniques import config_from_dict

    technique = config_from_dict(config)
    cfg = technique.to_dict()
    store_folder = Path(store_folder).resolve()
    prep = prepare(spec, store_folder)
    store = prep.store
    driver = worker_name("add-point")

    def record(task: RunTask, outcome: dict, worker: str):
        if outcome.get("ok"):
            return store.complete_run(task.run_id, outcome["metrics"], outcome["sizes"], outcome["timings"],
                                      outcome.get("artifact_path"), worker=worker)
        return store.fail_run(task.run_id, outcome.get("error", "failed"), outcome.get("traceback", ""), worker=worker)

    ctx = _prepare_inputs(prep, store_folder, driver, record)
    run_id = keys.run_id(prep.handle.fingerprint, cfg, prep.data_fp)
    existing = store.get_run(run_id)
    if existing is not None:  # the same config was already a point (e.g. the answer is a uniform setting)
        family, label = existing.family, existing.label
    task = RunTask(run_id, KIND_TECHNIQUE, cfg, label or f"{family} {technique.label()}", family)
    store.add_runs(prep.sweep_id, [RunSpec(task.run_id, cfg["technique"], family, cfg, task.label)])
    run = store.get_run(task.run_id)
    if run.state != COMPLETE and store.claim_run(task.run_id, driver, retry=True):
        run = record(task, execute(task, ctx), driver)
    return run
