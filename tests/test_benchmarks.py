"""Smoke tests of the benchmark suite: the evaluation-scaling benchmark in a tiny
mode (real PNGs, real Core ML conversion, real subprocesses), and run_all's table
builder on the JSON that run writes plus samples in the other benchmarks' formats."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run_all = _load("run_all")
eval_scaling = _load("bench_eval_scaling")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("eval_scaling")
    out = tmp / "eval_scaling.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_eval_scaling.py"), "--sizes", "40,80",
                           "--batch-size", "16", "--models", "mnist_cnn", "--data-dir", str(tmp / "data"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp, json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_eval_scaling_tiny_run_writes_every_field(tiny_run):
    tmp, data, stdout = tiny_run
    assert data["benchmark"] == "eval_scaling" and data["sizes"] == [40, 80]
    assert [r["images"] for r in data["rows"]] == [40, 80]
    for row in data["rows"]:
        assert row["evaluated"] == row["images"] and row["skipped"] == 0
        assert row["cached_same_result"] is True
        assert row["top1"] > 0.9  # real digits, trained model
        assert row["uncached_s"] > 0 and row["cached_s"] > 0
        assert row["uncached_cpu_s"] > 0 and row["cached_cpu_s"] > 0
        assert row["peak_mb"] >= row["loaded_mb"] > 50  # a process with torch loaded
        assert row["cache_mb"] == pytest.approx(row["images"] * 28 * 28 * 4 / 2**20, rel=0.05, abs=0.05)
    summary = data["summary"]
    assert summary["ideal_time_ratio"] == 2.0
    for key in ("time_ratio_uncached", "time_ratio_cached", "linearity_uncached", "linearity_cached", "peak_ratio",
                "wall_linearity_uncached", "wall_linearity_cached", "anon_peak_ratio"):
        assert summary[key] > 0
    assert summary["memory_flat"] == (summary["peak_ratio"] <= summary["targets"]["peak_ratio_max"])
    assert "| 80 |" in stdout
    # the folders are real labelled PNG folders, the smaller a prefix of the larger
    small, large = tmp / "data" / "n40", tmp / "data" / "n80"
    small_files = sorted(p.relative_to(small) for p in small.rglob("*.png"))
    assert len(small_files) == 40 and len(list(large.rglob("*.png"))) == 80
    assert all((large / f).is_file() for f in small_files)
    assert len({f.parts[0] for f in small_files}) >= 8  # classes are mixed, not digit 0 first


def test_image_sequence_is_deterministic_and_varied():
    digits, labels = eval_scaling.mnist_digits()
    order = np.random.default_rng(0).permutation(len(digits))
    first, label = eval_scaling.image_at(3, digits, labels, order)
    assert np.array_equal(first, digits[order[3]]) and label == labels[order[3]]
    again, label_again = eval_scaling.image_at(5003, digits, labels, order)
    assert label_again == label and again.shape == (28, 28) and again.dtype == np.uint8
    assert not np.array_equal(again, first)
    assert np.array_equal(again, eval_scaling.image_at(5003, digits, labels, order)[0])


@pytest.mark.slow
def test_run_all_rows_from_real_and_sample_results(tiny_run):
    _, data, _ = tiny_run
    results = {
        "bench_eval_scaling": data,
        "bench_sweep": {"hand_loop": {"seconds": 60.0},
                        "lab_1_worker": {"seconds": 63.0, "cached_seconds": 0.5},
                        "lab_2_workers": {"seconds": 42.0, "cached_seconds": 3.0},
                        "ratios": {"lab1_vs_hand": 1.05, "lab2_vs_hand": 0.70,
                                   "cached_vs_first_1": 0.5 / 63, "cached_vs_first_2": 3.0 / 42}},
        "bench_runtime": {"rows": [
            {"model": "dog_mobilenetv2", "program": "fp32", "batch": 1, "eager_ms": 10.0, "runtime_ms": 12.0,
             "ratio": 1.2},
            {"model": "dog_mobilenetv2", "program": "fp32", "batch": 64, "eager_ms": 300.0, "runtime_ms": 336.0,
             "ratio": 1.12}]},
        "bench_palettize": {"summary": {"cases": 4, "ours_total_s": 2.0, "coremltools_total_s": 30.0,
                                        "overall_speedup": 15.0, "min_case_speedup": 3.0, "max_mse_ratio": 0.999,
                                        "geomean_mse_ratio": 0.99}},
        "size_table": None,
    }
    rows = run_all.build_rows(results, {"size_table": "not written yet (skipped)"})
    met = {(r.benchmark, r.measure, r.target): r.met for r in rows}

    scaling = [r for r in rows if r.benchmark == "bench_eval_scaling"]
    assert len(scaling) == 3 and all(r.target for r in scaling)
    peak = next(r for r in scaling if "peak" in r.measure)
    assert peak.value == data["summary"]["peak_ratio"] and peak.met == (peak.value <= run_all.EVAL_PEAK)

    assert met[("bench_sweep", "lab sweep / hand loop, 1 worker", "<= 1.1x (issue 7)")] is True
    assert met[("bench_sweep", "lab sweep / hand loop, 2 workers", "<= 0.65x (issue 7)")] is False
    assert met[("bench_sweep", "cached re-run / first run, 1 worker", "<= 5% (issue 7)")] is True
    assert met[("bench_sweep", "cached re-run / first run, 2 workers", "<= 5% (issue 7)")] is False

    batch64 = "runtime / eager, dog_mobilenetv2 fp32 batch 64"
    assert met[("bench_runtime", batch64, "<= 1.1x (issue 7)")] is False
    assert met[("bench_runtime", batch64, "<= 1.15x (issue 3)")] is True
    assert met[("bench_runtime", "runtime / eager, dog_mobilenetv2 fp32 batch 1", "<= 1.1x (issue 7)")] is False
    assert not any(r.target.endswith("(issue 3)") and "batch 1" in r.measure for r in rows)

    palettize = {r.measure: r for r in rows if r.benchmark == "bench_palettize"}
    assert palettize["palettizer speed-up vs coremltools kmeans (total time)"].met is True
    assert palettize["palettizer weight MSE / coremltools (worst case)"].met is True
    assert palettize["palettizer speed-up, slowest case"].met is None  # reported, no target

    skipped = next(r for r in rows if r.benchmark == "size_table")
    assert skipped.met is None and "not written yet" in skipped.shown

    table = run_all.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "**no**" in table and "| yes |" in table


def test_run_all_reports_broken_and_missing_results(tmp_path):
    rows = run_all.build_rows({"bench_sweep": {"ratios": "garbage"}, "bench_palettize": {"summary": {}}})
    assert rows[0].met is None and "unreadable result" in rows[0].shown
    assert rows[1].met is None and "no case timed" in rows[1].shown

    missing = run_all.Benchmark("bench_does_not_exist", "nothing")
    record, data = run_all.run_benchmark(missing, quick=True, logs=tmp_path)
    assert data is None and "not written yet" in record.status


def test_run_all_discovers_unknown_scripts(tmp_path):
    (tmp_path / "bench_new_thing.py").write_text("import argparse\n# --quick: a short run\n")
    (tmp_path / "run_all.py").write_text("")
    (tmp_path / "_helpers.py").write_text("")
    found = {b.name: b for b in run_all.discover(tmp_path)}
    assert "bench_new_thing" in found and "run_all" not in found and "_helpers" not in found
    assert found["bench_new_thing"].quick_args == ("--quick",)
    assert {b.name for b in run_all.KNOWN} <= set(found)


def test_run_all_rows_for_list_shaped_results():
    results = {
        "palettize_accuracy": [
            {"model": "mnist_cnn", "nbits": 2, "granularity": "per_tensor", "kmeans_s": 1.0, "fast_kmeans_s": 0.1,
             "kmeans_top1": 0.989, "kmeans_agreement": 0.992, "fast_kmeans_top1": 0.99, "fast_kmeans_agreement": 0.993},
            {"model": "dog_mobilenetv2", "nbits": 2, "granularity": "per_tensor", "kmeans_s": 5.0,
             "fast_kmeans_s": 0.5, "kmeans_top1": 0.5, "kmeans_agreement": 0.60, "fast_kmeans_top1": 0.5,
             "fast_kmeans_agreement": 0.58}],
        "mixed_vs_uniform": [
            {"model": "mnist_cnn", "budget": "top1_drop 1.0", "best_uniform": {"bytes": 200_000},
             "mixed": {"bytes": 150_000, "state": "COMPLETE"}, "mixed_meets_budget": True},
            {"model": "dog_mobilenetv2", "budget": "agreement 0.99", "best_uniform": {"bytes": 900_000},
             "mixed": {"bytes": 800_000, "state": "COMPLETE"}, "mixed_meets_budget": False}],
        "training_demo": [{"method": "fp16 (uncompressed)", "accuracy": 0.997, "size_kb": 773.2, "wall_s": 5.7,
                           "estimate_s": None}],
    }
    rows = run_all.build_rows(results)
    assert [r.met for r in rows] == [True, False, True, False, None]
    assert rows[1].value == pytest.approx(-0.02) and rows[2].value == pytest.approx(0.75)
    assert "budget NOT met" in rows[3].shown and "top-1 0.997" in rows[4].shown


def test_run_all_rows_for_the_mixed_search_benchmark():
    """mixed_speed.json as benchmarks/mixed_speed.py writes it: the time ratio to today's search
    and the answer's bytes against today's answer, each against the issue-14 target."""
    def run(seconds, evaluations, size):
        return {"seconds": seconds, "evaluations": evaluations, "bytes": size}
    result = {"model": "dog_mobilenetv2", "budget": "agreement >= 0.99",
              "runs": {"today": run(800.0, 430, 2_800_000), "exact": run(360.0, 430, 2_800_000),
                       "fast": run(72.0, 250, 2_900_000), "fast_again": run(40.0, 200, 2_900_000)},
              "ratio_fast_vs_today": 0.09, "ratio_fast_vs_exact": 0.2, "ratio_exact_vs_today": 0.45,
              "ratio_again_vs_today": 0.05, "fast_no_larger": False, "fast_within_budget": True}
    rows = run_all.build_rows({"mixed_speed": {"command": "mixed_speed.py", "results": [result]}})
    assert [r.met for r in rows] == [True, None, False, None]
    assert rows[0].value == pytest.approx(0.09) and "72.0 vs 800.0 s" in rows[0].shown
    assert rows[2].value == pytest.approx(2.9 / 2.8) and "2,900,000 vs 2,800,000 B" in rows[2].shown


# ---------------------------------------------------------------- issue 13: other models, named inputs

palettize = _load("bench_palettize")
sys.path.insert(0, str(BENCH))
import _task_inputs  # noqa: E402


def _bert_like(rng) -> dict:
    """A BERT checkpoint's layout in miniature: embedding tables, dense matrices with biases, 1-D norms."""
    t = {"embeddings.word_embeddings.weight": rng.normal(size=(100, 48)),
         "embeddings.position_embeddings.weight": rng.normal(size=(70, 48)),
         "embeddings.LayerNorm.weight": np.ones(48), "embeddings.position_ids": np.arange(70)[None]}
    for name, shape in (("encoder.layer.0.attention.self.query", (48, 48)), ("encoder.layer.0.intermediate.dense", (96, 48)),
                        ("encoder.layer.0.output.dense", (48, 96))):
        t[f"{name}.weight"], t[f"{name}.bias"] = rng.normal(size=shape), rng.normal(size=shape[0])
    return {k: np.asarray(v, dtype=np.float32 if v.dtype.kind == "f" else np.int64) for k, v in t.items()}


