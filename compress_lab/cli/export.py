"""`compress-lab export RUN_ID --store DIR --out PATH`: a run's .mlpackage, with its
config and metrics in the model's metadata."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("run_id", help="a run id, or its first characters (the run_id column of `compress-lab results`)")
    parser.add_argument("--store", help="the sweep's store folder (default: the one store under the current folder)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .mlpackage")
    parser.add_argument("--force", action="store_true", help="replace PATH if it exists")


def run(args) -> int:
    from compress_lab.export import export_mlpackage
    from compress_lab.store import open_store
    from compress_lab.store.locate import find_run, find_store_folder

    folder = find_store_folder(args.store)
    store = open_store(folder)
    run_ = find_run(store, args.run_id)
    out = export_mlpackage(folder, run_, args.out, overwrite=args.force)
    print(f"{run_.label} ({run_.run_id[:12]}): {out}")
    return 0
