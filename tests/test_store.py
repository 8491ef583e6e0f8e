"""Results store: one contract suite parametrized over backends (SQLite now),
then the SQLite guarantees (WAL, concurrency across real processes, SIGKILL,
disk full, bad files, schema versions) and the artifact-path rules."""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from compress_lab.errors import StoreError
from compress_lab.store import (
    COMPLETE,
    FAILED,
    PENDING,
    RUNNING,
    ResultsStore,
    RunSpec,
    SQLiteStore,
    artifact_dir,
    open_store,
    relative_artifact_path,
    resolve_artifact,
    safe_join,
    worker_alive,
    worker_name,
)
from compress_lab.store.sqlite import SCHEMA_VERSION

SPEC = {"techniques": ["palettize"], "grid": {"nbits": [2, 4]}}
BACKENDS = {"sqlite": open_store}


def rid(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def spec(i: int, technique: str = "palettize", family: str = "post_training") -> RunSpec:
    return RunSpec(rid(technique, i), technique, family, {"nbits": i}, f"{technique} {i}")


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request):
    return BACKENDS[request.param]


@pytest.fixture
def store(make_store, tmp_path) -> ResultsStore:
    s = make_store(tmp_path / "sweep")
    yield s
    s.close()


@pytest.fixture
def sweep(store):
    store.create_sweep("s1", "first sweep", SPEC, "fp-1")
    return "s1"


def claimed(store, sweep_id, n=1, worker="host:1"):
    runs = store.add_runs(sweep_id, [spec(i) for i in range(n)])
    for r in runs:
        assert store.claim_run(r.run_id, worker)
    return [r.run_id for r in runs]


# --------------------------------------------------------------------------- contract: sweeps


def test_open_store_creates_db_and_artifacts_folder(make_store, tmp_path):
    folder = tmp_path / "a" / "b"
    s = make_store(folder)
    assert (folder / "artifacts").is_dir()
    assert s.folder == folder
    assert s.list_sweeps() == []


def test_create_sweep_is_idempotent_and_round_trips(store):
    a = store.create_sweep("s1", "name", SPEC, "fp", notes="hello")
    b = store.create_sweep("s1", "name", SPEC, "fp")
    assert a == b
    assert (a.sweep_id, a.name, a.spec, a.model_fingerprint, a.status, a.notes) == (
        "s1", "name", SPEC, "fp", "running", "hello"
    )
    assert store.get_sweep("s1") == a
    assert store.get_sweep("missing") is None
    assert a.to_dict()["spec"] == SPEC


def test_create_sweep_with_same_id_but_other_spec_is_refused(store):
    store.create_sweep("s1", "name", SPEC, "fp")
    with pytest.raises(StoreError, match="s1.*different spec"):
        store.create_sweep("s1", "name", {"other": 1}, "fp")
    with pytest.raises(StoreError, match="different model fingerprint"):
        store.create_sweep("s1", "name", SPEC, "fp-2")


def test_list_sweeps_newest_first(store):
    for i in range(3):
        store.create_sweep(f"s{i}", f"n{i}", SPEC, "fp")
    assert [s.sweep_id for s in store.list_sweeps()] == ["s2", "s1", "s0"]


def test_sweep_status_and_notes(store, sweep):
    for status in ("done", "cancelled", "running"):
        store.set_sweep_status(sweep, status)
        assert store.get_sweep(sweep).status == status
    store.set_sweep_notes(sweep, "8-bit is best")
    assert store.get_sweep(sweep).notes == "8-bit is best"
    with pytest.raises(StoreError, match="unknown sweep status 'finished'"):
        store.set_sweep_status(sweep, "finished")
    with pytest.raises(StoreError, match="no sweep 'nope'"):
        store.set_sweep_status("nope", "done")


# --------------------------------------------------------------------------- contract: runs


