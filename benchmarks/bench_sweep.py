"""Overhead of the sweep machinery: a lab sweep of N post-training points vs a
hand-written loop calling coremltools and the lab's evaluator directly on the
same points and data, with 1 and 2 workers; and an immediate cached re-run.

Each measurement runs in its own fresh process, timed after that process's
imports (torch, coremltools, compress_lab): the lab's time therefore includes
starting its worker processes, converting both float baselines, evaluating the
three baselines and measuring sizes; the hand loop converts fp16 once, computes
the reference logits, then compresses, saves, evaluates and sizes each point.

    .venv/bin/python benchmarks/bench_sweep.py [--model mnist_cnn] [--repeats 3] [--out benchmarks/results/sweep.json]
    .venv/bin/python benchmarks/bench_sweep.py --spec examples/minilm_sweep.toml [--workers-list 1]

Targets: lab <= 1.10x the hand loop with 1 worker, <= 0.65x with 2 workers,
cached re-run <= 5% of the first run.

With --spec, the model, data and post-training points are the spec's (its
training-time points are left out of both sides), for any task: the hand loop
reads the validation source through the model's task (named inputs), converts fp32
and fp16 and evaluates the same three baselines the lab's sweep records (PyTorch,
whose outputs are the reference, fp32 and fp16), then per point calls coremltools'
palettize_weights / linear_quantize_weights / prune_weights (joint techniques chain
them with joint_compression=True; mode fast_kmeans calls the lab's
fast_palettize_weights, the same coremltools pass), saves, evaluates with the lab's
evaluator and sizes the package. Each side's timed part starts after its process's
imports; the time of those imports (torch, coremltools, compress_lab) is measured
separately in a fresh process, as the share a sweep worker pays on start
(`worker_import_s`)."""

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
HAND_TECHNIQUES = ("palettize", "quantize", "prune", "prune_palettize", "prune_quantize")


# ---------------------------------------------------------------- --spec: any model, the spec's own points

def spec_points(spec_path: Path) -> tuple[object, list[dict], list[str]]:
    """The spec, its post-training points the hand loop can repeat (as plain config
    dicts, as the lab expands them) and a note for each point left out."""
    from compress_lab.sweep.spec import expand, load_spec

    spec = load_spec(spec_path)
    plan = expand(spec)
    points, left_out = [], []
    for point in plan.points:
        config = point.config
        if config.family != "post_training":
            continue
        if config.name not in HAND_TECHNIQUES:
            left_out.append(f"{config.name}: no plain coremltools call to repeat by hand")
            continue
        points.append(config.to_dict())
    left_out += [f"invalid point {p.settings}: {p.error}" for p in plan.invalid]
    return spec, points, left_out


def _overrides(config, make):
    """op_overrides of a lab config as coremltools op_name_configs / op_type_configs."""
    by_name, by_type = {}, {}
    for key, value in (config.op_overrides or {}).items():
        op_config = None if value in ("skip", None) else make(config.for_op(value))
        if key.startswith("type:"):
            by_type[key[len("type:"):]] = op_config
        else:
            by_name[key] = op_config
    return by_name, by_type


def _optimization_config(config, make):
    import coremltools.optimize.coreml as cto

    by_name, by_type = _overrides(config, make)
    return cto.OptimizationConfig(global_config=make(config), op_name_configs=by_name or None,
                                  op_type_configs=by_type or None)


def _palettizer(c):
    import coremltools.optimize.coreml as cto

    kwargs = dict(mode="kmeans" if c.mode == "fast_kmeans" else c.mode, nbits=c.nbits, granularity=c.granularity,
                  cluster_dim=c.cluster_dim, enable_per_channel_scale=c.enable_per_channel_scale,
                  num_kmeans_workers=c.num_kmeans_workers, weight_threshold=c.weight_threshold)
    if c.granularity == "per_grouped_channel":
        kwargs["group_size"] = c.effective_group_size
    return cto.OpPalettizerConfig(**kwargs)


