"""Size table of post-training compression on one model: technique x setting -> bytes on
disk, ratio vs the fp16 and fp32 float packages, bits per weight, and compression time.

    .venv/bin/python benchmarks/size_table.py [--model dog_mobilenetv2] [--quick]

Prints a markdown table. Times are wall-clock seconds of the compression step alone
(loading and saving excluded; the float package is converted once beforehand)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from compress_lab.errors import LabError
from compress_lab.models import load_model
from compress_lab.models.size import compare, package_size
from compress_lab.techniques import CompressContext, compress, config_from_dict

SETTINGS = [
    {"technique": "palettize", "mode": "uniform", "nbits": 4},
    {"technique": "palettize", "mode": "kmeans", "nbits": 2},
    {"technique": "palettize", "mode": "kmeans", "nbits": 4},
    {"technique": "palettize", "mode": "fast_kmeans", "nbits": 4},
    {"technique": "palettize", "mode": "fast_kmeans", "nbits": 6},
    {"technique": "palettize", "mode": "fast_kmeans", "nbits": 8},
    {"technique": "palettize", "mode": "fast_kmeans", "nbits": 4, "enable_per_channel_scale": True},
    {"technique": "palettize", "mode": "fast_kmeans", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 8,
     "skip_indivisible": True},
    {"technique": "quantize", "dtype": "int8"},
    {"technique": "quantize", "dtype": "uint8", "mode": "linear", "granularity": "per_tensor"},
    {"technique": "quantize", "dtype": "int4"},
    {"technique": "quantize", "dtype": "int4", "granularity": "per_block", "block_size": 32, "skip_indivisible": True},
    {"technique": "prune", "target_sparsity": 0.5},
    {"technique": "prune", "target_sparsity": 0.75},
    {"technique": "prune", "n_m_ratio": [2, 4], "skip_indivisible": True},
    {"technique": "prune", "mode": "threshold", "threshold": 0.05},
    {"technique": "prune_palettize", "target_sparsity": 0.5, "palettize_mode": "fast_kmeans", "nbits": 4},
    {"technique": "prune_quantize", "target_sparsity": 0.5, "dtype": "int8"},
    {"technique": "palettize_quantize_lut", "palettize_mode": "fast_kmeans", "nbits": 4,
     "granularity": "per_grouped_channel", "group_size": 8, "skip_indivisible": True, "lut_dtype": "int8"},
]
QUICK = [0, 2, 3, 8, 10, 12, 16, 17]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dog_mobilenetv2")
    parser.add_argument("--quick", action="store_true", help="a few representative settings only")
    parser.add_argument("--out", type=Path, default=None, help="folder for the packages (default: a temporary one)")
    args = parser.parse_args(argv)

    handle = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        ctx = CompressContext(handle=handle, workdir=root / "work")
        started = time.perf_counter()
        fp16 = package_size(ctx.float_package("fp16"))
        fp32 = package_size(ctx.float_package("fp32"))
        print(f"Model {args.model}: {fp16.n_weights:,} weights; float packages converted in "
              f"{time.perf_counter() - started:.1f} s\n")
        print("| technique | settings | weights file (bytes) | package (bytes) | x vs fp16 | x vs fp32 | bits/weight | compress s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for label, report in (("float fp32", fp32), ("float fp16", fp16)):
            _row(label.split()[0], label.split()[1], report, fp16, fp32, None)
        settings = [SETTINGS[i] for i in QUICK] if args.quick else SETTINGS
        for i, data in enumerate(settings):
            config = config_from_dict(data)
            settings_label = " ".join(f"{k}={v}" for k, v in data.items() if k != "technique")
            try:
                outcome = compress(handle, config, root / f"{i:02d}_{config.name}.mlpackage", context=ctx)
            except LabError as e:
                print(f"| {config.name} | {settings_label} | failed: {str(e)[:80]} | | | | | |")
                continue
            _row(config.name, settings_label, package_size(outcome.path), fp16, fp32, outcome.timings["compress_s"])
            sys.stdout.flush()
    return 0


def _row(technique, settings, report, fp16, fp32, seconds) -> None:
    ratios = compare(report, fp16, fp32)
    time_text = f"{seconds:.1f}" if seconds is not None else "-"
    print(f"| {technique} | {settings} | {report.weights_bytes:,} | {report.package_bytes:,} | "
          f"{ratios['weights_vs_fp16']:.2f} | {ratios['weights_vs_fp32']:.2f} | {report.bits_per_weight:.2f} | {time_text} |")


if __name__ == "__main__":
    raise SystemExit(main())