def test_add_runs_returns_pending_rows_in_order(store, sweep):
    specs = [spec(i) for i in range(5)]
    runs = store.add_runs(sweep, specs)
    assert [r.run_id for r in runs] == [s.run_id for s in specs]
    r = runs[2]
    assert (r.state, r.attempts, r.technique, r.family, r.config, r.label) == (
        PENDING, 0, "palettize", "post_training", {"nbits": 2}, "palettize 2"
    )
    assert (r.worker, r.metrics, r.sweep_ids, r.sweep_id) == (None, None, ("s1",), "s1")
    assert [x.run_id for x in store.list_runs(sweep)] == [s.run_id for s in specs]
    assert store.counts(sweep) == {PENDING: 5, RUNNING: 0, COMPLETE: 0, FAILED: 0}


def test_add_runs_links_existing_runs_without_duplicating(store, sweep):
    first = store.add_runs(sweep, [spec(0), spec(1)])
    store.claim_run(first[0].run_id, "host:1")
    store.complete_run(first[0].run_id, {"top1": 0.9}, {"bytes": 10}, {"total_s": 1.0})
    again = store.add_runs(sweep, [spec(1), spec(2), spec(0)])  # re-adding is harmless
    assert [r.run_id for r in again] == [spec(1).run_id, spec(2).run_id, spec(0).run_id]
    assert [r.run_id for r in store.list_runs(sweep)] == [spec(i).run_id for i in range(3)]

    store.create_sweep("s2", "later", {"grid": 2}, "fp-1")
    reused = store.add_runs("s2", [spec(0), spec(9)])
    assert reused[0].state == COMPLETE and reused[0].metrics == {"top1": 0.9}  # cached result reused
    assert reused[0].sweep_ids == ("s1", "s2")
    assert store.counts("s2") == {PENDING: 1, RUNNING: 0, COMPLETE: 1, FAILED: 0}
    assert store.counts(sweep)[PENDING] == 2


def test_add_runs_refuses_a_run_id_reused_for_another_config(store, sweep):
    store.add_runs(sweep, [spec(0)])
    clash = RunSpec(spec(0).run_id, "prune", "post_training", {"sparsity": 0.5})
    with pytest.raises(StoreError, match="already stored for a different run"):
        store.add_runs(sweep, [spec(1), clash])
    assert store.get_run(spec(1).run_id) is None  # the whole batch was rolled back


def test_add_runs_to_unknown_sweep_fails(store):
    with pytest.raises(StoreError, match="no sweep 'ghost'"):
        store.add_runs("ghost", [spec(0)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"run_id": "../etc"}, "invalid run id"),
        ({"run_id": "ABCDEF01"}, "invalid run id"),
        ({"run_id": "abc"}, "invalid run id"),
        ({"family": "quantum"}, "unknown family 'quantum'"),
        ({"technique": ""}, "technique must be"),
        ({"config": [1]}, "config must be a dict"),
    ],
)
def test_run_spec_validates(kwargs, message):
    args = {"run_id": "abcdef01", "technique": "t", "family": "baseline", "config": {}, "label": ""} | kwargs
    with pytest.raises(StoreError, match=message):
        RunSpec(**args)


def test_list_runs_filters_by_state_and_unknown_sweep_is_empty(store, sweep):
    ids = [r.run_id for r in store.add_runs(sweep, [spec(i) for i in range(4)])]
    store.claim_run(ids[1], "host:1")
    store.claim_run(ids[3], "host:1")
    store.fail_run(ids[3], "boom")
    assert [r.run_id for r in store.list_runs(sweep, [RUNNING, FAILED])] == [ids[1], ids[3]]
    assert [r.run_id for r in store.list_runs(sweep, PENDING)] == [ids[0], ids[2]]
    with pytest.raises(StoreError, match="unknown run state"):
        store.list_runs(sweep, ["DONE"])
    assert store.list_runs("ghost") == []
    assert store.counts("ghost") == {PENDING: 0, RUNNING: 0, COMPLETE: 0, FAILED: 0}


# --------------------------------------------------------------------------- contract: transitions


def test_pending_to_running_by_claim(store, sweep):
    run_id = store.add_runs(sweep, [spec(0)])[0].run_id
    before = time.time()
    assert store.claim_run(run_id, "host:7")
    r = store.get_run(run_id)
    assert (r.state, r.worker, r.attempts) == (RUNNING, "host:7", 1)
    assert r.started_at >= before and r.heartbeat_at == r.started_at


