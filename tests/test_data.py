"""Validation folders: scanning, decoding, batching and the decoded-tensor cache,
on real image files written by Pillow into tmp folders."""

import os
import threading

import numpy as np
import pytest
from PIL import Image

from compress_lab import data
from compress_lab.data import TensorCache, iter_batches, load_image, scan_folder
from compress_lab.errors import ConfigError, DataError
from compress_lab.models.metadata import Preprocessing

GRAY = Preprocessing(color="L", scale=1.0, mean=(0.0,), std=(1.0,))
RGB = Preprocessing(color="RGB", scale=1.0, mean=(0.0,), std=(1.0,))


def write_png(path, value=128, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def make_folder(root, classes=("cat", "dog"), per_class=3):
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", value=10 * c + i)
    return root


# ---------------------------------------------------------------- scanning

def test_scan_imagefolder_sorted_with_labels(tmp_path):
    make_folder(tmp_path, classes=("dog", "cat"))
    folder = scan_folder(tmp_path)
    assert folder.labelled and folder.classes == ["cat", "dog"]
    assert [(p.parent.name, p.name, y) for p, y in folder.samples] == [
        ("cat", "0.png", 0), ("cat", "1.png", 0), ("cat", "2.png", 0),
        ("dog", "0.png", 1), ("dog", "1.png", 1), ("dog", "2.png", 1)]
    assert folder.class_counts() == {"cat": 3, "dog": 3}


def test_scan_maps_folders_to_model_class_order(tmp_path):
    make_folder(tmp_path, classes=("cat", "dog"))
    folder = scan_folder(tmp_path, class_names=["dog", "bird", "cat"])
    assert folder.classes == ["dog", "bird", "cat"]
    assert {p.parent.name: y for p, y in folder.samples} == {"cat": 2, "dog": 0}
    assert any("bird" in w for w in folder.warnings)  # model class without a folder: a warning, not an error


def test_scan_unknown_class_folder_names_them_and_the_model_classes(tmp_path):
    make_folder(tmp_path, classes=("cat", "dgo"))
    with pytest.raises(DataError) as e:
        scan_folder(tmp_path, class_names=["cat", "dog"])
    assert "'dgo'" in str(e.value) and "'dog'" in str(e.value) and "did you mean" in str(e.value)


def test_scan_extensions_case_insensitive_and_skips_non_images(tmp_path):
    write_png(tmp_path / "a" / "x.PNG")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "y.JpEg", format="JPEG")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    folder = scan_folder(tmp_path)
    assert [p.name for p, _ in folder.samples] == ["x.PNG", "y.JpEg"]
    reasons = {p.name: r for p, r in folder.skipped}
    assert set(reasons) == {"notes.txt", "empty.png"}
    assert "0 bytes" in reasons["empty.png"] and "not an image" in reasons["notes.txt"]


def test_scan_unlabelled_flat_folder(tmp_path):
    for name in ("b.png", "a.png", "c.png"):
        write_png(tmp_path / name)
    folder = scan_folder(tmp_path)
    assert not folder.labelled and folder.classes == []
    assert [(p.name, y) for p, y in folder.samples] == [("a.png", None), ("b.png", None), ("c.png", None)]
    assert folder.class_counts() == {}


def test_scan_errors_on_missing_empty_and_non_image_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        scan_folder(empty)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"readme\.md"):
        scan_folder(texts)
    a_file = write_png(tmp_path / "one.png")
    with pytest.raises(DataError, match="is a file"):
        scan_folder(a_file)


def test_scan_warns_on_empty_class_folder(tmp_path):
    make_folder(tmp_path, classes=("cat",))
    (tmp_path / "dog").mkdir()
    folder = scan_folder(tmp_path)
    assert folder.classes == ["cat", "dog"] and folder.class_counts() == {"cat": 3, "dog": 0}
    assert any("'dog'" in w and "no images" in w for w in folder.warnings)


