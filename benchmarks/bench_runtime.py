"""Speed of the lab's Core ML runtime vs eager PyTorch on the same model.

Converts the dog_mobilenetv2 sample model to fp32 and fp16 ML programs, then times
the runtime and eager PyTorch side by side, interleaved (alternating which goes
first), with the same torch thread count; reports medians.

    .venv/bin/python benchmarks/bench_runtime.py [--model dog_mobilenetv2] [--batches 1 64]
        [--repeats 5] [--threads 2] [--out benchmarks/results/runtime.json]
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


def _timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def bench(model_name: str, batches: list[int], repeats: int, threads: int, precisions: list[str]) -> list[dict]:
    torch.set_num_threads(threads)
    handle = load_model(model_name)
    module = handle.torch_copy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            path = convert_module(module, handle.metadata, Path(tmp) / f"{model_name}_{precision}.mlpackage",
                                  precision=precision)
            program = load_program(path)
            for batch in batches:
                x = torch.randn(batch, *handle.metadata.input_shape)
                inner = max(1, 16 // batch)

                def eager():
                    with torch.inference_mode():
                        return module(x)

                def runtime():
                    return program.predict(x)

                reference, ours = eager().numpy(), runtime()  # warm-up, and the parity figure
                eager_times, runtime_times = [], []
                for r in range(repeats):
                    order = [(eager, eager_times), (runtime, runtime_times)]
                    for fn, times in order if r % 2 == 0 else reversed(order):
                        times.append(_timed(fn, inner))
                    print(".", end="", file=sys.stderr, flush=True)
                eager_ms = statistics.median(eager_times) * 1e3
                runtime_ms = statistics.median(runtime_times) * 1e3
                rows.append({
                    "model": model_name, "program": precision, "batch": batch, "threads": threads,
                    "repeats": repeats, "calls_per_repeat": inner,
                    "eager_ms": round(eager_ms, 3), "runtime_ms": round(runtime_ms, 3),
                    "ratio": round(runtime_ms / eager_ms, 3),
                    "max_abs_diff": float(np.abs(ours - reference).max()),
                    "output_scale": float(np.abs(reference).max()),
                })
    print(file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | program | batch | eager ms | runtime ms | runtime / eager | max abs diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['program']} | {r['batch']} | {r['eager_ms']:.2f} | {r['runtime_ms']:.2f} "
                     f"| {r['ratio']:.3f}x | {r['max_abs_diff']:.2e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dog_mobilenetv2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime.json")
    args = parser.parse_args(argv)
    rows = bench(args.model, args.batches, args.repeats, args.threads, args.precisions)
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "runtime_vs_eager", "torch": torch.__version__, "machine": platform.machine(),
              "system": platform.system(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