def test_running_cannot_be_claimed_again_even_by_same_worker(store, sweep):
    (run_id,) = claimed(store, sweep)
    assert store.claim_run(run_id, "host:2") is False
    assert store.claim_run(run_id, "host:1") is False
    assert store.get_run(run_id).worker == "host:1"


def test_running_to_complete(store, sweep):
    (run_id,) = claimed(store, sweep)
    r = store.complete_run(
        run_id,
        {"top1": 0.98, "per_class": [0.9, 1.0]},
        {"bytes": 1234, "ratio_fp16": 2.0},
        {"total_s": 3.5},
        "artifacts/" + run_id + "/model.mlpackage",
        worker="host:1",
    )
    assert r == store.get_run(run_id)
    assert (r.state, r.metrics["top1"], r.sizes["bytes"], r.timings["total_s"]) == (COMPLETE, 0.98, 1234, 3.5)
    assert r.artifact_path == f"artifacts/{run_id}/model.mlpackage"
    assert r.finished_at >= r.started_at
    assert r.to_dict()["metrics"]["per_class"] == [0.9, 1.0]


def test_running_to_failed_then_retry_to_running(store, sweep):
    (run_id,) = claimed(store, sweep)
    r = store.fail_run(run_id, "ValueError: bad nbits", "Traceback ...")
    assert (r.state, r.error, r.traceback) == (FAILED, "ValueError: bad nbits", "Traceback ...")
    assert store.claim_run(run_id, "host:2") is False  # FAILED is not retried unless asked
    assert store.claim_run(run_id, "host:2", retry=True)
    r = store.get_run(run_id)
    assert (r.state, r.worker, r.attempts, r.error, r.traceback, r.finished_at) == (
        RUNNING, "host:2", 2, None, None, None
    )


def test_complete_is_final(store, sweep):
    (run_id,) = claimed(store, sweep)
    store.complete_run(run_id, {"top1": 1.0}, {}, {})
    assert store.claim_run(run_id, "host:2") is False
    assert store.claim_run(run_id, "host:2", retry=True) is False
    with pytest.raises(StoreError, match=f"cannot complete run {run_id}: it is COMPLETE"):
        store.complete_run(run_id, {"top1": 0.0}, {}, {})
    with pytest.raises(StoreError, match="cannot fail run .* it is COMPLETE"):
        store.fail_run(run_id, "late error")
    assert store.get_run(run_id).metrics == {"top1": 1.0}


def test_unclaimed_run_cannot_finish(store, sweep):
    run_id = store.add_runs(sweep, [spec(0)])[0].run_id
    with pytest.raises(StoreError, match="it is PENDING, not RUNNING.*claim it first"):
        store.complete_run(run_id, {}, {}, {})
    with pytest.raises(StoreError, match="cannot fail run .* PENDING"):
        store.fail_run(run_id, "x")
    assert store.get_run(run_id).state == PENDING


def test_failed_run_cannot_be_failed_or_completed_again(store, sweep):
    (run_id,) = claimed(store, sweep)
    store.fail_run(run_id, "first")
    with pytest.raises(StoreError, match="it is FAILED"):
        store.fail_run(run_id, "second")
    with pytest.raises(StoreError, match="it is FAILED"):
        store.complete_run(run_id, {}, {}, {})
    assert store.get_run(run_id).error == "first"


def test_only_the_holder_may_finish_or_heartbeat(store, sweep):
    (run_id,) = claimed(store, sweep, worker="host:1")
    with pytest.raises(StoreError, match="held by host:1"):
        store.complete_run(run_id, {}, {}, {}, worker="host:2")
    with pytest.raises(StoreError, match="no longer held by host:2"):
        store.heartbeat(run_id, "host:2")
    assert store.get_run(run_id).state == RUNNING


def test_heartbeat_moves_forward_and_fails_after_the_run_is_finished(store, sweep):
    (run_id,) = claimed(store, sweep)
    first = store.get_run(run_id).heartbeat_at
    time.sleep(0.01)
    store.heartbeat(run_id, "host:1")
    assert store.get_run(run_id).heartbeat_at > first
    store.complete_run(run_id, {}, {}, {})
    with pytest.raises(StoreError, match="it is COMPLETE"):
        store.heartbeat(run_id, "host:1")


