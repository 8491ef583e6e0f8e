"""Run every benchmark in benchmarks/ and print one table of every ratio against its target.

    .venv/bin/python benchmarks/run_all.py            # full suite (~11 min on 2 idle cores)
    .venv/bin/python benchmarks/run_all.py --quick    # each benchmark's light settings
    .venv/bin/python benchmarks/run_all.py --only bench_sweep,bench_eval_scaling
    .venv/bin/python benchmarks/run_all.py --skip training_demo,size_table

Each benchmark runs as its own subprocess (its output goes to
benchmarks/results/logs/<name>.log) and writes its JSON under benchmarks/results/;
a benchmark script that does not exist yet is reported as such. The combined
table goes to stdout, benchmarks/results/summary.md and summary.json.

The full run uses lighter settings than some benchmarks' own defaults so the
whole suite fits in 15 minutes (see FULL_ARGS below and benchmarks/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "results"
RUNTIME_TARGET_7 = 1.10    # issue 7: runtime / eager, dog_mobilenetv2, batch 1 and 64
RUNTIME_TARGET_3 = 1.15    # issue 3: runtime / eager, dog_mobilenetv2, batch 64
SWEEP_1_WORKER = 1.10      # lab sweep / hand loop, 1 worker
SWEEP_2_WORKERS = 0.65     # lab sweep with 2 workers / hand loop
CACHED_RERUN = 0.05        # cached re-run / first run
EVAL_LINEARITY = 1.25      # time per image at 20k / at 1k
EVAL_PEAK = 1.30           # peak RSS at 20k / at 1k
PALETTIZE_SPEEDUP = 5.0    # coremltools kmeans time / lab palettizer time, over the benchmark set
PALETTIZE_MSE = 1.0        # lab palettizer weight MSE / coremltools kmeans MSE
MIXED_SPEED = 0.10         # mixed search time / today's, same model, data and levels (issue 14)
RUNTIME_TARGET_13 = 1.00   # issue 13: runtime / eager on the text and audio samples
SWEEP_1_WORKER_13 = 1.05   # issue 13: lab sweep / hand loop, MiniLM's post-training points, 1 worker
ISSUE_13_RUNTIME = ("minilm_embedder", "crepe_pitch")
CREPE_RUNTIME = 1.0        # runtime / eager, crepe_pitch, batch 256 (issue 13)


@dataclass(frozen=True)
class Benchmark:
    name: str                       # script stem in benchmarks/
    measures: str
    full_args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ("--quick",)
    result: str | None = None       # JSON file it writes under benchmarks/results/
    timeout_s: int = 900
    script_name: str | None = None  # the script, when it is not `name` (one script, several entries)
    requires: tuple[str, ...] = ()  # files (relative to the repository) it needs; skipped without them

    @property
    def script(self) -> Path:
        return BENCH_DIR / f"{self.script_name or self.name}.py"

    def missing(self) -> list[str]:
        return [r for r in self.requires if not (ROOT / r).exists()]


# Known benchmarks, in run order. The full run uses each script's defaults, except where
# that alone would not leave room for the rest in 15 minutes (training_demo, palettize_accuracy).
KNOWN = (
    Benchmark("bench_runtime", "lab runtime vs eager PyTorch: dog_mobilenetv2 batch 1 and 64; minilm_embedder "
              "batch 64 and crepe_pitch batch 256 where built",
              full_args=(), quick_args=("--precisions", "fp32", "--repeats", "3"),
              result="runtime.json"),
    Benchmark("crepe_runtime", "lab runtime vs eager PyTorch, crepe_pitch (CREPE tiny), batch 256",
              full_args=(), quick_args=("--quick",), result="crepe_runtime.json"),
    Benchmark("bench_palettize", "lab palettizer vs coremltools palettize_weights(mode='kmeans'): ResNet-18, "
              "dog_mobilenetv2, MiniLM's weights", full_args=(), quick_args=("--quick",), result="palettize.json",
              timeout_s=3600),
    Benchmark("bench_sweep", "lab sweep (1 and 2 workers, cached re-run) vs a hand-written loop",
              full_args=(), quick_args=(), result="sweep.json"),
    Benchmark("bench_sweep_minilm", "lab sweep of examples/minilm_sweep.toml's post-training points vs a hand loop, "
              "1 worker", script_name="bench_sweep",
              full_args=("--spec", "examples/minilm_sweep.toml", "--out", "benchmarks/results/sweep_minilm.json"),
              quick_args=("--spec", "examples/minilm_sweep.toml", "--out", "benchmarks/results/sweep_minilm.json"),
              result="sweep_minilm.json", timeout_s=3600,
              requires=("examples/minilm_sweep.toml", "sample_models/minilm_embedder/metadata.json")),
    Benchmark("bench_eval_scaling", "evaluation time and peak memory at 1k / 5k / 20k images",
              full_args=(), quick_args=("--quick",), result="eval_scaling.json"),
    Benchmark("palettize_accuracy", "accuracy of the lab palettizer vs coremltools kmeans, both sample models",
              full_args=("--nbits", "2,4", "--granularity", "per_tensor"),
              quick_args=("--models", "mnist_cnn", "--nbits", "2,4", "--granularity", "per_tensor"),
              result="palettize_accuracy.json"),
    Benchmark("mixed_vs_uniform", "mixed-precision palettization vs the best uniform point under a budget",
              full_args=("--models", "mnist_cnn"), quick_args=("--models", "mnist_cnn"), result="mixed_vs_uniform.json"),
    Benchmark("mixed_speed", "mixed search: today's (exact) vs the fast search, same model, data and levels",
              full_args=("--models", "mnist_cnn"), quick_args=("--quick",), result="mixed_speed.json",
              timeout_s=1800),
    Benchmark("training_demo", "post-training vs training-time compression on mnist_cnn (no target)",
              full_args=("--dkm-steps", "5", "--prune-steps", "40", "--json", "benchmarks/results/training_demo.json"),
              quick_args=("--dkm-steps", "3", "--prune-steps", "20", "--json", "benchmarks/results/training_demo.json"),
              result="training_demo.json"),
    Benchmark("size_table", "bytes on disk per technique and setting (no target)",
              full_args=("--quick",), quick_args=("--quick",), result=None),
)


def discover(bench_dir: Path = BENCH_DIR) -> list[Benchmark]:
    """The known benchmarks plus any other script in bench_dir (run with --quick
    in quick mode if its source mentions that flag)."""
    known = {b.name for b in KNOWN} | {b.script_name for b in KNOWN if b.script_name}
    extra = []
    for script in sorted(bench_dir.glob("*.py")):
        if script.stem in known or script.stem == "run_all" or script.stem.startswith("_"):
            continue
        quick = ("--quick",) if "--quick" in script.read_text(errors="replace") else ()
        extra.append(Benchmark(script.stem, "(no targets known to run_all)", quick_args=quick,
                               result=f"{script.stem}.json"))
    return list(KNOWN) + extra


# ---------------------------------------------------------------- results -> rows (pure)

@dataclass
class Row:
    benchmark: str
    measure: str
    value: float | None
    shown: str                     # the value as printed
    target: str = ""               # e.g. "<= 1.10x (issue 7)"; "" when there is none
    met: bool | None = None        # None: no target, or nothing measured

    def to_dict(self) -> dict:
        return asdict(self)


def _check(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value <= bound if op == "<=" else value >= bound


def _row(bench: str, measure: str, value: float | None, shown: str, op: str | None = None,
         bound: float | None = None, unit: str = "x", source: str = "") -> Row:
    if op is None:
        return Row(bench, measure, value, shown)
    text = f"{op} {bound:g}{unit}" if unit != "%" else f"{op} {bound:.0%}"
    return Row(bench, measure, value, shown, text + (f" ({source})" if source else ""), _check(value, op, bound))


def runtime_rows(data: dict) -> list[Row]:
    rows = []
    for r in data.get("rows", []):
        label = f"runtime / eager, {r['model']} {r['program']} batch {r['batch']}"
        shown = f"{r['ratio']:.3f}x ({r['runtime_ms']:.1f} vs {r['eager_ms']:.1f} ms)"
        if r["model"] in ISSUE_13_RUNTIME:
            rows.append(_row("bench_runtime", label, r["ratio"], shown, "<=", RUNTIME_TARGET_13, source="issue 13"))
            continue
        rows.append(_row("bench_runtime", label, r["ratio"], shown, "<=", RUNTIME_TARGET_7, source="issue 7"))
        if r["batch"] == 64 and r["model"] == "dog_mobilenetv2":
            rows.append(_row("bench_runtime", label, r["ratio"], shown, "<=", RUNTIME_TARGET_3, source="issue 3"))
    return rows


def crepe_runtime_rows(data: dict) -> list[Row]:
    return [_row("crepe_runtime", f"runtime / eager, {r['model']} {r['program']} batch {r['batch']}", r["ratio"],
                 f"{r['ratio']:.3f}x ({r['runtime_ms']:.1f} vs {r['eager_ms']:.1f} ms)", "<=", CREPE_RUNTIME,
                 source="issue 13") for r in data.get("rows", [])]


def sweep_rows(data: dict) -> list[Row]:
    ratios = data.get("ratios", {})
    hand = data.get("hand_loop", {}).get("seconds")
    lab1, lab2 = data.get("lab_1_worker", {}), data.get("lab_2_workers", {})

    def secs(part: dict, key: str = "seconds") -> str:
        return f"{part[key]:.1f} s" if key in part else "?"

    hand_text = f"{hand:.1f} s" if hand is not None else "?"
    spec = [
        ("lab sweep / hand loop, 1 worker", "lab1_vs_hand", f"{secs(lab1)} vs {hand_text}", SWEEP_1_WORKER),
        ("lab sweep / hand loop, 2 workers", "lab2_vs_hand", f"{secs(lab2)} vs {hand_text}", SWEEP_2_WORKERS),
        ("cached re-run / first run, 1 worker", "cached_vs_first_1", f"{secs(lab1, 'cached_seconds')} vs {secs(lab1)}",
         CACHED_RERUN),
        ("cached re-run / first run, 2 workers", "cached_vs_first_2",
         f"{secs(lab2, 'cached_seconds')} vs {secs(lab2)}", CACHED_RERUN),
    ]
    rows = []
    for label, key, detail, bound in spec:
        value = ratios.get(key)
        cached = key.startswith("cached")
        shown = "-" if value is None else (f"{value:.1%} ({detail})" if cached else f"{value:.2f}x ({detail})")
        rows.append(_row("bench_sweep", label, value, shown, "<=", bound, unit="%" if cached else "x",
                         source="issue 7"))
    return rows


ISSUE_13_MODELS = {"minilm"}      # bench_palettize models whose own totals issue 13 targets


def sweep_spec_rows(data: dict) -> list[Row]:
    """A spec's post-training points (issue 13: MiniLM), 1 worker; worker imports reported."""
    ratios = data.get("ratios", {})
    hand = data.get("hand_loop", {}).get("seconds")
    lab1 = data.get("lab_1_worker", {})
    value = ratios.get("lab1_vs_hand")
    model = data.get("model", "?")
    shown = "-" if value is None else (f"{value:.3f}x ({lab1.get('seconds', float('nan')):.1f} vs {hand:.1f} s, "
                                       f"{len(data.get('points', []))} points)")
    rows = [_row("bench_sweep_minilm", f"lab sweep / hand loop, 1 worker, {model}", value, shown, "<=",
                 SWEEP_1_WORKER_13, source="issue 13")]
    if data.get("worker_import_s") is not None:
        share = data.get("worker_import_share_of_hand")
        rows.append(_row("bench_sweep_minilm", "a fresh worker's imports / hand loop time", share,
                         f"{share:.1%} ({data['worker_import_s']:.1f} s)"))
    cached = ratios.get("cached_vs_first_1")
    if cached is not None:
        rows.append(_row("bench_sweep_minilm", "cached re-run / first run, 1 worker", cached,
                         f"{cached:.1%} ({lab1.get('cached_seconds', float('nan')):.1f} s)", "<=", CACHED_RERUN,
                         unit="%", source="issue 7"))
    return rows


