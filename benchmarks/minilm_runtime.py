"""Speed of the lab's Core ML runtime vs eager PyTorch on the minilm_embedder sample
(BERT 6 x 384, two int32 inputs, flexible batch and sequence).

Converts the sample to fp32 and fp16 ML programs with the lab's conversion, then
times the runtime and eager PyTorch (fp32) side by side on the same batch of real
validation samples (WordNet definitions and words, 32 tokens), interleaved
(alternating which goes first), with the same torch thread count; reports medians,
their ratio and the cosine of the runtime's embeddings to eager PyTorch's.

    .venv/bin/python benchmarks/minilm_runtime.py [--batch 64] [--repeats 7] [--threads 2]
        [--precisions fp32 fp16] [--out benchmarks/results/minilm_runtime.json]
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
MODEL = "minilm_embedder"
TARGET = 1.0   # issue 13: runtime / eager <= 1.0x at batch 64, fp32 and fp16 programs


def validation_batch(batch: int) -> dict[str, np.ndarray]:
    """The first `batch` definitions of the sample's val.npz and the same number of its words."""
    path = ROOT / "sample_models" / MODEL / "val.npz"
    if not path.is_file():
        raise SystemExit(f"{path} is missing; build the sample first: .venv/bin/python sample_models/build.py")
    with np.load(path) as data:
        pair = data["pair"]
        queries, keys = np.flatnonzero(pair >= 0), np.flatnonzero(pair < 0)
        index = np.concatenate([queries[: batch - batch // 2], keys[: batch // 2]])
        return {name: data[name][index] for name in ("input_ids", "attention_mask")}


def _time_into(fn, times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)


def bench(batch: int, repeats: int, threads: int, precisions: list[str]) -> list[dict]:
    torch.set_num_threads(threads)
    handle = load_model(MODEL)
    module = handle.torch_copy()
    inputs = validation_batch(batch)
    ids, mask = (torch.from_numpy(inputs[n].astype(np.int64)) for n in ("input_ids", "attention_mask"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            path = convert_module(module, handle.metadata, Path(tmp) / f"{MODEL}_{precision}.mlpackage",
                                  precision=precision)
            program = load_program(path)

            def eager():
                with torch.inference_mode():
                    return module(ids, mask)

            def runtime():
                return program.predict_all(inputs)["embedding"]

            reference, ours = eager().numpy(), runtime()  # warm-up, and the parity figure
            cosine = (reference * ours).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(ours, axis=1)
            eager_times, runtime_times = [], []
            for r in range(repeats):
                order = [(eager, eager_times), (runtime, runtime_times)]
                for fn, times in order if r % 2 == 0 else reversed(order):
                    _time_into(fn, times)
                print(".", end="", file=sys.stderr, flush=True)
            eager_ms = statistics.median(eager_times) * 1e3
            runtime_ms = statistics.median(runtime_times) * 1e3
            rows.append({
                "model": MODEL, "program": precision, "batch": batch, "sequence": int(ids.shape[1]),
                "threads": threads, "repeats": repeats,
                "eager_ms": round(eager_ms, 2), "runtime_ms": round(runtime_ms, 2),
                "ratio": round(runtime_ms / eager_ms, 3), "target": TARGET,
                "min_cosine": float(cosine.min()),
            })
    print(file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | program | batch x tokens | eager ms | runtime ms | runtime / eager | min cosine |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['program']} | {r['batch']} x {r['sequence']} | {r['eager_ms']:.1f} "
                     f"| {r['runtime_ms']:.1f} | {r['ratio']:.3f}x | {r['min_cosine']:.6f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="3 repeats (run_all's light setting)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "minilm_runtime.json")
    args = parser.parse_args(argv)
    rows = bench(args.batch, 3 if args.quick else args.repeats, args.threads, args.precisions)
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "minilm_runtime_vs_eager", "torch": torch.__version__, "machine": platform.machine(),
              "system": platform.system(), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
