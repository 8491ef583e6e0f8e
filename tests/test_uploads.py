"""Uploaded zips: entry count, zip bombs and lying headers are refused, nothing escapes."""

import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress_lab.errors import ModelLoadError  # noqa: E402
from compress_lab_app import uploads  # noqa: E402


def test_too_many_entries_is_refused(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(uploads.MAX_ZIP_ENTRIES + 1):
            zf.writestr(f"m.mlpackage/f{i}", b"")
    with pytest.raises(ModelLoadError, match="entries"):
        uploads.extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_zip_bomb_ratio_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m.mlpackage/weights/weight.bin", b"\0" * (100 << 20))
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(ModelLoadError, match="zip bomb"):
        uploads.extract_zip(archive, tmp_path / "out")


def test_header_that_understates_the_size_is_refused(tmp_path):
    archive = tmp_path / "liar.zip"
    payload = b"x" * 10_000
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("m.mlpackage/weights/weight.bin", payload)
    data = bytearray(archive.read_bytes())
    # shrink the declared uncompressed size in the central directory (offset 24 of the entry)
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt or lies"):
        uploads.extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "m.mlpackage" / "weights" / "weight.bin").exists()
