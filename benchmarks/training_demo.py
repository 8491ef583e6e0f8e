"""Post-training (data-free) vs training-time compression on the MNIST sample model.

    .venv/bin/python benchmarks/training_demo.py [--dkm-steps 40] [--prune-steps 150]

Compares, on the 1,000 validation digits (run through the lab's Core ML runtime):
  - 2-bit palettization: coremltools palettize_weights (k-means, nbits=2) on the
    fp16 conversion  vs  DKM 2-bit with a short fine-tune;
  - 75% sparsity: coremltools prune_weights (magnitude, 0.75) on the fp16
    conversion  vs  MagnitudePruner 0.75 with fine-tuning.
Prints accuracy, size on disk and wall time of each.

coremltools 9.0 + numpy 2.3: prune_weights(OpMagnitudePrunerConfig) on fp16
weights of more than 65,504 elements prunes nothing (np.percentile on a float16
array overflows its fp16 index and returns NaN), yet still writes sparse ops, so
the package grows. The demo shows that row as measured and adds a workaround row:
the same magnitude pruning with each weight's percentile computed in float32
(OpThresholdPrunerConfig per weight)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress_lab.models import load_model  # noqa: E402
from compress_lab.models.convert import save_mlmodel  # noqa: E402
from compress_lab.quiet import quiet_coremltools  # noqa: E402
from compress_lab.runtime import load_program  # noqa: E402
from compress_lab.techniques import CompressContext, compress  # noqa: E402
from compress_lab.techniques import _training  # noqa: E402
from compress_lab.techniques.dkm import DKMConfig  # noqa: E402
from compress_lab.techniques.magnitude_pruning import MagnitudePruningConfig  # noqa: E402


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((load_program(path, compute_precision="fp32").predict(x).argmax(1) == y).mean())


def post_training(float_path: Path, out: Path, kind: str) -> tuple[Path, float]:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    started = time.perf_counter()
    with quiet_coremltools():
        mlmodel = ct.models.MLModel(str(float_path), skip_model_load=True)
        if kind == "palettize":
            config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=2))
            compressed = cto.palettize_weights(mlmodel, config)
        elif kind == "prune":
            config = cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.75))
            compressed = cto.prune_weights(mlmodel, config)
        else:  # magnitude pruning with each weight's 75th percentile computed in float32 (see module docstring)
            weights = cto.get_weights_metadata(mlmodel, weight_threshold=2048)
            per_op = {name: cto.OpThresholdPrunerConfig(
                threshold=float(np.percentile(np.abs(meta.val.astype(np.float32)), 75.0)), minimum_sparsity_percentile=0.0)
                for name, meta in weights.items()}
            compressed = cto.prune_weights(mlmodel, cto.OptimizationConfig(op_name_configs=per_op))
        save_mlmodel(compressed, out)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dkm-steps", type=int, default=40)
    parser.add_argument("--prune-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dkm-lr", type=float, default=5e-4)
    parser.add_argument("--prune-lr", type=float, default=1e-3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    handle = load_model("mnist_cnn")
    sample = ROOT / "sample_models" / "mnist_cnn"
    work = Path(tempfile.mkdtemp(prefix="training_demo_"))
    ctx = CompressContext(handle=handle, workdir=work, train_dir=sample / "train",
                          progress=lambda p: print(f"\r  {p.stage} {p.done}/{p.total} "
                                                   f"{'' if p.loss is None else f'loss {p.loss:.4f} '}"
                                                   f"{'' if p.eta_s is None else f'eta {p.eta_s:.0f}s'}   ",
                                                   end="", flush=True))
    val = _training.load_training_data(ctx, sample / "val")
    x, y = val.x.numpy(), val.y.numpy()

    rows = []

    def record(label: str, path: Path, seconds: float, estimate: float | None = None) -> None:
        row = {"method": label, "accuracy": accuracy(path, x, y), "size_kb": _training.package_bytes(path) / 1024,
               "wall_s": seconds, "estimate_s": estimate}
        rows.append(row)
        print(f"\r{label:<46} acc {row['accuracy']:.3f}  {row['size_kb']:7.1f} KB  {seconds:6.1f} s"
              + (f"  (estimated {estimate:.0f} s)" if estimate else ""), flush=True)

    started = time.perf_counter()
    float_path = ctx.float_package("fp16")
    record("fp16 (uncompressed)", float_path, time.perf_counter() - started)

    path, seconds = post_training(float_path, work / "pal2.mlpackage", "palettize")
    record("2-bit k-means palettize_weights (data-free)", path, seconds)
    dkm = DKMConfig(n_bits=2, steps=args.dkm_steps, batch_size=args.batch_size, learning_rate=args.dkm_lr)
    estimate = _training.estimate_seconds(dkm, handle, 4000)
    started = time.perf_counter()
    outcome = compress(handle, dkm, work / "dkm2.mlpackage", context=ctx)
    record(f"2-bit DKM, {args.dkm_steps} fine-tune steps", outcome.path, time.perf_counter() - started, estimate)

    path, seconds = post_training(float_path, work / "prune75.mlpackage", "prune")
    record("75% magnitude prune_weights (data-free)", path, seconds)
    path, seconds = post_training(float_path, work / "prune75_fp32pct.mlpackage", "prune_fp32_percentile")
    record("75% data-free, percentile in fp32 (workaround)", path, seconds)
    prune = MagnitudePruningConfig(target_sparsity=0.75, steps=args.prune_steps, batch_size=args.batch_size,
                                   learning_rate=args.prune_lr)
    estimate = _training.estimate_seconds(prune, handle, 4000)
    started = time.perf_counter()
    outcome = compress(handle, prune, work / "pruned75.mlpackage", context=ctx)
    record(f"75% MagnitudePruner, {args.prune_steps} fine-tune steps", outcome.path, time.perf_counter() - started, estimate)

    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"\npackages in {work}")


if __name__ == "__main__":
    main()
