"""`compress-lab sensitivity MODEL --data DIR --compression palettize [--set nbits=2]`"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from compress_lab.analysis.compressors import AGGRESSIVE, SEARCH_COMPRESSIONS


def add_arguments(parser) -> None:
    from compress_lab.cli import add_model_arguments
    add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="validation data: what the model's task reads (an image folder, an .npz source)")
    parser.add_argument("--compression", "--family", dest="compression", choices=SEARCH_COMPRESSIONS,
                        default="palettize", help="how each op is compressed (--family: the name before 2026-12)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the aggressive setting to apply to one op at a time (default: "
                             + "; ".join(f"{k}: {v}" for k, v in AGGRESSIVE.items()) + ")")
    parser.add_argument("--max-images", type=int, default=512, help="evaluate on this many samples (evenly spaced)")
    parser.add_argument("--store", type=Path, help="also record the result in this results store")
    parser.add_argument("--workdir", type=Path, default=Path(".lab-work"))
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    from compress_lab.analysis.sensitivity import sensitivity_for_model
    from compress_lab.cli import load_model_from_args, parse_settings

    handle = load_model_from_args(args)
    settings = parse_settings(args.set) or None
    result = sensitivity_for_model(handle, args.data, args.compression, settings, workdir=args.workdir,
                                   max_images=args.max_images, progress=_progress)
    if args.store:
        from compress_lab.analysis.sensitivity import record_sensitivity
        record_sensitivity(args.store, handle, result)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    direction = "higher" if result.higher_is_better else "lower"
    print(f"\n{args.compression} {result.settings} on one op at a time, {result.images} samples, "
          f"baseline {result.metric} {result.baseline_value} ({direction} is better); {result.elapsed_s:.1f}s")
    worse = f"{result.metric} worse"
    print(f"{'op':48s} {'elements':>10s} {worse:>16s} {'agreement':>9s} {'SNR dB':>7s}")
    for layer in result.ranking():
        scale = 100 if result.metric == "top1" else 1
        drop = "" if layer.drop is None else f"{layer.drop * scale:.4g}"
        agreement = "" if layer.agreement is None else f"{layer.agreement:.4f}"
        print(f"{layer.name[:48]:48s} {layer.numel:>10,} {drop:>16s} {agreement:>9s} {layer.snr_db:>7.1f}")
    return 0


def _progress(done: int, total: int, name: str) -> None:
    print(f"\r[{done}/{total}] {name[:60]:60s}", end="", file=sys.stderr, flush=True)