def palettize_rows(data: dict) -> list[Row]:
    s = data.get("summary") or {}
    if not s:
        return [_row("bench_palettize", "palettizer speed-up vs coremltools kmeans", None,
                     "no case timed against coremltools", ">=", PALETTIZE_SPEEDUP, source="issue 7")]
    cases = f"{s['cases']} cases, {s['coremltools_total_s']:.1f} s vs {s['ours_total_s']:.1f} s"
    if data.get("complete") is False:
        cases += "; INCOMPLETE run"
    per_model = s.get("per_model") or {}
    if per_model and set(per_model) <= ISSUE_13_MODELS:
        return _palettize_model_rows(per_model)  # issue 13's models alone: their own rows say it all
    rows = [
        _row("bench_palettize", "palettizer speed-up vs coremltools kmeans (total time)", s["overall_speedup"],
             f"{s['overall_speedup']:.1f}x ({cases})", ">=", PALETTIZE_SPEEDUP, source="issue 7"),
        _row("bench_palettize", "palettizer weight MSE / coremltools (worst case)", s["max_mse_ratio"],
             f"{s['max_mse_ratio']:.6f} (geomean {s['geomean_mse_ratio']:.6f})", "<=", PALETTIZE_MSE, unit="",
             source="issue 7"),
        _row("bench_palettize", "palettizer speed-up, slowest case", s["min_case_speedup"],
             f"{s['min_case_speedup']:.1f}x"),
    ]
    if len(per_model) > 1:
        rows += _palettize_model_rows(per_model)
    return rows


