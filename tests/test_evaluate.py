"""The evaluator: metrics checked against hand-computed values on tiny
deterministic predictors, fidelity vs reference logits, and an end-to-end
accuracy check of the real MNIST sample model."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from compress_lab.data import Batch, scan_folder
from compress_lab.errors import ConfigError, DataError, ModelLoadError
from compress_lab.evaluate import (SNR_CAP_DB, EvalResult, evaluate, evaluate_model, predictor_for,
                                   torch_predictor)
from compress_lab.models.handle import SAMPLE_MODELS_DIR
from compress_lab.models.metadata import Preprocessing

RAW = Preprocessing(color="L", scale=1.0)
SHAPE = (1, 2, 2)


def write_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (2, 2), value).save(path)


def table_predictor(table):
    """Logits looked up by the image's (uniform) pixel value."""
    def predict(x):
        return np.stack([np.asarray(table[int(round(v))], dtype=np.float32) for v in x[:, 0, 0, 0]])
    return predict


P = {"hi": 0.7, "mid": 0.2, "lo": 0.1}
LOG = {k: math.log(v) for k, v in P.items()}
# value -> log-probabilities over classes (a, b, c)
TABLE = {
    10: [LOG["hi"], LOG["mid"], LOG["lo"]],   # a -> a
    11: [LOG["mid"], LOG["hi"], LOG["lo"]],   # a -> b
    20: [LOG["lo"], LOG["hi"], LOG["mid"]],   # b -> b
    21: [LOG["mid"], LOG["hi"], LOG["lo"]],   # b -> b
    30: [LOG["hi"], LOG["lo"], LOG["mid"]],   # c -> a
}


@pytest.fixture
def abc_folder(tmp_path):
    for cls, values in {"a": (10, 11), "b": (20, 21), "c": (30,)}.items():
        for v in values:
            write_png(tmp_path / cls / f"{v}.png", v)
    (tmp_path / "c" / "broken.png").write_bytes(b"\x89PNG broken")
    return tmp_path


def test_metrics_match_hand_computed_values(abc_folder):
    folder = scan_folder(abc_folder, class_names=["a", "b", "c"])
    result = evaluate(table_predictor(TABLE), folder, 3, batch_size=2, preprocessing=RAW, input_shape=SHAPE)
    assert result.n == 5
    assert result.top1 == pytest.approx(3 / 5)
    assert result.top5 is None  # fewer than 5 classes
    # true-class probabilities: a:0.7, a:0.2, b:0.7, b:0.7, c:0.2
    expected_loss = -(math.log(0.7) * 3 + math.log(0.2) * 2) / 5
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.per_class == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert result.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result.agreement is None and result.snr_db is None
    assert result.skipped == 1 and result.skipped_files[0][0].endswith("broken.png")
    assert result.logits.shape == (5, 3) and result.logits.dtype == np.float32
    assert result.labels.tolist() == [0, 0, 1, 1, 2]
    assert result.elapsed_s > 0


def test_top5_and_loss_on_batches():
    # 6 classes; logits rank classes 0 > 1 > ... > 5
    ranked = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    batch = Batch(x=np.zeros((4, 1, 1, 1), np.float32), labels=np.array([0, 4, 5, 2]), paths=[None] * 4)
    result = evaluate(lambda x: np.tile(ranked, (len(x), 1)), [batch], 6, class_names=list("uvwxyz"))
    assert result.top1 == 0.25 and result.top5 == 0.75  # label 5 is ranked 6th
    log_z = math.log(sum(math.exp(v) for v in ranked))
    assert result.loss == pytest.approx(np.mean([log_z - ranked[y] for y in (0, 4, 5, 2)]), rel=1e-6)
    assert result.per_class == {"u": 1.0, "w": 0.0, "y": 0.0, "z": 0.0}


