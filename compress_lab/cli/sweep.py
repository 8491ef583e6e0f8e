"""`compress-lab sweep SPEC.toml`: run (or resume) a sweep and print its results.

Also runnable as `python -m compress_lab.cli.sweep SPEC --store DIR` (how the app
starts a sweep in the background, see background.py)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from compress_lab.errors import ConfigError, LabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="the sweep spec (TOML; see examples/mnist_sweep.toml)")
    parser.add_argument("--store", type=Path, help="results store folder (default: <spec folder>/.lab/<sweep name>)")
    parser.add_argument("--workers", type=int, help="worker processes (default: [run] workers, else the CPU count)")
    parser.add_argument("--executor", choices=("local", "ray"), help="where runs execute (default: [run] executor, else local)")
    parser.add_argument("--address", help="Ray cluster address (with --executor ray; default: start a local Ray)")
    parser.add_argument("--timeout", type=float, metavar="S", help="per-run time limit in seconds")
    parser.add_argument("--retry-failed", action="store_true", help="run the points that failed before again")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask before a very large grid")
    parser.add_argument("--dry-run", action="store_true", help="list the points (and invalid ones) without running")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-run lines")
    parser.add_argument("--loss", help="your training loss: path/to/loss.py[:function], a function (outputs, targets) -> "
                                       "scalar tensor (dicts of tensors by name); overrides [data] loss. It is code: it "
                                       "runs with your rights, like model code")


def run(args: argparse.Namespace) -> int:
    from compress_lab.sweep.runner import default_store_folder, run_sweep
    from compress_lab.sweep.spec import expand, load_spec

    spec = load_spec(args.spec)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout} must be a positive number of seconds")
    spec = spec.with_run(workers=args.workers, executor=args.executor, timeout_s=args.timeout, address=args.address)
    if getattr(args, "loss", None):
        import dataclasses
        file_part, name = args.loss.rsplit(":", 1) if ":" in Path(args.loss).name else (args.loss, "")
        loss = str(Path(file_part).expanduser().resolve()) + (f":{name}" if name else "")
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, loss=loss))
    plan = expand(spec)
    err = sys.stderr
    for bad in plan.invalid:
        print(f"invalid point (skipped): {bad}", file=err)
    if not plan.points:
        raise ConfigError(f"no valid point in {args.spec}: fix the {len(plan.invalid)} invalid point(s) listed above")
    for warning in plan.warnings:
        print(f"warning: {warning}", file=err)
        if not args.yes and not args.dry_run:
            if not sys.stdin.isatty():
                raise ConfigError("a very large grid needs confirmation: pass --yes to run it")
            if input("run it anyway? [y/N] ").strip().lower() not in ("y", "yes"):
                print("not started", file=err)
                return 1
    if args.dry_run:
        for point in plan.points:
            print(f"[[grid]] #{point.grid_index}  {point.label}")
        print(f"{len(plan.points)} point(s), {len(plan.invalid)} invalid", file=err)
        return 0 if not plan.invalid else 1

    store = args.store or default_store_folder(args.spec, spec)
    reporter = _Reporter(quiet=args.quiet or args.json)
    try:
        result = run_sweep(spec, store, plan=plan, progress=reporter.progress, on_event=reporter.event,
                           retry_failed=args.retry_failed)
    finally:
        reporter.close()
    if args.json:
        print(json.dumps({"sweep_id": result.sweep_id, "store": str(result.store_folder), "status": result.status,
                          "counts": result.counts, "executed": result.executed, "reused": result.reused,
                          "elapsed_s": result.elapsed_s, "invalid": [str(i) for i in result.invalid],
                          "runs": [_row(r) for r in result.runs]}, indent=2))
    else:
        print(summary_table(result.runs))
        print(f"\nsweep {result.sweep_id} {result.status}: {_counts(result.counts)}; {result.executed} run(s) computed, "
              f"{result.reused} reused, {result.elapsed_s:.1f} s. Store: {result.store_folder}")
    if result.status == "cancelled":
        return 130
    return 0 if result.ok else 1


def _counts(counts: dict) -> str:
    return ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)


# --------------------------------------------------------------------------- output

def _row(run) -> dict:
    m, s, t = run.metrics or {}, run.sizes or {}, run.timings or {}
    return {"run_id": run.run_id, "label": run.label, "family": run.family, "state": run.state,
            "top1": m.get("top1"), "agreement": m.get("agreement"), "snr_db": m.get("snr_db"),
            "bytes": s.get("bytes"), "ratio_fp16": s.get("ratio_fp16"), "time_s": t.get("total_s"),
            "error": run.error, "artifact": run.artifact_path}


_LABELS = {"agreement": "agree"}


def headline_names(metrics: dict | None) -> tuple[str, str]:
    """The run's leading task metric and fidelity measure: top1 and agreement for a
    classifier; for any other task its primary metric (e.g. retrieval_top1, mae) and
    cosine (embeddings) or snr_db."""
    m = metrics or {}
    task = m.get("task") or "classification"
    if task == "classification":
        return "top1", "agreement"
    name = next(iter(sorted(m.get("values") or {})), "metric")
    try:
        from compress_lab.tasks import get_task
        primary = [x for x in get_task(task).metrics(None) if x.primary]
        name = primary[0].name if primary else name
    except Exception:  # a task whose metrics need the model's metadata: its first value
        pass
    fidelity = "cosine" if any("cosine" in f for f in (m.get("fidelity") or {}).values()) else "snr_db"
    return name, fidelity


def headline_value(metrics: dict | None, name: str) -> float | None:
    """A metric's value in a stored run; a fidelity measure (cosine, snr_db) is the
    worst over the model's outputs."""
    from compress_lab.tasks.base import metric_value

    if not metrics:
        return None
    if name in ("top1", "agreement"):
        return metrics.get(name)
    return metric_value(metrics, name)


