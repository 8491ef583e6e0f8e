"""Every example in README.md runs as written.

The README's ```python blocks run one by one in a fresh `.venv/bin/python`, and the `.venv/bin/compress-lab`
commands of its ```bash blocks run in order against the real sample models, in a scratch copy of the
repository's examples/ (with sample_models/ and .venv/ linked in), so the repository stays clean. Paths under
/tmp/ go to the test's own temporary folder. `[--json]` runs the command without and with the flag; RUN_ID is a
run id of the store the command names; a command whose comment says `(quick: ARGS)` runs with ARGS added, as the
README says. The set-up commands (`bash run.sh`, `bash test.sh`) are what runs this suite and are not run
again here. A README change that breaks an example, or adds one this file cannot run, fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI = ".venv/bin/compress-lab"
SET_UP = {"bash run.sh", "bash test.sh"}          # the two commands of "Two commands": they run this suite
SUBCOMMANDS = {"info", "techniques", "compress", "evaluate", "sweep", "results", "export", "report", "sensitivity",
               "mixed"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]+$")


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]    # as the README writes it (placeholders and /tmp/ paths unresolved)
    line: str

    @property
    def subcommand(self) -> str:
        return self.argv[1]


def code_blocks(text: str, language: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.M | re.S)]


def commands(block: str) -> tuple[list[Command], list[str]]:
    """The compress-lab commands of a bash block (continuations joined, comments dropped, `(quick: ...)`
    settings added, `[--flag]` expanded to without and with), and the other lines found."""
    found, other = [], []
    for raw in block.replace("\\\n", " ").splitlines():
        code, _, comment = raw.partition("#")
        code = code.strip()
        if not code:
            continue
        if not code.startswith(CLI + " "):
            other.append(code)
            continue
        quick = re.search(r"\(quick: ([^)]*)\)", comment)
        tokens = shlex.split(code) + (shlex.split(quick.group(1)) if quick else [])
        variants = [[]]
        for token in tokens:
            if token.startswith("[") and token.endswith("]"):
                variants = [v for base in variants for v in (base, base + shlex.split(token[1:-1]))]
            else:
                variants = [v + [token] for v in variants]
        found += [Command(tuple(v), code) for v in variants]
    return found, other


def readme_commands() -> tuple[list[Command], list[str]]:
    found, other = [], []
    for block in code_blocks(README.read_text(), "bash"):
        c, o = commands(block)
        found += c
        other += o
    return found, other


@pytest.fixture()
def workspace(tmp_path):
    """A scratch repository root: a copy of examples/ (its specs write their stores beside them),
    the sample models and the venv linked in."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns(".lab", ".ipynb_checkpoints"))
    (root / "sample_models").symlink_to(ROOT / "sample_models")
    (root / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "tmp").mkdir()
    return root


def run_command(command: Command, root: Path) -> subprocess.CompletedProcess:
    scratch = root.parent / "tmp"
    argv = []
    for i, token in enumerate(command.argv):
        if token.startswith("/tmp/"):
            token = str(scratch / token[len("/tmp/"):])
        elif PLACEHOLDER.match(token):
            token = resolve(token, command.argv, root)
        argv.append(token)
    result = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, f"README command failed: {command.line}\n(ran {argv})\n{result.stderr[-3000:]}"
    if "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
        assert (root / out / "Manifest.json").is_file(), f"{command.line}: wrote no package at {out}"
    return result


def resolve(placeholder: str, argv: tuple[str, ...], root: Path) -> str:
    if placeholder == "RUN_ID":  # a finished compressed run of the store the command names
        store = argv[argv.index("--store") + 1]
        listed = subprocess.run([str(root / CLI), "results", "--store", store, "--json"], cwd=root,
                                capture_output=True, text=True, check=True)
        runs = [r for r in json.loads(listed.stdout)["runs"] if r["status"] == "COMPLETE" and r["workflow"] != "baseline"]
        assert runs, f"no finished run in {store} for RUN_ID"
        return min(runs, key=lambda r: r["size_bytes"])["run_id"][:12]
    raise AssertionError(f"the README uses a placeholder {placeholder!r} this test cannot fill: teach resolve() it")


def _split_at_sweep(found: list[Command]) -> tuple[list[Command], list[Command]]:
    first = next(i for i, c in enumerate(found) if c.subcommand == "sweep")
    return found[:first], found[first:]


# --------------------------------------------------------------------------- what is extracted

