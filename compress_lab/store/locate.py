"""Finding a results store and a sweep or run in it, for the CLI commands that read
one (`results`, `export`): clear errors that say which folders were looked at."""

from __future__ import annotations

from pathlib import Path

from compress_lab.errors import StoreError
from compress_lab.store.sqlite import DB_FILENAME as STORE_FILE


def find_store_folder(store: str | Path | None) -> Path:
    """`store` if given (it must hold results.sqlite); else the one store under the current
    folder: ./lab-store or ./.lab/<sweep name> (what `compress-lab sweep` writes by default)."""
    if store is not None:
        folder = Path(store)
        if not (folder / STORE_FILE).is_file():
            raise StoreError(f"{folder} holds no results store ({STORE_FILE}); give --store the folder a sweep wrote to "
                             "(`compress-lab sweep` prints it)")
        return folder
    cwd = Path.cwd()
    found = [p for p in [cwd / "lab-store", *sorted((cwd / ".lab").glob("*"))] if (p / STORE_FILE).is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise StoreError(f"no results store in {cwd} (looked for lab-store/ and .lab/*/); pass --store DIR, the folder "
                         "`compress-lab sweep` printed")
    raise StoreError("several results stores here: " + ", ".join(str(p) for p in found) + "; pass --store DIR to pick one")


def pick_sweep(store, sweep_id: str | None):
    """The sweep `sweep_id`, or the store's newest."""
    if sweep_id:
        sweep = store.get_sweep(sweep_id)
        if sweep is None:
            known = ", ".join(s.sweep_id for s in store.list_sweeps()[:10]) or "none"
            raise StoreError(f"no sweep {sweep_id!r} in the store {store.folder}; sweeps there: {known}")
        return sweep
    sweeps = store.list_sweeps()
    if not sweeps:
        raise StoreError(f"the store {store.folder} has no sweeps yet; run `compress-lab sweep SPEC.toml --store {store.folder}` first")
    return sweeps[0]


def find_run(store, run_id: str):
    """The run whose id is `run_id` or starts with it (as the results table shows ids shortened)."""
    text = (run_id or "").strip()
    if not text:
        raise StoreError("give a run id (the run_id column of `compress-lab results`)")
    run = store.get_run(text) if len(text) >= 16 else None
    if run is not None:
        return run
    matches = {r.run_id: r for sweep in store.list_sweeps() for r in store.list_runs(sweep.sweep_id)
               if r.run_id.startswith(text)}
    if len(matches) == 1:
        return next(iter(matches.values()))
    if not matches:
        raise StoreError(f"no run {text!r} in the store {store.folder}; `compress-lab results --store {store.folder}` "
                         "lists the run ids")
    raise StoreError(f"run id {text!r} matches {len(matches)} runs ({', '.join(sorted(matches)[:5])}); give more characters")