def _palettize_model_rows(per_model: dict) -> list[Row]:
    rows = []
    for model, m in per_model.items():
        targeted = model in ISSUE_13_MODELS
        skipped = f", {m['skipped_reference']} not timed" if m.get("skipped_reference") else ""
        detail = f"{m['cases']} cases{skipped}, {m['coremltools_total_s']:.1f} s vs {m['ours_total_s']:.1f} s"
        speed = (f"palettizer speed-up vs coremltools kmeans, {model} (total time)", m["overall_speedup"],
                 f"{m['overall_speedup']:.1f}x ({detail}; slowest case {m['min_case_speedup']:.1f}x)")
        mse = (f"palettizer weight MSE / coremltools, {model} (worst case)", m["max_mse_ratio"],
               f"{m['max_mse_ratio']:.6f} (geomean {m['geomean_mse_ratio']:.6f})")
        if targeted:
            rows.append(_row("bench_palettize", *speed, ">=", PALETTIZE_SPEEDUP, source="issue 13"))
            rows.append(_row("bench_palettize", *mse, "<=", PALETTIZE_MSE, unit="", source="issue 13"))
        else:
            rows += [_row("bench_palettize", *speed), _row("bench_palettize", *mse)]
    return rows


def eval_scaling_rows(data: dict) -> list[Row]:
    """mnist_cnn's image folders (issue 7: linear time, flat memory) and any other model's
    validation source x N (issue 13: flat memory; its time is reported without a target)."""
    rows = []
    for part in data.get("models") or [data]:
        model = part.get("model", "mnist_cnn")
        images = model == "mnist_cnn"
        unit = part.get("unit", "images")
        s = part["summary"]
        n = f"{s['largest']:,} vs {s['smallest']:,} {unit}"
        for kind in ("uncached", "cached") if images else ("uncached",):
            value = s[f"linearity_{kind}"]
            wall = s.get(f"wall_time_ratio_{kind}")
            shown = (f"{value:.2f} ({n}: {s[f'time_ratio_{kind}']:.1f}x CPU time for {s['ideal_time_ratio']:.0f}x {unit}"
                     + (f"; wall {wall:.1f}x" if wall is not None else "") + ")")
            label = f"eval CPU time per {unit.removesuffix('s')}, largest / smallest, {model}" + (f", {kind}" if images else "")
            if images:
                rows.append(_row("bench_eval_scaling", label, value, shown, "<=", EVAL_LINEARITY, unit="", source="linear"))
            else:
                rows.append(_row("bench_eval_scaling", label, value, shown))
        small = min(part["rows"], key=lambda r: r["images"])
        large = max(part["rows"], key=lambda r: r["images"])
        rows.append(_row("bench_eval_scaling", f"eval peak memory, largest / smallest, {model}", s["peak_ratio"],
                         f"{s['peak_ratio']:.2f}x ({n}: {large['peak_mb']:.0f} vs {small['peak_mb']:.0f} MB)", "<=",
                         EVAL_PEAK, source="flat" if images else "issue 13"))
    return rows