def test_fidelity_agreement_and_snr():
    reference = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    output = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)  # tie -> argmax 0
    batches = [Batch(x=np.zeros((2, 1, 1, 1), np.float32), labels=np.array([-1, -1]), paths=[None, None])]
    result = evaluate(lambda x: output, batches, 2, reference_logits=reference)
    assert result.agreement == 0.5
    assert result.snr_db == pytest.approx(10 * math.log10(2 / 0.5))
    assert result.top1 is None and result.loss is None and result.confusion == []


def test_identical_outputs_give_capped_snr_and_json_safe_dict(abc_folder):
    folder = scan_folder(abc_folder, class_names=["a", "b", "c"])
    base = evaluate(table_predictor(TABLE), folder, 3, preprocessing=RAW, input_shape=SHAPE)
    same = evaluate(table_predictor(TABLE), folder, 3, reference_logits=base.logits,
                    preprocessing=RAW, input_shape=SHAPE)
    assert same.agreement == 1.0 and same.snr_db == SNR_CAP_DB
    d = same.to_dict()
    assert "logits" not in d
    text = json.dumps(d, allow_nan=False)
    back = EvalResult.from_dict(json.loads(text))
    assert back == same


def test_to_dict_turns_nan_and_inf_into_none():
    d = EvalResult(n=3, top1=float("nan"), loss=float("inf"), snr_db=np.float32("-inf")).to_dict()
    assert d["top1"] is None and d["loss"] is None and d["snr_db"] is None
    json.dumps(d, allow_nan=False)
    with pytest.raises(ConfigError, match="bogus"):
        EvalResult.from_dict({"n": 1, "bogus": 2})


def test_unlabelled_folder_gives_fidelity_only(tmp_path):
    for v in (10, 20, 30):
        write_png(tmp_path / f"{v}.png", v)
    folder = scan_folder(tmp_path, class_names=["a", "b", "c"])
    reference = np.array([TABLE[10], TABLE[20], TABLE[20]], dtype=np.float32)
    result = evaluate(table_predictor(TABLE), folder, 3, reference_logits=reference,
                      preprocessing=RAW, input_shape=SHAPE)
    assert result.n == 3 and result.top1 is None and result.top5 is None and result.loss is None
    assert result.per_class == {} and result.confusion == []
    assert result.agreement == pytest.approx(2 / 3)
    noise = np.sum((np.asarray(TABLE[30], np.float64) - np.asarray(TABLE[20], np.float64)) ** 2)
    assert result.snr_db == pytest.approx(10 * math.log10(np.sum(reference.astype(np.float64) ** 2) / noise), rel=1e-5)


def test_reference_of_wrong_length_or_width_is_an_error(abc_folder):
    folder = scan_folder(abc_folder, class_names=["a", "b", "c"])
    with pytest.raises(DataError, match="cover 4 images but this evaluation has more"):
        evaluate(table_predictor(TABLE), folder, 3, reference_logits=np.zeros((4, 3)),
                 preprocessing=RAW, input_shape=SHAPE)
    with pytest.raises(DataError, match="cover 6 images but 5 were evaluated"):
        evaluate(table_predictor(TABLE), folder, 3, reference_logits=np.zeros((6, 3)),
                 preprocessing=RAW, input_shape=SHAPE)
    with pytest.raises(DataError, match="shape"):
        evaluate(table_predictor(TABLE), folder, 3, reference_logits=np.zeros((5, 4)),
                 preprocessing=RAW, input_shape=SHAPE)


def test_model_output_count_mismatch_is_a_clear_error(abc_folder):
    folder = scan_folder(abc_folder)  # 3 folder classes
    with pytest.raises(DataError, match="3 classes but the model has 2 outputs"):
        evaluate(table_predictor(TABLE), folder, 2, preprocessing=RAW, input_shape=SHAPE)
    with pytest.raises(ModelLoadError, match=r"expected \(2, 4\)"):
        evaluate(lambda x: np.zeros((len(x), 3)), folder, 4, batch_size=2, preprocessing=RAW, input_shape=SHAPE)
    with pytest.raises(ConfigError, match="preprocessing"):
        evaluate(table_predictor(TABLE), folder, 3)


