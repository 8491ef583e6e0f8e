"""Start a sweep as a detached background process (it keeps running when the
browser tab, or the app, is closed) and find it again from its store folder.

The process is `python -m compress_lab.cli.sweep SPEC --store DIR --yes`; its
output goes to `DIR/sweep.log`, its pid to `DIR/sweep.pid`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from compress_lab.errors import LabError

LOG_FILE = "sweep.log"
PID_FILE = "sweep.pid"
SPEC_FILE = "spec.json"


@dataclass
class SweepHandle:
    store_folder: Path
    pid: int

    @property
    def log_path(self) -> Path:
        return self.store_folder / LOG_FILE

    def is_running(self) -> bool:
        from compress_lab.store import worker_alive
        return bool(worker_alive(f"{_host()}:{self.pid}"))

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the process to end; True if it ended."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.is_running():
            if deadline is not None and time.monotonic() > deadline:
                return False
            _reap(self.pid)
            time.sleep(0.2)
        _reap(self.pid)
        return True

    def cancel(self) -> None:
        """Ask the sweep to stop (runs in flight are stopped and redone on resume)."""
        from compress_lab.sweep.runner import request_cancel
        request_cancel(self.store_folder)

    def terminate(self) -> None:
        if self.is_running():
            os.kill(self.pid, signal.SIGTERM)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        text = text.replace("\r", "\n")
        return "\n".join([l for l in text.splitlines() if l.strip()][-lines:])

    def store(self):
        from compress_lab.store import open_store
        return open_store(self.store_folder)

    @classmethod
    def find(cls, store_folder: str | Path) -> "SweepHandle | None":
        """The sweep process last started on `store_folder` (running or not), if any."""
        path = Path(store_folder) / PID_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(Path(store_folder), int(data["pid"]))


def _host() -> str:
    import socket
    return socket.gethostname()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def launch_background(spec, store_folder: str | Path, *, workers: int | None = None, executor: str | None = None,
                      address: str | None = None, timeout_s: float | None = None) -> SweepHandle:
    """Start the sweep of `spec` (a spec file path or a SweepSpec) into `store_folder` in a detached process.

    Refuses when a sweep process is already running on that store folder (find it with SweepHandle.find)."""
    from compress_lab.sweep.spec import SweepSpec

    store_folder = Path(store_folder).resolve()
    store_folder.mkdir(parents=True, exist_ok=True)
    existing = SweepHandle.find(store_folder)
    if existing is not None and existing.is_running():
        raise LabError(f"a sweep is already running on {store_folder} (pid {existing.pid}); wait for it or cancel it")
    if isinstance(spec, SweepSpec):
        spec_path = store_folder / SPEC_FILE
        spec_path.write_text(json.dumps(spec.to_dict(), indent=2))
    else:
        spec_path = Path(spec).resolve()
    command = [sys.executable, "-m", "compress_lab.cli.sweep", str(spec_path), "--store", str(store_folder), "--yes"]
    for flag, value in (("--workers", workers), ("--executor", executor), ("--address", address), ("--timeout", timeout_s)):
        if value is not None:
            command += [flag, str(value)]
    (store_folder / "CANCEL").unlink(missing_ok=True)
    with open(store_folder / LOG_FILE, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=str(spec_path.parent))
    (store_folder / PID_FILE).write_text(json.dumps({"pid": process.pid, "started_at": time.time(),
                                                     "spec": str(spec_path), "command": command}))
    return SweepHandle(store_folder, process.pid)
