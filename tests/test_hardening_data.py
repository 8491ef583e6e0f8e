"""Validation folders as a careless user and an attacker leave them, beyond
tests/test_data.py: one class, deep nesting, symlink loops, FIFOs named like
images, a real decompression bomb, mixed modes in one batch and names in
another Unicode form."""

from __future__ import annotations

import os
import struct
import time
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress_lab.data import DEFAULT_MAX_PIXELS, iter_batches, load_image, scan_folder
from compress_lab.errors import DataError
from compress_lab.evaluate import evaluate
from compress_lab.models.metadata import Preprocessing

GRAY = Preprocessing(color="L", scale=1.0)
RGB = Preprocessing(color="RGB", scale=1.0)


def png(path: Path, value: int = 100, size=(8, 8), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def bomb_png(path: Path, side: int) -> Path:
    """A real 1-bit PNG of side x side pixels, all zero, written in chunks (a few hundred KB on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 1000) for _ in range(side // 1000)]
    parts += [comp.compress(row * (side % 1000)), comp.flush()]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(parts)))
        f.write(chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------ structure

def test_a_one_class_folder_is_labelled_and_evaluated_against_the_right_output(tmp_path):
    for i in range(4):
        png(tmp_path / "seven" / f"{i}.png", value=i)
    names = [str(i) for i in range(6)] + ["seven"]
    folder = scan_folder(tmp_path, class_names=names)
    assert folder.labelled and folder.classes == names and {label for _, label in folder.samples} == {6}
    assert any("6 of the model's 7 classes have no images" in w for w in folder.warnings)

    def predict(x):  # predicts "seven" for the first two images, class 0 otherwise
        logits = np.zeros((len(x), 7), np.float32)
        logits[:, 0] = 1.0
        logits[x[:, 0, 0, 0] < 2, 6] = 5.0
        return logits

    result = evaluate(predict, folder, 7, preprocessing=GRAY, input_shape=(1, 8, 8))
    assert result.n == 4 and result.top1 == 0.5 and result.per_class == {"seven": 0.5}


def test_deep_nesting_inside_a_class_is_found_without_recursion_limits(tmp_path):
    deep = tmp_path / "cat"
    for level in range(300):
        deep = deep / "d"
    png(deep / "bottom.png", value=9)
    png(tmp_path / "cat" / "top.png", value=1)
    folder = scan_folder(tmp_path)
    assert sorted(p.name for p, _ in folder.samples) == ["bottom.png", "top.png"]
    batch = next(iter_batches(folder, GRAY, (1, 8, 8)))
    assert sorted(batch.x[:, 0, 0, 0].tolist()) == [1.0, 9.0]


@pytest.mark.timeout(60)
def test_symlink_loops_do_not_hang_or_duplicate(tmp_path):
    png(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "up").symlink_to(tmp_path)                 # a link back to the root
    (tmp_path / "cat" / "self").symlink_to(tmp_path / "cat")       # a link to its own folder
    (tmp_path / "cat" / "x.png").symlink_to(tmp_path / "cat" / "y.png")   # x -> y -> x
    (tmp_path / "cat" / "y.png").symlink_to(tmp_path / "cat" / "x.png")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")              # a link to itself at the top
    started = time.monotonic()
    folder = scan_folder(tmp_path)
    assert time.monotonic() - started < 10
    assert folder.classes == ["cat"] and [p.name for p, _ in folder.samples] == ["a.png"]
    assert {"x.png", "y.png", "loop"} <= {p.name for p, _ in folder.skipped}


@pytest.mark.timeout(60)
def test_a_fifo_or_device_named_like_an_image_is_not_opened(tmp_path):
    png(tmp_path / "cat" / "a.png")
    os.mkfifo(tmp_path / "cat" / "pipe.png")                      # opening it would block forever
    (tmp_path / "cat" / "zero.png").symlink_to("/dev/zero")        # reading it would never end
    folder = scan_folder(tmp_path)
    assert [p.name for p, _ in folder.samples] == ["a.png"]
    batches = list(iter_batches(folder, GRAY, (1, 8, 8)))
    assert sum(len(b) for b in batches) == 1


def test_class_folders_in_another_unicode_form_match_the_model_classes(tmp_path):
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    png(tmp_path / nfd / "1.png", value=3)   # as macOS writes the name
    png(tmp_path / "tea" / "1.png", value=4)
    folder = scan_folder(tmp_path, class_names=["tea", nfc])
    labels = {p.parent.name: label for p, label in folder.samples}
    assert labels == {nfd: 1, "tea": 0}
    assert not any("no images" in w for w in folder.warnings)


# ------------------------------------------------------------------ huge images

@pytest.mark.timeout(60)
@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_a_real_decompression_bomb_is_skipped_without_decoding(tmp_path, monkeypatch, pillow_limit):
    """30,000 x 30,000 pixels (900 M: 900 MB decoded as L) in a ~100 KB file."""
    if pillow_limit == "disabled":  # as some libraries do at import time
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = bomb_png(tmp_path / "cat" / "bomb.png", 30_000)
    assert bomb.stat().st_size < 1_000_000 and 30_000 ** 2 > DEFAULT_MAX_PIXELS
    png(tmp_path / "cat" / "ok.png", value=5)
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = scan_folder(tmp_path)
    batches = list(iter_batches(folder, GRAY, (1, 8, 8)))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert [p.name for b in batches for p in b.paths] == ["ok.png"]
    ((path, reason),) = folder.skipped
    assert path.name == "bomb.png" and "decompression" in reason and ("30000x30000" in reason or "900000000" in reason)
    assert grown_mb < 200, f"decoding the bomb was attempted ({grown_mb:.0f} MB more)"


def test_a_large_but_legal_image_is_resized_into_the_input(tmp_path):
    path = png(tmp_path / "big.png", value=77, size=(4000, 3000))
    x = load_image(path, GRAY, (1, 8, 8))
    assert x.shape == (1, 8, 8) and np.allclose(x, 77.0)


# ------------------------------------------------------------------ mixed files in one batch

def test_mixed_modes_depths_and_junk_in_one_batch_give_one_clean_tensor(tmp_path):
    cls = tmp_path / "mixed"
    png(cls / "a_gray.png", 10)
    png(cls / "b_rgb.png", (10, 20, 30), mode="RGB")
    png(cls / "c_rgba.png", (10, 20, 30, 255), mode="RGBA")
    png(cls / "d_la.png", (10, 255), mode="LA")
    Image.fromarray(np.full((8, 8), 10 * 257, np.uint16)).save(cls / "e_16bit.png")
    png(cls / "f_bilevel.png", 1, mode="1")
    png(cls / "g_palette.png", 3, mode="P")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(cls / "h_cmyk.jpg")
    Image.new("RGB", (8, 8), (10, 10, 10)).save(cls / "i_webp.webp")
    (cls / "j_text.png").write_text("this is not an image")
    (cls / "k_empty.png").write_bytes(b"")
    (cls / "l_notes.txt").write_text("notes")
    (cls / "m_truncated.png").write_bytes((cls / "b_rgb.png").read_bytes()[:40])
    folder = scan_folder(tmp_path)
    for pre, channels in ((GRAY, 1), (RGB, 3)):
        batches = list(iter_batches(folder, pre, (channels, 8, 8), batch_size=64))
        (batch,) = batches
        assert batch.x.shape == (9, channels, 8, 8) and batch.x.dtype == np.float32
        assert np.isfinite(batch.x).all() and batch.x.min() >= 0 and batch.x.max() <= 255
        kept = {p.name for p in batch.paths}
        assert "e_16bit.png" in kept and "i_webp.webp" in kept
        assert np.allclose(batch.x[[p.name for p in batch.paths].index("e_16bit.png")], 10.0)
    assert {p.name for p, _ in folder.skipped} == {"j_text.png", "k_empty.png", "l_notes.txt", "m_truncated.png"}
    assert all(reason for _, reason in folder.skipped)


def test_a_folder_of_only_broken_images_evaluates_to_zero_images_not_a_crash(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    folder = scan_folder(tmp_path)
    result = evaluate(lambda x: np.zeros((len(x), 1), np.float32), folder, 1, preprocessing=GRAY, input_shape=(1, 8, 8))
    assert result.n == 0 and result.top1 is None and result.skipped == 1


def test_a_data_path_that_is_a_file_or_a_dangling_link(tmp_path):
    png(tmp_path / "one.png")
    with pytest.raises(DataError, match="is a file, not a folder"):
        scan_folder(tmp_path / "one.png")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "dangling")
