"""Speed of the lab's Core ML runtime vs eager PyTorch on the same model.

Converts each model (a sample name or a model folder) to fp32 and fp16 ML programs,
then times the runtime and eager PyTorch side by side, interleaved (alternating which
goes first), with the same torch thread count; reports medians. Inputs are named, as
the model's task reads them from its validation source (the sample's `val/` or
`val.npz`, or --data): the first `batch` samples, repeated if there are fewer; a
model with only float inputs and no data gets random normal inputs. Eager PyTorch
takes them positionally (int inputs as int64); the runtime takes the dict of arrays,
as the lab's evaluation passes it.

    .venv/bin/python benchmarks/bench_runtime.py [--models dog_mobilenetv2,minilm_embedder,crepe_pitch]
        [--batches 1 64] [--repeats 5] [--threads 2] [--data DIR_OR_NPZ] [--out benchmarks/results/runtime.json]

Default batches: dog_mobilenetv2 1 and 64, minilm_embedder 64, crepe_pitch 256 (the
issues' targets); any other model 64. Default models: those of DEFAULT_MODELS that
are built (the others are listed as not built).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _task_inputs import built_samples, eager_args, task_inputs, validation_source  # noqa: E402

from compress_lab.evaluate import run_program  # noqa: E402
from compress_lab.models import load_model  # noqa: E402
from compress_lab.models.convert import convert_module  # noqa: E402
from compress_lab.runtime import load_program  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("dog_mobilenetv2", "minilm_embedder", "crepe_pitch")
DEFAULT_BATCHES = {"dog_mobilenetv2": [1, 64], "minilm_embedder": [64], "crepe_pitch": [256]}


def _timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def _first_output(out) -> np.ndarray:
    if isinstance(out, dict):
        out = next(iter(out.values()))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32)


def bench(model_name: str, batches: list[int], repeats: int, threads: int, precisions: list[str],
          data: Path | None = None) -> list[dict]:
    torch.set_num_threads(threads)
    handle = load_model(model_name)
    module = handle.torch_copy()
    source = validation_source(model_name, data)
    label = handle.metadata.name
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            path = convert_module(module, handle.metadata, Path(tmp) / f"{label}_{precision}.mlpackage",
                                  precision=precision)
            program = load_program(path)
            for batch in batches:
                inputs = task_inputs(handle, batch, source)
                args = eager_args(handle, inputs)
                inner = max(1, 16 // batch)

                def eager():
                    with torch.inference_mode():
                        return module(*args)

                def runtime():
                    return run_program(program, inputs)

                reference, ours = _first_output(eager()), _first_output(runtime())  # warm-up; parity
                eager_times, runtime_times = [], []
                for r in range(repeats):
                    order = [(eager, eager_times), (runtime, runtime_times)]
                    for fn, times in order if r % 2 == 0 else reversed(order):
                        times.append(_timed(fn, inner))
                    print(".", end="", file=sys.stderr, flush=True)
                eager_ms = statistics.median(eager_times) * 1e3
                runtime_ms = statistics.median(runtime_times) * 1e3
                rows.append({
                    "model": label, "program": precision, "batch": batch, "threads": threads,
                    "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in inputs.items()},
                    "data": str(source.relative_to(ROOT) if source and source.is_relative_to(ROOT) else source),
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
    parser.add_argument("--models", "--model", default=None,
                        help=f"comma-separated sample names or model folders (default: the built ones of "
                             f"{','.join(DEFAULT_MODELS)})")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes for every model (default per model: " +
                             ", ".join(f"{m} {' '.join(map(str, b))}" for m, b in DEFAULT_BATCHES.items()) + ")")
    parser.add_argument("--data", type=Path, default=None, help="validation source (one model only)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime.json")
    args = parser.parse_args(argv)
    if args.models:
        models, not_built = [m.strip() for m in args.models.split(",") if m.strip()], []
    else:
        models, not_built = built_samples(DEFAULT_MODELS)
    if args.data is not None and len(models) != 1:
        parser.error(f"--data goes with one model; got {models}")
    rows = []
    for model in models:
        batches = args.batches or DEFAULT_BATCHES.get(Path(model).name, [64])
        rows += bench(model, batches, args.repeats, args.threads, args.precisions, args.data)
    print(markdown(rows))
    if not_built:
        print(f"not built (skipped): {', '.join(not_built)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": list(sys.argv[1:] if argv is None else argv), "benchmark": "runtime_vs_eager", "torch": torch.__version__, "machine": platform.machine(),
              "system": platform.system(), "rows": rows, "not_built": not_built}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
