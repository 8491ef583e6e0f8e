"""Grid specs: TOML parsing, cartesian expansion (and its list rule), invalid points
reported with the rest runnable, and content-derived run ids."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from compress_lab.errors import ConfigError
from compress_lab.sweep import keys
from compress_lab.sweep.spec import LARGE_GRID, SweepSpec, expand, expand_grid, load_spec

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def write_spec(folder: Path, body: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(body)
    return path


HEADER = """
[model]
source = "mnist_cnn"
[data]
validation = "val"
"""


def test_lists_expand_as_a_cartesian_product_across_grids(tmp_path):
    spec = load_spec(write_spec(tmp_path, HEADER + """
[[grid]]
technique = "palettize"
nbits = [2, 4, 8]
granularity = ["per_tensor", "per_grouped_channel"]
[[grid]]
technique = "quantize"
dtype = ["int8", "int4"]
granularity = "per_block"
block_size = 32
"""))
    plan = expand(spec)
    assert plan.invalid == ()
    palettize = [p.config for p in plan.points if p.technique == "palettize"]
    assert {(c.nbits, c.granularity) for c in palettize} == {
        (n, g) for n in (2, 4, 8) for g in ("per_tensor", "per_grouped_channel")}
    quantize = [p for p in plan.points if p.technique == "quantize"]
    assert [p.config.dtype for p in quantize] == ["int8", "int4"]
    assert all(p.grid_index == 1 and p.config.block_size == 32 for p in quantize)


def test_list_valued_fields_take_a_plain_list_as_one_value_and_a_list_of_lists_as_an_axis():
    one = expand_grid({"technique": "prune", "n_m_ratio": [2, 4]})
    assert one == [{"technique": "prune", "n_m_ratio": [2, 4]}]
    two = expand_grid({"technique": "prune", "n_m_ratio": [[2, 4], [1, 4]], "weight_threshold": [0, 4096]})
    assert len(two) == 4 and {tuple(p["n_m_ratio"]) for p in two} == {(2, 4), (1, 4)}
    # a table is one value of a dict-typed field; a list of tables is an axis
    overrides = {"type:linear": {"nbits": 8}}
    assert len(expand_grid({"technique": "palettize", "op_overrides": overrides})) == 1
    assert len(expand_grid({"technique": "palettize", "op_overrides": [overrides, {}]})) == 2


def test_invalid_points_are_all_reported_with_their_grid_index_and_the_rest_stay_runnable(tmp_path):
    spec = load_spec(write_spec(tmp_path, HEADER + """
[[grid]]
technique = "palettize"
nbits = [4, 5, 7]
[[grid]]
technique = "palettise"
[[grid]]
technique = "quantize"
dtype = ["int8", "int3"]
colour = "blue"
"""))
    plan = expand(spec)
    assert [p.label for p in plan.points] == ["palettize nbits=4"]  # nbits is always shown, default or not
    by_index = {}
    for bad in plan.invalid:
        by_index.setdefault(bad.grid_index, []).append(bad)
    assert sorted(b.settings["nbits"] for b in by_index[0]) == [5, 7]
    assert all("nbits" in b.error for b in by_index[0])
    assert "palettize" in by_index[1][0].error  # unknown technique: a close match is suggested
    assert len(by_index[2]) == 2 and all("colour" in b.error for b in by_index[2])
    assert "#0" in str(by_index[0][0])


def test_duplicate_points_run_once(tmp_path):
    spec = load_spec(write_spec(tmp_path, HEADER + """
[[grid]]
technique = "palettize"
nbits = [4, 4]
[[grid]]
technique = "palettize"
nbits = 4
mode = "kmeans"
"""))
    assert len(expand(spec).points) == 1


@pytest.mark.parametrize("body, message", [
    (HEADER + "[[grid]]\ntechnique = 'palettize'\n[extra]\nx = 1\n", "unknown key(s) ['extra']"),
    (HEADER, "no [[grid]]"),
    (HEADER + "[run]\nworkers = 0\n[[grid]]\ntechnique = 'palettize'\n", "workers"),
    (HEADER + "[run]\nexecutor = 'dask'\n[[grid]]\ntechnique = 'palettize'\n", "executor"),
    ("[data]\nvalidation = 'v'\n[[grid]]\ntechnique = 'palettize'\n", "[model]"),
    (HEADER.replace("validation", "valdation") + "[[grid]]\ntechnique = 'palettize'\n", "valdation"),
    (HEADER + "[[grid]]\nnbits = 4\n", "technique"),
    (HEADER + "[[grid]]\ntechnique = 'palettize'\nnbits = []\n", None),
    ("this is = not toml [", "not valid TOML"),
])
def test_bad_specs_are_errors_that_name_the_problem(tmp_path, body, message):
    path = write_spec(tmp_path, body)
    if message is None:  # an empty list is an invalid point, not a spec error
        plan = expand(load_spec(path))
        assert not plan.points and "empty list" in plan.invalid[0].error
        return
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert message in str(info.value)


def test_relative_paths_resolve_against_the_spec_folder_and_the_spec_round_trips(tmp_path):
    folder = tmp_path / "specs"
    folder.mkdir()
    spec = load_spec(write_spec(folder, """