def test_unknown_run(store, sweep):
    assert store.get_run("abcdef0123") is None
    with pytest.raises(StoreError, match="no run abcdef0123"):
        store.claim_run("abcdef0123", "host:1")
    with pytest.raises(StoreError, match="no run abcdef0123"):
        store.complete_run("abcdef0123", {}, {}, {})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reset_stale_returns_runs_of_dead_workers_to_pending(store, sweep):
    a, b, c = (r.run_id for r in store.add_runs(sweep, [spec(i) for i in range(3)]))
    dead = worker_name().split(":")[0] + f":{_dead_pid()}"
    assert worker_alive(dead) is False and worker_alive(worker_name()) is True
    store.claim_run(a, dead)
    store.claim_run(b, worker_name())  # alive: this very process
    store.claim_run(c, "other-host:1")  # cannot tell: only the heartbeat age decides
    assert store.reset_stale(sweep) == 1
    r = store.get_run(a)
    assert (r.state, r.worker, r.started_at, r.attempts) == (PENDING, None, None, 1)
    assert store.get_run(b).state == RUNNING and store.get_run(c).state == RUNNING
    assert store.reset_stale(sweep, older_than_s=60) == 0
    time.sleep(0.05)
    store.heartbeat(b, worker_name())
    assert store.reset_stale(sweep, older_than_s=0.04) == 1  # c's heartbeat is old, b's fresh
    assert store.get_run(c).state == PENDING and store.get_run(b).state == RUNNING
    assert store.claim_run(a, "host:9") and store.get_run(a).attempts == 2
    with pytest.raises(StoreError, match="no longer held"):
        store.heartbeat(c, "other-host:1")  # the old worker learns it lost the run


def test_reset_stale_only_touches_the_given_sweep(store, sweep):
    store.create_sweep("s2", "other", {}, "fp")
    dead = worker_name().split(":")[0] + f":{_dead_pid()}"
    (mine,) = claimed(store, sweep, worker=dead)
    other = store.add_runs("s2", [spec(5)])[0].run_id
    store.claim_run(other, dead)
    assert store.reset_stale("s2") == 1
    assert store.get_run(mine).state == RUNNING and store.get_run(other).state == PENDING


# --------------------------------------------------------------------------- contract: JSON, deletion


def test_nan_inf_and_numpy_are_stored_as_plain_json(store, sweep):
    (run_id,) = claimed(store, sweep)
    metrics = {
        "top1": float("nan"), "loss": math.inf, "snr_db": -math.inf, "n": np.int64(100),
        "agreement": np.float32(0.5), "confusion": np.eye(2, dtype=np.int64), "per_class": [np.nan, 1.0],
    }
    original = dict(metrics)
    r = store.complete_run(run_id, metrics, {"per_op": ({"bits": 4},)}, {"total_s": np.float64(1.5)})
    assert r.metrics == {
        "top1": None, "loss": None, "snr_db": None, "n": 100, "agreement": 0.5,
        "confusion": [[1, 0], [0, 1]], "per_class": [None, 1.0],
    }
    assert r.sizes == {"per_op": [{"bits": 4}]} and r.timings == {"total_s": 1.5}
    assert metrics.keys() == original.keys() and metrics["confusion"] is original["confusion"]  # input untouched
    store.create_sweep("s-nan", "n", {"lr": float("nan")}, "fp")
    assert store.get_sweep("s-nan").spec == {"lr": None}


def test_unstorable_value_is_a_clear_error(store, sweep):
    (run_id,) = claimed(store, sweep)
    with pytest.raises(StoreError, match="cannot store value .*object"):
        store.complete_run(run_id, {"model": object()}, {}, {})
    assert store.get_run(run_id).state == RUNNING


