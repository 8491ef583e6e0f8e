"""Saving uploaded model files under a per-session folder, with safe names.

No name an upload carries can place a file outside its folder: each file name
is reduced to letters, digits, '.', '_' and '-', and zip members are checked
before extraction (no absolute paths, no '..', no links, bounded total size)."""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path
from typing import Iterable

from compress_lab.errors import ModelLoadError
from compress_lab.export import safe_name
from compress_lab_app.session import ModelChoice

MAX_UNZIPPED_BYTES = 2 << 30   # a model package; well above the largest a phone app ships
MAX_ZIP_ENTRIES = 2000          # an .mlpackage has a handful of files
MAX_COMPRESSION_RATIO = 200     # weights barely compress; a far higher ratio is a zip bomb
MODEL_SUFFIXES = (".zip", ".pt", ".pth", ".ts", ".py", ".json")


def upload_folder(root: str | Path, session: str) -> Path:
    """A fresh folder for one upload: `<root>/<session>/<random>/`."""
    folder = Path(root) / safe_name(session, "session") / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def save_files(folder: Path, files: Iterable[tuple[str, bytes]]) -> list[Path]:
    """Write (name, bytes) pairs into `folder` under sanitized names; returns the paths."""
    saved = []
    for name, data in files:
        clean = safe_name(Path(str(name).replace("\\", "/")).name, "upload")
        path = folder / clean
        if not path.resolve().is_relative_to(folder.resolve()):
            raise ModelLoadError(f"refusing upload name {name!r}")
        path.write_bytes(data)
        saved.append(path)
    return saved


def extract_zip(archive: Path, dest: Path) -> Path:
    """Extract `archive` into `dest` after checking every member; returns `dest`."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{archive.name} is not a valid zip file; zip the .mlpackage folder and upload again") from None
    with zf:
        total = 0
        for info in zf.infolist():
            parts = Path(info.filename.replace("\\", "/")).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or any(":" in p for p in parts):
                raise ModelLoadError(f"zip member {info.filename!r} would land outside the upload folder; refused")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelLoadError(f"zip member {info.filename!r} is a symbolic link; refused")
            total += info.file_size
        members = zf.infolist()
        if len(members) > MAX_ZIP_ENTRIES:
            raise ModelLoadError(f"{archive.name} has {len(members):,} entries, more than the {MAX_ZIP_ENTRIES:,} an "
                                 ".mlpackage zip needs; refused")
        if total > MAX_UNZIPPED_BYTES:
            raise ModelLoadError(f"{archive.name} unzips to {total:,} bytes, more than the {MAX_UNZIPPED_BYTES:,} allowed")
        if total > (64 << 20) and total > MAX_COMPRESSION_RATIO * max(archive.stat().st_size, 1):
            raise ModelLoadError(f"{archive.name} unzips to {total:,} bytes from {archive.stat().st_size:,}: "
                                 "a compression ratio no model package has; refused as a zip bomb")
        for info in zf.infolist():
            if info.filename.startswith("__MACOSX"):
                continue
            target = dest.joinpath(*Path(info.filename.replace("\\", "/")).parts)
            if not target.resolve().is_relative_to(dest.resolve()):
                raise ModelLoadError(f"zip member {info.filename!r} would land outside the upload folder; refused")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy_capped(zf, info, target)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
                target.unlink(missing_ok=True)
                raise ModelLoadError(f"{archive.name}: member {info.filename!r} is corrupt or lies about its size "
                                     f"({e}); zip the .mlpackage folder again and upload it") from None
    return dest


def _copy_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Copy one member, never writing more than its declared size (a header may lie)."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise ValueError(f"it holds more than the {info.file_size:,} bytes its header declares")
            out.write(chunk)


def model_from_folder(folder: Path) -> ModelChoice:
    """Work out which model the uploaded files in `folder` make up."""
    for archive in sorted(folder.glob("*.zip")):
        extract_zip(archive, folder / archive.stem)
    packages = sorted(p for p in folder.rglob("*.mlpackage") if (p / "Manifest.json").is_file())
    if packages:
        metadata = _one(folder, "*.json", exclude={"Manifest.json"})
        return ModelChoice(str(packages[0]), metadata=str(metadata) if metadata else None, origin="upload")
    definition = _one(folder, "*.py")
    metadata = _one(folder, "*.json", exclude={"Manifest.json"})
    weights = [p for p in folder.rglob("*") if p.suffix in (".pt", ".pth", ".ts") and p.is_file()]
    if metadata is None:
        raise ModelLoadError("the upload has no metadata.json (input_shape, class_names, preprocessing); add it to the upload")
    if definition is not None:
        if len(weights) != 1:
            raise ModelLoadError(f"a model.py upload needs exactly one weights file (.pt), got {len(weights)}")
        return ModelChoice(str(definition), weights=str(weights[0]), metadata=str(metadata), origin="upload")
    if len(weights) == 1:
        return ModelChoice(str(weights[0]), metadata=str(metadata), origin="upload")
    raise ModelLoadError("upload one of: an .mlpackage zipped; a TorchScript .pt + metadata.json; "
                         "or model.py + weights.pt + metadata.json")


def _one(folder: Path, pattern: str, exclude: set[str] = frozenset()) -> Path | None:
    found = sorted(p for p in folder.rglob(pattern) if p.is_file() and p.name not in exclude
                   and ".mlpackage" not in "".join(p.parts[:-1]))
    return found[0] if found else None