def _quantizer(c):
    import coremltools.optimize.coreml as cto

    kwargs = dict(mode=c.mode, dtype=c.dtype, granularity=c.granularity, weight_threshold=c.weight_threshold)
    if c.granularity == "per_block":
        kwargs["block_size"] = c.effective_block_size
    return cto.OpLinearQuantizerConfig(**kwargs)


def _pruner(c):
    import coremltools.optimize.coreml as cto

    if c.mode != "magnitude":
        raise SystemExit(f"bench_sweep's hand loop repeats magnitude pruning only, not mode {c.mode!r}")
    if c.n_m_ratio is not None:
        return cto.OpMagnitudePrunerConfig(n_m_ratio=tuple(c.n_m_ratio), dim=c.effective_dim,
                                           weight_threshold=c.weight_threshold)
    return cto.OpMagnitudePrunerConfig(target_sparsity=float(c.effective_sparsity), block_size=c.block_size,
                                       dim=c.effective_dim, weight_threshold=c.weight_threshold)


def _apply(mlmodel, c, joint: bool = False):
    """One coremltools call for a single-technique lab config."""
    import coremltools.optimize.coreml as cto

    if c.name == "palettize":
        opt = _optimization_config(c, _palettizer)
        if c.mode == "fast_kmeans":
            from compress_lab.techniques.fast_palettize import fast_palettize_weights
            return fast_palettize_weights(mlmodel, opt, joint_compression=joint)
        return cto.palettize_weights(mlmodel, opt, joint_compression=joint)
    if c.name == "quantize":
        return cto.linear_quantize_weights(mlmodel, _optimization_config(c, _quantizer), joint_compression=joint)
    if c.name == "prune":
        return cto.prune_weights(mlmodel, _optimization_config(c, _pruner), joint_compression=joint)
    raise SystemExit(f"bench_sweep's hand loop has no coremltools call for technique {c.name!r}")


def compress_by_hand(mlmodel, point: dict):
    """The coremltools calls for one lab point. Settings are read from the lab's config
    (so defaults are the lab's); a joint technique is its parts, the later ones applied
    with joint_compression=True."""
    from compress_lab.techniques import config_from_dict

    c = config_from_dict(dict(point))
    parts = c.parts() if hasattr(c, "parts") else [c]
    for i, part in enumerate(parts):
        mlmodel = _apply(mlmodel, part, joint=i > 0)
    return mlmodel


