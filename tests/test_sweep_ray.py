"""The Ray executor (a local Ray started by the sweep) gives the same results as
the local executor on the same points."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from compress_lab.sweep.runner import run_sweep
from compress_lab.sweep.spec import load_spec

pytest.importorskip("ray")

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_ray_and_local_executors_give_the_same_metrics_and_sizes(tmp_path):
    for class_dir in sorted((SAMPLES / "mnist_cnn" / "val").iterdir()):
        (tmp_path / "val" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:5]:
            shutil.copy2(image, tmp_path / "val" / class_dir.name / image.name)
    spec_path = tmp_path / "ray.toml"
    spec_path.write_text(textwrap.dedent(f"""
        [model]
        source = "{SAMPLES / 'mnist_cnn'}"
        [data]
        validation = "val"
        [run]
        name = "ray"
        workers = 2
        [[grid]]
        technique = "palettize"
        nbits = 2
        [[grid]]
        technique = "quantize"
    """))
    spec = load_spec(spec_path)
    local = run_sweep(spec, tmp_path / "local", executor="local")
    ray_result = run_sweep(spec, tmp_path / "ray", executor="ray")
    import ray
    assert not ray.is_initialized()  # the sweep started its own local Ray and shut it down

    assert local.sweep_id == ray_result.sweep_id and ray_result.executed == local.executed == 5
    assert ray_result.counts["COMPLETE"] == 5, [(r.label, r.error) for r in ray_result.runs]
    ray_runs = {r.run_id: r for r in ray_result.runs}
    for run in local.runs:
        other = ray_runs[run.run_id]
        assert other.state == run.state == "COMPLETE"
        assert other.metrics["confusion"] == run.metrics["confusion"]
        for key in ("n", "top1", "top5", "loss", "agreement"):
            assert other.metrics[key] == pytest.approx(run.metrics[key], rel=1e-5), (run.label, key)
        assert other.metrics["snr_db"] == pytest.approx(run.metrics["snr_db"], rel=1e-3)
        for key in ("bytes", "weights_bytes", "n_weights", "ratio_fp16", "ratio_fp32"):
            assert other.sizes.get(key) == pytest.approx(run.sizes.get(key)), (run.label, key)
        if run.artifact_path:
            assert (tmp_path / "ray" / other.artifact_path / "Manifest.json").is_file()
