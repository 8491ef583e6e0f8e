"""Sweep specs and technique configs as a careless user and as an attacker write
them: wrong names, wrong types, out-of-range values, empty and huge grids, and
Hypothesis-generated garbage. Nothing but the lab's own errors may escape."""

from __future__ import annotations

import dataclasses
import os
import string
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress_lab.errors import ConfigError, LabError
from compress_lab.sweep.spec import LARGE_GRID, SweepSpec, count_points, expand, load_spec
from compress_lab.techniques import REGISTRY, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
TECHNIQUES = REGISTRY.names()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["kmeans", "uniform", "int8", "int4", "per_tensor", "per_block", "fp16", "sgd", "magnitude"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)
odd_keys = st.one_of(st.text(max_size=10), st.integers(), st.none(), st.tuples(st.integers()))


def field_names(technique: str) -> list[str]:
    return [f.name for f in dataclasses.fields(REGISTRY.config_class(technique))]


@st.composite
def technique_dicts(draw):
    """A dict aimed at one registered technique: mostly its own keys (with random,
    often wrong, values), sometimes unknown or non-string keys, sometimes no technique."""
    technique = draw(st.sampled_from(TECHNIQUES))
    names = field_names(technique)
    data = {}
    for key in draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True)):
        data[key] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        data[draw(odd_keys)] = draw(values)
    choice = draw(st.integers(0, 9))
    if choice == 0:
        data["technique"] = draw(values)
    elif choice != 1:
        data["technique"] = technique
    return data


def typed_values(hint):
    """Values of the field's own type, including extreme ones (so __post_init__ range checks are exercised)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of(*[st.none() if a is type(None) else typed_values(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if hint is int:
        return st.one_of(st.integers(-2, 70), st.integers(), st.sampled_from([2**31, 2**63, 10**30]))
    if hint is float:
        return st.one_of(st.floats(), st.floats(-2, 2), st.sampled_from([0.0, 1.0, -0.0, 1e-300]))
    if hint is bool:
        return st.booleans()
    if hint is str:
        return st.text(max_size=8)
    if hint is dict or origin is dict:
        return st.dictionaries(st.text(max_size=8), values, max_size=3)
    if origin in (tuple, list):
        return st.lists(typed_values(args[0]) if args and args[0] is not Ellipsis else values, max_size=4)
    return values


@st.composite
def typed_technique_dicts(draw):
    technique = draw(st.sampled_from(TECHNIQUES))
    cls = REGISTRY.config_class(technique)
    hints = typing.get_type_hints(cls)
    names = draw(st.lists(st.sampled_from(field_names(technique)), unique=True))
    return {"technique": technique, **{n: draw(typed_values(hints[n])) for n in names}}


def assert_lab_error_or_config(fn, *args):
    """Call `fn`; it may succeed or raise a LabError. Anything else is an escape."""
    try:
        return fn(*args)
    except LabError as e:
        assert str(e), "a LabError without a message"
        return None


# ------------------------------------------------------------------ config fuzzing

@FUZZ
@given(technique_dicts())
def test_config_from_dict_raises_only_lab_errors(data):
    config = assert_lab_error_or_config(config_from_dict, data)
    if config is not None:  # a config that validated round-trips as plain data
        assert config_from_dict(config.to_dict()) == config


@FUZZ
@given(typed_technique_dicts())
def test_config_validation_of_well_typed_extreme_values_raises_only_lab_errors(data):
    config = assert_lab_error_or_config(config_from_dict, data)
    if config is not None:
        assert config_from_dict(config.to_dict()) == config
        assert isinstance(config.label(), str)


@FUZZ
@given(st.one_of(values, st.dictionaries(odd_keys, values, max_size=4)))
def test_config_from_dict_on_arbitrary_data_raises_only_lab_errors(data):
    assert_lab_error_or_config(config_from_dict, data)


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_every_technique_rejects_wrong_types_and_out_of_range_values_with_config_error(technique):
    cls = REGISTRY.config_class(technique)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        for bad in ("not-a-number-or-choice", -10**6, {"a": 1}, [[["deep"]]]):
            if _accepts(hint, bad):
                continue
            with pytest.raises(ConfigError) as info:
                config_from_dict({"technique": technique, f.name: bad})
            assert f.name in str(info.value) or technique in str(info.value)


def _accepts(hint, value) -> bool:
    """Whether `value` has the field's type (so it is not a type error; range checks may still refuse it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        return any(_accepts(a, value) for a in args if a is not type(None))
    if origin is typing.Literal:
        return value in args
    if hint is int:
        return isinstance(value, int) and value >= 0  # negative ints are range errors, checked elsewhere
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (tuple, list):
        return isinstance(value, list)
    return False


