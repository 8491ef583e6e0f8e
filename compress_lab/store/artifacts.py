"""Where a run's files live: `<store folder>/artifacts/<run_id>/`.

Nothing here lets a run id, a file name or a stored artifact path point
outside the store folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

from compress_lab.errors import StoreError
from compress_lab.store.base import validate_run_id

ARTIFACTS_DIRNAME = "artifacts"


def _inside(path: Path, base: Path) -> bool:
    return path.resolve().is_relative_to(base.resolve())


def safe_join(base: str | Path, name: str) -> Path:
    """`base / name` for a single plain file or folder name; raises StoreError
    for '..', '.', path separators, absolute paths, NUL, or a symlink leading out."""
    if not isinstance(name, str) or not name:
        raise StoreError(f"invalid file name {name!r} under {base}: use a non-empty plain name")
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        raise StoreError(
            f"refusing file name {name!r} under {base}: it must be a plain name "
            "(no '..', no '/' or '\\', not absolute) so it stays inside that folder"
        )
    base = Path(base)
    path = base / name
    if not _inside(path, base):
        raise StoreError(f"refusing {path}: it resolves outside {base} (a symlink?)")
    return path


def artifacts_root(store_folder: str | Path) -> Path:
    return Path(store_folder) / ARTIFACTS_DIRNAME


def artifact_dir(store_folder: str | Path, run_id: str, create: bool = True) -> Path:
    """`<store_folder>/artifacts/<run_id>` (created unless create=False)."""
    root = artifacts_root(store_folder)
    path = safe_join(root, validate_run_id(run_id))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create artifact folder {path}: {exc.strerror or exc}; "
                "check that the store folder is writable and the disk has space"
            ) from exc
    return path


def relative_artifact_path(store_folder: str | Path, path: str | Path) -> str:
    """`path` (absolute or relative to the store folder) as the POSIX path
    relative to the store folder that the store records."""
    folder = Path(store_folder)
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = folder / candidate
    if not _inside(candidate, folder):
        raise StoreError(f"artifact {path} is outside the store folder {folder}: keep artifacts under {folder}")
    return candidate.resolve().relative_to(folder.resolve()).as_posix()


def validate_artifact_path(artifact_path: str | None) -> str | None:
    """Check a stored artifact path is relative and has no '..' part."""
    if artifact_path is None:
        return None
    if not isinstance(artifact_path, str) or not artifact_path:
        raise StoreError(f"invalid artifact path {artifact_path!r}: use a non-empty path relative to the store folder")
    posix = PurePosixPath(artifact_path.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(artifact_path).drive or ".." in posix.parts or "\x00" in artifact_path:
        raise StoreError(
            f"invalid artifact path {artifact_path!r}: it must be relative to the store folder "
            "and contain no '..' (see relative_artifact_path)"
        )
    return posix.as_posix()


def resolve_artifact(store_folder: str | Path, artifact_path: str) -> Path:
    """Absolute location of a recorded artifact path, guaranteed inside the store folder."""
    rel = validate_artifact_path(artifact_path)
    folder = Path(store_folder)
    path = folder / rel
    if not _inside(path, folder):
        raise StoreError(f"artifact {artifact_path!r} resolves outside the store folder {folder} (a symlink?)")
    return path


def remove_artifacts(store_folder: str | Path, run_id: str) -> None:
    """Delete a run's artifact folder if it exists."""
    path = artifact_dir(store_folder, run_id, create=False)
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
