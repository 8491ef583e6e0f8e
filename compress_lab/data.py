"""Validation images: scan a folder, decode images into model inputs, stream
them in batches, and cache the decoded tensors so a sweep decodes each image once.

Layouts: an ImageFolder (`<root>/<class>/<image>`, labelled) or a flat folder of
images (unlabelled: evaluated by fidelity to a reference model only).
Broken files never stop an evaluation: they are skipped and reported with a reason."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import unicodedata
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageCms

from compress_lab.errors import ConfigError, DataError
from compress_lab.models.metadata import Preprocessing

DEFAULT_MAX_PIXELS = 89_478_485   # Pillow's default decompression-bomb limit (~ 9459 x 9459)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IGNORED_NAMES = {"__MACOSX", "Thumbs.db"}
CACHE_FORMAT_VERSION = 1
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))

Progress = Callable[[int, int], None]


@dataclass
class ImageFolder:
    """The images of a validation folder. `classes[label]` names the model output a
    label refers to; `samples` are (path, label) with label None when unlabelled.
    `skipped` grows when an image turns out unreadable at decode time."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int | None]]
    labelled: bool
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def record_skip(self, path: Path, reason: str) -> None:
        if all(p != path for p, _ in self.skipped):
            self.skipped.append((path, reason))

    def class_counts(self) -> dict[str, int]:
        """Images per class (unreadable ones found so far excluded); {} when unlabelled."""
        if not self.labelled:
            return {}
        bad = {p for p, _ in self.skipped}
        counts = Counter(label for path, label in self.samples if path not in bad)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}


@dataclass
class Batch:
    x: np.ndarray        # float32 (N, C, H, W)
    labels: np.ndarray   # int64 (N,), -1 when unlabelled
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)


# ---------------------------------------------------------------- scanning

