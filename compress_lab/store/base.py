"""The results-store contract: records, states and the abstract interface.

SCHEMA.md (next to this file) is the written contract; every backend passes
tests/test_store.py's contract suite.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from compress_lab.errors import StoreError

PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETE = "COMPLETE"
FAILED = "FAILED"
RUN_STATES = (PENDING, RUNNING, COMPLETE, FAILED)

SWEEP_RUNNING = "running"
SWEEP_DONE = "done"
SWEEP_CANCELLED = "cancelled"
SWEEP_STATUSES = (SWEEP_RUNNING, SWEEP_DONE, SWEEP_CANCELLED)

BASELINE = "baseline"
FAMILIES = (BASELINE, "post_training", "training_time", "mixed")
# Which uncompressed baseline is a sweep's reference: its PyTorch model, else fp32, fp16, the Core ML package.
REFERENCE_FORMATS = ("pytorch", "fp32", "fp16", "coreml")


def _field(run: Any, key: str) -> Any:
    return run.get(key) if isinstance(run, Mapping) else getattr(run, key, None)


def is_baseline(run: Any) -> bool:
    """Whether a run (a store Run, its to_dict() or a results-table row) is one of a
    sweep's uncompressed baselines rather than a compressed point."""
    return _field(run, "family") == BASELINE


def baseline_format(run: Any) -> str | None:
    """A baseline's format (pytorch, fp32, fp16 or coreml); None for a compressed run."""
    if not is_baseline(run):
        return None
    config = _field(run, "config") or {}
    found = config.get("format") or _field(run, "_baseline_format")  # a results-table row keeps it there
    if found:
        return found
    label = (_field(run, "label") or "").lower()  # "baseline PyTorch", "baseline fp16", "baseline Core ML"
    return next((f for f in REFERENCE_FORMATS if f in label.replace("core ml", "coreml")), None)


def compressed_runs(runs: Iterable[Any], complete: bool = True) -> list[Any]:
    """The compressed points among `runs` (only the completed ones unless complete=False)."""
    return [r for r in runs if not is_baseline(r) and (not complete or _field(r, "state") == COMPLETE)]


def reference_baseline(runs: Iterable[Any], formats: Iterable[str] = REFERENCE_FORMATS) -> Any | None:
    """The completed baseline a sweep's compressed points are compared with: the first of
    `formats` present, else any completed baseline."""
    baselines = [r for r in runs if is_baseline(r) and _field(r, "state") == COMPLETE]
    for fmt in formats:
        for r in baselines:
            if baseline_format(r) == fmt:
                return r
    return baselines[0] if baselines else None

RUN_ID_PATTERN = re.compile(r"^[0-9a-f]{8,128}$")


def validate_run_id(run_id: object) -> str:
    """Return `run_id` if it is a lowercase hex content hash (8-128 chars)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise StoreError(
            f"invalid run id {run_id!r}: a run id must be a lowercase hex content hash "
            "of 8-128 characters (e.g. hashlib.sha256(...).hexdigest()[:16])"
        )
    return run_id


def validate_sweep_id(sweep_id: object) -> str:
    if not isinstance(sweep_id, str) or not sweep_id.strip() or len(sweep_id) > 200:
        raise StoreError(f"invalid sweep id {sweep_id!r}: use a non-empty string of at most 200 characters")
    return sweep_id


def validate_states(states: Iterable[str] | None) -> tuple[str, ...] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = (states,)
    states = tuple(states)
    unknown = [s for s in states if s not in RUN_STATES]
    if unknown:
        raise StoreError(f"unknown run state(s) {unknown}: use some of {list(RUN_STATES)}")
    return states


def json_safe(value: Any) -> Any:
    """Plain-JSON copy of `value`: NaN/inf -> None, numpy scalars/arrays -> Python,
    tuples/sets -> lists, non-str keys -> str. Never mutates `value`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(value.tolist())
    if hasattr(value, "item"):
        return json_safe(value.item())
    raise StoreError(
        f"cannot store value {value!r} of type {type(value).__name__} as JSON: "
        "use numbers, strings, bools, None, lists or dicts"
    )