def test_scan_unicode_names(tmp_path):
    write_png(tmp_path / "chat_été" / "ñandú 🐦.png", value=7)
    write_png(tmp_path / "犬" / "写真.png", value=9)
    folder = scan_folder(tmp_path, class_names=["chat_été", "犬"])
    assert [p.name for p, _ in folder.samples] == ["ñandú 🐦.png", "写真.png"]
    batch = next(iter_batches(folder, GRAY, (1, 8, 8)))
    assert batch.x[:, 0, 0, 0].tolist() == [7.0, 9.0]


def test_scan_skips_symlinks_leading_outside(tmp_path):
    outside = write_png(tmp_path / "outside" / "secret.png")
    root = tmp_path / "data"
    make_folder(root, classes=("cat",), per_class=1)
    os.symlink(outside, root / "cat" / "link.png")
    os.symlink(outside.parent, root / "linked_class")
    write_png(root / "cat" / "inner.png")
    os.symlink(root / "cat" / "inner.png", root / "cat" / "z_inner_link.png")
    folder = scan_folder(root)
    assert folder.classes == ["cat"]
    assert sorted(p.name for p, _ in folder.samples) == ["0.png", "inner.png", "z_inner_link.png"]
    assert {p.name for p, _ in folder.skipped} == {"link.png", "linked_class"}
    assert sum("outside" in w for w in folder.warnings) == 2


# ---------------------------------------------------------------- decoding

def test_load_image_normalizes_per_channel(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4), (255, 0, 51)).save(path)
    pre = Preprocessing(color="RGB", scale=1 / 255, mean=(0.5, 0.0, 0.2), std=(0.5, 1.0, 0.1))
    x = load_image(path, pre, (3, 4, 4))
    assert x.dtype == np.float32 and x.shape == (3, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.0], atol=1e-6)


def test_load_image_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257 * 100], [65535, 257 * 10]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    x = load_image(path, GRAY, (1, 2, 2))
    np.testing.assert_allclose(x[0], [[0, 100], [255, 10]], atol=1e-3)
    rgb = load_image(path, RGB, (3, 2, 2))
    np.testing.assert_allclose(rgb[2], x[0], atol=1e-3)


def test_load_image_rgba_palette_cmyk_and_gray_in_rgb_model(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (2, 2), (200, 100, 50, 0)).save(rgba)  # fully transparent -> black
    np.testing.assert_array_equal(load_image(rgba, RGB, (3, 2, 2)), 0)
    opaque = tmp_path / "opaque.png"
    Image.new("RGBA", (2, 2), (200, 100, 50, 255)).save(opaque)
    np.testing.assert_allclose(load_image(opaque, RGB, (3, 2, 2))[:, 0, 0], [200, 100, 50])
    half = tmp_path / "half.png"
    Image.new("RGBA", (2, 2), (200, 100, 50, 128)).save(half)
    np.testing.assert_allclose(load_image(half, RGB, (3, 2, 2))[:, 0, 0], [100, 50, 25], atol=1)
    pal = tmp_path / "pal.png"
    Image.new("RGB", (2, 2), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    np.testing.assert_allclose(load_image(pal, RGB, (3, 2, 2))[:, 0, 0], [10, 20, 30])
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, quality=100)  # pure red in CMYK
    red = load_image(cmyk, RGB, (3, 8, 8))[:, 4, 4]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    gray = write_png(tmp_path / "gray.png", value=77)
    x = load_image(gray, RGB, (3, 8, 8))
    assert x.shape == (3, 8, 8) and np.all(x == 77.0)


def test_load_image_resize_then_center_crop(tmp_path):
    path = tmp_path / "wide.png"
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, :6] = 255  # a bright left band the centre crop drops
    Image.fromarray(arr).save(path)
    pre = Preprocessing(color="L", resize=10, scale=1.0)
    x = load_image(path, pre, (1, 10, 10))  # 40x20 -> 20x10 -> crop centre 10x10
    assert x.shape == (1, 10, 10) and x.max() == 0.0
    straight = load_image(path, Preprocessing(color="L", scale=1.0), (1, 10, 10))  # squashed: the band stays
    assert straight[0, :, 0].min() == 255.0 and straight[0, :, -1].max() == 0.0