def scan_folder(path: str | Path, class_names: Sequence[str] | None = None) -> ImageFolder:
    """Scan `path` (see module docstring). With `class_names` (the model's), each
    class folder maps to the output of the same name; without, sorted folder names."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; give a folder of class sub-folders of images, or of images")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a folder; give the folder that holds the images")
    real_root = root.resolve()
    warns: list[str] = []
    skipped: list[tuple[Path, str]] = []
    others: list[Path] = []

    loose, class_dirs = [], []
    for entry in _sorted_entries(root):
        if not _inside(entry, real_root):
            warns.append(f"{entry} links outside {root} and was skipped")
            skipped.append((entry, "symbolic link to outside the data folder"))
        elif entry.is_dir():
            class_dirs.append(entry)
        elif entry.is_file():
            loose.append(entry)
    class_images = {d.name: _collect_images(d, real_root, warns, skipped, others) for d in class_dirs}
    loose_images = _filter_images(loose, skipped, others)
    has_class_images = any(class_images.values())

    if not has_class_images and not loose_images:
        raise DataError(_no_images_message(root, others))
    if not has_class_images:
        if class_dirs:
            warns.append(f"sub-folder(s) {[d.name for d in class_dirs]} of {root} hold no images and were ignored")
        return ImageFolder(root=root, classes=[], samples=[(p, None) for p in loose_images], labelled=False,
                           warnings=warns, skipped=skipped)

    if loose_images:
        warns.append(f"{len(loose_images)} image(s) directly in {root} were ignored: it has class folders, "
                     "so only images inside class folders are used")
    for name, images in class_images.items():
        if not images:
            warns.append(f"class folder {name!r} has no images")
    folder_names = sorted(class_images)
    canonical = {n: n for n in folder_names}
    if class_names is None:
        classes = folder_names
    else:
        classes = [str(c) for c in class_names]
        # the same name typed on another system may use another Unicode form (macOS writes NFD): match on NFC
        by_nfc = {unicodedata.normalize("NFC", c): c for c in classes}
        canonical = {n: by_nfc.get(unicodedata.normalize("NFC", n), n) for n in folder_names}
        unknown = [n for n in folder_names if canonical[n] not in classes]
        if unknown:
            hints = [f"{n!r} (did you mean {m[0]!r}?)" if (m := get_close_matches(n, classes, 1)) else repr(n)
                     for n in unknown]
            raise DataError(
                f"class folder(s) {', '.join(hints)} in {root} match no class of the model; the model's classes are "
                f"{_preview(classes)}. Rename the folders to the model's class names (folder name == class name).")
        present = {canonical[n] for n in folder_names if class_images[n]}
        missing = [c for c in classes if c not in present]
        if missing:
            warns.append(f"{len(missing)} of the model's {len(classes)} classes have no images in {root}: {_preview(missing)}")
    index = {name: i for i, name in enumerate(classes)}
    samples = [(p, index[canonical[name]]) for name in folder_names for p in class_images[name]]
    return ImageFolder(root=root, classes=classes, samples=samples, labelled=True, warnings=warns, skipped=skipped)


def _sorted_entries(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise DataError(f"cannot list data folder {folder}: {e.strerror or e}") from None
    return [folder / n for n in sorted(names) if not n.startswith(".") and n not in IGNORED_NAMES]


def _inside(path: Path, real_root: Path) -> bool:
    if not path.is_symlink():
        return True
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # broken or looping link
        return False


def _collect_images(folder: Path, real_root: Path, warns, skipped, others) -> list[Path]:
    """All images under a class folder (recursively, sorted; links are not followed out)."""
    files: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        subdirs = []
        for entry in _sorted_entries(current):
            if not _inside(entry, real_root):
                warns.append(f"{entry} links outside {real_root} and was skipped")
                skipped.append((entry, "symbolic link to outside the data folder"))
            elif entry.is_dir():
                if entry.is_symlink():
                    warns.append(f"linked folder {entry} was not followed")
                else:
                    subdirs.append(entry)
            elif entry.is_file():
                files.append(entry)
        pending.extend(reversed(subdirs))
    return sorted(_filter_images(files, skipped, others), key=lambda p: str(p))


def _filter_images(files: Iterable[Path], skipped, others) -> list[Path]:
    images = []
    for f in files:
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append(f)
            skipped.append((f, f"not an image file (extension {f.suffix or 'none'!r}; "
                               f"supported: {', '.join(IMAGE_EXTENSIONS)})"))
            continue
        try:
            size = f.stat().st_size
        except OSError as e:
            skipped.append((f, f"cannot be read: {e.strerror or e}"))
            continue
        if size == 0:
            skipped.append((f, "empty file (0 bytes)"))
            continue
        images.append(f)
    return images


def _no_images_message(root: Path, others: list[Path]) -> str:
    if others:
        return (f"no images in {root}: found {len(others)} other file(s) ({_preview([p.name for p in others])}); "
                f"supported image extensions are {', '.join(IMAGE_EXTENSIONS)}")
    return (f"no images in {root} (it is empty, or holds only empty files/folders); expected "
            f"{root}/<class>/<image> or images directly in {root}")


def _preview(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)" if len(items) > limit else f"[{shown}]"


# ---------------------------------------------------------------- decoding

def check_preprocessing(preprocessing: Preprocessing, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Raise ConfigError when `preprocessing` cannot produce tensors of `input_shape` (C, H, W)."""
    if len(input_shape) != 3:
        raise ConfigError(f"input shape {list(input_shape)} must be [channels, height, width]")
    c, h, w = (int(s) for s in input_shape)
    if preprocessing.channels != c:
        raise ConfigError(
            f"preprocessing color {preprocessing.color!r} gives {preprocessing.channels} channel(s) but the model "
            f"input has {c}; use color {'L' if c == 1 else 'RGB'!r}")
    if c not in (1, 3):
        raise ConfigError(f"model input has {c} channels; images can only give 1 (L) or 3 (RGB)")
    if preprocessing.resize is not None and int(preprocessing.resize) < min(h, w):
        raise ConfigError(
            f"preprocessing resize {preprocessing.resize} is smaller than the input size {h}x{w}: the center crop "
            f"would not fit; set resize >= {max(h, w)} or null")
    return c, h, w


