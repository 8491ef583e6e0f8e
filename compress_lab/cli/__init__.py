"""The `compress-lab` command line, all of it in this package: this module holds the
parser, the model commands (info, techniques, compress, evaluate) and the model
arguments every command shares; each other command is a module here (sweep,
results, export, sensitivity, mixed) with `add_arguments(parser)` and `run(args)`."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from compress_lab.errors import ConfigError, LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compress-lab", description="Compress neural networks with Core ML Tools and measure every trade-off.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="summarize a model (layers, parameters, input, classes)")
    add_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compress", help="compress a model with one technique into an .mlpackage")
    add_model_arguments(p)
    p.add_argument("--technique", required=True, help="technique name (see `compress-lab techniques`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a technique setting (TOML value), repeatable")
    p.add_argument("--train", type=Path, help="training data for training-time techniques: for a classifier a folder "
                                              "(<class>/<image>), for other tasks an .npz or a folder of .npz files")
    p.add_argument("--loss", help="your training loss: path/to/loss.py[:function], a function (outputs, targets) -> "
                                  "scalar tensor (dicts of tensors by name) minimised instead of the task's loss. It is "
                                  "code: it runs with your rights, like model code")
    p.add_argument("--out", type=Path, required=True, help="output .mlpackage path")
    p.add_argument("--no-estimate", action="store_true",
                   help="skip the time estimate printed before a training-time run (it measures a few steps)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("evaluate", help="evaluate a PyTorch model or .mlpackage on a validation folder")
    add_model_arguments(p)
    p.add_argument("--data", type=Path, required=True,
                   help="validation data: for a classifier a folder (<class>/<image> or a flat folder of images); for a "
                        "'tensors' model an .npz (one array per input, first axis = sample) or a folder of .npz files")
    p.add_argument("--reference", help="model whose outputs are the reference for agreement/SNR (default: none)")
    p.add_argument("--metric", help="your metric: path/to/metric.py[:function], a function (outputs, targets) -> dict of "
                                    "floats with DIRECTIONS declared. It is code: it runs with your rights, like model code")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("techniques", help="list the techniques and their settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_techniques)

    _optional_subcommand(sub, "sweep", "compress_lab.cli.sweep", "run a grid of techniques x settings (a TOML spec)")
    _optional_subcommand(sub, "sensitivity", "compress_lab.cli.sensitivity", "per-layer sensitivity of a model")
    _optional_subcommand(sub, "mixed", "compress_lab.cli.mixed", "mixed precision under an accuracy budget")
    _optional_subcommand(sub, "report", "compress_lab.report", "write a self-contained HTML report of a sweep")
    _optional_subcommand(sub, "results", "compress_lab.cli.results", "list the runs of a sweep (one row per run)")
    _optional_subcommand(sub, "export", "compress_lab.cli.export", "write a run's .mlpackage with its config and metrics")

    args = parser.parse_args(argv)
    from compress_lab.quiet import import_coremltools
    import_coremltools()  # once, quietly: a later plain `import coremltools` prints nothing
    try:
        return int(args.func(args) or 0)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _optional_subcommand(sub, name: str, module: str, help_text: str) -> None:
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    p = sub.add_parser(name, help=help_text)
    mod.add_arguments(p)
    p.set_defaults(func=mod.run)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="sample model name, model folder, model.py (+ --weights), TorchScript file or .mlpackage")
    p.add_argument("--weights", type=Path, help="state_dict file for a model.py definition")
    p.add_argument("--metadata", type=Path, help="metadata.json (input_shape, class_names, preprocessing)")


def load_model_from_args(args):
    from compress_lab.models import load_model
    return load_model(args.model, weights=args.weights, metadata=args.metadata)


def parse_settings(pairs: list[str]) -> dict:
    """KEY=VALUE pairs with TOML values (`nbits=4`, `mode="kmeans"`, `n_m_ratio=[2,4]`); bare words are strings."""
    settings = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} must look like KEY=VALUE, e.g. --set nbits=4")
        key, raw = pair.split("=", 1)
        key = key.strip()
        try:
            settings[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key] = raw
    return settings


def cmd_info(args) -> int:
    from compress_lab.models.summary import summarize
    summary = summarize(load_model_from_args(args)).to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['name']}  ({summary['kind']}, {summary['source']})")
    if summary.get("task", "classification") == "classification":
        print(f"input {summary['input_shape']}, {summary['num_classes']} classes, {summary['parameters']:,} parameters")
    else:
        print(f"task {summary['task']}, {summary['parameters']:,} parameters")
        for spec in summary["inputs"]:
            print(f"input  {spec['name']}: {spec['dtype']} {_dims(spec['shape'])} (per sample; a named or null dimension is flexible)")
        for spec in summary["outputs"]:
            print(f"output {spec['name']}: {spec['meaning']}" + (f" {_dims(spec['shape'])}" if spec.get("shape") else ""))
    width = max([40, *(len(layer["name"]) for layer in summary["layers"])])
    print(f"{'layer':{width}s} {'type':12s} {'params':>10s}  post-training  training-time")
    for layer in summary["layers"]:
        print(f"{layer['name']:{width}s} {layer['type'][:12]:12s} {layer['parameters']:>10,}  "
              f"{'yes' if layer['touched_post_training'] else '-':13s}  {'yes' if layer['touched_training_time'] else '-'}")
    return 0


def _dims(shape) -> str:
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


def cmd_compress(args) -> int:
    from compress_lab.models.size import package_size
    from compress_lab.techniques import CompressContext, compress, config_from_dict

    handle = load_model_from_args(args)
    config = config_from_dict({"technique": args.technique, **parse_settings(args.set)})
    out = args.out if args.out.suffix == ".mlpackage" else args.out.with_suffix(".mlpackage")
    context = CompressContext(handle=handle, workdir=out.parent / ".lab-work", train_dir=args.train, calibration_dir=args.train,
                              loss=args.loss)
    if args.loss:
        from compress_lab.metrics import load_loss
        load_loss(args.loss)  # a file that does not load stops here, before any work
    if config.family == "training_time" and args.train is not None and not args.no_estimate:
        _print_estimate(config, context)
    bar = _progress_bar()
    context.progress = bar.update
    outcome = compress(handle, config, out, context=context)
    bar.close()
    size = package_size(outcome.path).to_dict()
    result = {"out": str(outcome.path), "config": config.to_dict(), "timings": outcome.timings, "size": size}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"wrote {outcome.path}: {size['package_bytes']:,} bytes on disk, {size['bits_per_weight']:.2f} bits per weight; {config.label()}; "
              + ", ".join(f"{k} {v:.2f}s" for k, v in outcome.timings.items()))
    if not _compressed_op_count(outcome.path):
        threshold = getattr(config, "weight_threshold", None)
        print(f"warning: {config.name} compressed no weight of {handle.name}: the package is the uncompressed model"
              + (f" (every weight has fewer than {threshold:,} elements; lower it with --set weight_threshold=N)"
                 if threshold else ""), file=sys.stderr)
    return 0


def _compressed_op_count(package) -> int:
    from compress_lab.mil import COMPRESSED_OPS
    from compress_lab.techniques._training import op_counts
    return sum(n for op, n in op_counts(package).items() if op in COMPRESSED_OPS)


def _print_estimate(config, context) -> None:
    from compress_lab.techniques import _training
    try:
        train = _training.load_training_data(context, labelled=False)   # held in memory for the run itself
        seconds = _training.estimate_seconds(config, context.handle, len(train), train=train)
    except LabError:
        return  # no estimate for this technique; the progress bar still shows the time remaining
    print(f"estimated time for {config.label()}: about {seconds:.0f} s on this machine "
          f"(measured on a few steps, {len(train):,} training {train.unit})", file=sys.stderr)


def cmd_evaluate(args) -> int:
    from compress_lab.evaluate import evaluate_model
    metric = getattr(args, "metric", None)
    handle = load_model_from_args(args)
    for note in handle.notes:
        print(f"note: {note}", file=sys.stderr)
    result = evaluate_model(handle, args.data, batch_size=args.batch_size, reference=args.reference, metric=metric)
    data = result.to_dict()
    if result.task == "classification":
        if data.get("top1") is None and args.reference is None and metric is None and data.get("n"):
            print(f"warning: {args.data} is not labelled (no <class>/ folders naming the model's classes), so there is "
                  "no accuracy to measure; give --reference MODEL (e.g. the uncompressed model) to measure agreement "
                  "with it", file=sys.stderr)
    elif args.reference is None and metric is None and data.get("n") and not data.get("values"):
        print(f"warning: nothing was measured: task {result.task!r} found no targets it scores in {args.data}; give "
              "--reference MODEL (e.g. the uncompressed model) for fidelity per output, or --metric FILE",
              file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key in ("n", "top1", "top5", "loss", "agreement", "snr_db", "skipped", "elapsed_s"):
        if data.get(key) is not None:
            print(f"{key:10s} {_shown(data[key])}")
    if result.task != "classification" or len(result.fidelity) > 1:
        for output, measures in result.fidelity.items():
            shown = ", ".join(f"{k} {v:.6g}" for k, v in measures.items() if v is not None)
            print(f"{output}: {shown}")
    for key, value in result.values.items():
        direction = result.higher_is_better.get(key)
        better = "" if direction is None else ("  (higher is better)" if direction else "  (lower is better)")
        print(f"{key:10s} {_shown(value)}{better}")
    return 0


def _shown(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cmd_techniques(args) -> int:
    import dataclasses
    from compress_lab.techniques import REGISTRY
    rows = []
    for name in REGISTRY.names():
        cls = REGISTRY.config_class(name)
        rows.append({"technique": name, "family": cls.family, "data": cls.data_need.value, "summary": cls.summary,
                     "settings": {f.name: (f.default if f.default is not dataclasses.MISSING else None) for f in dataclasses.fields(cls)}})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for row in rows:
            print(f"{row['technique']:24s} {row['family']:14s} data={row['data']:12s} {row['summary']}")
    return 0


class _progress_bar:
    """A tqdm bar fed by technique Progress events (one bar per stage)."""

    def __init__(self):
        self._bar = None
        self._stage = None

    def update(self, event) -> None:
        from tqdm import tqdm
        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total or None, desc=event.stage, file=sys.stderr, leave=False)
        if self._bar is not None:
            self._bar.n = event.done
            if event.loss is not None:
                self._bar.set_postfix(loss=f"{event.loss:.4f}")
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


if __name__ == "__main__":
    sys.exit(main())
