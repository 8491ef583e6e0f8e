"""Results store: sweeps, runs and their artifacts (contract in SCHEMA.md)."""

from compress_lab.store.artifacts import (
    artifact_dir,
    relative_artifact_path,
    remove_artifacts,
    resolve_artifact,
    safe_join,
)
from compress_lab.store.base import (
    BASELINE,
    COMPLETE,
    FAILED,
    FAMILIES,
    PENDING,
    RUN_STATES,
    RUNNING,
    SWEEP_CANCELLED,
    SWEEP_DONE,
    SWEEP_RUNNING,
    SWEEP_STATUSES,
    ResultsStore,
    Run,
    RunSpec,
    Sweep,
    baseline_format,
    compressed_runs,
    is_baseline,
    json_safe,
    reference_baseline,
    validate_run_id,
    worker_alive,
    worker_name,
)
from compress_lab.store.sqlite import DB_FILENAME, SCHEMA_VERSION, SQLiteStore, open_store

__all__ = [
    "BASELINE", "COMPLETE", "DB_FILENAME", "FAILED", "FAMILIES", "PENDING", "RUN_STATES", "RUNNING", "SCHEMA_VERSION",
    "SWEEP_CANCELLED", "SWEEP_DONE", "SWEEP_RUNNING", "SWEEP_STATUSES", "ResultsStore", "Run", "RunSpec",
    "SQLiteStore", "Sweep", "artifact_dir", "baseline_format", "compressed_runs", "is_baseline", "json_safe", "open_store", "reference_baseline", "relative_artifact_path",
    "remove_artifacts", "resolve_artifact", "safe_join", "validate_run_id", "worker_alive", "worker_name",
]
