"""Core ML packages with image inputs (`ct.ImageType`), the form most shipped vision
models take: converted here from small real PyTorch models (a tiny conv net on real
photos, the trained MNIST sample on real digits), loaded through the lab, run by its
runtime exactly as Core ML would feed them (RGB pixels 0..255 -> declared channel
order -> the program's own scale and bias), compared with eager PyTorch given the
equivalent normalisation, evaluated on real image folders, and palettized in a sweep
that keeps the image input."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from compress_lab.arrays import image_preprocessing, read_arrays
from compress_lab.cli import main
from compress_lab.data import load_image, scan_folder
from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.models.convert import save_mlmodel
from compress_lab.quiet import quiet_coremltools
from compress_lab.runtime import load_program

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
PHOTOS = SAMPLES / "dog_mobilenetv2" / "val"
SCALE = 1 / 255
BIAS = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]   # with SCALE: roughly ImageNet normalisation


class TinyConv(torch.nn.Module):
    """A small real conv classifier (3 x 32 x 32 -> 6 scores)."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(16, 6)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def convert_image_model(module, path: Path, shape, **image) -> Path:
    import coremltools as ct

    traced = torch.jit.trace(module.eval(), torch.zeros(1, *shape[1:]))
    with quiet_coremltools():
        mlmodel = ct.convert(traced, inputs=[ct.ImageType(name="image", shape=shape, **image)],
                             outputs=[ct.TensorType(name="scores")], convert_to="mlprogram",
                             minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)
    return save_mlmodel(mlmodel, path)


def photos(n: int = 8) -> Path:
    return PHOTOS