def palettize_accuracy_rows(data: list) -> list[Row]:
    rows = []
    for r in data:
        value = r["fast_kmeans_agreement"] - r["kmeans_agreement"]
        rows.append(_row("palettize_accuracy", f"agreement, lab - coremltools, {r['model']} {r['nbits']}-bit "
                         f"{r['granularity']}", value,
                         f"{value:+.4f} ({r['fast_kmeans_agreement']:.4f} vs {r['kmeans_agreement']:.4f})",
                         ">=", 0.0, unit="", source="issue 7: not lower"))
    return rows


def mixed_rows(data: list) -> list[Row]:
    rows = []
    for r in data:
        uniform, mixed = r.get("best_uniform"), r.get("mixed") or {}
        label = f"mixed / best uniform bytes, {r['model']} ({r['budget']})"
        if not uniform or not mixed.get("bytes"):
            rows.append(_row("mixed_vs_uniform", label, None, "no uniform point within budget" if not uniform
                             else f"mixed point {mixed.get('state')}", "<=", 1.0, unit="x"))
            continue
        value = mixed["bytes"] / uniform["bytes"]
        budget = "" if r.get("mixed_meets_budget") else "; budget NOT met"
        row = _row("mixed_vs_uniform", label, value, f"{value:.2f}x ({mixed['bytes']:,} vs {uniform['bytes']:,} B{budget})",
                   "<=", 1.0, unit="x")
        row.met = row.met and bool(r.get("mixed_meets_budget"))
        rows.append(row)
    return rows


