"""Overhead of the sweep machinery: a lab sweep of N post-training points vs a
hand-written loop calling coremltools and the lab's evaluator directly on the
same points and data, with 1 and 2 workers; and an immediate cached re-run.

Each measurement runs in its own fresh process, timed after that process's
imports (torch, coremltools, compress_lab): the lab's time therefore includes
starting its worker processes, converting both float baselines, evaluating the
three baselines and measuring sizes; the hand loop converts fp16 once, computes
the reference logits, then compresses, saves, evaluates and sizes each point.

    .venv/bin/python benchmarks/bench_sweep.py [--model mnist_cnn] [--repeats 3] [--out benchmarks/results/sweep.json]

Targets: lab <= 1.10x the hand loop with 1 worker, <= 0.65x with 2 workers,
cached re-run <= 5% of the first run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]

# (lab technique config, the same thing as a coremltools op config)
POINTS = [
    ({"technique": "palettize", "nbits": 2}, ("palettize", {"mode": "kmeans", "nbits": 2})),
    ({"technique": "palettize", "nbits": 4}, ("palettize", {"mode": "kmeans", "nbits": 4})),
    ({"technique": "palettize", "nbits": 6}, ("palettize", {"mode": "kmeans", "nbits": 6})),
    ({"technique": "quantize", "dtype": "int8"},
     ("quantize", {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"})),
    ({"technique": "quantize", "dtype": "int4", "granularity": "per_block", "block_size": 32},
     ("quantize", {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block", "block_size": 32})),
    ({"technique": "prune", "target_sparsity": 0.5}, ("prune", {"target_sparsity": 0.5})),
    ({"technique": "prune", "target_sparsity": 0.75}, ("prune", {"target_sparsity": 0.75})),
]
WEIGHT_THRESHOLD = 2048  # the lab's default


def hand_loop(model: str, workdir: Path) -> dict:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from compress_lab.data import TensorCache, scan_folder
    from compress_lab.evaluate import coreml_predictor, evaluate, torch_predictor
    from compress_lab.models.convert import convert_module, save_mlmodel
    from compress_lab.models.handle import load_model
    from compress_lab.models.size import package_size

    started = time.perf_counter()
    handle = load_model(model)
    meta = handle.metadata
    fp16 = convert_module(handle.torch_copy(), meta, workdir / "fp16.mlpackage", precision="fp16")
    folder = scan_folder(ROOT / "sample_models" / model / "val", class_names=meta.class_names)
    cache = TensorCache(workdir / "cache")
    kwargs = dict(cache=cache, preprocessing=meta.preprocessing, input_shape=meta.input_shape)
    reference = evaluate(torch_predictor(handle.module), folder, meta.num_classes, **kwargs).logits
    results = []
    for i, (_, (kind, settings)) in enumerate(POINTS):
        mlmodel = ct.models.MLModel(str(fp16), skip_model_load=True)
        if kind == "palettize":
            op = cto.OpPalettizerConfig(weight_threshold=WEIGHT_THRESHOLD, **settings)
            compressed = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
        elif kind == "quantize":
            op = cto.OpLinearQuantizerConfig(weight_threshold=WEIGHT_THRESHOLD, **settings)
            compressed = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
        else:
            op = cto.OpMagnitudePrunerConfig(weight_threshold=WEIGHT_THRESHOLD, **settings)
            compressed = cto.prune_weights(mlmodel, cto.OptimizationConfig(global_config=op))
        out = save_mlmodel(compressed, workdir / f"point{i}.mlpackage")
        result = evaluate(coreml_predictor(out), folder, meta.num_classes, reference_logits=reference, **kwargs)
        results.append({"point": settings, "top1": result.top1, "agreement": result.agreement,
                        "bytes": package_size(out).package_bytes})
    return {"seconds": time.perf_counter() - started, "results": results}


def lab_sweep(model: str, workdir: Path, workers: int) -> dict:
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import SweepSpec

    spec = SweepSpec.from_dict({
        "model": {"source": model},
        "data": {"validation": str(ROOT / "sample_models" / model / "val")},
        "run": {"name": "bench", "workers": workers},
        "grid": [dict(config) for config, _ in POINTS],
    }, base_dir=workdir)
    started = time.perf_counter()
    first = run_sweep(spec, workdir / "store")
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = run_sweep(spec, workdir / "store")
    again_s = time.perf_counter() - started
    return {"seconds": first_s, "cached_seconds": again_s, "runs": len(first.runs), "executed": first.executed,
            "cached_executed": again.executed, "failed": first.counts.get("FAILED", 0),
            "results": [{"label": r.label, "top1": (r.metrics or {}).get("top1"),
                         "agreement": (r.metrics or {}).get("agreement"), "bytes": (r.sizes or {}).get("bytes")}
                        for r in first.runs]}


def child(kind: str, model: str, workers: int) -> None:
    import coremltools  # noqa: F401  imports are not timed, in either measurement
    import torch  # noqa: F401

    import compress_lab.evaluate  # noqa: F401
    import compress_lab.sweep.runner  # noqa: F401
    import compress_lab.techniques  # noqa: F401
    with tempfile.TemporaryDirectory() as tmp:
        out = hand_loop(model, Path(tmp)) if kind == "hand" else lab_sweep(model, Path(tmp), workers)
    print("RESULT " + json.dumps(out))


def measure(kind: str, model: str, workers: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--model", model, "--workers", str(workers)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{kind} ({workers} worker(s)) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep.json")
    parser.add_argument("--child", choices=("hand", "lab"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the three measurements")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.workers)
        return

    rounds = []
    for i in range(args.repeats):  # interleaved, so a load change hits all three alike
        rounds.append({"hand": measure("hand", args.model, 1), "lab1": measure("lab", args.model, 1),
                       "lab2": measure("lab", args.model, 2)})
        r = rounds[-1]
        print(f"round {i + 1}/{args.repeats}: hand {r['hand']['seconds']:.2f} s, lab 1 worker {r['lab1']['seconds']:.2f} s "
              f"({r['lab1']['seconds'] / r['hand']['seconds']:.2f}x), 2 workers {r['lab2']['seconds']:.2f} s "
              f"({r['lab2']['seconds'] / r['hand']['seconds']:.2f}x)", flush=True)
    ratios = {
        "lab1_vs_hand": median(r["lab1"]["seconds"] / r["hand"]["seconds"] for r in rounds),
        "lab2_vs_hand": median(r["lab2"]["seconds"] / r["hand"]["seconds"] for r in rounds),
        "cached_vs_first_1": median(r["lab1"]["cached_seconds"] / r["lab1"]["seconds"] for r in rounds),
        "cached_vs_first_2": median(r["lab2"]["cached_seconds"] / r["lab2"]["seconds"] for r in rounds),
    }
    hand, lab1, lab2 = ({**rounds[0][kind], "seconds": median(r[kind]["seconds"] for r in rounds),
                         **({"cached_seconds": median(r[kind]["cached_seconds"] for r in rounds)} if kind != "hand" else {})}
                        for kind in ("hand", "lab1", "lab2"))
    rows = [
        ("hand loop (coremltools + evaluator)", hand["seconds"], 1.0, None),
        ("lab sweep, 1 worker", lab1["seconds"], ratios["lab1_vs_hand"], 1.10),
        ("lab sweep, 2 workers", lab2["seconds"], ratios["lab2_vs_hand"], 0.65),
        ("lab cached re-run (after 1 worker)", lab1["cached_seconds"], ratios["cached_vs_first_1"], 0.05),
        ("lab cached re-run (after 2 workers)", lab2["cached_seconds"], ratios["cached_vs_first_2"], 0.05),
    ]
    print(f"\n{len(POINTS)} post-training points on {args.model} (+3 baselines in the lab), "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; medians of {args.repeats} interleaved "
          "round(s), ratios the median of each round's ratio\n")
    print("| measurement | seconds | ratio | target | met |")
    print("|---|---:|---:|---:|:---:|")
    for name, seconds, ratio, target in rows:
        met = "" if target is None else ("yes" if ratio <= target else "no")
        ratio_text = f"{ratio:.2f}x" if "re-run" not in name else f"{ratio:.1%} of first run"
        print(f"| {name} | {seconds:.2f} | {ratio_text} | {'' if target is None else f'<= {target}'} | {met} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "points": [c for c, _ in POINTS], "cpus": os.cpu_count(),
        "platform": platform.platform(), "load_average": os.getloadavg(),
        "hand_loop": hand, "lab_1_worker": lab1, "lab_2_workers": lab2,
        "ratios": ratios, "repeats": args.repeats,
        "rounds": [{kind: {k: v for k, v in r[kind].items() if k != "results"} for kind in r} for r in rounds],
    }, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
