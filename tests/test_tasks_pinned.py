"""The task seam must not change what the lab measures: small real sweeps of the
two sample models give the metrics and sizes recorded on main before the seam
was built (tests/data/pinned_sweeps.json, written by running this file with
COMPRESS_LAB_WRITE_PINS=1 on main's code). Sizes must match to the byte, counts
exactly, float metrics to 1e-6 relative (the runtime is deterministic on one
machine; the tolerance absorbs summation order only), SNR and loss to 1e-4 / 1e-5
relative (a program's sums differ in their last digits between CPU models), and
an SNR at fp32's rounding floor (over 100 dB) only as being there."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from compress_lab.sweep.runner import run_sweep
from compress_lab.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
PINS = Path(__file__).resolve().parent / "data" / "pinned_sweeps.json"
WRITE = os.environ.get("COMPRESS_LAB_WRITE_PINS") == "1"

FLOAT_KEYS = ("top1", "top5", "loss", "agreement", "snr_db")
EXACT_KEYS = ("n", "skipped", "confusion")
SIZE_KEYS = ("bytes", "package_bytes", "weights_bytes", "n_weights")

MNIST_GRID = """
[[grid]]
technique = "palettize"
nbits = 4
[[grid]]
technique = "quantize"
dtype = "int8"
[[grid]]
technique = "prune"
target_sparsity = 0.5
"""

DOG_GRID = """
[[grid]]
technique = "palettize"
nbits = 4
"""


def _mnist_val(folder: Path, per_class: int = 5) -> Path:
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        target = folder / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(image, target / image.name)
    return folder


def _dog_val(folder: Path, count: int = 12) -> Path:
    folder.mkdir(parents=True)
    for image in sorted((SAMPLES / "dog_mobilenetv2" / "val").iterdir())[:count]:
        shutil.copy2(image, folder / image.name)
    return folder


def _sweep(folder: Path, sample: str, grid: str) -> dict:
    spec = folder / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{SAMPLES / sample}"
        [data]
        validation = "val"
        batch_size = 32
        [run]
        name = "pinned-{sample}"
        workers = 1
    """) + grid)
    result = run_sweep(load_spec(spec), folder / "store")
    assert result.ok, [(r.label, r.error) for r in result.runs if r.state != "COMPLETE"]
    return {r.label: {"metrics": {k: r.metrics.get(k) for k in FLOAT_KEYS + EXACT_KEYS + ("per_class",)},
                      "sizes": {k: r.sizes.get(k) for k in SIZE_KEYS}} for r in result.runs}


# Programs sum in a CPU's own SIMD order: SNR and loss move in their last digits from one CPU
# model to another (0.002 dB at 75 dB for an fp16 program between two x86 machines); above
# SNR_FLOOR_DB (an fp32 program against PyTorch) the SNR measures rounding alone and moves by a
# dB or so. Counts-based metrics do not move.
TOLERANCE = {"snr_db": dict(rel=1e-4, abs=1e-6), "loss": dict(rel=1e-5, abs=1e-9)}
SNR_FLOOR_DB = 100.0


def _compare(found: dict, pinned: dict) -> None:
    assert sorted(found) == sorted(pinned)
    mismatches = []
    for label, want in pinned.items():
        got = found[label]
        if got["sizes"] != want["sizes"]:
            mismatches.append((label, "sizes", got["sizes"], want["sizes"]))
        for key in EXACT_KEYS:
            if got["metrics"][key] != want["metrics"][key]:
                mismatches.append((label, key, got["metrics"][key], want["metrics"][key]))
        for key in FLOAT_KEYS + ("per_class",):
            if want["metrics"][key] is None:
                same = got["metrics"][key] is None
            elif key == "snr_db" and got["metrics"][key] is not None and min(got["metrics"][key],
                                                                           want["metrics"][key]) >= SNR_FLOOR_DB:
                same = True
            else:
                same = got["metrics"][key] == pytest.approx(want["metrics"][key],
                                                            **TOLERANCE.get(key, dict(rel=1e-6, abs=1e-9)))
            if not same:
                mismatches.append((label, key, got["metrics"][key], want["metrics"][key]))
    assert not mismatches, "\n".join(f"{label} {key}: got {g!r}, pinned {w!r}" for label, key, g, w in mismatches)


@pytest.mark.slow
@pytest.mark.parametrize("sample,grid,make_val", [("mnist_cnn", MNIST_GRID, _mnist_val),
                                                   ("dog_mobilenetv2", DOG_GRID, _dog_val)])
def test_a_small_sweep_gives_the_metrics_and_sizes_pinned_on_main(tmp_path, sample, grid, make_val, mnist_dir, dog_handle):
    make_val(tmp_path / "val")
    found = _sweep(tmp_path, sample, grid)
    if WRITE:
        pins = json.loads(PINS.read_text()) if PINS.is_file() else {}
        pins[sample] = found
        PINS.parent.mkdir(parents=True, exist_ok=True)
        PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINS.read_text())[sample]
    _compare(found, pinned)
    # the numbers are real measurements, not placeholders
    assert found["baseline PyTorch"]["metrics"]["agreement"] == 1.0
    assert found["palettize nbits=4"]["sizes"]["bytes"] < found["baseline fp16"]["sizes"]["bytes"]
