"""Training-time techniques through the task seam, on small real PyTorch models built
here: a regressor fine-tuned with QAT and magnitude pruning in a sweep (trained from
an .npz, exported, evaluated by MAE), a two-input int32 text encoder fine-tuned with
InfoNCE on query/key pairs, a tiny language model fine-tuned on token windows, SKM and
GPTQ calibrated from an .npz, a user's loss file, and the refusals (a task without a
loss, a source the task's loss cannot use) that name the reason and the fix."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from compress_lab.errors import ConfigError
from compress_lab.mil import COMPRESSED_OPS
from compress_lab.evaluate import evaluate_model
from compress_lab.models import load_model
from compress_lab.techniques import CompressContext, _training, compress, config_from_dict, magnitude_pruning
from tests.test_tasks import TWO_OUTPUT_META, TWO_OUTPUT_MODEL, make_model
from tests.test_tasks_builtin import BIGRAM, LM_META

REGRESSOR = textwrap.dedent('''
    import torch
    from torch import nn

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

        def forward(self, x):
            return self.net(x)

    def build_model():
        return Regressor()
''')
REGRESSOR_META = {"name": "regressor", "task": "regression", "inputs": [{"name": "x", "shape": [6]}],
                  "outputs": [{"name": "value", "meaning": "values", "shape": [2]}]}

ENCODER = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyEncoder(nn.Module):
        """Token ids + attention mask (int32) -> a mean-pooled, projected embedding."""
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(64, 32)
            self.proj = nn.Linear(32, 32)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.proj(pooled)

    def build_model():
        return TinyEncoder()
''')
ENCODER_META = {"name": "tiny_encoder", "task": "embedding",
                "inputs": [{"name": "input_ids", "shape": ["T"], "dtype": "int32"},
                           {"name": "attention_mask", "shape": ["T"], "dtype": "int32"}],
                "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [32]}]}
FINETUNE = {"steps": 24, "batch_size": 16, "learning_rate": 0.01}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def regression_arrays(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    value = np.stack([x[:, 0] * 2 + x[:, 1], x[:, 2] - x[:, 3] * x[:, 4]], 1).astype(np.float32)
    np.savez(path, x=x, value=value)


def pair_arrays(path, n=32, length=8, seed=0):
    """n queries (a key with 3 of its 8 tokens replaced) then their n keys; pair[i] = the key of query i."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 64, (n, length))
    queries = keys.copy()
    queries[:, :3] = rng.integers(0, 64, (n, 3))
    ids = np.concatenate([queries, keys]).astype(np.int32)
    np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids), pair=np.concatenate([n + np.arange(n), np.full(n, -1)]))


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    root = tmp_path_factory.mktemp("regressor")
    regression_arrays(root / "train.npz", 256, seed=1)
    regression_arrays(root / "val.npz", 64, seed=2)
    return root, make_model(root / "model", REGRESSOR, REGRESSOR_META)


def compressed_ops(package) -> dict[str, int]:
    return {op: n for op, n in _training.op_counts(package).items() if op in COMPRESSED_OPS}


def test_a_regressor_is_fine_tuned_with_qat_in_a_sweep_from_an_npz_and_evaluated_in_core_ml(regressor, tmp_path):
    from compress_lab.sweep.runner import run_sweep
    from compress_lab.sweep.spec import load_spec
    root, model = regressor
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(f"""
        [model]
        source = "{model}"
        [data]
        validation = "{root / 'val.npz'}"
        train = "{root / 'train.npz'}"
        [run]
        name = "regression-training"
        workers = 1
        [[grid]]
        technique = "qat"
        steps = 20
        batch_size = 32
        learning_rate = 0.02
    """))
    result = run_sweep(load_spec(spec), tmp_path / "store")
    runs = {r.config["technique"] if r.config["technique"] != "baseline" else r.label: r for r in result.runs}
    assert result.status == "done" and not result.invalid, [p.error for p in result.invalid]
    assert all(r.state == "COMPLETE" for r in result.runs), [(r.label, r.error) for r in result.runs]
    untrained = runs["baseline PyTorch"].metrics["values"]["mae"]
    run = runs["qat"]
    assert compressed_ops(tmp_path / "store" / run.artifact_path).get("constexpr_blockwise_shift_scale", 0) == 3
    assert run.metrics["task"] == "regression"
    assert run.metrics["values"]["mae"] < 0.7 * untrained        # fine-tuned towards the targets, measured in Core ML
    assert run.sizes["bytes"] < runs["baseline fp16"].sizes["bytes"]

    # `compress-lab results` shows the task's own metrics (MAE, RMSE) and the cosine fidelity
    import contextlib
    import io
    import json

    from compress_lab.cli import main
    text, listed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["results", "--store", str(tmp_path / "store")]) == 0
    header, *lines = text.getvalue().splitlines()
    assert {"mae", "rmse", "cosine"} <= set(header.split())
    qat_line = next(line for line in lines if line.split()[1] == "training_time")
    assert f"{run.metrics['values']['mae']:.4f}" in qat_line
    with contextlib.redirect_stdout(listed):
        assert main(["results", "--store", str(tmp_path / "store"), "--json"]) == 0
    by_id = {r["run_id"]: r for r in json.loads(listed.getvalue())["runs"]}
    assert by_id[run.run_id]["metrics"]["mae"] == run.metrics["values"]["mae"]


