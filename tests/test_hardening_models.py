"""Model files as a careless user and an attacker give them, beyond tests/test_models.py:
several or non-image inputs, outputs that do not match the class names, metadata
garbage, truncated packages, definitions that exit, and malicious pickles in every
place a model file can carry one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compress_lab.errors import ConfigError, LabError, ModelLoadError
from compress_lab.evaluate import evaluate, evaluate_model
from compress_lab.models import ModelMetadata, load_model
from compress_lab.models.convert import convert_module

TINY_META = {"name": "tiny", "input_shape": [1, 8, 8], "class_names": [str(i) for i in range(10)],
             "preprocessing": {"color": "L", "scale": 1.0 / 255}}


def model_folder(tmp_path: Path, body: str, meta: dict = TINY_META, build: str = "Net()") -> Path:
    """A folder with model.py (defining `Net` by `body`), weights.pt of a fresh instance and metadata.json."""
    folder = tmp_path / "model"
    folder.mkdir()
    source = "import torch\nfrom torch import nn\n\n" + textwrap.dedent(body) + f"\n\ndef build_model():\n    return {build}\n"
    (folder / "model.py").write_text(source)
    namespace: dict = {}
    exec(compile(source, str(folder / "model.py"), "exec"), namespace)
    torch.manual_seed(0)
    torch.save(namespace["build_model"]().state_dict(), folder / "weights.pt")
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


GOOD = """
class Net(nn.Module):
    def __init__(self, outputs=10):
        super().__init__()
        self.fc = nn.Linear(64, outputs)
    def forward(self, x):
        return self.fc(x.flatten(1))
"""


def test_a_good_tiny_model_loads(tmp_path):
    handle = load_model(model_folder(tmp_path, GOOD))
    assert handle.metadata.num_classes == 10 and handle.parameter_count() == 650


# ------------------------------------------------------------------ inputs

def test_a_model_with_two_inputs_is_refused_at_load(tmp_path):
    body = """
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
        def forward(self, x, mask):
            return self.fc(x.flatten(1) * mask)
    """
    with pytest.raises(ModelLoadError, match=r"cannot run on one image of shape \[1, 1, 8, 8\].*one image batch"):
        load_model(model_folder(tmp_path, body))


def test_a_model_with_a_non_image_input_is_refused_at_load(tmp_path):
    body = """
    class Net(nn.Module):   # takes a flat (N, 64) vector, not an image
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
        def forward(self, x):
            return self.fc(x)
    """
    with pytest.raises(ModelLoadError, match=r"cannot run on one image.*mat1 and mat2|outputs of shape"):
        load_model(model_folder(tmp_path, body))


def test_metadata_cannot_describe_a_non_image_input():
    with pytest.raises(ConfigError, match="channels, height, width"):
        ModelMetadata.from_dict({**TINY_META, "input_shape": [64]})
    with pytest.raises(ConfigError, match="channels, height, width"):
        ModelMetadata.from_dict({**TINY_META, "input_shape": [1, 8, -8]})


def test_a_torchscript_model_with_two_inputs_is_refused_at_load(tmp_path):
    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x.flatten(1)[:, :10] + y.flatten(1)[:, :10]

    scripted = torch.jit.trace(TwoInputs(), (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    scripted.save(str(tmp_path / "two.pt"))
    (tmp_path / "metadata.json").write_text(json.dumps(TINY_META))
    with pytest.raises(ModelLoadError, match="cannot run on one image"):
        load_model(tmp_path / "two.pt")


def test_an_mlpackage_with_two_inputs_is_refused_at_load(tmp_path):
    import coremltools as ct

    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x.flatten(1)[:, :10] + y.flatten(1)[:, :10]

    traced = torch.jit.trace(TwoInputs(), (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="a", shape=(1, 1, 8, 8)), ct.TensorType(name="b", shape=(1, 1, 8, 8))],
                         convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
    mlmodel.save(str(tmp_path / "two.mlpackage"))
    (tmp_path / "metadata.json").write_text(json.dumps(TINY_META))
    with pytest.raises(ModelLoadError, match=r"has 2 inputs \['a', 'b'\]"):
        load_model(tmp_path / "two.mlpackage")


def test_an_mlpackage_whose_input_disagrees_with_the_metadata_is_refused(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    meta = ModelMetadata.from_dict(TINY_META)
    path = convert_module(net, meta, tmp_path / "m.mlpackage", precision="fp32")
    wrong = {**TINY_META, "input_shape": [1, 16, 4]}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(ModelLoadError, match=r"input 'input'.*\[1, 1, 8, 8\].*\(N, 1, 16, 4\)"):
        load_model(path, metadata=tmp_path / "wrong.json")


# ------------------------------------------------------------------ outputs vs class names

@pytest.mark.parametrize("outputs, names", [(10, 5), (5, 10)])
def test_outputs_that_do_not_match_the_class_names_are_refused_at_load(tmp_path, outputs, names):
    meta = {**TINY_META, "class_names": [f"c{i}" for i in range(names)]}
    folder = model_folder(tmp_path, GOOD, meta, build=f"Net({outputs})")
    with pytest.raises(ModelLoadError, match=rf"outputs of shape \[1, {outputs}\].*names {names} classes"):
        load_model(folder)


def test_outputs_that_do_not_match_the_class_names_fail_evaluation_not_silently(tmp_path):
    """A Core ML package whose program hides its output size is caught when evaluated."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = convert_module(net, ModelMetadata.from_dict(TINY_META), tmp_path / "m.mlpackage", precision="fp32")
    five = {**TINY_META, "class_names": ["a", "b", "c", "d", "e"]}
    (tmp_path / "five.json").write_text(json.dumps(five))
    data = tmp_path / "val"
    for name in five["class_names"]:
        (data / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 40, np.uint8)).save(data / name / "x.png")
    with pytest.raises(ModelLoadError, match=r"\(1, 10\).*expected \(1, 5\)|5 classes"):
        handle = load_model(path, metadata=tmp_path / "five.json")
        evaluate_model(handle, data, batch_size=1)


