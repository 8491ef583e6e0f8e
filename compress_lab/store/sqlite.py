"""The embedded results store: one SQLite file (WAL mode) per sweep folder.

Each thread of each process opens its own connection, lazily, and never uses
one inherited through fork. Every write is one `BEGIN IMMEDIATE` transaction;
reads run in a deferred transaction so they see one consistent snapshot.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from compress_lab.errors import StoreError
from compress_lab.store import artifacts
from compress_lab.store.base import (
    COMPLETE,
    FAILED,
    FAMILIES,
    PENDING,
    RUN_STATES,
    RUNNING,
    SWEEP_RUNNING,
    SWEEP_STATUSES,
    ResultsStore,
    Run,
    RunSpec,
    Sweep,
    dumps,
    loads,
    validate_run_id,
    validate_states,
    validate_sweep_id,
    worker_alive,
)

DB_FILENAME = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA_V1 = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE sweeps (
    sweep_id          TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    created_at        REAL NOT NULL,
    spec              TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN {SWEEP_STATUSES!r}),
    notes             TEXT NOT NULL DEFAULT ''
);
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    technique     TEXT NOT NULL,
    family        TEXT NOT NULL CHECK (family IN {FAMILIES!r}),
    config        TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL CHECK (state IN {RUN_STATES!r}),
    attempts      INTEGER NOT NULL DEFAULT 0,
    worker        TEXT,
    heartbeat_at  REAL,
    started_at    REAL,
    finished_at   REAL,
    error         TEXT,
    traceback     TEXT,
    metrics       TEXT,
    sizes         TEXT,
    timings       TEXT,
    artifact_path TEXT,
    created_at    REAL NOT NULL
);
CREATE TABLE sweep_runs (
    sweep_id  TEXT NOT NULL REFERENCES sweeps(sweep_id) ON DELETE CASCADE,
    run_id    TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    linked_at REAL NOT NULL,
    PRIMARY KEY (sweep_id, run_id)
);
CREATE INDEX sweep_runs_by_run ON sweep_runs(run_id);
CREATE INDEX sweep_runs_by_position ON sweep_runs(sweep_id, position);
CREATE INDEX runs_by_state ON runs(state);
"""

T = TypeVar("T")
Migration = Callable[[sqlite3.Connection], None]

# MIGRATIONS[v] upgrades a version-v database to version v+1 (inside the
# opening transaction). Add one per schema change and bump SCHEMA_VERSION.
MIGRATIONS: dict[int, Migration] = {}

_RUN_COLUMNS = (
    "run_id, technique, family, config, label, state, attempts, worker, heartbeat_at, started_at, "
    "finished_at, error, traceback, metrics, sizes, timings, artifact_path, created_at"
)
_SWEEP_COLUMNS = "sweep_id, name, created_at, spec, model_fingerprint, status, notes"
_CHUNK = 500

# Connections inherited through fork: never used, never closed in the child
# (closing could disturb the parent's locks); kept alive here.
_INHERITED: list[sqlite3.Connection] = []