def test_delete_sweep_keeps_shared_runs_and_removes_orphans_with_artifacts(store, sweep):
    shared, own = (r.run_id for r in store.add_runs(sweep, [spec(0), spec(1)]))
    store.create_sweep("s2", "other", {}, "fp")
    store.add_runs("s2", [spec(0)])
    (artifact_dir(store.folder, own) / "model.bin").write_bytes(b"x")
    artifact_dir(store.folder, shared)
    assert store.delete_sweep(sweep) == [own]
    assert store.get_sweep(sweep) is None and store.get_run(own) is None
    assert not artifact_dir(store.folder, own, create=False).exists()
    assert artifact_dir(store.folder, shared, create=False).exists()
    assert store.get_run(shared).sweep_ids == ("s2",)
    assert store.delete_sweep(sweep) == []  # deleting again is a no-op
    assert store.delete_sweep("s2") == [shared]
    assert store.list_sweeps() == []


def test_store_reopens_with_its_data_and_pickles(make_store, tmp_path):
    s = make_store(tmp_path)
    s.create_sweep("s1", "n", SPEC, "fp")
    (run_id,) = claimed(s, "s1")
    s.close()
    again = make_store(tmp_path)
    assert again.get_run(run_id).state == RUNNING
    copy = pickle.loads(pickle.dumps(again))
    copy.complete_run(run_id, {"top1": 0.5}, {}, {})
    assert again.get_run(run_id).metrics == {"top1": 0.5}


def test_threads_claim_disjoint_sets(store, sweep):
    ids = [r.run_id for r in store.add_runs(sweep, [spec(i) for i in range(60)])]
    got: dict[int, list[str]] = {}
    barrier = threading.Barrier(4)

    def claim_all(t: int) -> None:
        barrier.wait()
        got[t] = [i for i in ids if store.claim_run(i, worker_name(f"t{t}"))]

    threads = [threading.Thread(target=claim_all, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [i for lst in got.values() for i in lst]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))


# --------------------------------------------------------------------------- SQLite guarantees


def test_sqlite_pragmas(tmp_path):
    s = open_store(tmp_path)
    conn = s._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {
        "schema_version", "sweeps", "runs", "sweep_runs"
    }
    assert s.integrity_check() == "ok"


def test_each_thread_and_forked_process_gets_its_own_connection(tmp_path):
    s = open_store(tmp_path)
    main_conn = s._connection()
    other: list = []
    t = threading.Thread(target=lambda: other.append(s._connection()))
    t.start()
    t.join()
    assert other[0] is not main_conn and s._connection() is main_conn
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_report_connection_identity, args=(s, id(main_conn), q))
    p.start()
    assert q.get(timeout=20) is True
    p.join(10)
    assert p.exitcode == 0


def _report_connection_identity(s, parent_conn_id, q):
    q.put(id(s._connection()) != parent_conn_id and s.list_sweeps() == [])


def _worker_add_claim_complete(s, k, n, barrier, q):
    try:
        barrier.wait()
        specs = [RunSpec(rid("proc", k, i), "palettize", "post_training", {"k": k, "i": i}, "") for i in range(n)]
        s.add_runs("shared", specs)
        for i, sp in enumerate(specs):
            assert s.claim_run(sp.run_id, f"host:{k}")
            s.heartbeat(sp.run_id, f"host:{k}")
            s.complete_run(sp.run_id, {"top1": k + i / 1000}, {"bytes": i}, {"total_s": 0.1}, worker=f"host:{k}")
        q.put(k)
    except BaseException as exc:  # report instead of leaving the parent waiting
        q.put(repr(exc))


def _worker_open_fresh(folder, barrier, q):
    try:
        barrier.wait()
        open_store(folder).create_sweep("x", "n", {}, "fp")
        q.put("ok")
    except BaseException as exc:
        q.put(repr(exc))


def test_processes_creating_the_same_new_store_at_once(tmp_path):
    ctx = mp.get_context("fork")
    for attempt in range(5):
        barrier, q = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_worker_open_fresh, args=(tmp_path / str(attempt), barrier, q)) for _ in range(6)]
        for p in procs:
            p.start()
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        assert results == ["ok"] * 6
        assert [s.sweep_id for s in open_store(tmp_path / str(attempt)).list_sweeps()] == ["x"]


def _worker_claim_race(s, ids, k, barrier, q):
    won = []
    for i in ids:
        barrier.wait()  # every process tries every run at the same moment: each claim is really contested
        if s.claim_run(i, f"host:{k}"):
            won.append(i)
    q.put((k, won))