def rgb_pixels(folder: Path, size: int, n: int) -> np.ndarray:
    """What the lab feeds: RGB 0..255 (N, 3, H, W), resized to the declared size."""
    image_folder = scan_folder(folder)
    from compress_lab.models.metadata import Preprocessing
    identity = Preprocessing(color="RGB", scale=1.0)
    return np.stack([load_image(p, identity, (3, size, size)) for p, _ in image_folder.samples[:n]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return TinyConv().eval(), tmp_path_factory.mktemp("image_inputs")


def test_an_rgb_image_package_with_scale_and_bias_runs_as_eager_pytorch_on_real_photos(tiny):
    import coremltools as ct

    module, folder = tiny
    package = convert_image_model(module, folder / "rgb.mlpackage", (1, 3, 32, 32), scale=SCALE, bias=BIAS,
                                  color_layout=ct.colorlayout.RGB)
    handle = load_model(package)   # no lab metadata: a tensors model from the spec, the image input declared
    (spec,) = handle.metadata.inputs
    assert handle.metadata.task == "tensors" and spec.name == "image" and spec.shape == (3, 32, 32)
    assert spec.image.color_layout == "RGB" and spec.image.scale == pytest.approx(SCALE)
    assert spec.image.bias == pytest.approx(BIAS, rel=1e-6)
    assert [o.name for o in handle.metadata.outputs] == ["scores"] and handle.notes
    pixels = rgb_pixels(PHOTOS, 32, 10)
    got = load_program(package).predict(pixels)
    with torch.no_grad():
        want = module(torch.from_numpy(pixels * SCALE + np.asarray(BIAS, np.float32)[:, None, None])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    # evaluated as a tensors model straight on the image folder: fidelity to itself is perfect
    result = evaluate_model(handle, PHOTOS, reference=handle, batch_size=16)
    assert result.n == len(scan_folder(PHOTOS)) and result.fidelity["scores"]["cosine"] == pytest.approx(1.0)
    np.testing.assert_allclose(result.outputs["scores"][:10], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_bgr_image_package_takes_rgb_pixels_and_reverses_the_channels_as_core_ml_does(tiny):
    import coremltools as ct

    module, folder = tiny
    package = convert_image_model(module, folder / "bgr.mlpackage", (1, 3, 32, 32), scale=SCALE, bias=BIAS[::-1],
                                  color_layout=ct.colorlayout.BGR)
    assert load_model(package).metadata.inputs[0].image.color_layout == "BGR"
    pixels = rgb_pixels(PHOTOS, 32, 6)
    got = load_program(package).predict(pixels)
    bgr = pixels[:, ::-1] * SCALE + np.asarray(BIAS[::-1], np.float32)[:, None, None]
    with torch.no_grad():
        want = module(torch.from_numpy(np.ascontiguousarray(bgr, dtype=np.float32))).numpy()
        as_rgb = module(torch.from_numpy(pixels * SCALE + np.asarray(BIAS[::-1], np.float32)[:, None, None])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.abs(got - as_rgb).max() > 1e-3   # the channel order matters on real colour photos


MNIST_META = json.loads((SAMPLES / "mnist_cnn" / "metadata.json").read_text())
MNIST_STD, MNIST_MEAN = MNIST_META["preprocessing"]["std"][0], MNIST_META["preprocessing"]["mean"][0]


@pytest.fixture(scope="module")
def mnist_image_package(mnist_handle, tmp_path_factory):
    """The trained MNIST sample as a grayscale image package whose normalisation
    (x/255 - mean) / std is the ImageType's scale and bias; its metadata.json beside it
    still describes the PyTorch model's preprocessing (the lab replaces it)."""
    import coremltools as ct

    folder = tmp_path_factory.mktemp("mnist_image")
    package = convert_image_model(mnist_handle.torch_copy(), folder / "mnist.mlpackage", (ct.RangeDim(1, 256, 1), 1, 28, 28),
                                  scale=1 / (255 * MNIST_STD), bias=[-MNIST_MEAN / MNIST_STD],
                                  color_layout=ct.colorlayout.GRAYSCALE)
    (folder / "metadata.json").write_text(json.dumps({**MNIST_META, "name": "mnist_image"}))
    val = folder / "val"
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        (val / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:4]:
            shutil.copy2(image, val / class_dir.name / image.name)
    return package, val


def test_a_grayscale_image_classifier_scores_real_digits_as_the_pytorch_model(mnist_handle, mnist_image_package, capsys):
    package, val = mnist_image_package
    handle = load_model(package)
    meta = handle.metadata
    assert meta.task == "classification" and meta.inputs[0].image.color_layout == "GRAYSCALE"
    assert (meta.preprocessing.scale, meta.preprocessing.mean, meta.preprocessing.std) == (1.0, (0.0,), (1.0,))
    assert any("replaced by identity" in note for note in handle.notes)
    ours = evaluate_model(handle, val)
    eager = evaluate_model(mnist_handle, val)     # the PyTorch model, with its own normalisation
    assert ours.n == eager.n == 40 and ours.top1 == eager.top1 and ours.top1 > 0.9
    np.testing.assert_allclose(ours.logits, eager.logits, rtol=1e-4, atol=1e-4 * np.abs(eager.logits).max())

    assert main(["evaluate", str(package), "--data", str(val), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["top1"] == ours.top1 and "replaced by identity" in captured.err


def test_a_grayscale_input_also_takes_rgb_pixels_turned_to_luma_as_pillow_does(mnist_image_package):
    package, val = mnist_image_package
    program = load_program(package)
    rgb = rgb_pixels(PHOTOS, 28, 4)
    from PIL import Image
    gray = np.stack([np.asarray(Image.fromarray(p.transpose(1, 2, 0).astype(np.uint8), "RGB").convert("L"),
                                dtype=np.float32)[None] for p in rgb])
    np.testing.assert_array_equal(program.predict(rgb), program.predict(gray))


SWEEP = textwrap.dedent("""
    [model]
    source = "{source}"
    [data]
    validation = "{val}"
    [run]
    name = "{name}"
    workers = 1
    [[grid]]
    technique = "palettize"
    nbits = 4
""")


@pytest.mark.slow
def test_an_image_package_is_palettized_in_a_sweep_and_keeps_its_image_input(mnist_image_package, tmp_path):
    import coremltools as ct
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec

    package, val = mnist_image_package
    source = tmp_path / "mnist.mlpackage"
    shutil.copytree(package, source)
    shutil.copy2(package.parent / "metadata.json", tmp_path / "metadata.json")
    spec = tmp_path / "spec.toml"
    spec.write_text(SWEEP.format(source=source, val=val, name="first"))
    result = run_sweep(load_spec(spec), tmp_path / "store")
    assert result.ok, [(r.label, r.error) for r in result.runs]
    compressed = [r for r in result.runs if r.technique == "palettize"]
    assert compressed and all(r.metrics["top1"] > 0.8 for r in compressed)
    path = result.store_folder / compressed[0].artifact_path
    inputs = ct.utils.load_spec(str(path)).description.input
    assert inputs[0].type.WhichOneof("Type") == "imageType"
    assert load_model(path, metadata=tmp_path / "metadata.json").metadata.inputs[0].image.color_layout == "GRAYSCALE"

    # a compressed copy saved beside the source package, then a second sweep of the source
    shutil.copytree(path, tmp_path / "mnist_palettized.mlpackage")
    spec.write_text(SWEEP.format(source=source, val=val, name="second"))
    again = run_sweep(load_spec(spec), tmp_path / "store2")
    assert again.ok, [(r.label, r.error) for r in again.runs]


def test_packages_loaded_and_measured_from_several_threads_at_once_run_right(mnist_image_package):
    """coremltools builds MIL programs on one global block stack; a sweep loads its source
    package in the reference thread while the driver measures it. Unserialised, ops landed
    in the other thread's program (KeyError 'input_cast_fp16' at run time)."""
    import threading
    from compress_lab.models.size import package_size

    package, _ = mnist_image_package
    x = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28)).astype(np.float32)
    want = load_program(package).predict(x)
    weights = package_size(package).n_weights
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(3):
            try:
                if i % 2:
                    assert package_size(package).n_weights == weights
                else:
                    np.testing.assert_allclose(load_program(package).predict(x), want, rtol=1e-6)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e)[:200])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.slow
def test_a_package_without_lab_metadata_is_swept_on_an_image_folder_by_fidelity(tiny, tmp_path):
    import coremltools as ct
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec

    module, _ = tiny
    package = convert_image_model(module, tmp_path / "rgb.mlpackage", (1, 3, 32, 32), scale=SCALE, bias=BIAS,
                                  color_layout=ct.colorlayout.RGB)
    spec = tmp_path / "spec.toml"
    spec.write_text(SWEEP.format(source=package, val=PHOTOS, name="tensors").replace("nbits = 4", "nbits = [4, 8]\nweight_threshold = 0"))
    result = run_sweep(load_spec(spec), tmp_path / "store")
    assert result.ok, [(r.label, r.error) for r in result.runs]
    snr = {r.config.get("nbits"): r.metrics["fidelity"]["scores"]["snr_db"] for r in result.runs if r.technique == "palettize"}
    assert 10 < snr[4] < snr[8] < 200        # real, measured noise: 8 bits keeps more than 4
    for run in result.runs:
        if run.technique == "palettize":
            assert ct.utils.load_spec(str(result.store_folder / run.artifact_path)).description.input[0].type.WhichOneof(
                "Type") == "imageType"