def open_store(folder: str | Path) -> "SQLiteStore":
    """The results store of a sweep folder: creates `folder/results.sqlite` and `folder/artifacts/`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        artifacts.artifacts_root(folder).mkdir(exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the results folder {folder}: {exc.strerror or exc}; "
            "choose a folder you can write to (or fix its permissions)"
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"results folder {folder} is not writable: fix its permissions or choose another folder")
    return SQLiteStore(folder / DB_FILENAME)


class SQLiteStore(ResultsStore):
    """ResultsStore in one SQLite file; artifact paths are relative to its folder."""

    schema_version: int = SCHEMA_VERSION
    migrations: dict[int, Migration] = MIGRATIONS

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self._path = Path(path)
        self._busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._connection()  # fail now, with a clear message, if the file cannot be used

    # -- connection handling -------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def folder(self) -> Path:
        return self._path.parent

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self._path)!r})"

    def __getstate__(self) -> dict:
        return {"path": str(self._path), "busy_timeout_s": self._busy_timeout_s}

    def __setstate__(self, state: dict) -> None:
        self._path = Path(state["path"])
        self._busy_timeout_s = state["busy_timeout_s"]
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if conn is not None:
            _INHERITED.append(conn)
        local.conn = None
        conn = self._open()
        local.conn, local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    def _open(self) -> sqlite3.Connection:
        if not self.folder.is_dir():
            raise StoreError(
                f"results folder {self.folder} does not exist: create it or open the store with open_store(folder)"
            )
        if self._path.exists() and not self._path.is_file():
            raise StoreError(f"{self._path} is not a file: move it away or choose another results folder")
        # Switching a new file to WAL and creating the schema can answer "locked"
        # at once (without the busy handler) while another process does the same.
        return self._retry_busy(self._open_once, "opening it")

    def _open_once(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self._path), timeout=self._busy_timeout_s, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self._path} cannot use write-ahead logging (journal mode stays {mode!r}): "
                    "put the results folder on a local disk"
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _retry_busy(self, attempt: Callable[[], T], action: str) -> T:
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.005
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise self._store_error(exc, action) from exc
            except sqlite3.Error as exc:
                raise self._store_error(exc, action) from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.2)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if self._read_version(conn) == self.schema_version:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._read_version(conn)
            if version is None:
                for statement in _SCHEMA_V1.split(";"):  # executescript would COMMIT early
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (1)")
                version = 1
            if version > self.schema_version:
                raise StoreError(
                    f"{self._path} has schema version {version}, newer than this compress lab understands "
                    f"({self.schema_version}): upgrade compress_lab, or open another results folder"
                )
            while version < self.schema_version:
                migrate = self.migrations.get(version)
                if migrate is None:
                    raise StoreError(
                        f"{self._path} has schema version {version} and no migration to {version + 1} exists: "
                        "open it with the compress lab version that wrote it, or use a new results folder"
                    )
                migrate(conn)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _read_version(self, conn: sqlite3.Connection) -> int | None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables:
                raise StoreError(
                    f"{self._path} is a SQLite database but not a compress lab results store "
                    f"(tables: {sorted(tables)}): move it away or choose another results folder"
                )
            return None
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StoreError(f"{self._path} has an empty schema_version table: the store is damaged; move it away")
        return int(row[0])

    def _store_error(self, exc: sqlite3.Error, action: str) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        where = f"results store {self._path}"
        if name == "SQLITE_FULL" or "disk is full" in text:
            return StoreError(
                f"the disk is full while {action} ({where}): free some space or move the results folder, "
                "then resume; the failed write was rolled back and the store is intact"
            )
        if name == "SQLITE_NOTADB" or "not a database" in text:
            return StoreError(
                f"{self._path} is not a SQLite database: move that file away or choose another results folder "
                "(the lab creates a new results.sqlite there)"
            )
        if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
            return StoreError(f"{where} is damaged ({text}): move it away and start a new sweep folder")
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")) or "readonly" in text or (
            "unable to open" in text
        ):
            return StoreError(
                f"cannot write {where} ({text}) while {action}: make {self.folder} writable "
                "(permissions, read-only disk) or choose another results folder"
            )
        if _is_busy(exc):
            return StoreError(
                f"{where} stayed locked by another process for more than {self._busy_timeout_s:g} s "
                f"while {action}: retry, or stop the other process using it"
            )
        return StoreError(f"{where} failed while {action}: {text}")

    @contextmanager
    def _transaction(self, action: str, write: bool) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        self._retry_busy(lambda: conn.execute("BEGIN IMMEDIATE" if write else "BEGIN"), action)
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise self._store_error(exc, action) from exc
            raise

    def _write(self, action: str):
        return self._transaction(action, write=True)

    def _read(self, action: str):
        return self._transaction(action, write=False)

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` result: 'ok' when the file is sound."""
        with self._read("checking integrity") as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    # -- sweeps --------------------------------------------------------------

    def create_sweep(self, sweep_id: str, name: str, spec: dict, model_fingerprint: str, notes: str = "") -> Sweep:
        validate_sweep_id(sweep_id)
        if not isinstance(spec, dict):
            raise StoreError(f"sweep {sweep_id}: spec must be a dict, got {type(spec).__name__}")
        spec_json = dumps(spec)
        with self._write(f"creating sweep {sweep_id}") as conn:
            row = conn.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
            if row is not None:
                if row["spec"] != spec_json or row["model_fingerprint"] != model_fingerprint:
                    raise StoreError(
                        f"sweep {sweep_id} already exists in {self._path} with a different "
                        f"{'spec' if row['spec'] != spec_json else 'model fingerprint'}: "
                        "use a new sweep id for a different grid or model"
                    )
                return _sweep(row)
            conn.execute(
                f"INSERT INTO sweeps ({_SWEEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sweep_id, str(name), time.time(), spec_json, str(model_fingerprint), SWEEP_RUNNING, str(notes)),
            )
            row = conn.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
            return _sweep(row)

    def get_sweep(self, sweep_id: str) -> Sweep | None:
        with self._read(f"reading sweep {sweep_id}") as conn:
            row = conn.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
        return None if row is None else _sweep(row)

    def list_sweeps(self) -> list[Sweep]:
        with self._read("listing sweeps") as conn:
            rows = conn.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps ORDER BY created_at DESC, rowid DESC").fetchall()
        return [_sweep(r) for r in rows]

    def set_sweep_status(self, sweep_id: str, status: str) -> None:
        if status not in SWEEP_STATUSES:
            raise StoreError(f"unknown sweep status {status!r}: use one of {list(SWEEP_STATUSES)}")
        self._update_sweep(sweep_id, "status", status)

    def set_sweep_notes(self, sweep_id: str, notes: str) -> None:
        self._update_sweep(sweep_id, "notes", str(notes))

    def _update_sweep(self, sweep_id: str, column: str, value: str) -> None:
        with self._write(f"updating sweep {sweep_id}") as conn:
            cur = conn.execute(f"UPDATE sweeps SET {column} = ? WHERE sweep_id = ?", (value, sweep_id))
            if cur.rowcount == 0:
                raise StoreError(f"no sweep {sweep_id!r} in {self._path}: create it with create_sweep first")

    def delete_sweep(self, sweep_id: str) -> list[str]:
        with self._write(f"deleting sweep {sweep_id}") as conn:
            orphans = [
                r[0]
                for r in conn.execute(
                    "SELECT run_id FROM sweep_runs WHERE sweep_id = ? AND run_id NOT IN "
                    "(SELECT run_id FROM sweep_runs WHERE sweep_id != ?) ORDER BY position",
                    (sweep_id, sweep_id),
                )
            ]
            conn.execute("DELETE FROM sweep_runs WHERE sweep_id = ?", (sweep_id,))
            conn.execute("DELETE FROM sweeps WHERE sweep_id = ?", (sweep_id,))
            for chunk in _chunks(orphans):
                conn.execute(f"DELETE FROM runs WHERE run_id IN ({_marks(chunk)})", chunk)
        for run_id in orphans:
            artifacts.remove_artifacts(self.folder, run_id)
        return orphans

    # -- runs ----------------------------------------------------------------

    def add_runs(self, sweep_id: str, runs: list[RunSpec]) -> list[Run]:
        runs = list(runs)
        for spec in runs:
            if not isinstance(spec, RunSpec):
                raise StoreError(f"add_runs expects RunSpec items, got {type(spec).__name__}")
        now = time.time()
        with self._write(f"adding runs to sweep {sweep_id}") as conn:
            if conn.execute("SELECT 1 FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone() is None:
                raise StoreError(f"no sweep {sweep_id!r} in {self._path}: create it with create_sweep first")
            position = conn.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM sweep_runs WHERE sweep_id = ?", (sweep_id,)
            ).fetchone()[0]
            for spec in runs:
                config_json = dumps(spec.config)
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO runs (run_id, technique, family, config, label, state, attempts, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (spec.run_id, spec.technique, spec.family, config_json, spec.label, PENDING, now),
                ).rowcount
                if not inserted:
                    old = conn.execute(
                        "SELECT technique, family, config FROM runs WHERE run_id = ?", (spec.run_id,)
                    ).fetchone()
                    if (old["technique"], old["family"], old["config"]) != (spec.technique, spec.family, config_json):
                        raise StoreError(
                            f"run id {spec.run_id} is already stored for a different run "
                            f"({old['technique']} {old['config']}, now {spec.technique} {config_json}): "
                            "run ids must be content hashes of the technique and config"
                        )
                linked = conn.execute(
                    "INSERT OR IGNORE INTO sweep_runs (sweep_id, run_id, position, linked_at) VALUES (?, ?, ?, ?)",
                    (sweep_id, spec.run_id, position, now),
                ).rowcount
                position += linked
            by_id = self._runs_by_id(conn, [s.run_id for s in runs])
        return [by_id[s.run_id] for s in runs]

    def claim_run(self, run_id: str, worker: str, retry: bool = False) -> bool:
        _check_worker(worker)
        now = time.time()
        with self._write(f"claiming run {run_id}") as conn:
            cur = conn.execute(
                "UPDATE runs SET state = ?, worker = ?, attempts = attempts + 1, started_at = ?, heartbeat_at = ?,"
                " finished_at = NULL, error = NULL, traceback = NULL"
                " WHERE run_id = ? AND (state = ? OR (? AND state = ?))",
                (RUNNING, worker, now, now, run_id, PENDING, bool(retry), FAILED),
            )
            if cur.rowcount == 1:
                return True
            self._require_run(conn, run_id)
            return False

    def heartbeat(self, run_id: str, worker: str) -> None:
        with self._write(f"recording a heartbeat of run {run_id}") as conn:
            cur = conn.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND state = ? AND worker = ?",
                (time.time(), run_id, RUNNING, worker),
            )
            if cur.rowcount == 0:
                state, holder = self._require_run(conn, run_id)
                raise StoreError(
                    f"run {run_id} is no longer held by {worker} (it is {state}"
                    f"{f', held by {holder}' if holder else ''}): it was reset or finished elsewhere; stop working on it"
                )

    def complete_run(
        self,
        run_id: str,
        metrics: dict,
        sizes: dict,
        timings: dict,
        artifact_path: str | None = None,
        *,
        worker: str | None = None,
    ) -> Run:
        if artifact_path is not None and Path(artifact_path).is_absolute():
            artifact_path = artifacts.relative_artifact_path(self.folder, artifact_path)
        artifact_path = artifacts.validate_artifact_path(
            None if artifact_path is None else str(artifact_path).replace(os.sep, "/")
        )
        values = (dumps(metrics or {}), dumps(sizes or {}), dumps(timings or {}))
        with self._write(f"completing run {run_id}") as conn:
            self._require_running(conn, run_id, worker, "complete")
            conn.execute(
                "UPDATE runs SET state = ?, finished_at = ?, metrics = ?, sizes = ?, timings = ?, artifact_path = ?,"
                " error = NULL, traceback = NULL WHERE run_id = ?",
                (COMPLETE, time.time(), *values, artifact_path, run_id),
            )
            return self._runs_by_id(conn, [run_id])[run_id]

    def fail_run(self, run_id: str, error: str, traceback: str = "", *, worker: str | None = None) -> Run:
        with self._write(f"recording the failure of run {run_id}") as conn:
            self._require_running(conn, run_id, worker, "fail")
            conn.execute(
                "UPDATE runs SET state = ?, finished_at = ?, error = ?, traceback = ? WHERE run_id = ?",
                (FAILED, time.time(), str(error), str(traceback or ""), run_id),
            )
            return self._runs_by_id(conn, [run_id])[run_id]

    def reset_stale(self, sweep_id: str, older_than_s: float | None = None) -> int:
        now = time.time()
        with self._write(f"resetting stale runs of sweep {sweep_id}") as conn:
            rows = conn.execute(
                "SELECT r.run_id, r.worker, r.heartbeat_at FROM sweep_runs l JOIN runs r ON r.run_id = l.run_id"
                " WHERE l.sweep_id = ? AND r.state = ?",
                (sweep_id, RUNNING),
            ).fetchall()
            stale = [
                r["run_id"]
                for r in rows
                if worker_alive(r["worker"]) is False
                or (older_than_s is not None and (r["heartbeat_at"] or 0.0) < now - older_than_s)
            ]
            for run_id in stale:
                conn.execute(
                    "UPDATE runs SET state = ?, worker = NULL, heartbeat_at = NULL, started_at = NULL"
                    " WHERE run_id = ? AND state = ?",
                    (PENDING, run_id, RUNNING),
                )
        return len(stale)

    def get_run(self, run_id: str) -> Run | None:
        with self._read(f"reading run {run_id}") as conn:
            return self._runs_by_id(conn, [run_id]).get(run_id)

    def list_runs(self, sweep_id: str, states: Iterable[str] | None = None) -> list[Run]:
        states = validate_states(states)
        sql = (
            f"SELECT {', '.join('r.' + c.strip() for c in _RUN_COLUMNS.split(','))} FROM sweep_runs l"
            " JOIN runs r ON r.run_id = l.run_id WHERE l.sweep_id = ?"
        )
        params: list = [sweep_id]
        if states is not None:
            sql += f" AND r.state IN ({_marks(states)})"
            params += list(states)
        with self._read(f"listing runs of sweep {sweep_id}") as conn:
            rows = conn.execute(sql + " ORDER BY l.position", params).fetchall()
            links = self._links(
                conn,
                "SELECT l2.run_id, l2.sweep_id FROM sweep_runs l1 JOIN sweep_runs l2 ON l2.run_id = l1.run_id"
                " WHERE l1.sweep_id = ? ORDER BY l2.linked_at, l2.rowid",
                (sweep_id,),
            )
        return [_run(r, links.get(r["run_id"], ())) for r in rows]

    def counts(self, sweep_id: str) -> dict[str, int]:
        result = dict.fromkeys(RUN_STATES, 0)
        with self._read(f"counting runs of sweep {sweep_id}") as conn:
            for state, n in conn.execute(
                "SELECT r.state, COUNT(*) FROM sweep_runs l JOIN runs r ON r.run_id = l.run_id"
                " WHERE l.sweep_id = ? GROUP BY r.state",
                (sweep_id,),
            ):
                result[state] = n
        return result

    # -- helpers -------------------------------------------------------------

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> tuple[str, str | None]:
        row = conn.execute("SELECT state, worker FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            validate_run_id(run_id)
            raise StoreError(f"no run {run_id} in {self._path}: add it to a sweep with add_runs first")
        return row["state"], row["worker"]

    def _require_running(self, conn: sqlite3.Connection, run_id: str, worker: str | None, verb: str) -> None:
        state, holder = self._require_run(conn, run_id)
        if state != RUNNING:
            hint = "claim it first with claim_run" if state == PENDING else "it is already finished"
            raise StoreError(f"cannot {verb} run {run_id}: it is {state}, not RUNNING ({hint})")
        if worker is not None and holder != worker:
            raise StoreError(
                f"cannot {verb} run {run_id} as {worker}: it is held by {holder} "
                "(it was reset and claimed again); drop this result"
            )

    def _runs_by_id(self, conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, Run]:
        ids = list(dict.fromkeys(run_ids))
        result: dict[str, Run] = {}
        for chunk in _chunks(ids):
            rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id IN ({_marks(chunk)})", chunk).fetchall()
            links = self._links(
                conn,
                f"SELECT run_id, sweep_id FROM sweep_runs WHERE run_id IN ({_marks(chunk)})"
                " ORDER BY linked_at, rowid",
                chunk,
            )
            for r in rows:
                result[r["run_id"]] = _run(r, links.get(r["run_id"], ()))
        return result

    @staticmethod
    def _links(conn: sqlite3.Connection, sql: str, params) -> dict[str, tuple[str, ...]]:
        links: dict[str, list[str]] = {}
        for run_id, sweep_id in conn.execute(sql, params):
            links.setdefault(run_id, []).append(sweep_id)
        return {k: tuple(v) for k, v in links.items()}


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)