@pytest.mark.slow
def test_weight_matrices_model_holds_every_matrix_and_both_palettizers_compress_them_alike(tmp_path):
    module = palettize.WeightMatrices(_bert_like(np.random.default_rng(0)))
    assert len(module.linears) == 3 and len(module.embeddings) == 2 and module.widths == [48, 96]
    outs = module(*module.example_inputs().values())
    assert [tuple(o.shape) for o in outs] == [(1, 48), (1, 96)]
    mlmodel = palettize.convert_weight_matrices(_bert_like(np.random.default_rng(0)), "fp16", tmp_path / "m.mlpackage")
    original = palettize.float_weights(mlmodel)
    big = {n: v.shape for n, v in original.items() if v.size > 2048}
    assert sorted(big.values()) == sorted([(100, 48), (70, 48), (48, 48), (96, 48), (48, 96)])
    row = palettize.run_case("tiny", "fp16", mlmodel, original, 2, "per_grouped_channel", True, group_size=2)
    assert row["weights"] == 5 and row["weights_compressed"] == 5 and row["same_weights_compressed"]
    assert row["group_size"] == 2 and row["mse_ratio"] <= 1.0 + 1e-9
    summary = palettize.summary([row, {**row, "model": "minilm"}])
    assert set(summary["per_model"]) == {"tiny", "minilm"} and summary["per_model"]["minilm"]["cases"] == 1