def test_preprocessing_that_cannot_reach_input_shape_is_a_clear_error(tmp_path):
    path = write_png(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="channel"):
        load_image(path, GRAY, (3, 8, 8))
    with pytest.raises(ConfigError, match="resize 4"):
        load_image(path, Preprocessing(color="L", resize=4), (1, 8, 8))


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    path = write_png(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="decompression"):
        load_image(path, GRAY, (1, 8, 8))


# ---------------------------------------------------------------- batches

def test_corrupt_and_truncated_files_are_skipped_with_reasons(tmp_path):
    make_folder(tmp_path, classes=("cat",), per_class=3)
    (tmp_path / "cat" / "bad.png").write_bytes(b"not a png at all")
    good = (tmp_path / "cat" / "0.png").read_bytes()
    big = tmp_path / "cat" / "trunc.jpg"
    Image.effect_noise((64, 64), 50).save(big, format="JPEG")
    big.write_bytes(big.read_bytes()[:300])
    assert good
    folder = scan_folder(tmp_path)
    assert len(folder.samples) == 5
    batches = list(iter_batches(folder, GRAY, (1, 8, 8), batch_size=2))
    names = [p.name for b in batches for p in b.paths]
    assert names == ["0.png", "1.png", "2.png"]
    assert {p.name for p, _ in folder.skipped} == {"bad.png", "trunc.jpg"}
    assert all("readable" in r for _, r in folder.skipped)
    assert folder.class_counts() == {"cat": 3}


def test_batches_shapes_labels_and_progress(tmp_path):
    make_folder(tmp_path, classes=("a", "b", "c"), per_class=3)
    calls = []
    folder = scan_folder(tmp_path)
    batches = list(iter_batches(folder, GRAY, (1, 4, 4), batch_size=4, progress=lambda d, t: calls.append((d, t))))
    assert [len(b) for b in batches] == [4, 4, 1]
    assert batches[0].x.shape == (4, 1, 4, 4) and batches[0].x.dtype == np.float32
    assert np.concatenate([b.labels for b in batches]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batches[0].labels.dtype == np.int64
    assert calls == [(4, 9), (8, 9), (9, 9)]


def test_unlabelled_batches_have_minus_one_labels(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"{i}.png")
    batch = next(iter_batches(scan_folder(tmp_path), GRAY, (1, 8, 8)))
    assert batch.labels.tolist() == [-1, -1, -1]


def test_batches_are_decoded_lazily(tmp_path, monkeypatch):
    make_folder(tmp_path, classes=("a",), per_class=40)
    decoded = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a: decoded.append(a[0]) or real(*a))
    it = iter_batches(scan_folder(tmp_path), GRAY, (1, 8, 8), batch_size=4)
    first = next(it)
    assert len(first) == 4
    assert len(decoded) <= 12  # the current batch plus a bounded prefetch, not all 40
    it.close()


def test_invalid_batch_size(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(ConfigError, match="batch size"):
        next(iter_batches(scan_folder(tmp_path), GRAY, (1, 8, 8), batch_size=0))


# ---------------------------------------------------------------- cache

def _count_decodes(monkeypatch):
    decoded = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a: decoded.append(a[0]) or real(*a))
    return decoded