def _check_worker(worker: str) -> None:
    if not isinstance(worker, str) or not worker:
        raise StoreError(f"invalid worker {worker!r}: use a non-empty string such as worker_name() ('host:pid')")


def _marks(items) -> str:
    return ", ".join("?" * len(items))


def _chunks(items: list) -> Iterator[list]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _sweep(row: sqlite3.Row) -> Sweep:
    return Sweep(
        sweep_id=row["sweep_id"],
        name=row["name"],
        created_at=row["created_at"],
        spec=loads(row["spec"]),
        model_fingerprint=row["model_fingerprint"],
        status=row["status"],
        notes=row["notes"],
    )


def _run(row: sqlite3.Row, sweep_ids: tuple[str, ...]) -> Run:
    return Run(
        run_id=row["run_id"],
        technique=row["technique"],
        family=row["family"],
        config=loads(row["config"]),
        label=row["label"],
        state=row["state"],
        attempts=row["attempts"],
        worker=row["worker"],
        heartbeat_at=row["heartbeat_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        traceback=row["traceback"],
        metrics=loads(row["metrics"]),
        sizes=loads(row["sizes"]),
        timings=loads(row["timings"]),
        artifact_path=row["artifact_path"],
        created_at=row["created_at"],
        sweep_ids=sweep_ids,
    )