def test_a_predictor_returning_the_wrong_number_of_outputs_is_an_error_in_evaluate(tmp_path):
    from compress_lab.data import scan_folder
    folder = tmp_path / "val"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / name / "x.png")
    pre = ModelMetadata.from_dict(TINY_META).preprocessing
    with pytest.raises(ModelLoadError, match="expected \\(2, 2\\) logits"):
        evaluate(lambda x: np.zeros((len(x), 3), np.float32), scan_folder(folder, ["a", "b"]), 2,
                 preprocessing=pre, input_shape=(1, 8, 8))


def test_duplicate_class_names_are_refused_so_labels_cannot_shift():
    with pytest.raises(ConfigError, match=r"class_names repeat \['cat'\]"):
        ModelMetadata.from_dict({**TINY_META, "class_names": ["cat", "dog", "cat"]})


# ------------------------------------------------------------------ metadata garbage

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10)
metadata_dicts = st.fixed_dictionaries({}, optional={
    "name": json_values, "input_shape": st.one_of(json_values, st.lists(st.integers(-2, 40), max_size=4)),
    "class_names": json_values, "description": json_values,
    "preprocessing": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "color": st.one_of(json_values, st.sampled_from(["L", "RGB"])), "resize": json_values,
        "scale": json_values, "mean": json_values, "std": json_values}))})


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(metadata_dicts, json_values))
def test_metadata_json_garbage_raises_only_config_errors(data):
    try:
        meta = ModelMetadata.from_dict(data)
    except ConfigError as e:
        assert str(e)
        return
    assert ModelMetadata.from_dict(json.loads(meta.to_json())) == meta


def test_metadata_file_that_is_a_list_or_not_utf8(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a table"):
        ModelMetadata.load(path)
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ConfigError, match="metadata"):
        ModelMetadata.load(path)


# ------------------------------------------------------------------ broken files

def test_a_truncated_torchscript_file_is_a_clear_error(tmp_path):
    scripted = torch.jit.trace(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), torch.zeros(1, 1, 8, 8))
    scripted.save(str(tmp_path / "full.pt"))
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "metadata.json").write_text(json.dumps(TINY_META))
    with pytest.raises(ModelLoadError, match="cut.pt"):
        load_model(tmp_path / "cut.pt")


def test_an_mlpackage_with_a_corrupt_or_missing_model_spec_is_a_clear_error(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = convert_module(net, ModelMetadata.from_dict(TINY_META), tmp_path / "m.mlpackage", precision="fp32")
    spec_file = next(path.rglob("model.mlmodel"))
    spec_file.write_bytes(spec_file.read_bytes()[:20])
    with pytest.raises(ModelLoadError, match="m.mlpackage"):
        load_model(path, metadata=ModelMetadata.from_dict(TINY_META))
    spec_file.unlink()
    with pytest.raises(ModelLoadError, match="m.mlpackage"):
        load_model(path, metadata=ModelMetadata.from_dict(TINY_META))
    shutil.rmtree(path)
    path.mkdir()
    with pytest.raises(ModelLoadError, match="no Manifest.json"):
        load_model(path, metadata=ModelMetadata.from_dict(TINY_META))


def test_an_mlpackage_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "m.mlpackage").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelLoadError, match="neither a TorchScript"):
        load_model(tmp_path / "m.mlpackage", metadata=ModelMetadata.from_dict(TINY_META))


