"""`compress-lab sensitivity MODEL --data DIR --family palettize [--set nbits=2]`"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from compress_lab.analysis.compressors import AGGRESSIVE, SEARCH_FAMILIES


def add_arguments(parser) -> None:
    from compress_lab.cli import add_model_arguments
    add_model_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="validation data: what the model's task reads (an image folder, an .npz source)")
    parser.add_argument("--family", choices=SEARCH_FAMILIES, default="palettize")
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
    result = sensitivity_for_model(handle, args.data, args.family, settings, workdir=args.workdir,
                                   max_images=args.max_images, progress=_progress)
    if args.store:
        record_sensitivity(args.store, handle, result)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    direction = "higher" if result.higher_is_better else "lower"
    print(f"\n{args.family} {result.settings} on one op at a time, {result.images} samples, "
          f"baseline {result.metric} {result.baseline_value} ({direction} is better); {result.elapsed_s:.1f}s")
    worse = f"{result.metric} worse"
    print(f"{'op':48s} {'elements':>10s} {worse:>16s} {'agreement':>9s} {'SNR dB':>7s}")
    for layer in result.ranking():
        scale = 100 if result.metric == "top1" else 1
        drop = "" if layer.drop is None else f"{layer.drop * scale:.4g}"
        agreement = "" if layer.agreement is None else f"{layer.agreement:.4f}"
        print(f"{layer.name[:48]:48s} {layer.numel:>10,} {drop:>16s} {agreement:>9s} {layer.snr_db:>7.1f}")
    return 0


def record_sensitivity(store_folder, handle, result) -> str:
    """Store a sensitivity analysis as a sweep whose runs are the per-op measurements."""
    from compress_lab.store import RunSpec, open_store

    store = open_store(store_folder)
    key = json.dumps([handle.fingerprint, result.family, result.settings, result.images], sort_keys=True)
    sweep_id = "sens-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    store.create_sweep(sweep_id, f"sensitivity {handle.name} {result.family} {result.settings}",
                       {"kind": "sensitivity", "family": result.family, "settings": result.settings}, handle.fingerprint)
    specs = []
    for layer in result.layers:
        config = {"technique": "sensitivity", "family": result.family, "settings": result.settings, "op": layer.name}
        run_id = hashlib.sha256((key + layer.name).encode()).hexdigest()[:32]
        specs.append(RunSpec(run_id, "sensitivity", "post_training", config, f"{layer.name} {result.family}"))
    store.add_runs(sweep_id, specs)
    for spec, layer in zip(specs, result.layers):
        if store.claim_run(spec.run_id, "sensitivity"):
            store.complete_run(spec.run_id,
                               {"top1": layer.top1, "top1_drop": layer.top1_drop, "agreement": layer.agreement,
                                "snr_db": layer.snr_db, "n": result.images, "values": layer.values,
                                "drop": layer.drop, "drop_metric": result.metric},
                               {"numel": layer.numel, "bits_saved": layer.bits_saved}, {"total_s": result.elapsed_s / max(len(result.layers), 1)}, None)
    store.set_sweep_status(sweep_id, "done")
    return sweep_id


def _progress(done: int, total: int, name: str) -> None:
    print(f"\r[{done}/{total}] {name[:60]:60s}", end="", file=sys.stderr, flush=True)
