"""A smaller copy of a validation folder ("use at most N images"), so a quick
sweep evaluates on a class-balanced subset."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from compress_lab.data import scan_folder
from compress_lab.export import safe_name


def subset_folder(source: str | Path, limit: int, root: str | Path) -> Path:
    """Copy at most `limit` images of `source`, taken round-robin across classes,
    into `<root>/<hash>/`; the same inputs give the same folder (made once)."""
    folder = scan_folder(source)
    if limit >= len(folder):
        return Path(source)
    if folder.labelled:
        by_class: dict[int, list[Path]] = {}
        for path, label in folder.samples:
            by_class.setdefault(label, []).append(path)
        picked: list[tuple[Path, str]] = []
        depth = 0
        while len(picked) < limit:
            added = False
            for label in sorted(by_class):
                if depth < len(by_class[label]) and len(picked) < limit:
                    picked.append((by_class[label][depth], folder.classes[label]))
                    added = True
            if not added:
                break
            depth += 1
    else:
        picked = [(path, "") for path, _ in folder.samples[:limit]]
    digest = hashlib.sha1(("\n".join(f"{p}|{c}" for p, c in picked)).encode()).hexdigest()[:12]
    dest = Path(root) / f"{safe_name(Path(source).name, 'val')}-{limit}-{digest}"
    marker = dest.with_name(dest.name + ".complete")
    if marker.is_file() and dest.is_dir():
        return dest
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for path, class_name in picked:
        target = staging / class_name if class_name else staging
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / path.name)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    marker.write_text(str(source))
    return dest