def load_image(path: str | Path, preprocessing: Preprocessing, input_shape: Sequence[int]) -> np.ndarray:
    """Decode one image into a float32 (C, H, W) model input. Raises DataError (with
    the reason) for a file that is not a readable image or is too large."""
    c, h, w = check_preprocessing(preprocessing, input_shape)
    path = Path(path)
    try:
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS  # kept even where a library disabled Pillow's check
            if img.width * img.height > limit:
                raise DataError(f"{img.width}x{img.height} pixels exceeds the decompression-bomb limit "
                                f"of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)")
            img.load()
            pixels = _to_color(img, preprocessing.color)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"too large: {e}") from None
    except FileNotFoundError:
        raise DataError("file disappeared after the folder was scanned") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad files
        raise DataError(f"not a readable image ({type(e).__name__}: {str(e)[:160]})") from None
    array = _resize_crop(pixels, preprocessing.resize, h, w)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] != c:
        array = np.repeat(array[:, :, :1], c, axis=2)
    x = array.astype(np.float32) * np.float32(preprocessing.scale)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _to_color(img: Image.Image, color: str) -> Image.Image:
    """`img` in mode `color` ("L" or "RGB") with 8-bit values, or a float "F" image
    (values 0..255, one channel) for high-bit-depth grayscale. Transparency is
    composited onto black (the colour of transparent pixels is otherwise undefined)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (values.size and values.max() > 255):
            values = values / 257.0  # 16-bit 0..65535 -> 0..255
        return Image.fromarray(np.clip(values, 0, 255).astype(np.float32), mode="F")
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:
            import io
            source = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            img = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            mode = img.mode
        except Exception:  # a broken profile: fall back to Pillow's plain conversion
            pass
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == color else img.convert(color)


def _resize_crop(img: Image.Image, resize: int | None, h: int, w: int) -> np.ndarray:
    if resize is None:
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        return np.asarray(img)
    width, height = img.size
    short = min(width, height)
    if short != resize:
        size = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
        img = img.resize(size, Image.BILINEAR)
        width, height = img.size
    top = int(round((height - h) / 2.0))
    left = int(round((width - w) / 2.0))
    return np.asarray(img.crop((left, top, left + w, top + h)))


def _decode(path: Path, preprocessing: Preprocessing, input_shape) -> np.ndarray | str:
    """The decoded tensor, or the reason the file was skipped."""
    try:
        return load_image(path, preprocessing, input_shape)
    except DataError as e:
        return str(e)
    except Exception as e:  # never let one file stop an evaluation
        return f"decode failed ({type(e).__name__}: {str(e)[:160]})"


# ---------------------------------------------------------------- batches

def iter_batches(folder: ImageFolder, preprocessing: Preprocessing, input_shape: Sequence[int],
                 batch_size: int = 64, cache: "TensorCache | None" = None,
                 progress: Progress | None = None) -> Iterator[Batch]:
    """Stream `folder` as batches in its sample order. Memory stays bounded (about
    two batches are decoded at a time); unreadable images are left out of the
    batches and recorded in `folder.skipped`. With `cache`, a folder decoded before
    with the same preprocessing is read back memory-mapped instead of decoded."""
    check_preprocessing(preprocessing, input_shape)
    if int(batch_size) <= 0:
        raise ConfigError(f"batch size {batch_size!r} must be a positive integer")
    batch_size = int(batch_size)
    if cache is not None:
        key = cache.key(folder, preprocessing, input_shape)
        hit = cache.get(key, len(folder.samples), input_shape)
        if hit is not None:
            yield from _batches_from_cache(folder, hit, batch_size, progress)
            return
        yield from _batches_decoding(folder, preprocessing, input_shape, batch_size, progress, cache.writer(key, folder, input_shape))
        return
    yield from _batches_decoding(folder, preprocessing, input_shape, batch_size, progress, None)


def _labels(folder: ImageFolder, start: int, stop: int) -> list[int]:
    return [-1 if label is None else label for _, label in folder.samples[start:stop]]


def _batches_decoding(folder, preprocessing, input_shape, batch_size, progress, writer) -> Iterator[Batch]:
    total = len(folder.samples)
    starts = list(range(0, total, batch_size))
    pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
    pending: deque[tuple[int, list[Future]]] = deque()

    def submit(start: int) -> None:
        paths = [p for p, _ in folder.samples[start:start + batch_size]]
        pending.append((start, [pool.submit(_decode, p, preprocessing, input_shape) for p in paths]))

    try:
        for start in starts[:2]:
            submit(start)
        next_index = 2
        while pending:
            start, futures = pending.popleft()
            if next_index < len(starts):
                submit(starts[next_index])
                next_index += 1
            results = [f.result() for f in futures]
            labels = _labels(folder, start, start + len(results))
            xs, ys, paths = [], [], []
            for offset, result in enumerate(results):
                path = folder.samples[start + offset][0]
                if isinstance(result, str):
                    folder.record_skip(path, result)
                    if writer is not None:
                        writer.skip(start + offset, path, result)
                    continue
                if writer is not None:
                    writer.put(start + offset, result)
                xs.append(result)
                ys.append(labels[offset])
                paths.append(path)
            if progress is not None:
                progress(start + len(results), total)
            if xs:
                yield Batch(x=np.stack(xs), labels=np.asarray(ys, dtype=np.int64), paths=paths)
        if writer is not None:
            writer.commit()
            writer = None
    finally:
        for _, futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if writer is not None:
            writer.abort()


def _batches_from_cache(folder: ImageFolder, hit: "CachedTensors", batch_size: int,
                        progress: Progress | None) -> Iterator[Batch]:
    total = len(folder.samples)
    for index, reason in hit.skipped.items():
        folder.record_skip(folder.samples[index][0], reason)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        keep = [i for i in range(start, stop) if i not in hit.skipped]
        if progress is not None:
            progress(stop, total)
        if not keep:
            continue
        x = np.array(hit.tensors[keep[0]:keep[-1] + 1], dtype=np.float32)
        if len(keep) != keep[-1] + 1 - keep[0]:
            x = x[[i - keep[0] for i in keep]]
        labels = np.asarray([hit.labels[i] for i in keep], dtype=np.int64)
        yield Batch(x=x, labels=labels, paths=[folder.samples[i][0] for i in keep])


# ---------------------------------------------------------------- cache

@dataclass
class CachedTensors:
    tensors: np.ndarray            # memory-mapped float32 (N, C, H, W); rows of skipped images are zero
    labels: list[int]
    skipped: dict[int, str]        # sample index -> reason


class TensorCache:
    """Decoded tensors on disk, one `<key>.npy` (+ `<key>.json`: labels, skipped
    files) per (files, preprocessing, input shape). Writes are atomic (temporary
    file + rename, the .json last), so concurrent builders of the same key each
    leave a complete, identical entry; readers memory-map the array."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the tensor cache folder {self.dir}: {e.strerror or e}") from None

    def key(self, folder: ImageFolder, preprocessing: Preprocessing, input_shape: Sequence[int]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({"v": CACHE_FORMAT_VERSION, "pre": preprocessing.to_dict(),
                                  "shape": [int(s) for s in input_shape]}, sort_keys=True).encode())
        for path, label in folder.samples:
            try:
                st = path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            digest.update(os.fsencode(path.absolute()))
            digest.update(f"|{label}|{stamp}\n".encode())
        return digest.hexdigest()[:32]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def get(self, key: str, n: int, input_shape: Sequence[int]) -> CachedTensors | None:
        array_path, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            tensors = np.load(array_path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if tensors.shape != (n, *map(int, input_shape)) or tensors.dtype != np.float32 or len(meta.get("labels", ())) != n:
            return None
        return CachedTensors(tensors=tensors, labels=[int(v) for v in meta["labels"]],
                             skipped={int(i): r for i, r in meta.get("skipped", {}).items()})

    def writer(self, key: str, folder: ImageFolder, input_shape: Sequence[int]) -> "_CacheWriter":
        return _CacheWriter(self, key, folder, tuple(int(s) for s in input_shape))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("*") if p.is_file())

    def clear(self) -> None:
        for p in self.dir.glob("*"):
            if p.is_file() and (p.suffix in (".npy", ".json") or ".tmp-" in p.name):
                p.unlink(missing_ok=True)


