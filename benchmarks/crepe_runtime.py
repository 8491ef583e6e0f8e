"""Speed of the lab's Core ML runtime vs eager PyTorch on the crepe_pitch sample (CREPE
tiny) at batch 256, on real frames of its validation set.

Converts the sample to fp32 and fp16 ML programs, then times the runtime and eager
PyTorch side by side, interleaved (alternating which goes first), with the same torch
thread count; reports medians and the ratio runtime / eager (target <= 1.0x, issue 13).

    .venv/bin/python benchmarks/crepe_runtime.py [--batch 256] [--repeats 5] [--threads 2]
        [--quick] [--out benchmarks/results/crepe_runtime.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compress_lab.models import load_model
from compress_lab.models.convert import convert_module
from compress_lab.runtime import load_program

ROOT = Path(__file__).resolve().parents[1]
MODEL = "crepe_pitch"
TARGET = 1.0


def _timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def bench(batch: int, repeats: int, threads: int, precisions: list[str]) -> list[dict]:
    torch.set_num_threads(threads)
    handle = load_model(MODEL)
    module = handle.torch_copy()
    frames = np.load(ROOT / "sample_models" / MODEL / "val.npz")["frames"]
    x = np.resize(frames, (batch, frames.shape[1])).astype(np.float32)   # real frames, repeated if needed
    xt = torch.from_numpy(x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            path = convert_module(module, handle.metadata, Path(tmp) / f"{MODEL}_{precision}.mlpackage",
                                  precision=precision)
            program = load_program(path)

            def eager():
                with torch.inference_mode():
                    return module(xt)

            def runtime():
                return program.predict_all({"frames": x})["activations"]

            reference, ours = eager().numpy(), np.asarray(runtime())   # warm-up, and the parity figure
            eager_times, runtime_times = [], []
            for r in range(repeats):
                order = [(eager, eager_times), (runtime, runtime_times)]
                for fn, times in order if r % 2 == 0 else reversed(order):
                    times.append(_timed(fn, 1))
                print(".", end="", file=sys.stderr, flush=True)
            eager_ms = statistics.median(eager_times) * 1e3
            runtime_ms = statistics.median(runtime_times) * 1e3
            rows.append({"model": MODEL, "program": precision, "batch": batch, "threads": threads, "repeats": repeats,
                         "eager_ms": round(eager_ms, 3), "runtime_ms": round(runtime_ms, 3),
                         "ratio": round(runtime_ms / eager_ms, 3), "target": TARGET,
                         "max_abs_diff": float(np.abs(ours - reference).max())})
    print(file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | program | batch | eager ms | runtime ms | runtime / eager | target | max abs diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['program']} | {r['batch']} | {r['eager_ms']:.1f} | {r['runtime_ms']:.1f} "
                     f"| {r['ratio']:.3f}x | <= {r['target']:.2f}x | {r['max_abs_diff']:.2e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crepe_runtime.json")
    args = parser.parse_args(argv)
    rows = bench(args.batch, 3 if args.quick else args.repeats, args.threads, args.precisions)
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "crepe_runtime_vs_eager", "torch": torch.__version__, "machine": platform.machine(),
              "system": platform.system(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