def test_a_regressor_is_pruned_while_fine_tuned_and_its_package_scores_as_the_pruned_model(regressor, tmp_path):
    root, model = regressor
    handle = load_model(model)
    untrained = evaluate_model(handle, root / "val.npz").values["mae"]
    config = magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.5, steps=40, batch_size=32, learning_rate=0.01)
    outcome = compress(handle, config, tmp_path / "pruned.mlpackage", train_dir=root / "train.npz")
    assert compressed_ops(outcome.path).get("constexpr_sparse_to_dense", 0) == 3          # every Linear weight
    assert outcome.details["sparsity"] == pytest.approx(0.5, abs=0.02)
    pruned = evaluate_model(outcome.path, root / "val.npz")
    assert pruned.values["mae"] < 0.7 * untrained


def test_a_two_input_int32_text_encoder_is_fine_tuned_with_infonce_on_pairs(tmp_path):
    pair_arrays(tmp_path / "train.npz")
    pair_arrays(tmp_path / "val.npz", n=16, seed=5)
    handle = load_model(make_model(tmp_path / "encoder", ENCODER, ENCODER_META))
    ctx = CompressContext(handle=handle, workdir=tmp_path / "work", train_dir=tmp_path / "train.npz")
    data = _training.load_training_data(ctx)
    assert len(data) == 32 and data.unit == "pairs"                     # units are queries, each with its key
    inputs, targets = data.batch(torch.tensor([3, 5]))
    assert inputs["input_ids"].shape == (4, 8) and targets["pair"].tolist() == [2, 3, -1, -1]
    config = magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.5, schedule="constant", seed=1, **FINETUNE)
    result = magnitude_pruning.finetune(config, ctx)
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5]), result.losses

    outcome = compress(handle, config, tmp_path / "pruned.mlpackage", context=ctx)
    assert compressed_ops(outcome.path).get("constexpr_sparse_to_dense", 0) >= 1
    scored = evaluate_model(outcome.path, tmp_path / "val.npz", reference=handle)
    assert set(scored.values) == {"retrieval_top1", "mrr"} and scored.fidelity["embedding"]["cosine"] > 0.5


def test_a_tiny_language_model_is_fine_tuned_on_token_windows(tmp_path):
    rng = np.random.default_rng(0)
    windows = ((rng.integers(0, 24, (64, 1)) + np.arange(10)) % 24).astype(np.int32)   # next token = this one + 1
    np.savez(tmp_path / "train.npz", input_ids=windows)
    np.savez(tmp_path / "val.npz", input_ids=windows[:16])
    handle = load_model(make_model(tmp_path / "lm", BIGRAM, LM_META))
    before = evaluate_model(handle, tmp_path / "val.npz").values["perplexity"]
    config = config_from_dict({"technique": "qat", "steps": 30, "batch_size": 16, "learning_rate": 0.02})
    outcome = compress(handle, config, tmp_path / "qat.mlpackage", train_dir=tmp_path / "train.npz")
    assert outcome.details["final_loss"] < 0.5 * outcome.details["first_loss"]
    assert compressed_ops(outcome.path).get("constexpr_blockwise_shift_scale", 0) >= 2
    after = evaluate_model(outcome.path, tmp_path / "val.npz").values["perplexity"]
    assert after < 0.5 * before


@pytest.mark.parametrize("technique, op", [("skm", "constexpr_lut_to_dense"), ("gptq", "constexpr_blockwise_shift_scale")])
def test_skm_and_gptq_calibrate_a_regressor_from_an_npz(regressor, tmp_path, technique, op):
    root, model = regressor
    handle = load_model(model)
    config = config_from_dict({"technique": technique, "calibration_samples": 16})
    outcome = compress(handle, config, tmp_path / "out.mlpackage", calibration_dir=root / "train.npz")
    assert compressed_ops(outcome.path).get(op, 0) >= 2
    result = evaluate_model(outcome.path, root / "val.npz", reference=handle)
    assert result.fidelity["value"]["snr_db"] > 10


def test_refusals_name_the_reason_and_the_fix_before_any_fine_tuning(tmp_path):
    tensors = load_model(make_model(tmp_path / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META))
    np.savez(tmp_path / "x.npz", x=np.zeros((8, 6), np.float32))
    config = magnitude_pruning.MagnitudePruningConfig(steps=2, batch_size=4)
    with pytest.raises(ConfigError, match=r"task 'tensors' defines no loss.*two_heads.*--loss"):
        compress(tensors, config, tmp_path / "t.mlpackage", train_dir=tmp_path / "x.npz")

    encoder = load_model(make_model(tmp_path / "encoder", ENCODER, ENCODER_META))
    ids = np.ones((6, 4), np.int32)
    np.savez(tmp_path / "nopairs.npz", input_ids=ids, attention_mask=ids)
    with pytest.raises(ConfigError, match=r"nopairs.npz has no array 'pair'.*add 'pair'"):
        compress(encoder, config, tmp_path / "e.mlpackage", train_dir=tmp_path / "nopairs.npz")

    regressor = load_model(make_model(tmp_path / "reg", REGRESSOR, REGRESSOR_META))
    with pytest.raises(ConfigError, match=r"x.npz has no target array for the scored output\(s\) \['value'\].*value=\.\.\."):
        compress(regressor, config, tmp_path / "r.mlpackage", train_dir=tmp_path / "x.npz")
    assert not any(tmp_path.glob("*.mlpackage"))


