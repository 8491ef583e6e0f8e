"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel, the
worktree's .venv/bin/python) and shows what it says: the evaluation and results as tables, a notebook
progress bar, the trade-off figure inline, and the exported package on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
KERNEL = "compress-lab-venv"


def cell(nb, tag: str):
    hits = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(hits) == 1, f"the notebook has {len(hits)} cells tagged {tag!r}"
    return hits[0]


def mime(c, kind: str) -> list:
    return [o["data"][kind] for o in c.outputs if "data" in o and kind in o["data"]]


def test_the_committed_notebook_is_small_and_has_no_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert NOTEBOOK.stat().st_size < 50_000
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert "import compress_lab as lab" in "".join(c.source for c in nb.cells)


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mnist_dir):
    """The notebook executed in a scratch copy of examples/ (its store lands there, not in the repository)."""
    import nbformat
    from nbclient import NotebookClient

    root = tmp_path_factory.mktemp("notebook")
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns(".lab", ".ipynb_checkpoints"))
    (root / "sample_models").symlink_to(ROOT / "sample_models")
    kernels = root / "jupyter" / "kernels" / KERNEL
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(VENV_PYTHON), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "compress lab .venv", "language": "python"}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root / "jupyter"))
    mp.delenv("TQDM_DISABLE", raising=False)   # the kernel draws its progress bar
    try:
        nb = nbformat.read(root / "examples" / NOTEBOOK.name, as_version=4)
        check = nbformat.v4.new_code_cell("import sys\nsys.executable")  # the test's own last cell
        check.metadata["tags"] = ["kernel-check"]
        nb.cells.append(check)
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(root / "examples")}})
        client.execute()
    finally:
        mp.undo()
    return nb, root / "examples", client


@pytest.mark.slow
def test_the_kernel_is_the_worktree_venv(executed):
    nb, _, client = executed
    assert client.kernel_name == KERNEL
    assert mime(cell(nb, "kernel-check"), "text/plain") == [repr(str(VENV_PYTHON))]
    model = cell(executed[0], "model")
    assert mime(model, "text/plain")[0].startswith("('mnist_cnn', 'torch', ")


@pytest.mark.slow
def test_the_notebook_runs_the_grid_into_its_store(executed):
    import compress_lab as lab

    nb, folder, _ = executed
    results = lab.open_results(folder / ".lab" / "quickstart")
    table = results.table()
    assert len(table) == 6 and set(table["status"]) == {"COMPLETE"}
    assert sorted(table["technique"]) == ["baseline"] * 3 + ["palettize", "palettize", "quantize"]
    assert (results.store_folder / "best.mlpackage" / "Manifest.json").is_file()
    assert mime(cell(nb, "resume"), "text/plain") == ["(0, 6)"]
    assert mime(cell(nb, "spec"), "text/plain")[0].startswith("['palettize'")


@pytest.mark.slow
def test_the_notebook_shows_tables_a_progress_bar_and_the_figure(executed):
    nb, folder, _ = executed
    assert "<caption>evaluation</caption>" in mime(cell(nb, "evaluate"), "text/html")[0]
    run = cell(nb, "run")
    assert mime(run, "application/vnd.jupyter.widget-view+json"), "no notebook progress bar (tqdm.auto widget)"
    page = mime(run, "text/html")[0]
    assert "sweep quickstart" in page and page.count("<tr>") == 1 + 6
    assert "<table" in mime(cell(nb, "table"), "text/html")[0]
    figure = cell(nb, "figure")
    plotly = mime(figure, "application/vnd.plotly.v1+json")
    assert plotly, f"the figure cell shows no plotly figure: {[list(o.get('data', {})) for o in figure.outputs]}"
    names = [trace.get("name") for trace in plotly[0]["data"]]
    assert "post-training" in names and "baseline (uncompressed)" in names
    best = mime(cell(nb, "best"), "text/html")[0]
    assert "palettize" in best or "quantize" in best
    assert "<caption>evaluation</caption>" in mime(cell(nb, "export"), "text/html")[0]
