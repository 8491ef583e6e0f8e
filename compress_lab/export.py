"""Export what a sweep produced: one run as a zip (its .mlpackage, config.json,
metrics.json) and a sweep's results as CSV. Names inside the zip are made
safe (plain ASCII, no path separators), so unzipping cannot write outside the
folder it is unzipped into."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from compress_lab.errors import StoreError

SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_EXPORT_FILES = 10_000          # an .mlpackage holds a handful; more means something else was put there
MAX_EXPORT_BYTES = 8 * 1024 ** 3   # the zip is built in memory
MAX_NAME = 80
CSV_COLUMNS = ("run_id", "label", "technique", "family", "state", "top1", "top5", "agreement", "snr_db", "loss", "n",
               "bytes", "weight_bytes", "ratio_fp16", "ratio_fp32", "bits_per_weight",
               "compress_s", "finetune_s", "convert_s", "evaluate_s", "total_s", "error")


def safe_name(text: Any, fallback: str = "run") -> str:
    """`text` as a file name of letters, digits, '.', '_' and '-' only (at most 80 chars);
    never empty, never '.'/'..', never starting with a dot."""
    name = SAFE_CHARS.sub("_", str(text or "")).strip("._-")[:MAX_NAME].strip("._-")
    return name or fallback


@dataclass(frozen=True)
class RunExport:
    file_name: str   # the zip's suggested file name
    data: bytes      # the zip itself
    entries: tuple[str, ...]


def find_mlpackage(store_folder: str | Path, artifact_path: str | None) -> Path:
    """The .mlpackage a run recorded (its artifact path is the package or a folder holding one)."""
    from compress_lab.store import resolve_artifact

    if not artifact_path:
        raise StoreError("this run has no exported model (it failed, is still running, or is the baseline without a package)")
    path = resolve_artifact(store_folder, artifact_path)
    if path.suffix == ".mlpackage" and (path / "Manifest.json").is_file():
        return path
    if path.is_dir():
        found = sorted(p for p in path.glob("*.mlpackage") if (p / "Manifest.json").is_file())
        if found:
            return found[0]
    raise StoreError(f"the run's model package {artifact_path!r} is missing from the store folder {store_folder}; "
                     "run the sweep again to rebuild it")


def export_run(store_folder: str | Path, run: Any, model_name: str = "") -> RunExport:
    """A zip with `<name>.mlpackage/...`, `config.json` and `metrics.json` for one stored run."""
    package = find_mlpackage(store_folder, _get(run, "artifact_path"))
    label = _get(run, "label") or _get(run, "technique") or "run"
    base = safe_name(f"{model_name}-{label}" if model_name else label)
    config = {"run_id": _get(run, "run_id"), "technique": _get(run, "technique"), "family": _get(run, "family"),
              "label": label, "config": _get(run, "config") or {}}
    metrics = {"run_id": _get(run, "run_id"), "metrics": _get(run, "metrics") or {}, "sizes": _get(run, "sizes") or {},
               "timings": _get(run, "timings") or {}}
    files = _package_files(package)
    buffer = io.BytesIO()
    entries = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in files:
            parts = [safe_name(part, "_") for part in file.relative_to(package).parts]
            arcname = "/".join([f"{base}.mlpackage", *parts])
            zf.write(file, arcname)
            entries.append(arcname)
        for name, payload in (("config.json", config), ("metrics.json", metrics)):
            zf.writestr(name, json.dumps(payload, indent=2, default=str))
            entries.append(name)
    return RunExport(file_name=f"{base}.zip", data=buffer.getvalue(), entries=tuple(entries))


METADATA_PREFIX = "com.compress_lab."


def _package_files(package: Path) -> list[Path]:
    """The package's regular files, checked before anything is zipped: links are never followed
    (a package is plain files; a link could point anywhere on the machine), and the count and
    total size are capped so a tampered store folder cannot make the export exhaust memory."""
    files, total = [], 0
    for path in sorted(package.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        files.append(path)
        total += path.stat().st_size
        if len(files) > MAX_EXPORT_FILES or total > MAX_EXPORT_BYTES:
            raise StoreError(f"the package {package} holds more than {MAX_EXPORT_FILES:,} files or "
                             f"{MAX_EXPORT_BYTES / 1024 ** 3:.0f} GiB: not a model package the lab wrote; "
                             "run the sweep again to rebuild it")
    return files


def export_mlpackage(store_folder: str | Path, run: Any, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run's .mlpackage to `out` with its run id, technique, config, metrics and sizes
    in the model's user-defined metadata (keys `com.compress_lab.*`, JSON values)."""
    import coremltools as ct

    from compress_lab.models.convert import save_mlmodel
    from compress_lab.quiet import quiet_coremltools

    state = _get(run, "state")
    if state != "COMPLETE":
        raise StoreError(f"run {_get(run, 'run_id')} ({_get(run, 'label')}) is {state}, not COMPLETE: "
                         "only a finished run has a package to export")
    if (_get(run, "config") or {}).get("format") == "pytorch":
        raise StoreError("the PyTorch baseline has no Core ML package; export the fp32 or fp16 baseline, or a compressed run")
    package = find_mlpackage(store_folder, _get(run, "artifact_path"))
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise StoreError(f"--out {out} must end with .mlpackage (e.g. {out.with_suffix('.mlpackage').name})")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; choose another path or pass --force to replace it")
    if not out.parent.is_dir():
        raise StoreError(f"the folder {out.parent} does not exist; create it first")
    with quiet_coremltools():
        model = ct.models.MLModel(str(package), skip_model_load=True)
    meta = model.user_defined_metadata
    fields = {"run_id": _get(run, "run_id"), "label": _get(run, "label"), "technique": _get(run, "technique"),
              "workflow": _get(run, "family"), "config": _get(run, "config") or {}, "metrics": _get(run, "metrics") or {},
              "sizes": _get(run, "sizes") or {}}
    for key, value in fields.items():
        meta[METADATA_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, default=str)
    model.short_description = f"compress lab: {_get(run, 'label')}"
    return save_mlmodel(model, out)


def results_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """Rows of analysis.table.run_row as CSV text (known columns first, in a fixed order)."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r if not k.startswith("_")} - set(columns))  # "_...": bookkeeping
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*columns, *extra], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in [*columns, *extra]})
    return out.getvalue()


def _get(run: Any, key: str) -> Any:
    return run.get(key) if isinstance(run, dict) else getattr(run, key, None)