def dumps(value: Any) -> str | None:
    """JSON text of `value` after json_safe (None stays None)."""
    if value is None:
        return None
    return json.dumps(json_safe(value), allow_nan=False, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class RunSpec:
    """What a sweep asks the store to track; `run_id` is the caller's content hash."""

    run_id: str
    technique: str
    family: str
    config: dict
    label: str = ""

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        if not isinstance(self.technique, str) or not self.technique:
            raise StoreError(f"run {self.run_id}: technique must be a non-empty string, got {self.technique!r}")
        if self.family not in FAMILIES:
            raise StoreError(f"run {self.run_id}: unknown family {self.family!r}; use one of {list(FAMILIES)}")
        if not isinstance(self.config, Mapping):
            raise StoreError(f"run {self.run_id}: config must be a dict, got {type(self.config).__name__}")
        if not isinstance(self.label, str):
            raise StoreError(f"run {self.run_id}: label must be a string, got {self.label!r}")


@dataclass(frozen=True)
class Sweep:
    sweep_id: str
    name: str
    created_at: float
    spec: dict
    model_fingerprint: str
    status: str
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Run:
    """One point of a grid and its outcome. `sweep_ids` lists every sweep that
    links this run, in the order they added it; `sweep_id` is the first."""

    run_id: str
    technique: str
    family: str
    config: dict
    label: str
    state: str
    attempts: int
    worker: str | None
    heartbeat_at: float | None
    started_at: float | None
    finished_at: float | None
    error: str | None
    traceback: str | None
    metrics: dict | None
    sizes: dict | None
    timings: dict | None
    artifact_path: str | None
    created_at: float
    sweep_ids: tuple[str, ...] = ()

    @property
    def sweep_id(self) -> str | None:
        return self.sweep_ids[0] if self.sweep_ids else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sweep_ids"] = list(self.sweep_ids)
        return d


class ResultsStore(ABC):
    """Where a sweep's runs and results live. Safe to share between threads and
    processes: each opens its own connection; every write is one transaction."""

    @property
    @abstractmethod
    def folder(self) -> Path:
        """Folder that artifact paths are relative to."""

    # sweeps
    @abstractmethod
    def create_sweep(self, sweep_id: str, name: str, spec: dict, model_fingerprint: str, notes: str = "") -> Sweep:
        """Create the sweep, or return it unchanged if it exists with the same spec and fingerprint."""

    @abstractmethod
    def get_sweep(self, sweep_id: str) -> Sweep | None: ...

    @abstractmethod
    def list_sweeps(self) -> list[Sweep]:
        """All sweeps, newest first."""

    @abstractmethod
    def set_sweep_status(self, sweep_id: str, status: str) -> None: ...

    @abstractmethod
    def set_sweep_notes(self, sweep_id: str, notes: str) -> None: ...

    @abstractmethod
    def delete_sweep(self, sweep_id: str) -> list[str]:
        """Remove the sweep and its links, and the runs (with their artifacts)
        no other sweep links. Returns the removed run ids."""

    # runs
    @abstractmethod
    def add_runs(self, sweep_id: str, runs: list[RunSpec]) -> list[Run]:
        """Link the runs to the sweep, creating the ones that do not exist yet;
        returns the current rows in the order given."""

    @abstractmethod
    def claim_run(self, run_id: str, worker: str, retry: bool = False) -> bool:
        """Atomically PENDING (or FAILED if retry) -> RUNNING for `worker`."""

    @abstractmethod
    def heartbeat(self, run_id: str, worker: str) -> None: ...

    @abstractmethod
    def complete_run(
        self,
        run_id: str,
        metrics: dict,
        sizes: dict,
        timings: dict,
        artifact_path: str | None = None,
        *,
        worker: str | None = None,
    ) -> Run: ...

    @abstractmethod
    def fail_run(self, run_id: str, error: str, traceback: str = "", *, worker: str | None = None) -> Run: ...

    @abstractmethod
    def reset_stale(self, sweep_id: str, older_than_s: float | None = None) -> int:
        """RUNNING runs of the sweep whose worker is dead -> PENDING; returns how many."""

    @abstractmethod
    def get_run(self, run_id: str) -> Run | None: ...

    @abstractmethod
    def list_runs(self, sweep_id: str, states: Iterable[str] | None = None) -> list[Run]:
        """The sweep's runs in the order they were added, optionally filtered by state."""

    @abstractmethod
    def counts(self, sweep_id: str) -> dict[str, int]:
        """Number of the sweep's runs in each state (every state present, 0 included)."""

    def close(self) -> None:
        """Release this thread's resources; the store stays usable (it reopens lazily)."""

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def worker_name(suffix: str | None = None) -> str:
    """This process's worker id, `host:pid` (or `host:pid:suffix` for a thread)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}:{suffix}" if suffix else name


def worker_alive(worker: str | None) -> bool | None:
    """True/False if `worker` is a `host:pid[:...]` on this host whose process
    is / is not alive; None when that cannot be told (another host, other format)."""
    if not worker:
        return None
    parts = worker.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return None
    pid = int(parts[1])
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """A killed child that its parent has not reaped yet is dead for our purpose."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")