def test_weights_that_are_a_dict_of_non_tensors_are_refused(tmp_path):
    folder = model_folder(tmp_path, GOOD)
    torch.save({"fc.weight": [1, 2, 3], "fc.bias": 3}, folder / "weights.pt")
    with pytest.raises(ModelLoadError, match="not a state_dict"):
        load_model(folder)


@pytest.mark.parametrize("statement", ["raise SystemExit(3)", "import sys; sys.exit('bye')", "exit()"])
def test_a_definition_that_exits_does_not_take_the_lab_down(tmp_path, statement):
    folder = model_folder(tmp_path, GOOD)
    (folder / "model.py").write_text(statement + "\n")
    with pytest.raises(ModelLoadError, match="model definition .* raised SystemExit"):
        load_model(folder)


def test_a_factory_that_exits_does_not_take_the_lab_down(tmp_path):
    folder = model_folder(tmp_path, GOOD)
    (folder / "model.py").write_text("import sys\ndef build_model():\n    sys.exit(1)\n")
    with pytest.raises(ModelLoadError, match=r"build_model\(\) .* raised SystemExit"):
        load_model(folder)


# ------------------------------------------------------------------ malicious pickles

PAYLOAD = "open(__import__('os').environ['PWNED_PATH'], 'w').write('pwned')"


class _RunsCode:
    def __reduce__(self):
        return (exec, (PAYLOAD,))