def test_a_users_loss_file_trains_a_model_whose_task_has_none(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, wanted=np.tanh(x[:, :4]))
    (tmp_path / "loss.py").write_text(textwrap.dedent('''
        import torch.nn.functional as F

        def dense_mse(outputs, targets):
            return F.mse_loss(outputs["dense"], targets["wanted"])

        def not_a_scalar(outputs, targets):
            return outputs["dense"]
    '''))
    handle = load_model(make_model(tmp_path / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META))
    config = magnitude_pruning.MagnitudePruningConfig(target_sparsity=0.5, schedule="constant", **FINETUNE)
    ctx = CompressContext(handle=handle, workdir=tmp_path / "work", train_dir=tmp_path / "train.npz",
                          loss=f"{tmp_path / 'loss.py'}:dense_mse")
    losses = magnitude_pruning.finetune(config, ctx).losses
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    ctx.loss = f"{tmp_path / 'loss.py'}:not_a_scalar"
    with pytest.raises(ConfigError, match=r"loss .*loss.py:not_a_scalar returned a tensor of shape \[16, 4\].*scalar"):
        magnitude_pruning.finetune(config, ctx)


@pytest.mark.slow
@pytest.mark.parametrize("technique", ["qat", "dkm", "prune_dkm", "prune_qat", "skm", "gptq"])
def test_every_training_time_technique_takes_a_two_input_int32_text_encoder(tmp_path, technique):
    pair_arrays(tmp_path / "train.npz")
    handle = load_model(make_model(tmp_path / "encoder", ENCODER, ENCODER_META))
    settings = {"calibration_samples": 16} if technique in ("skm", "gptq") else \
        {**FINETUNE, "steps": 6, **({"weight_threshold": 0} if "dkm" in technique else {}),
         **({"schedule": "constant"} if technique.startswith("prune") else {})}
    outcome = compress(handle, config_from_dict({"technique": technique, **settings}), tmp_path / "out.mlpackage",
                       train_dir=tmp_path / "train.npz", calibration_dir=tmp_path / "train.npz")
    assert compressed_ops(outcome.path)


def test_a_sweep_refuses_before_any_work_only_what_cannot_be_trained_and_a_users_loss_lifts_it(tmp_path):
    from compress_lab.cli import main
    from compress_lab.sweep.runner import prepare
    from compress_lab.sweep.spec import load_spec
    model = make_model(tmp_path / "two_heads", TWO_OUTPUT_MODEL, TWO_OUTPUT_META)
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, wanted=np.tanh(x[:, :4]))
    (tmp_path / "loss.py").write_text("import torch.nn.functional as F\n\n"
                                      "def loss(outputs, targets):\n"
                                      "    return F.mse_loss(outputs['dense'], targets['wanted'])\n")
    text = textwrap.dedent(f"""
        [model]
        source = "{model}"
        [data]
        validation = "{tmp_path / 'train.npz'}"
        train = "{tmp_path / 'train.npz'}"
        LOSS
        [run]
        name = "refusals"
        [[grid]]
        technique = "magnitude_pruning"
        steps = 2
        [[grid]]
        technique = "gptq"
        calibration_samples = 8
    """)
    spec = tmp_path / "spec.toml"
    spec.write_text(text.replace("LOSS", ""))
    planned = prepare(load_spec(spec), tmp_path / "store")
    assert len(planned.invalid) == 1 and "'magnitude_pruning': task 'tensors' defines no loss" in planned.invalid[0].error
    assert any(t.config["technique"] == "gptq" for t in planned.tasks)       # GPTQ needs no loss: not refused
    spec.write_text(text.replace("LOSS", 'loss = "loss.py"'))
    with_loss = prepare(load_spec(spec), tmp_path / "store")
    assert not with_loss.invalid and {t.config["technique"] for t in with_loss.tasks} >= {"magnitude_pruning", "gptq"}

    out = tmp_path / "pruned.mlpackage"
    argv = ["compress", str(model), "--technique", "magnitude_pruning", "--set", "steps=4", "--set", "batch_size=8",
            "--set", "schedule='constant'", "--train", str(tmp_path / "train.npz"), "--out", str(out), "--no-estimate"]
    assert main(argv) != 0 and not out.exists()                                  # refused: the task has no loss
    assert main([*argv, "--loss", str(tmp_path / "loss.py")]) == 0
    assert compressed_ops(out).get("constexpr_sparse_to_dense", 0) >= 1