def test_cache_hit_skips_decoding_and_gives_identical_batches(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    (root / "a" / "broken.png").write_bytes(b"garbage")
    pre = Preprocessing(color="L", scale=1 / 255, mean=(0.1,), std=(0.3,))
    cache = TensorCache(tmp_path / "cache")
    decoded = _count_decodes(monkeypatch)

    folder1 = scan_folder(root)
    first = list(iter_batches(folder1, pre, (1, 8, 8), batch_size=4, cache=cache))
    assert len(decoded) == 11
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert not list((tmp_path / "cache").glob("*tmp*"))

    folder2 = scan_folder(root)
    second = list(iter_batches(folder2, pre, (1, 8, 8), batch_size=4, cache=cache))
    assert len(decoded) == 11  # nothing decoded again
    assert [len(b) for b in first] == [len(b) for b in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.paths == b.paths
    assert [p.name for p, _ in folder2.skipped] == ["broken.png"]  # skipped files are remembered too

    uncached = list(iter_batches(scan_folder(root), pre, (1, 8, 8), batch_size=4))
    np.testing.assert_array_equal(np.concatenate([b.x for b in uncached]), np.concatenate([b.x for b in second]))


def test_cache_key_changes_with_preprocessing_and_files(tmp_path):
    root = make_folder(tmp_path / "d")
    cache = TensorCache(tmp_path / "cache")
    folder = scan_folder(root)
    key = cache.key(folder, GRAY, (1, 8, 8))
    assert key == cache.key(scan_folder(root), GRAY, (1, 8, 8))
    assert key != cache.key(folder, Preprocessing(color="L", scale=0.5), (1, 8, 8))
    assert key != cache.key(folder, GRAY, (1, 4, 4))
    write_png(root / "cat" / "0.png", value=1, size=(9, 9))
    assert key != cache.key(scan_folder(root), GRAY, (1, 8, 8))


def test_cache_interrupted_build_leaves_no_entry(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=5)
    cache = TensorCache(tmp_path / "cache")
    it = iter_batches(scan_folder(root), GRAY, (1, 8, 8), batch_size=2, cache=cache)
    next(it)
    it.close()
    assert list((tmp_path / "cache").iterdir()) == []
    decoded = _count_decodes(monkeypatch)
    list(iter_batches(scan_folder(root), GRAY, (1, 8, 8), batch_size=2, cache=cache))
    assert len(decoded) == 10


def test_cache_read_back_is_memory_mapped(tmp_path):
    root = make_folder(tmp_path / "d")
    cache = TensorCache(tmp_path / "cache")
    folder = scan_folder(root)
    list(iter_batches(folder, GRAY, (1, 8, 8), cache=cache))
    hit = cache.get(cache.key(folder, GRAY, (1, 8, 8)), len(folder.samples), (1, 8, 8))
    assert isinstance(hit.tensors, np.memmap) and hit.tensors.shape == (6, 1, 8, 8)
    assert hit.labels == [0, 0, 0, 1, 1, 1]


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "d")
    cache = TensorCache(tmp_path / "cache")
    folder = scan_folder(root)
    expected = np.concatenate([b.x for b in iter_batches(folder, GRAY, (1, 8, 8), cache=cache)])
    npy = next((tmp_path / "cache").glob("*.npy"))
    npy.write_bytes(b"corrupt")
    again = np.concatenate([b.x for b in iter_batches(scan_folder(root), GRAY, (1, 8, 8), cache=cache)])
    np.testing.assert_array_equal(again, expected)
    assert np.load(npy).shape == (6, 1, 8, 8)


def test_concurrent_builders_of_one_cache_entry(tmp_path):
    root = make_folder(tmp_path / "d", classes=("a", "b"), per_class=10)
    cache = TensorCache(tmp_path / "cache")
    results, errors = {}, []

    def build(i):
        try:
            results[i] = np.concatenate([b.x for b in iter_batches(scan_folder(root), GRAY, (1, 8, 8),
                                                                    batch_size=3, cache=cache)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    files = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert files == [".json", ".npy"]
    cached = np.concatenate([b.x for b in iter_batches(scan_folder(root), GRAY, (1, 8, 8), cache=cache)])
    np.testing.assert_array_equal(cached, results[0])