class _CacheWriter:
    def __init__(self, cache: TensorCache, key: str, folder: ImageFolder, input_shape: tuple[int, ...]):
        self.array_path, self.meta_path = cache.paths(key)
        tag = f".tmp-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
        self.tmp_array = self.array_path.with_name(self.array_path.name + tag)
        self.tmp_meta = self.meta_path.with_name(self.meta_path.name + tag)
        self.labels = [-1 if label is None else label for _, label in folder.samples]
        self.skipped: dict[int, str] = {}
        try:
            self.array = np.lib.format.open_memmap(self.tmp_array, mode="w+", dtype=np.float32,
                                                   shape=(len(folder.samples), *input_shape))
        except OSError:
            self.array = None  # no room/permission: run uncached rather than fail

    def put(self, index: int, tensor: np.ndarray) -> None:
        if self.array is not None:
            self.array[index] = tensor

    def skip(self, index: int, path: Path, reason: str) -> None:
        self.skipped[index] = reason

    def commit(self) -> None:
        if self.array is None:
            return
        try:
            self.array.flush()
            del self.array
            self.array = None
            self.tmp_meta.write_text(json.dumps({"version": CACHE_FORMAT_VERSION, "labels": self.labels,
                                                 "skipped": {str(i): r for i, r in self.skipped.items()}}))
            os.replace(self.tmp_array, self.array_path)
            os.replace(self.tmp_meta, self.meta_path)
        except OSError:
            self.abort()

    def abort(self) -> None:
        self.array = None
        self.tmp_array.unlink(missing_ok=True)
        self.tmp_meta.unlink(missing_ok=True)