def hand_loop_spec(spec_path: Path, workdir: Path) -> dict:
    """The spec's post-training points by hand: same data, baselines, compressions and evaluations."""
    import coremltools as ct

    from compress_lab.evaluate import evaluate, named_coreml_predictor, named_torch_predictor
    from compress_lab.models.convert import convert_module, save_mlmodel
    from compress_lab.models.handle import load_model
    from compress_lab.models.size import package_size
    from compress_lab.tasks import task_for

    spec, points, _ = spec_points(spec_path)
    started = time.perf_counter()
    handle = load_model(spec.model.source, weights=spec.model.weights, metadata=spec.model.metadata)
    meta = handle.metadata
    task = task_for(meta)
    source = task.open_source(spec.data.validation, meta)
    batch = spec.data.batch_size

    def data():
        return task.dataset(source, meta, batch_size=batch, preprocessing_overrides=spec.data.preprocessing or None)

    floats = {p: convert_module(handle.torch_copy(), meta, workdir / f"{p}.mlpackage", precision=p)
              for p in ("fp32", "fp16")}
    reference_result = evaluate(named_torch_predictor(handle.module, meta.io), data(), task, meta=meta)
    reference = reference_result.reference_outputs()
    primary = task.primary_metric(meta, labelled=True).name

    def measured(result) -> dict:
        values = result.to_dict()
        return {"metric": (values.get("values") or {}).get(primary, values.get(primary)), "fidelity": values.get("fidelity")}

    results = [{"point": "baseline pytorch", **measured(reference_result)}]
    for precision, path in floats.items():
        result = evaluate(named_coreml_predictor(path, meta.io), data(), task, meta=meta, reference=reference)
        results.append({"point": f"baseline {precision}", **measured(result), "bytes": package_size(path).package_bytes})
    print(f"[hand] baselines done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    for i, point in enumerate(points):
        precision = point.get("precision", "fp16")
        mlmodel = ct.models.MLModel(str(floats[precision]), skip_model_load=True)
        out = save_mlmodel(compress_by_hand(mlmodel, point), workdir / f"point{i}.mlpackage")
        result = evaluate(named_coreml_predictor(out, meta.io), data(), task, meta=meta, reference=reference)
        results.append({"point": point, **measured(result), "bytes": package_size(out).package_bytes})
        print(f"[hand] point {i + 1}/{len(points)} at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return {"seconds": time.perf_counter() - started, "results": results, "evaluations": len(results)}


def lab_sweep_spec(spec_path: Path, workdir: Path, workers: int) -> dict:
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import SweepSpec

    spec, points, _ = spec_points(spec_path)
    data = spec.to_dict()
    data["grid"] = points
    data["run"] = {**data.get("run", {}), "workers": workers, "name": "bench"}
    data["run"].pop("executor", None)
    spec = SweepSpec.from_dict(data, base_dir=workdir)
    return _run_lab(spec, workdir)


def import_seconds() -> float:
    """What a fresh sweep worker pays before its first point: importing torch,
    coremltools and the lab's engine, timed in a fresh process."""
    code = ("import time; t = time.perf_counter(); import torch, coremltools, compress_lab.evaluate, "
            "compress_lab.sweep.runner, compress_lab.techniques; print('RESULT', time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    return float(line.split()[1]) if line else float("nan")


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
    return _run_lab(spec, workdir)


def _run_lab(spec, workdir: Path) -> dict:
    from compress_lab.sweep.runner import run_sweep

    started = time.perf_counter()
    first = run_sweep(spec, workdir / "store")
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = run_sweep(spec, workdir / "store")
    again_s = time.perf_counter() - started
    return {"seconds": first_s, "cached_seconds": again_s, "runs": len(first.runs), "executed": first.executed,
            "cached_executed": again.executed, "failed": first.counts.get("FAILED", 0),
            "errors": [r.error for r in first.runs if r.error][:5],
            "results": [{"label": r.label, "top1": (r.metrics or {}).get("top1"),
                         "agreement": (r.metrics or {}).get("agreement"), "bytes": (r.sizes or {}).get("bytes"),
                         "metrics": r.metrics}
                        for r in first.runs]}


def child(kind: str, model: str, workers: int, spec: Path | None = None) -> None:
    import coremltools  # noqa: F401  imports are not timed, in either measurement
    import torch  # noqa: F401

    import compress_lab.evaluate  # noqa: F401
    import compress_lab.sweep.runner  # noqa: F401
    import compress_lab.techniques  # noqa: F401
    with tempfile.TemporaryDirectory() as tmp:
        if spec is not None:
            out = hand_loop_spec(spec, Path(tmp)) if kind == "hand" else lab_sweep_spec(spec, Path(tmp), workers)
        else:
            out = hand_loop(model, Path(tmp)) if kind == "hand" else lab_sweep(model, Path(tmp), workers)
    print("RESULT " + json.dumps(out, default=str))


def measure(kind: str, model: str, workers: int, spec: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--model", model, "--workers", str(workers)]
    if spec is not None:
        command += ["--spec", str(spec)]
    # stdout carries the RESULT line; stderr (progress) goes through to this process's stderr
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=3600)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{kind} ({workers} worker(s)) failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--spec", type=Path, default=None,
                        help="a sweep spec (e.g. examples/minilm_sweep.toml): its model, data and post-training points")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep.json")
    parser.add_argument("--child", choices=("hand", "lab"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workers-list", default=None,
                        help="comma-separated lab worker counts to measure (default 1,2; with --spec 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds of the measurements (default 3; with --spec 1)")
    args = parser.parse_args()
    spec = args.spec.resolve() if args.spec else None
    if args.child:
        child(args.child, args.model, args.workers, spec)
        return

    workers_list = [int(w) for w in (args.workers_list or ("1" if spec else "1,2")).split(",")]
    repeats = args.repeats or (1 if spec else 3)
    label = args.model
    left_out: list[str] = []
    if spec is not None:
        loaded, points, left_out = spec_points(spec)
        label = f"{Path(str(loaded.model.source)).name} ({spec.name})"
        if not points:
            raise SystemExit(f"{spec}: no post-training point the hand loop can repeat ({'; '.join(left_out)})")
    rounds = []
    for i in range(repeats):  # interleaved, so a load change hits every measurement alike
        r = {"hand": measure("hand", args.model, 1, spec)}
        for w in workers_list:
            r[f"lab{w}"] = measure("lab", args.model, w, spec)
        rounds.append(r)
        print(f"round {i + 1}/{repeats}: hand {r['hand']['seconds']:.2f} s, " + ", ".join(
            f"lab {w} worker(s) {r[f'lab{w}']['seconds']:.2f} s ({r[f'lab{w}']['seconds'] / r['hand']['seconds']:.2f}x)"
            for w in workers_list), flush=True)
    imports_s = import_seconds()
    ratios = {}
    for w in workers_list:
        ratios[f"lab{w}_vs_hand"] = median(r[f"lab{w}"]["seconds"] / r["hand"]["seconds"] for r in rounds)
        ratios[f"cached_vs_first_{w}"] = median(r[f"lab{w}"]["cached_seconds"] / r[f"lab{w}"]["seconds"] for r in rounds)

    def merged(kind: str) -> dict:
        out = {**rounds[0][kind], "seconds": median(r[kind]["seconds"] for r in rounds)}
        if kind != "hand":
            out["cached_seconds"] = median(r[kind]["cached_seconds"] for r in rounds)
        return out

    hand = merged("hand")
    labs = {w: merged(f"lab{w}") for w in workers_list}
    targets = {1: 1.05 if spec else 1.10, 2: 0.65}
    rows = [("hand loop (coremltools + evaluator)", hand["seconds"], 1.0, None)]
    rows += [(f"lab sweep, {w} worker(s)", labs[w]["seconds"], ratios[f"lab{w}_vs_hand"], targets.get(w))
             for w in workers_list]
    rows += [(f"lab cached re-run (after {w} worker(s))", labs[w]["cached_seconds"], ratios[f"cached_vs_first_{w}"], 0.05)
             for w in workers_list]
    n_points = len(points) if spec else len(POINTS)
    print(f"\n{n_points} post-training points on {label} (+3 baselines in the lab"
          f"{' and in the hand loop' if spec else ''}), {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.1f}; medians of {repeats} interleaved round(s), ratios the median of each round's ratio; "
          f"a fresh worker's imports take {imports_s:.1f} s ({imports_s / hand['seconds']:.1%} of the hand loop)\n")
    if left_out:
        print("left out of both: " + "; ".join(left_out) + "\n")
    print("| measurement | seconds | ratio | target | met |")
    print("|---|---:|---:|---:|:---:|")
    for name, seconds, ratio, target in rows:
        met = "" if target is None else ("yes" if ratio <= target else "no")
        ratio_text = f"{ratio:.2f}x" if "re-run" not in name else f"{ratio:.1%} of first run"
        print(f"| {name} | {seconds:.2f} | {ratio_text} | {'' if target is None else f'<= {target}'} | {met} |")
    result = {
        "command": sys.argv[1:], "model": label, "spec": str(spec) if spec else None,
        "points": points if spec else [c for c, _ in POINTS], "left_out": left_out, "cpus": os.cpu_count(),
        "platform": platform.platform(), "load_average": os.getloadavg(),
        "hand_loop": hand, "ratios": ratios, "repeats": repeats, "workers": workers_list,
        "worker_import_s": round(imports_s, 2), "worker_import_share_of_hand": round(imports_s / hand["seconds"], 4),
        "rounds": [{kind: {k: v for k, v in r[kind].items() if k != "results"} for kind in r} for r in rounds],
    }
    for w in workers_list:
        result["lab_1_worker" if w == 1 else ("lab_2_workers" if w == 2 else f"lab_{w}_workers")] = labs[w]
    if spec:
        result["targets"] = {"lab1_vs_hand": 1.05}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
