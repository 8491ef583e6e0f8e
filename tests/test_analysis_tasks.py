"""Sensitivity and mixed precision through the task seam: on a regression model ranked
and budgeted by its own metric (mean absolute error, lower is better), subsets that
keep an embedding source's query/key pairs, and the Data page's preprocessing
overrides honoured by the subset the analyses measure on."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from compress_lab.analysis.mixed import Budget
from compress_lab.analysis.mixed_run import run_mixed
from compress_lab.analysis.sensitivity import sensitivity_for_model
from compress_lab.analysis.subset import SubsetEvaluator
from compress_lab.errors import ConfigError
from compress_lab.models import load_model
from compress_lab.models.size import package_size
from compress_lab.tasks import get_task
from compress_lab.techniques import CompressContext
from tests.test_tasks import make_model

REGRESSOR = textwrap.dedent('''
    import torch
    from torch import nn

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))

        def forward(self, x):
            return self.net(x)

    def build_model():
        return Regressor()
''')
REGRESSOR_META = {"name": "regressor", "task": "regression", "inputs": [{"name": "x", "shape": [16]}],
                  "outputs": [{"name": "value", "meaning": "values", "shape": [2]}]}


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """A regressor with targets its own outputs plus noise, so MAE is small and compression raises it."""
    root = tmp_path_factory.mktemp("regressor")
    handle = load_model(make_model(root / "model", REGRESSOR, REGRESSOR_META))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 16)).astype(np.float32)
    with torch.no_grad():
        y = handle.module(torch.from_numpy(x)).numpy() + rng.normal(scale=0.01, size=(96, 2)).astype(np.float32)
    np.savez(root / "val.npz", x=x, value=y)
    return handle, root / "val.npz", root


def test_sensitivity_ranks_the_layers_of_a_regressor_by_how_much_their_compression_raises_its_mae(regressor):
    handle, val, root = regressor
    result = sensitivity_for_model(handle, val, "palettize", {"nbits": 1}, workdir=root / "work", max_images=64)
    assert result.metric == "mae" and result.higher_is_better is False and result.images == 64
    assert result.baseline_top1 is None and result.baseline_value is not None
    assert len(result.layers) == 2                                    # the two weights of >= 2048 elements
    for layer in result.layers:
        assert layer.top1 is None and layer.agreement is None         # not a classifier
        assert layer.drop == pytest.approx(layer.values["mae"] - result.baseline_value)
        assert layer.drop > 0                                         # 1-bit weights make it worse
        assert layer.snr_db < 60
    drops = [layer.drop for layer in result.ranking()]
    assert drops == sorted(drops, reverse=True)


def test_mixed_precision_under_a_relative_mae_budget_is_met_on_the_whole_source(regressor):
    handle, val, root = regressor
    budget = Budget("mae", 25, relative=True)                        # at most 25% above the float model's MAE
    outcome = run_mixed(handle, val, "palettize", budget, root / "mixed.mlpackage", workdir=root / "work",
                        max_images=64, precision="fp32")
    verified = outcome["verified"]
    assert verified["meets_budget"] is True
    assert verified["values"]["mae"] <= verified["baseline_values"]["mae"] * 1.25 + 1e-9
    assert verified["top1"] is None and verified["images"] == 96
    float_bytes = package_size(CompressContext(handle, root / "work").float_package("fp32")).package_bytes
    assert package_size(outcome["path"]).package_bytes < float_bytes
    assert outcome["search"]["subset"]["images"] == 64


def test_budgets_the_task_cannot_measure_are_refused_before_any_search(regressor):
    handle, val, root = regressor
    for budget, message in ((Budget("agreement", 0.99), "class scores"), (Budget("top1_drop", 1), "labelled"),
                            (Budget("perplexity", 5, relative=True), r"'perplexity' is not measured.*'mae'")):
        with pytest.raises(ConfigError, match=message):
            run_mixed(handle, val, "palettize", budget, root / "never.mlpackage", workdir=root / "work",
                      max_images=32, precision="fp32")
    assert not (root / "never.mlpackage").exists()


def test_an_embedding_subset_keeps_each_query_with_its_own_key(tmp_path):
    from tests.test_tasks import TEXT_MODEL
    meta = {"name": "tiny_text", "task": "embedding",
            "inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                       {"name": "attention_mask", "shape": ["T"], "dtype": "int32"}],
            "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [8]}]}
    handle = load_model(make_model(tmp_path / "m", TEXT_MODEL, meta))
    rng = np.random.default_rng(1)
    n_queries, n_keys = 30, 40
    ids = rng.integers(1, 50, size=(n_queries + n_keys, 5)).astype(np.int32)
    mask = np.ones_like(ids)
    pair = np.concatenate([n_queries + rng.permutation(n_keys)[:n_queries], np.full(n_keys, -1)])
    np.savez(tmp_path / "val.npz", input_ids=ids, attention_mask=mask, pair=pair)
    subset = get_task("embedding").subset_source(tmp_path / "val.npz", handle.metadata, 24)
    sub_pair = subset.targets["pair"]
    assert subset.n <= 24 and (sub_pair >= 0).sum() == 12
    for i in np.flatnonzero(sub_pair >= 0):                           # each query still points at its own key
        original_query = int(np.flatnonzero((ids == subset.inputs["input_ids"][i]).all(1))[0])
        assert (subset.inputs["input_ids"][sub_pair[i]] == ids[pair[original_query]]).all()
        assert sub_pair[sub_pair[i]] == -1


def test_the_subset_follows_the_data_pages_preprocessing_overrides(mnist_handle, mnist_dir, tmp_path):
    package = CompressContext(mnist_handle, tmp_path / "work").float_package("fp32")
    plain = SubsetEvaluator(package, mnist_dir / "val", mnist_handle.metadata, max_images=40)
    scaled = SubsetEvaluator(package, mnist_dir / "val", mnist_handle.metadata, max_images=40,
                             preprocessing_overrides={"mean": [0.0], "std": [1.0]})
    mean, std = mnist_handle.metadata.preprocessing.mean[0], mnist_handle.metadata.preprocessing.std[0]
    np.testing.assert_allclose(scaled.x * 1.0, plain.x * std + mean, atol=1e-5)
    assert plain.baseline.top1 > scaled.baseline.top1                # the model was trained on the normalised pixels