def test_run_all_rows_for_issue_13_targets():
    per_model = {"minilm": {"cases": 8, "ours_total_s": 10.0, "coremltools_total_s": 40.0, "overall_speedup": 4.0,
                            "min_case_speedup": 2.0, "max_mse_ratio": 0.9999, "geomean_mse_ratio": 0.99,
                            "skipped_reference": 0}}
    rows = run_all.palettize_rows({"summary": {**per_model["minilm"], "per_model": per_model}})
    minilm = {r.measure: r for r in rows if "minilm" in r.measure}
    assert minilm["palettizer speed-up vs coremltools kmeans, minilm (total time)"].met is False
    assert minilm["palettizer weight MSE / coremltools, minilm (worst case)"].met is True
    assert all(r.target.endswith("(issue 13)") for r in minilm.values())

    runtime = run_all.runtime_rows({"rows": [
        {"model": "minilm_embedder", "program": "fp16", "batch": 64, "eager_ms": 100.0, "runtime_ms": 99.0, "ratio": 0.99},
        {"model": "crepe_pitch", "program": "fp32", "batch": 256, "eager_ms": 10.0, "runtime_ms": 11.0, "ratio": 1.1}]})
    assert [(r.target, r.met) for r in runtime] == [("<= 1x (issue 13)", True), ("<= 1x (issue 13)", False)]

    summary = {"smallest": 100, "largest": 1000, "ideal_time_ratio": 10.0, "time_ratio_uncached": 11.0,
               "linearity_uncached": 1.1, "wall_time_ratio_uncached": 12.0, "peak_ratio": 1.05}
    scaling = run_all.eval_scaling_rows({"models": [{"model": "minilm_embedder", "unit": "samples", "summary": summary,
                                                     "rows": [{"images": 100, "peak_mb": 800.0},
                                                              {"images": 1000, "peak_mb": 840.0}]}]})
    assert [(r.met, r.target) for r in scaling] == [(None, ""), (True, "<= 1.3x (issue 13)")]
    assert "minilm_embedder" in scaling[1].measure and "samples" in scaling[1].shown


