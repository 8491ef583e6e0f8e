import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = SAMPLES / "mnist_cnn"
    if not (path / "weights.pt").is_file():
        import runpy
        runpy.run_path(str(SAMPLES / "build.py"), run_name="build")["build_all"]()
    return path


@pytest.fixture(scope="session")
def mnist_handle(mnist_dir):
    from compress_lab.models import load_model
    return load_model("mnist_cnn")


@pytest.fixture(scope="session")
def dog_handle():
    from compress_lab.models import load_model
    if not (SAMPLES / "dog_mobilenetv2" / "weights.pt").is_file():
        import runpy
        runpy.run_path(str(SAMPLES / "build.py"), run_name="build")["build_all"]()
    return load_model("dog_mobilenetv2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models step far faster on one thread than on several of a shared machine's cores.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The heaviest files (by `--durations`), started first: test.sh runs the suite on two workers
# (pytest-xdist, one file per worker at a time), and a heavy file started last leaves one worker
# idle while the other finishes it. Files not listed keep their order after these.
HEAVY_FILES_FIRST = ["test_readme.py", "test_hardening_load.py", "test_browser.py", "test_sensitivity_mixed.py",
                     "test_hardening_faults.py", "test_tasks_pinned.py", "test_sweep_runner.py", "test_benchmarks.py",
                     "test_sweep_ray.py", "test_notebook.py", "test_sweep_resume.py", "test_app.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FILES_FIRST)}
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