def test_unknown_technique_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown technique 'palletize'.*Did you mean 'palettize'"):
        config_from_dict({"technique": "palletize"})
    with pytest.raises(ConfigError, match="unknown technique"):
        config_from_dict({"technique": ["palettize"]})  # unhashable: was a TypeError


def test_unknown_setting_suggests_the_closest():
    with pytest.raises(ConfigError, match="'nbit' \\(did you mean 'nbits'\\?\\)"):
        config_from_dict({"technique": "palettize", "nbit": 4})
    with pytest.raises(ConfigError, match="unknown setting"):
        config_from_dict({"technique": "palettize", 4: "x"})  # a non-string key: was a TypeError in sorted()


@pytest.mark.parametrize("settings_, message", [
    ({"nbits": 0}, "nbits"), ({"nbits": 99}, "nbits"), ({"nbits": "4"}, "nbits"), ({"nbits": True}, "nbits"),
    ({"nbits": 4.5}, "nbits"), ({"mode": "kmean"}, "mode"), ({"weight_threshold": -1}, "weight_threshold"),
    ({"group_size": 0, "granularity": "per_grouped_channel"}, "group_size"), ({"op_overrides": [1]}, "op_overrides"),
])
def test_palettize_bad_values_name_the_setting(settings_, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"technique": "palettize", **settings_})


# ------------------------------------------------------------------ spec fuzzing

HEADER = "[model]\nsource = 'mnist_cnn'\n[data]\nvalidation = 'val'\n"

toml_atoms = st.sampled_from([
    "[model]", "[data]", "[run]", "[[grid]]", "[data.preprocessing]", "[grid]", "[[run]]", "[[model]]",
    "source = 'mnist_cnn'", "validation = 'val'", "technique = 'palettize'", "technique = 'quantize'",
    "technique = 3", "nbits = [2, 4]", "nbits = []", "nbits = [[]]", "workers = 0", "workers = 'two'",
    "workers = 2", "timeout_s = -1", "timeout_s = nan", "timeout_s = inf", "batch_size = 0", "batch_size = 1e9",
    "executor = 'dask'", "plugins = 'p.py'", "plugins = [1]", "name = ''", "resize = -3", "color = 'CMYK'",
    "mean = []", "address = 7", "weights = 5", "metadata = []", "train = {}", "op_overrides = {x = 1}",
    "n_m_ratio = [[2, 4], [1, 4]]", "granularity = ['per_tensor', 'per_block']", "x = 1", "= 1", "[", "'",
    "a.b.c = 1", "source = ''", "validation = 3", "grid = 5", "model = 'x'", "run = []",
])
toml_texts = st.one_of(
    st.lists(toml_atoms, max_size=14).map("\n".join),
    st.lists(toml_atoms, max_size=10).map(lambda lines: HEADER + "\n".join(lines)),
    st.text(alphabet=string.printable, max_size=80),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
)


@FUZZ
@given(toml_texts)
def test_load_spec_on_random_toml_raises_only_lab_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("spec") / "spec.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    spec = assert_lab_error_or_config(load_spec, path)
    if spec is not None:
        assert_lab_error_or_config(count_points, spec)
        plan = assert_lab_error_or_config(expand, spec)
        if plan is not None:
            assert all(isinstance(p.error, str) and p.error for p in plan.invalid)


spec_dicts = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(values, st.fixed_dictionaries({"source": values}, optional={"weights": values, "metadata": values})),
        "data": st.one_of(values, st.fixed_dictionaries({"validation": values}, optional={
            "train": values, "batch_size": values, "preprocessing": values})),
        "run": st.one_of(values, st.fixed_dictionaries({}, optional={
            "name": values, "workers": values, "executor": values, "timeout_s": values, "address": values})),
        "grid": st.one_of(values, st.lists(st.one_of(values, technique_dicts()), max_size=3)),
    },
)


@FUZZ
@given(st.one_of(spec_dicts, values, st.dictionaries(odd_keys, values, max_size=3)))
def test_sweep_spec_from_random_dicts_raises_only_lab_errors(tmp_path_factory, data):
    base = tmp_path_factory.getbasetemp()
    spec = assert_lab_error_or_config(SweepSpec.from_dict, data, base)
    if spec is not None:
        assert_lab_error_or_config(count_points, spec)
        assert_lab_error_or_config(expand, spec)
        # a spec that validated reloads from its own plain data
        assert SweepSpec.from_dict(spec.to_dict(), base).to_dict() == spec.to_dict()


# ------------------------------------------------------------------ careless specs, one by one