TEXT_MODEL = '''
import torch
from torch import nn


class TinyEmbedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 16)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)


def build_model():
    return TinyEmbedder()
'''


@pytest.fixture
def tiny_embedder(tmp_path):
    import torch
    folder = tmp_path / "tiny_embedder"
    folder.mkdir()
    (folder / "model.py").write_text(TEXT_MODEL)
    (folder / "metadata.json").write_text(json.dumps({
        "name": "tiny_embedder", "task": "embedding",
        "inputs": [{"name": "input_ids", "shape": [8], "dtype": "int32"},
                   {"name": "attention_mask", "shape": [8], "dtype": "int32"}],
        "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [16]}]}))
    namespace: dict = {}
    exec(TEXT_MODEL, namespace)
    torch.save(namespace["build_model"]().state_dict(), folder / "weights.pt")
    rng = np.random.default_rng(0)
    pair = np.full(10, -1)
    pair[:5] = np.arange(5, 10)
    np.savez(folder / "val.npz", input_ids=rng.integers(1, 64, (10, 8)).astype(np.int32),
             attention_mask=np.ones((10, 8), np.int32), pair=pair)
    return folder


def test_benchmark_inputs_are_named_and_read_through_the_task(tiny_embedder):
    from compress_lab.models import load_model
    handle = load_model(tiny_embedder)
    source = _task_inputs.validation_source(tiny_embedder)
    assert source == tiny_embedder / "val.npz"
    inputs = _task_inputs.task_inputs(handle, 25, source)
    assert list(inputs) == ["input_ids", "attention_mask"]
    assert inputs["input_ids"].shape == (25, 8) and inputs["input_ids"].dtype == np.int32
    stored = np.load(source)["input_ids"]
    assert np.array_equal(inputs["input_ids"][:10], stored) and np.array_equal(inputs["input_ids"][20:], stored[:5])
    args = _task_inputs.eager_args(handle, inputs)
    assert [a.dtype for a in args] == [__import__("torch").int64] * 2
    assert tuple(handle.module(*args).shape) == (25, 16)
    with pytest.raises(SystemExit, match="input 'input_ids'.*needs real data"):
        _task_inputs.task_inputs(handle, 4, None)


def test_tiled_sources_repeat_every_sample_and_keep_each_query_on_its_own_copys_key(tmp_path, tiny_embedder):
    tiled = eval_scaling.tile_source(tiny_embedder / "val.npz", 3, tmp_path / "x3")
    data = np.load(tiled)
    assert data["input_ids"].shape == (30, 8)
    assert list(data["pair"][10:15]) == list(range(15, 20)) and list(data["pair"][25:]) == [-1] * 5
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(4):
        np.savez(folder / f"{i}.npz", input_ids=np.full(8, i, np.int32), pair=np.array(2 + i if i < 2 else -1))
    out = eval_scaling.tile_source(folder, 2, tmp_path / "files_x2")
    files = sorted(p for p in out.iterdir() if p.suffix == ".npz")
    assert len(files) == 8 and [int(np.load(f)["pair"]) for f in files] == [2, 3, -1, -1, 6, 7, -1, -1]


def test_a_partial_run_keeps_the_other_benchmarks_rows_of_the_tracked_summary():
    old_rows = [run_all.Row("bench_runtime", "runtime / eager, dog fp32 batch 64", 0.9, "0.900x (9 vs 10 ms)",
                            "<= 1.1x (issue 7)", True),
                run_all.Row("bench_palettize", "palettizer speed-up", 3.0, "3.0x", ">= 5x (issue 7)", False)]
    old_runs = [run_all.RunRecord("bench_runtime", [], "ok", 60.0, None, "2026-12-01 10:00"),
                run_all.RunRecord("bench_palettize", ["--quick"], "ok", 100.0, None, "2026-12-01 10:02")]
    previous = run_all.markdown_table(old_rows) + "\n\n3 of 4\n\n" + run_all.runs_table(old_runs) + "\n"
    parsed_rows, parsed_runs = run_all.parse_summary(previous)
    assert [(r.benchmark, r.shown, r.target, r.met) for r in parsed_rows] == \
        [(r.benchmark, r.shown, r.target, r.met) for r in old_rows]
    assert [(r.name, r.args, r.seconds, r.finished) for r in parsed_runs] == \
        [("bench_runtime", [], 60.0, "2026-12-01 10:00"), ("bench_palettize", ["--quick"], 100.0, "2026-12-01 10:02")]
    new = [run_all.Row("bench_palettize", "palettizer speed-up", 6.0, "6.0x", ">= 5x (issue 7)", True)]
    rows, runs = run_all.merge_previous(new, [run_all.RunRecord("bench_palettize", finished="2026-12-02 18:00")], previous)
    assert [(r.benchmark, r.shown) for r in rows] == [("bench_runtime", "0.900x (9 vs 10 ms)"), ("bench_palettize", "6.0x")]
    assert [(r.name, r.finished) for r in runs] == [("bench_runtime", "2026-12-01 10:00"),
                                                    ("bench_palettize", "2026-12-02 18:00")]