def mixed_speed_rows(data: list) -> list[Row]:
    """benchmarks/mixed_speed.py: today's search (exact, batches of 128), the exact search with the
    new batching, the fast cold search and its re-run reading the stored single-op stage."""
    rows = []
    for r in (data["results"] if isinstance(data, dict) else data):
        runs = r["runs"]
        today, exact, fast = runs["today"], runs["exact"], runs["fast"]
        rows.append(_row("mixed_speed", f"fast cold search / today's search, {r['model']} ({r['budget']})",
                         r["ratio_fast_vs_today"],
                         f"{r['ratio_fast_vs_today']:.3f}x ({fast['seconds']:.1f} vs {today['seconds']:.1f} s; "
                         f"{fast['evaluations']} vs {today['evaluations']} evaluations)", "<=", MIXED_SPEED,
                         source="issue 14"))
        rows.append(_row("mixed_speed", f"fast cold search / exact search with the new batching, {r['model']}",
                         r["ratio_fast_vs_exact"], f"{r['ratio_fast_vs_exact']:.3f}x ({exact['seconds']:.1f} s exact; "
                         f"exact / today {r['ratio_exact_vs_today']:.3f}x)"))
        size = fast["bytes"] / today["bytes"]
        row = _row("mixed_speed", f"fast answer bytes on disk / today's, {r['model']}", size,
                   f"{size:.3f}x ({fast['bytes']:,} vs {today['bytes']:,} B; within the budget on the subset and the "
                   f"folder: {'yes' if r['fast_within_budget'] else 'NO'})", "<=", 1.0, source="issue 14")
        row.met = row.met and bool(r["fast_within_budget"])
        rows.append(row)
        if "fast_again" in runs:
            rows.append(_row("mixed_speed", f"fast search reading its stored single-op stage / today's, {r['model']}",
                             r["ratio_again_vs_today"], f"{r['ratio_again_vs_today']:.3f}x "
                             f"({runs['fast_again']['seconds']:.1f} s)"))
    return rows