[model]
source = "../models/net.py"
weights = "../models/w.pt"
[data]
validation = "data/val"
train = "/abs/train"
batch_size = 16
[data.preprocessing]
resize = 32
[run]
name = "r"
workers = 3
timeout_s = 60
[[grid]]
technique = "palettize"
nbits = [2, 4]
"""))
    assert spec.model.source == str(folder / "../models/net.py")
    assert spec.model.weights == folder / "../models/w.pt"
    assert spec.data.validation == folder / "data/val" and spec.data.train == Path("/abs/train")
    assert spec.data.preprocessing == {"resize": 32} and spec.run.workers == 3 and spec.run.timeout_s == 60
    again = SweepSpec.from_dict(spec.to_dict(), base_dir="/somewhere/else")
    assert again.to_dict() == spec.to_dict()
    assert len(expand(again).points) == 2


def test_a_huge_grid_warns_with_an_estimate_before_running(tmp_path):
    thresholds = list(range(0, LARGE_GRID * 2, 2))
    spec = load_spec(write_spec(tmp_path, HEADER + f"""
[[grid]]
technique = "quantize"
weight_threshold = {thresholds}
"""))
    plan = expand(spec, workers=4)
    assert len(plan.points) == LARGE_GRID
    assert len(plan.warnings) == 1 and "about" in plan.warnings[0] and "--yes" in plan.warnings[0]


def test_a_point_that_needs_data_without_a_train_folder_is_invalid_before_running(tmp_path):
    from compress_lab.techniques import REGISTRY, DataNeed
    needs = [n for n in REGISTRY.names() if REGISTRY.config_class(n).data_need is not DataNeed.NONE]
    if not needs:
        pytest.skip("no data-hungry technique registered yet")
    spec = load_spec(write_spec(tmp_path, HEADER + f"[[grid]]\ntechnique = '{needs[0]}'\n"))
    from compress_lab.sweep.runner import prepare
    shutil.copytree(SAMPLES / "mnist_cnn" / "val" / "3", tmp_path / "val" / "3")
    prep = prepare(spec, tmp_path / "store")
    assert [t.family for t in prep.tasks] == ["baseline"] * 3
    assert "train" in prep.invalid[0].error


# --------------------------------------------------------------------------- run ids

def test_run_ids_are_stable_and_change_with_every_input_they_depend_on(tmp_path):
    val = tmp_path / "val"
    shutil.copytree(SAMPLES / "mnist_cnn" / "val" / "7", val / "7")
    pre = {"color": "L", "scale": 1 / 255}
    data_fp = keys.data_fingerprint(val, pre)
    config = {"technique": "palettize", "nbits": 4}
    rid = keys.run_id("model-a", config, data_fp)
    assert rid == keys.run_id("model-a", dict(reversed(list(config.items()))), keys.data_fingerprint(val, pre))
    assert len(rid) == keys.RUN_ID_CHARS and int(rid, 16) >= 0
    assert rid != keys.run_id("model-b", config, data_fp)
    assert rid != keys.run_id("model-a", {"technique": "palettize", "nbits": 2}, data_fp)
    assert rid != keys.run_id("model-a", config, data_fp, version="999")
    assert data_fp != keys.data_fingerprint(val, {**pre, "scale": 1.0})
    assert data_fp != keys.data_fingerprint(val, pre, train=val)
    image = sorted((val / "7").iterdir())[0]
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert keys.data_fingerprint(val, pre) != data_fp
    data_fp2 = keys.data_fingerprint(val, pre)
    image.unlink()
    assert keys.data_fingerprint(val, pre) != data_fp2


def test_planned_run_ids_use_the_full_config_so_defaults_do_not_split_the_cache(tmp_path):
    from compress_lab.sweep.runner import prepare
    shutil.copytree(SAMPLES / "mnist_cnn" / "val" / "1", tmp_path / "val" / "1")
    a = load_spec(write_spec(tmp_path, HEADER + "[[grid]]\ntechnique = 'palettize'\nnbits = 4\n", "a.toml"))
    b = load_spec(write_spec(tmp_path, HEADER + "[[grid]]\ntechnique = 'palettize'\nmode = 'kmeans'\n"
                             "[[grid]]\ntechnique = 'quantize'\n", "b.toml"))
    pa, pb = prepare(a, tmp_path / "store"), prepare(b, tmp_path / "store")
    ids_a, ids_b = [t.run_id for t in pa.tasks], [t.run_id for t in pb.tasks]
    assert ids_b[:len(ids_a)] == ids_a and len(set(ids_b)) == 5
    assert pa.sweep_id != pb.sweep_id
    assert len(pb.store.list_runs(pb.sweep_id)) == 5
    assert pa.store.counts(pa.sweep_id)["PENDING"] == 4
