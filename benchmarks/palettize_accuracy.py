"""Accuracy of the lab's exact palettizer (mode "fast_kmeans") vs coremltools' k-means
(mode "kmeans") on the sample models: top-1 and agreement with the uncompressed model,
measured through the lab's runtime on each model's validation folder.

    .venv/bin/python benchmarks/palettize_accuracy.py [--nbits 2,4] [--models mnist_cnn,dog_mobilenetv2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from compress_lab.data import scan_folder
    from compress_lab.evaluate import coreml_predictor, evaluate
    from compress_lab.models import load_model
    from compress_lab.techniques import CompressContext, compress, config_from_dict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist_cnn,dog_mobilenetv2")
    parser.add_argument("--nbits", default="2,3,4")
    parser.add_argument("--granularity", default="per_tensor,per_grouped_channel")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            handle = load_model(name)
            meta = handle.metadata
            ctx = CompressContext(handle=handle, workdir=Path(tmp) / name)
            val = ROOT / "sample_models" / name / "val"
            kwargs = dict(preprocessing=meta.preprocessing, input_shape=meta.input_shape, class_names=meta.class_names)
            reference = evaluate(coreml_predictor(ctx.float_package("fp16")), scan_folder(val, meta.class_names),
                                 meta.num_classes, **kwargs)
            for granularity in args.granularity.split(","):
                for nbits in map(int, args.nbits.split(",")):
                    row = {"model": name, "nbits": nbits, "granularity": granularity}
                    for mode in ("kmeans", "fast_kmeans"):
                        settings = {"technique": "palettize", "mode": mode, "nbits": nbits, "granularity": granularity}
                        if granularity == "per_grouped_channel":
                            settings.update(group_size=16, skip_indivisible=True)
                        t = time.perf_counter()
                        out = compress(handle, config_from_dict(settings), Path(tmp) / f"{name}-{mode}-{nbits}.mlpackage", context=ctx)
                        row[f"{mode}_s"] = time.perf_counter() - t
                        result = evaluate(coreml_predictor(out.path), scan_folder(val, meta.class_names), meta.num_classes,
                                          reference_logits=reference.logits, **kwargs)
                        row[f"{mode}_top1"], row[f"{mode}_agreement"] = result.top1, result.agreement
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| model | granularity | nbits | kmeans top-1 / agreement | fast_kmeans top-1 / agreement | agreement not lower |")
    print("|---|---|---:|---|---|---|")
    for r in rows:
        k = f"{r['kmeans_top1'] if r['kmeans_top1'] is not None else '-'} / {r['kmeans_agreement']:.4f}"
        f = f"{r['fast_kmeans_top1'] if r['fast_kmeans_top1'] is not None else '-'} / {r['fast_kmeans_agreement']:.4f}"
        print(f"| {r['model']} | {r['granularity']} | {r['nbits']} | {k} | {f} | "
              f"{'yes' if r['fast_kmeans_agreement'] >= r['kmeans_agreement'] else 'no'} |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "palettize_accuracy.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