def training_rows(data: list) -> list[Row]:
    return [_row("training_demo", r["method"], r["accuracy"],
                 f"top-1 {r['accuracy']:.3f}, {r['size_kb']:.0f} KB, {r['wall_s']:.1f} s") for r in data]


ROW_BUILDERS: dict[str, Callable[[dict | list], list[Row]]] = {
    "bench_runtime": runtime_rows,
    "crepe_runtime": crepe_runtime_rows,
    "bench_sweep": sweep_rows,
    "bench_sweep_minilm": sweep_spec_rows,
    "bench_palettize": palettize_rows,
    "bench_eval_scaling": eval_scaling_rows,
    "palettize_accuracy": palettize_accuracy_rows,
    "mixed_vs_uniform": mixed_rows,
    "training_demo": training_rows,
    "mixed_speed": mixed_speed_rows,
}


def build_rows(results: dict[str, dict | list | None], statuses: dict[str, str] | None = None) -> list[Row]:
    """Table rows from each benchmark's JSON (None when it wrote none). A benchmark
    whose JSON is missing or unreadable gets one row saying why."""
    statuses = statuses or {}
    rows: list[Row] = []
    for name, data in results.items():
        status = statuses.get(name, "ok")
        builder = ROW_BUILDERS.get(name)
        if data is None or builder is None:
            shown = status if status != "ok" else ("ran; see its log" if builder is None else "wrote no JSON")
            rows.append(Row(name, "-", None, shown))
            continue
        try:
            rows.extend(builder(data))
        except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            rows.append(Row(name, "-", None, f"unreadable result ({type(e).__name__}: {e})"))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| benchmark | measure | value | target | met |", "|---|---|---|---|:---:|"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.benchmark} | {r.measure} | {r.shown} | {r.target} | {met} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- running

@dataclass
class RunRecord:
    name: str
    args: list[str] = field(default_factory=list)
    status: str = "ok"             # ok | missing | failed (exit N) | timed out | stale result
    seconds: float = 0.0
    log: str | None = None
    finished: str = ""             # UTC, "YYYY-MM-DD HH:MM"