def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def summary_table(runs) -> str:
    """A plain-text table: label, state, the task's leading metric (top-1 for a classifier)
    and fidelity (agreement), size, ratio to fp16, time."""
    scored = next((run.metrics for run in runs if run.metrics and run.metrics.get("fidelity")),
                  next((run.metrics for run in runs if run.metrics), None))
    metric_name, fidelity_name = headline_names(scored)
    header = ("label", "state", metric_name, _LABELS.get(fidelity_name, fidelity_name), "bytes", "x fp16", "time")
    rows = []
    for run in runs:
        r = _row(run)
        rows.append((r["label"], r["state"], _fmt(headline_value(run.metrics, metric_name), ".4f"),
                     _fmt(headline_value(run.metrics, fidelity_name), ".4f"), _bytes(r["bytes"]),
                     _fmt(r["ratio_fp16"], ".2f"), _fmt(r["time_s"], ".1f") + ("" if r["time_s"] is None else " s")))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows]
    for run in runs:
        if run.state == "FAILED":
            lines.append(f"FAILED {run.label}: {(run.error or '').splitlines()[0] if run.error else ''}")
    return "\n".join(lines)


def status_line(done: int, total: int, run) -> str:
    r = _row(run)
    if run.state == "COMPLETE":
        metric_name, fidelity_name = headline_names(run.metrics)
        detail = (f"{metric_name} {_fmt(headline_value(run.metrics, metric_name), '.4f')}  "
                  f"{_LABELS.get(fidelity_name, fidelity_name)} {_fmt(headline_value(run.metrics, fidelity_name), '.4f')}"
                  f"  {_bytes(r['bytes'])}"
                  f"  {_fmt(r['ratio_fp16'], '.2f')}x  {_fmt(r['time_s'], '.1f')} s")
    else:
        detail = (run.error or "").splitlines()[0][:200] if run.error else ""
    return f"[{done}/{total}] {run.state:8} {run.label}  {detail}"


class _Reporter:
    """Per-run status lines and an overall progress bar with ETA (tqdm, on stderr).
    `bar_class`: the tqdm class to draw with (the Python API passes tqdm.auto's: a widget in Jupyter)."""

    def __init__(self, quiet: bool, bar_class=None):
        self.quiet = quiet
        self.bar = None
        self.bar_class = bar_class
        self.lock = threading.Lock()

    def progress(self, done: int, total: int, run) -> None:
        if self.quiet:
            return
        with self.lock:
            if self.bar is None:
                from tqdm import tqdm
                tqdm = self.bar_class or tqdm
                tqdm.set_lock(threading.RLock())  # no multiprocessing semaphore (it would leak at exit)
                self.bar = tqdm(total=total, initial=max(0, done - 1), desc="sweep", unit="run", file=sys.stderr,
                                dynamic_ncols=True)
            self.bar.write(status_line(done, total, run), file=sys.stderr)
            self.bar.n = done
            self.bar.refresh()

    def event(self, kind: str, task, data) -> None:
        if kind == "invalid":
            print(f"invalid point (skipped): {data}", file=sys.stderr)
            return
        if self.quiet or self.bar is None:
            return
        if kind == "done":
            with self.lock:
                self.bar.set_postfix_str("", refresh=False)
            return
        if kind != "progress" or not data:
            return
        with self.lock:
            stage = data.get("stage", "")
            self.bar.set_postfix_str(f"{task.label}: {stage} {data.get('done')}/{data.get('total')}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compress-lab sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    import signal

    def _terminate(signum, frame):  # `kill PID` stops the workers and marks the sweep cancelled
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