def test_processes_write_concurrently_without_losing_rows(tmp_path):
    s = open_store(tmp_path)
    s.create_sweep("shared", "n", {}, "fp")
    ctx, n_proc, n_runs = mp.get_context("fork"), 4, 100
    barrier, q = ctx.Barrier(n_proc), ctx.Queue()
    procs = [ctx.Process(target=_worker_add_claim_complete, args=(s, k, n_runs, barrier, q)) for k in range(n_proc)]
    for p in procs:
        p.start()
    done = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sorted(done, key=str) == list(range(n_proc)), done
    assert all(p.exitcode == 0 for p in procs)
    assert s.integrity_check() == "ok"
    assert s.counts("shared") == {PENDING: 0, RUNNING: 0, COMPLETE: n_proc * n_runs, FAILED: 0}
    runs = s.list_runs("shared")
    assert len({r.run_id for r in runs}) == n_proc * n_runs
    assert all(r.metrics["top1"] == r.config["k"] + r.config["i"] / 1000 for r in runs)


def test_concurrent_claimers_get_disjoint_sets(tmp_path):
    s = open_store(tmp_path)
    s.create_sweep("race", "n", {}, "fp")
    ids = [r.run_id for r in s.add_runs("race", [spec(i) for i in range(200)])]
    ctx, n_proc = mp.get_context("fork"), 4
    barrier, q = ctx.Barrier(n_proc), ctx.Queue()
    procs = [ctx.Process(target=_worker_claim_race, args=(s, ids, k, barrier, q)) for k in range(n_proc)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(10)
    assert sorted(got) == list(range(n_proc))
    flat = [i for lst in got.values() for i in lst]
    assert len(flat) == len(set(flat)) == len(ids)  # every run claimed exactly once, though all four tried each
    holders = {r.run_id: r.worker for r in s.list_runs("race")}
    assert all(holders[i] == f"host:{k}" for k, lst in got.items() for i in lst)
    assert s.integrity_check() == "ok"


_KILL_WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from compress_lab.store import open_store, RunSpec
    s = open_store(sys.argv[1])
    s.create_sweep("k", "n", {}, "fp")
    batch = 0
    while True:
        specs = [RunSpec(hashlib.sha256(f"{batch}-{i}".encode()).hexdigest()[:16], "palettize", "post_training",
                         {"batch": batch, "i": i, "pad": "x" * 2000}, "") for i in range(50)]
        s.add_runs("k", specs)
        s.claim_run(specs[0].run_id, "w")
        s.complete_run(specs[0].run_id, {"top1": 1.0, "pad": "y" * 5000}, {"bytes": 1}, {})
        batch += 1
        print(batch, flush=True)
    """
)


def test_sigkill_mid_write_leaves_a_consistent_store(tmp_path):
    for attempt in range(3):
        folder = tmp_path / f"k{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_WRITER, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(5 + 7 * attempt):  # kill at different points
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        s = open_store(folder)
        assert s.integrity_check() == "ok"
        counts = s.counts("k")
        total = sum(counts.values())
        assert total >= 50 * (5 + 7 * attempt) and total % 50 == 0  # batches are all-or-nothing
        assert counts[RUNNING] <= 1
        assert all(r.metrics["top1"] == 1.0 for r in s.list_runs("k", [COMPLETE]))
        s.add_runs("k", [spec(0)])  # still writable
        s.close()


def test_file_that_is_not_sqlite_is_a_clear_error(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is a CSV, not a database\n" * 200)
    with pytest.raises(StoreError, match=f"{tmp_path / 'results.sqlite'} is not a SQLite database.*move"):
        open_store(tmp_path)


def test_foreign_sqlite_db_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "results.sqlite")
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a compress lab results store.*songs"):
        open_store(tmp_path)


def test_unusable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=f"cannot create the results folder {blocker / 'sub'}.*writ"):
        open_store(blocker / "sub")
    with pytest.raises(StoreError, match="does not exist.*open_store"):
        SQLiteStore(tmp_path / "missing" / "results.sqlite")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=f"{folder}.*writable"):
            open_store(folder)
    finally:
        folder.chmod(0o755)


def test_disk_full_is_a_store_error_and_leaves_the_store_intact(tmp_path):
    s = open_store(tmp_path)
    s.create_sweep("s1", "n", SPEC, "fp")
    before = s.add_runs("s1", [spec(i) for i in range(3)])
    conn = s._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # a real SQLite limit: the file cannot grow
    big = [RunSpec(rid("big", i), "prune", "post_training", {"pad": "z" * 20000, "i": i}) for i in range(20)]
    with pytest.raises(StoreError, match="disk is full.*free some space.*intact"):
        s.add_runs("s1", big)
    assert s.integrity_check() == "ok"
    assert s.list_runs("s1") == before  # the failed batch left nothing behind
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert len(s.add_runs("s1", big)) == 20


def test_newer_schema_version_is_refused(tmp_path):
    s = open_store(tmp_path)
    s._connection().execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    s.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer.*upgrade compress_lab"):
        open_store(tmp_path)


def test_migration_hook_upgrades_an_older_store(tmp_path):
    s = open_store(tmp_path)
    s.create_sweep("s1", "n", SPEC, "fp")
    s.close()

    class NextStore(SQLiteStore):
        schema_version = SCHEMA_VERSION + 1
        migrations = {SCHEMA_VERSION: lambda conn: conn.execute("ALTER TABLE sweeps ADD COLUMN owner TEXT")}

    upgraded = NextStore(tmp_path / "results.sqlite")
    conn = upgraded._connection()
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "owner" in [r[1] for r in conn.execute("PRAGMA table_info(sweeps)")]
    assert upgraded.get_sweep("s1").spec == SPEC

    class Unreachable(SQLiteStore):
        schema_version = SCHEMA_VERSION + 3
        migrations = {}

    with pytest.raises(StoreError, match="no migration"):
        Unreachable(tmp_path / "results.sqlite")


# --------------------------------------------------------------------------- artifacts


def test_artifact_dir_lives_under_artifacts(tmp_path):
    path = artifact_dir(tmp_path, "abcdef0123")
    assert path == tmp_path / "artifacts" / "abcdef0123" and path.is_dir()
    assert relative_artifact_path(tmp_path, path / "model.mlpackage") == "artifacts/abcdef0123/model.mlpackage"
    assert resolve_artifact(tmp_path, "artifacts/abcdef0123/model.mlpackage") == path / "model.mlpackage"


@pytest.mark.parametrize("run_id", ["..", "../abcdef0123", "abcdef01/../x", "/tmp/abcdef01", "ABCDEF0123", ""])
def test_artifact_dir_rejects_unsafe_run_ids(tmp_path, run_id):
    with pytest.raises(StoreError, match="invalid run id"):
        artifact_dir(tmp_path, run_id)
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/etc/passwd", "a\\b", "C:\\x", "x\x00y"])
def test_safe_join_rejects_traversal(tmp_path, name):
    with pytest.raises(StoreError, match="name"):
        safe_join(tmp_path, name)


def test_safe_join_rejects_symlink_escape_and_accepts_plain_names(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "link").symlink_to(tmp_path)
    with pytest.raises(StoreError, match="resolves outside"):
        safe_join(tmp_path / "base", "link")
    assert safe_join(tmp_path / "base", "model.mlpackage") == tmp_path / "base" / "model.mlpackage"


def test_artifact_paths_outside_the_store_are_refused(store, sweep, tmp_path):
    (run_id,) = claimed(store, sweep)
    for bad in ("../elsewhere/model", "artifacts/../../x"):
        with pytest.raises(StoreError, match="invalid artifact path"):
            store.complete_run(run_id, {}, {}, {}, bad)
    with pytest.raises(StoreError, match="outside the store folder"):
        store.complete_run(run_id, {}, {}, {}, "/etc/passwd")
    with pytest.raises(StoreError, match="outside the store folder"):
        relative_artifact_path(store.folder, tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="invalid artifact path"):
        resolve_artifact(store.folder, "../x")
    assert store.get_run(run_id).state == RUNNING
    inside = artifact_dir(store.folder, run_id) / "model.mlpackage"
    assert store.complete_run(run_id, {}, {}, {}, inside).artifact_path == f"artifacts/{run_id}/model.mlpackage"