def run_benchmark(bench: Benchmark, quick: bool, logs: Path) -> tuple[RunRecord, dict | None]:
    args = list(bench.quick_args if quick else bench.full_args)
    record = RunRecord(bench.name, args)
    if not bench.script.is_file():
        record.status = "not written yet (skipped)"
        return record, None
    if bench.missing():
        record.status = f"needs {', '.join(bench.missing())} (skipped)"
        return record, None
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{bench.name}.log"
    record.log = str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log)
    started = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    with open(log, "w") as out:
        try:
            proc = subprocess.run([sys.executable, str(bench.script), *args], stdout=out, stderr=subprocess.STDOUT,
                                  cwd=ROOT, env=env, timeout=bench.timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    record.seconds = round(time.time() - started, 1)
    record.finished = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    if code is None:
        record.status = f"timed out after {bench.timeout_s} s"
    elif code != 0:
        record.status = f"failed (exit {code}; see {record.log})"
    if bench.name == "size_table" and code == 0:
        (RESULTS / "size_table.md").write_text(log.read_text())
    data = None
    if bench.result:
        path = RESULTS / bench.result
        if path.is_file() and path.stat().st_mtime >= started - 1:
            try:
                data = json.loads(path.read_text())
            except ValueError as e:
                record.status = f"unreadable {bench.result}: {e}"
        elif record.status == "ok" and bench.name in ROW_BUILDERS:
            record.status = f"wrote no {bench.result}"
    return record, data


def reuse_result(bench: Benchmark) -> tuple[RunRecord, dict | None]:
    """A benchmark's JSON already under benchmarks/results/ (measured by running the
    script directly), read instead of running it again."""
    record = RunRecord(bench.name, [])
    path = RESULTS / bench.result if bench.result else None
    if path is None or not path.is_file():
        record.status = f"no {bench.result or 'JSON result'} to reuse (skipped)"
        return record, None
    record.finished = time.strftime("%Y-%m-%d %H:%M", time.gmtime(path.stat().st_mtime))
    record.status = f"reused {path.relative_to(ROOT)} (measured by running the script directly)"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        record.status = f"unreadable {bench.result}: {e}"
        return record, None
    if isinstance(data, dict) and data.get("command"):
        record.args = list(data["command"])
    return record, data


def runs_table(records: list[RunRecord]) -> str:
    lines = ["| benchmark | arguments | seconds | status | finished (UTC) |", "|---|---|---:|---|---|"]
    for r in records:
        seconds = "-" if r.status.startswith("reused") else f"{r.seconds:.0f}"
        lines.append(f"| {r.name} | {' '.join(r.args) or '(defaults)'} | {seconds} | {r.status} | {r.finished} |")
    return "\n".join(lines)


def _table_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_summary(text: str) -> tuple[list[Row], list[RunRecord]]:
    """The rows and runs of an earlier summary.md (the tracked copy: values come back as
    shown, `met` as written), so a partial run can keep what it did not re-measure."""
    rows: list[Row] = []
    records: list[RunRecord] = []
    table = None
    for line in text.splitlines():
        if not line.startswith("|"):
            table = None
            continue
        cells = _table_cells(line)
        if cells[:2] == ["benchmark", "measure"]:
            table = "rows"
        elif cells[:2] == ["benchmark", "arguments"]:
            table = "runs"
        elif table and not set(line) <= set("|-: "):
            if table == "rows" and len(cells) == 5:
                met = {"yes": True, "**no**": False}.get(cells[4])
                rows.append(Row(cells[0], cells[1], None, cells[2], cells[3], met))
            elif table == "runs" and len(cells) >= 4:
                args = [] if cells[1] == "(defaults)" else cells[1].split()
                seconds = float(cells[2]) if cells[2].replace(".", "", 1).isdigit() else 0.0
                records.append(RunRecord(cells[0], args, cells[3], seconds, None, cells[4] if len(cells) > 4 else ""))
    return rows, records


def merge_previous(rows: list[Row], records: list[RunRecord], previous: str) -> tuple[list[Row], list[RunRecord]]:
    """This run's rows and runs, plus those of benchmarks it did not run from `previous`
    (an earlier summary.md), in the known run order."""
    old_rows, old_records = parse_summary(previous)
    ran = {r.name for r in records}
    kept_records = [r for r in old_records if r.name not in ran]
    kept = {r.name for r in kept_records}
    order = {b.name: i for i, b in enumerate(discover())}
    all_rows = rows + [r for r in old_rows if r.benchmark in kept]
    all_records = records + kept_records
    all_rows.sort(key=lambda r: order.get(r.benchmark, len(order)))  # stable: each benchmark's rows keep their order
    all_records.sort(key=lambda r: order.get(r.name, len(order)))
    return all_rows, all_records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's light settings")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (script stems)")
    parser.add_argument("--skip", default=None, help="comma-separated benchmark names not to run")
    parser.add_argument("--no-merge", action="store_true",
                        help="with --only/--skip: write only this run's rows (default: keep the other benchmarks' rows "
                             "of the existing summary.md, with their dates)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for summary.md's Notes (repeatable): e.g. what was not measured, and why")
    parser.add_argument("--reuse", action="store_true",
                        help="do not run: build the rows of the chosen benchmarks from the JSON they already wrote "
                             "under benchmarks/results/")
    args = parser.parse_args(argv)

    benchmarks = discover()
    names = [b.name for b in benchmarks]
    for option in ("only", "skip"):
        value = getattr(args, option)
        if not value:
            continue
        chosen = {w.strip().removesuffix(".py") for w in value.split(",") if w.strip()}
        unknown = sorted(chosen - set(names))
        if unknown:
            parser.error(f"--{option}: unknown benchmark(s) {unknown}; known: {names}")
        benchmarks = [b for b in benchmarks if (b.name in chosen) == (option == "only")]

    started = time.perf_counter()
    records, results, statuses = [], {}, {}
    for bench in benchmarks:
        print(f"[run_all] {bench.name} {' '.join(bench.quick_args if args.quick else bench.full_args)} ...",
              file=sys.stderr, flush=True)
        record, data = reuse_result(bench) if args.reuse else run_benchmark(bench, args.quick, RESULTS / "logs")
        print(f"[run_all] {bench.name}: {record.status} in {record.seconds:.0f} s", file=sys.stderr, flush=True)
        records.append(record)
        results[bench.name] = data
        statuses[bench.name] = record.status
    total = time.perf_counter() - started

    rows = build_rows(results, statuses)
    partial = bool(args.only or args.skip or args.reuse)
    previous = RESULTS / "summary.md"
    kept_note = ""
    if partial and not args.no_merge and previous.is_file():
        ran = {r.name for r in records}
        rows, records = merge_previous(rows, records, previous.read_text())
        kept = sorted({r.name for r in records} - ran)
        if kept:
            kept_note = (f" This run measured {', '.join(sorted(ran))}; the rows of {', '.join(kept)} are kept from "
                         "earlier runs (dates in the last table).")
    checked = [r for r in rows if r.met is not None]
    met = sum(r.met for r in checked)
    mode = "quick" if args.quick else "full"
    if args.reuse:
        title = "# Benchmarks (rows rebuilt from results of the scripts run directly)"
        timing = (f"{platform.platform()}, {os.cpu_count()} CPU(s); table written "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC from each script's JSON (its command line "
                  "and time are in the last table).")
    else:
        title = f"# Benchmarks ({mode} run{', partial' if partial else ''})"
        timing = (f"{platform.platform()}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; "
                  f"total {total:.0f} s ({total / 60:.1f} min), finished {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.")
    text = "\n".join([
        title, "",
        f"{timing} Every ratio is measured side by side in one run.{kept_note}", "",
        markdown_table(rows), "",
        f"{met} of {len(checked)} targets met.", "",
        runs_table(records), "",
        *(["## Notes", "", *[f"- {n}" for n in args.note], ""] if args.note else []),
    ])
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(text)
    (RESULTS / "summary.json").write_text(json.dumps({
        "mode": mode, "total_s": round(total, 1), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "platform": platform.platform(), "targets_met": met, "targets_checked": len(checked),
        "runs": [asdict(r) for r in records], "rows": [r.to_dict() for r in rows],
    }, indent=2) + "\n")
    print(f"written {RESULTS / 'summary.md'} and summary.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