@pytest.fixture
def pwned(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_PATH", str(marker))
    return marker


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_the_malicious_pickle_really_runs_code_when_loaded_unsafely(tmp_path, pwned, zip_format):
    """Control: proves the refusal tests below would fail without weights_only=True."""
    evil = tmp_path / "evil.pt"
    torch.save({"fc.weight": _RunsCode()}, evil, _use_new_zipfile_serialization=zip_format)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
                   env={**os.environ, "PWNED_PATH": str(pwned)}, check=False, capture_output=True, timeout=120)
    assert pwned.read_text() == "pwned"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_weights_are_refused_in_both_torch_formats(tmp_path, pwned, zip_format):
    folder = model_folder(tmp_path, GOOD)
    torch.save({"fc.weight": _RunsCode()}, folder / "weights.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelLoadError, match="refused|cannot be read"):
        load_model(folder)
    assert not pwned.exists(), "the pickle's code ran"


def test_a_malicious_pickle_given_as_a_torchscript_model_is_refused(tmp_path, pwned):
    evil = tmp_path / "model.pt"
    torch.save({"fc.weight": _RunsCode()}, evil)
    (tmp_path / "metadata.json").write_text(json.dumps(TINY_META))
    with pytest.raises(ModelLoadError):
        load_model(evil)
    assert not pwned.exists(), "the pickle's code ran"


def test_a_malicious_pickle_inside_a_checkpoint_dict_is_refused(tmp_path, pwned):
    folder = model_folder(tmp_path, GOOD)
    torch.save({"state_dict": {"fc.weight": torch.zeros(10, 64)}, "optimizer": _RunsCode()}, folder / "weights.pt")
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(folder)
    assert not pwned.exists(), "the pickle's code ran"


def test_every_torch_load_in_the_engine_passes_weights_only_true():
    """An unsafe torch.load anywhere in the lab would bypass the refusal above."""
    import re
    root = Path(__file__).resolve().parents[1] / "compress_lab"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in match.group(0):
                offenders.append(f"{path.relative_to(root)}: {match.group(0)[:80]}")
        if "pickle.load" in text or "pickle.loads" in text:
            offenders.append(f"{path.relative_to(root)}: pickle.load")
    assert not offenders, offenders


def test_loading_a_model_error_is_a_lab_error_for_the_cli(tmp_path, capsys):
    """The CLI turns model errors into one line and exit code 2 (no traceback)."""
    from compress_lab.cli import main
    folder = model_folder(tmp_path, GOOD, {**TINY_META, "class_names": ["a", "b"]})
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "2 classes" in err and "Traceback" not in err
    assert issubclass(ModelLoadError, LabError)


# ------------------------------------------------------------------ untrusted names and paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["../../../tmp/evil", "/etc/cron.d/x", "..", "a/../../b", "C:\\evil", "x\x00y", "   "])
def test_a_sweep_name_cannot_place_its_store_outside_the_spec_folder(tmp_path, name):
    from compress_lab.sweep.runner import default_store_folder
    from compress_lab.sweep.spec import SweepSpec
    data = {"model": {"source": "mnist_cnn"}, "data": {"validation": "val"}, "grid": [{"technique": "quantize"}],
            "run": {"name": name}}
    try:
        spec = SweepSpec.from_dict(data, tmp_path)
    except ConfigError:
        return  # refused outright: fine
    store = default_store_folder(tmp_path / "spec.toml", spec)
    assert store.parent == (tmp_path / ".lab").resolve() and store.name not in ("", ".", "..")
    assert "/" not in store.name and "\x00" not in store.name


def test_artifact_and_upload_names_cannot_escape(tmp_path):
    from compress_lab.errors import StoreError
    from compress_lab.store.artifacts import artifact_dir, resolve_artifact, safe_join
    (tmp_path / "store" / "artifacts").mkdir(parents=True)
    (tmp_path / "store" / "artifacts" / "0123456789abcdef").symlink_to(tmp_path)   # planted link
    with pytest.raises(StoreError):
        artifact_dir(tmp_path / "store", "0123456789abcdef")
    with pytest.raises(StoreError):
        resolve_artifact(tmp_path / "store", "artifacts/0123456789abcdef/model.mlpackage")
    for name in ("../x", "/abs", "a/b", "..", "x\x00"):
        with pytest.raises(StoreError):
            safe_join(tmp_path, name)


def test_uploaded_zips_are_checked_for_traversal_links_and_size(tmp_path, monkeypatch):
    """The app's upload extraction (compress_lab_app/uploads.py), as an attacker builds the zip."""
    import stat
    import zipfile

    from compress_lab_app import uploads

    def archive(name, build):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            build(zf)
        return path

    link = zipfile.ZipInfo("m.mlpackage/evil")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    cases = {
        "abs.zip": lambda zf: zf.writestr("/etc/evil", "x"),
        "dots.zip": lambda zf: zf.writestr("m/../../evil", "x"),
        "drive.zip": lambda zf: zf.writestr("C:/evil", "x"),
        "link.zip": lambda zf: zf.writestr(link, "/etc/passwd"),
    }
    for name, build in cases.items():
        out = tmp_path / f"out_{name}"
        out.mkdir()
        with pytest.raises(ModelLoadError, match="refused"):
            uploads.extract_zip(archive(name, build), out)
        assert not any(out.rglob("*")), f"{name} wrote files"
    assert not (tmp_path / "evil").exists()
    monkeypatch.setattr(uploads, "MAX_UNZIPPED_BYTES", 1 << 20)
    bomb = archive("bomb.zip", lambda zf: zf.writestr("zeros.bin", b"\0" * (8 << 20)))
    assert bomb.stat().st_size < 64 << 10
    out = tmp_path / "out_bomb"
    out.mkdir()
    with pytest.raises(ModelLoadError, match="more than"):
        uploads.extract_zip(bomb, out)
    assert not any(out.rglob("*"))


# ------------------------------------------------------------------ exposure

def test_the_app_is_configured_to_listen_on_localhost_only():
    import re
    import tomllib
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    run_sh = (ROOT / "run.sh").read_text()
    assert re.search(r'--server\.address "\$\{COMPRESS_LAB_ADDRESS:-127\.0\.0\.1\}"', run_sh)
    for path in [ROOT / "run.sh", ROOT / ".streamlit" / "config.toml", *(ROOT / "scripts").glob("*")]:
        if path.is_file():
            assert "0.0.0.0" not in path.read_text(), f"{path} binds to every interface"


def _listeners(port: int) -> set[str]:
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.slow
def test_the_app_launched_as_run_sh_does_listens_on_127_0_0_1_only(tmp_path):
    """Runs the launch line of run.sh (without the set-up step) and reads the kernel's socket table."""
    import signal
    import socket
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_sh = (ROOT / "run.sh").read_text()
    launch = run_sh[run_sh.index("exec .venv/bin/streamlit"):]
    env = {**os.environ, "COMPRESS_LAB_PORT": str(port), "COMPRESS_LAB_STORE": str(tmp_path / "store")}
    env.pop("COMPRESS_LAB_ADDRESS", None)
    proc = subprocess.Popen(["bash", "-c", launch, "run.sh"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not _listeners(port) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
        listening = _listeners(port)
        assert listening == {"0100007F"}, f"listening on {listening} (hex addresses; 0100007F is 127.0.0.1)"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_readme_says_a_model_definition_is_code():
    readme = (ROOT / "README.md").read_text()
    assert "A model definition is code" in readme and "Only load definitions you trust" in readme
    assert "weights_only=True" in readme
    assert "127.0.0.1" in readme and "no authentication" in readme