def test_every_readme_example_is_one_this_test_runs():
    found, other = readme_commands()
    assert set(other) == SET_UP, f"README bash lines this test does not run: {sorted(set(other) - SET_UP)}"
    assert {c.subcommand for c in found} == SUBCOMMANDS
    results = [c.argv for c in found if c.subcommand == "results"]
    assert len(results) == 3 and "--json" in results[1] and "--json" not in results[0]
    assert "--budget-bytes" in results[2]                       # the size-budget example
    mixed = next(c for c in found if c.subcommand == "mixed")
    assert mixed.argv[-2:] == ("--max-images", "256") and "--sweep" in mixed.argv
    python = code_blocks(README.read_text(), "python")
    assert len(python) >= 2 and all("import compress_lab" in b for b in python)


def test_the_extraction_handles_continuations_comments_and_options():
    block = (f"{CLI} results --store s [--json]   # one row (quick: --max-images 9)\n"
             f"{CLI} mixed m \\\n    --budget-top1-drop 1   # spans two lines\n"
             "bash run.sh     # set-up\n")
    found, other = commands(block)
    assert [c.argv for c in found] == [
        (CLI, "results", "--store", "s", "--max-images", "9"),
        (CLI, "results", "--store", "s", "--json", "--max-images", "9"),
        (CLI, "mixed", "m", "--budget-top1-drop", "1")]
    assert other == ["bash run.sh"]


# --------------------------------------------------------------------------- running them

def test_readme_cli_commands_before_the_sweep(workspace):
    before, _ = _split_at_sweep(readme_commands()[0])
    assert [c.subcommand for c in before] == ["info", "techniques", "compress", "evaluate"]
    outputs = [run_command(c, workspace).stdout for c in before]
    assert "mnist" in outputs[0] and "palettize" in outputs[1]
    assert re.search(r"top-?1", outputs[3], re.I)


@pytest.mark.slow
def test_readme_cli_sweep_and_the_commands_on_its_store(workspace):
    status = _repository_outputs()
    _, rest = _split_at_sweep(readme_commands()[0])
    for command in rest:
        run_command(command, workspace)
    store = workspace / "examples" / ".lab" / "mnist"
    assert (store / "results.sqlite").is_file() and (store / "report" / "report.html").is_file()
    listed = json.loads(subprocess.run([str(workspace / CLI), "results", "--store", str(store), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert all(r["status"] == "COMPLETE" for r in listed["runs"]) and len(listed["runs"]) >= 12
    assert _repository_outputs() == status, "a README command wrote into the repository"


def _repository_outputs() -> dict:
    """What the README's commands would write into the repository if they ran there: untouched."""
    paths = [ROOT / "examples" / ".lab", ROOT / ".lab-work", ROOT / "out", ROOT / "lab-store", ROOT / ".lab"]
    return {str(p): p.stat().st_mtime_ns if p.exists() else None for p in paths}


def run_python(code: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})


def _python_blocks():
    blocks = code_blocks(README.read_text(), "python")
    return [pytest.param(b, id=f"block{i}", marks=[pytest.mark.slow] if "lab.run(" in b else [])
            for i, b in enumerate(blocks)]


@pytest.mark.parametrize("block", _python_blocks())
def test_readme_python_block_runs(block, workspace):
    result = run_python(block, workspace)
    assert result.returncode == 0, f"README Python block failed:\n{block}\n{result.stderr[-3000:]}"
    for literal in re.findall(r"\"([^\"]+\.mlpackage)\"", block):
        written = [p for p in workspace.rglob(Path(literal).name) if (p / "Manifest.json").is_file()]
        assert written, f"the block names {literal} but no such package was written"
    assert result.stdout.strip(), "the block prints its results"


def test_the_old_python_example_fails_as_the_issue_reports(workspace):
    """The README's example before issue 16: this test would have caught it."""
    old = ("from compress_lab.models import load_model\n"
           "from compress_lab.techniques import compress, config_from_dict\n"
           "model = load_model('mnist_cnn')\n"
           "config = config_from_dict({'technique': 'palettize', 'nbits': 4, 'granularity': 'per_grouped_channel', "
           "'group_size': 16})\n"
           "outcome = compress(model, config, 'out/mnist_4bit.mlpackage')\n")
    result = run_python(old, workspace)
    assert result.returncode != 0 and "group_size=16 does not divide its 10 output channels" in result.stderr