def test_torch_predictor_does_not_touch_the_callers_module():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Dropout(0.9))
    module.train()
    predict = torch_predictor(module)
    x = np.ones((2, 1, 2, 2), np.float32)
    out1, out2 = predict(x), predict(x)
    np.testing.assert_array_equal(out1, out2)  # eval mode: dropout off
    assert module.training  # the caller's module is unchanged
    expected = module[1](torch.ones(2, 4)).detach().numpy()
    np.testing.assert_allclose(out1, expected, rtol=1e-6)
    readonly = np.ones((2, 1, 2, 2), np.float32)
    readonly.flags.writeable = False
    np.testing.assert_array_equal(predict(readonly), out1)


# ---------------------------------------------------------------- the real MNIST sample

MNIST = SAMPLE_MODELS_DIR / "mnist_cnn"
needs_mnist = pytest.mark.skipif(not (MNIST / "weights.pt").is_file() or not (MNIST / "val").is_dir(),
                                 reason="sample model mnist_cnn not built (python sample_models/build.py)")


@needs_mnist
def test_mnist_sample_end_to_end(tmp_path):
    progress = []
    result = evaluate_model("mnist_cnn", MNIST / "val", batch_size=128, cache_dir=tmp_path / "cache",
                            progress=lambda d, t: progress.append((d, t)))
    assert result.n == 1000 and result.skipped == 0
    assert result.top1 >= 0.97 and result.top5 >= result.top1
    assert set(result.per_class) == {str(i) for i in range(10)}
    assert np.asarray(result.confusion).sum() == 1000
    assert progress[-1] == (1000, 1000)
    # second run: from the tensor cache, same numbers; the model against itself is a perfect reference
    again = evaluate_model("mnist_cnn", MNIST / "val", batch_size=128, cache_dir=tmp_path / "cache", reference=result)
    assert again.top1 == result.top1 and again.agreement == 1.0 and again.snr_db == SNR_CAP_DB
    np.testing.assert_array_equal(again.logits, result.logits)


@needs_mnist
def test_mnist_folder_with_unknown_class_names(tmp_path):
    for name in ("0", "seven"):
        write_png(tmp_path / name / "x.png", 0)
    with pytest.raises(DataError) as e:
        evaluate_model("mnist_cnn", tmp_path)
    assert "'seven'" in str(e.value) and "'9'" in str(e.value)


@needs_mnist
def test_predictor_for_and_preprocessing_overrides(tmp_path):
    predict, meta = predictor_for("mnist_cnn")
    assert meta.input_shape == (1, 28, 28)
    assert predict(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)
    (tmp_path / "3").mkdir()
    Image.new("RGB", (28, 28), (0, 0, 0)).save(tmp_path / "3" / "rgb.png")  # colour image into a gray model
    assert evaluate_model("mnist_cnn", tmp_path).n == 1
    with pytest.raises(ConfigError, match="channel"):
        evaluate_model("mnist_cnn", tmp_path, preprocessing_overrides={"color": "RGB", "mean": [0.1], "std": [0.3]})
    with pytest.raises(ConfigError, match="unknown"):
        evaluate_model("mnist_cnn", tmp_path, preprocessing_overrides={"colour": "L"})


def _runtime_ready() -> bool:
    try:
        from compress_lab.runtime import load_program  # noqa: F401
    except ImportError:
        return False
    return True


@needs_mnist
@pytest.mark.skipif(not _runtime_ready(), reason="compress_lab.runtime.load_program not available yet")
def test_coreml_package_evaluates_like_its_torch_model(tmp_path):
    from compress_lab.models.convert import convert_module
    from compress_lab.models.handle import load_model

    handle = load_model("mnist_cnn")
    package = convert_module(handle.torch_copy(), handle.metadata, tmp_path / "mnist.mlpackage", precision="fp32")
    torch_result = evaluate_model(handle, MNIST / "val", batch_size=250)
    coreml_result = evaluate_model(package, MNIST / "val", batch_size=250, reference=torch_result)
    assert coreml_result.n == 1000 and coreml_result.top1 >= 0.97
    assert coreml_result.agreement >= 0.999 and coreml_result.snr_db > 60