@pytest.mark.parametrize("body, message", [
    ("[model]\nsource = 'mnist_cnn'\n[data]\nvalidation = 'val'\nbatch_size = '64'\n[[grid]]\ntechnique = 'quantize'\n",
     "batch_size"),
    (HEADER + "[run]\ntimeout_s = nan\n[[grid]]\ntechnique = 'quantize'\n", "timeout_s"),
    (HEADER + "[run]\ntimeout_s = inf\n[[grid]]\ntechnique = 'quantize'\n", "timeout_s"),
    (HEADER + "[run]\nplugins = 'p.py'\n[[grid]]\ntechnique = 'quantize'\n", "plugins"),
    (HEADER + "[run]\nname = 5\n[[grid]]\ntechnique = 'quantize'\n", "name"),
    (HEADER + "[run]\naddress = 5\n[[grid]]\ntechnique = 'quantize'\n", "address"),
    (HEADER + "[data.preprocessing]\ncolour = 'L'\n[[grid]]\ntechnique = 'quantize'\n", "colour"),
    (HEADER + "[data.preprocessing]\nresize = 'big'\n[[grid]]\ntechnique = 'quantize'\n", "resize"),
    (HEADER + "[data.preprocessing]\ncolor = 'CMYK'\n[[grid]]\ntechnique = 'quantize'\n", "color"),
    (HEADER + "[data.preprocessing]\nstd = [0]\n[[grid]]\ntechnique = 'quantize'\n", "std"),
    ("[model]\nsource = 'mnist_cnn'\nweights = 5\n[data]\nvalidation = 'v'\n[[grid]]\ntechnique = 'quantize'\n",
     "weights"),
    (HEADER + "grid = 5\n", "grid"),
    ("model = 'x'\n[data]\nvalidation = 'v'\n[[grid]]\ntechnique = 'quantize'\n", "[model]"),
    (HEADER + "[[grid]]\ntechnique = 3\n", "technique"),
    ("\udcff = 1".encode("utf-8", "surrogateescape").decode("latin-1"), "TOML"),
])
def test_careless_specs_are_config_errors_naming_the_setting(tmp_path, body, message):
    path = tmp_path / "spec.toml"
    path.write_text(body, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert message in str(info.value)


def test_a_spec_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_bytes(HEADER.encode() + b"name = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_spec(path)


def test_a_spec_that_is_a_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read sweep spec"):
        load_spec(tmp_path)


def test_a_grid_with_only_invalid_points_runs_nothing_and_says_why(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(HEADER + "[[grid]]\ntechnique = 'palettize'\nnbits = [0, 99]\n"
                    "[[grid]]\ntechnique = 'palletize'\n[[grid]]\ntechnique = 'quantize'\ndtype = []\n")
    plan = expand(load_spec(path))
    assert not plan.points and len(plan.invalid) == 4
    assert "Did you mean 'palettize'" in str(plan.invalid[2])
    assert "empty list" in plan.invalid[3].error


# ------------------------------------------------------------------ huge grids

def huge_grid_spec(tmp_path: Path) -> Path:
    thresholds = list(range(0, 3 * LARGE_GRID, 2))  # 1,500 distinct points
    path = tmp_path / "huge.toml"
    path.write_text(HEADER + f"[[grid]]\ntechnique = 'quantize'\nweight_threshold = {thresholds}\n")
    return path


def test_a_huge_grid_warns_with_the_point_count_and_a_time_estimate(tmp_path):
    plan = expand(load_spec(huge_grid_spec(tmp_path)), workers=2)
    assert len(plan.points) == 3 * LARGE_GRID // 2
    (warning,) = plan.warnings
    assert "1500 points" in warning and "about" in warning and "--yes" in warning


def test_the_cli_refuses_a_huge_grid_without_yes_before_loading_anything(tmp_path):
    spec = huge_grid_spec(tmp_path)
    cmd = [sys.executable, "-m", "compress_lab.cli.sweep", str(spec), "--store", str(tmp_path / "store")]
    refused = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert refused.returncode == 2
    assert "1500 points" in refused.stderr and "--yes" in refused.stderr
    assert not (tmp_path / "store").exists(), "nothing may run or be written before the user confirms"
    # at a terminal it asks, and "no" starts nothing
    master, slave = os.openpty()
    os.write(master, b"n\n")
    declined = subprocess.run(cmd, stdin=slave, capture_output=True, text=True, timeout=120, cwd=ROOT)
    os.close(slave)
    os.close(master)
    assert "run it anyway?" in declined.stdout + declined.stderr
    assert declined.returncode == 1 and "not started" in declined.stderr
    assert not (tmp_path / "store").exists()
