"""ONNX export: onnxruntime gives PyTorch's probabilities on real images, and the spec says how to feed it."""

import json

import numpy as np
import pytest
from PIL import Image

import scarce
from scarce.cli import main
from scarce.data.augment import IMAGENET_MEAN, IMAGENET_STD, Augmentation
from scarce.data.cache import load_resized
from scarce.evaluation.inference import predict
from scarce.models.backbones import load_trained
from scarce.use.export import describe_views, onnx_outputs, probabilities_from_onnx

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    scarce.train(data=str(data_dir / "pneumonia_kaggle_64.npz"), n=40, epochs=1, tta=1, threads=1, size=64,
                 seed=0, out=str(out), progress=False)
    return out


@pytest.mark.slow
def test_onnx_matches_pytorch_on_real_images(run, data_dir, tmp_path, capsys):
    onnx_file = tmp_path / "exported" / "model.onnx"
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    model, _ = load_trained(run / "model.safetensors")
    test = load_resized(str(data_dir / "pneumonia_kaggle_64.npz"), None, "{}", 64).splits["test"]
    for count in (1, 40):  # the batch axis is dynamic
        images = test.images[:count]
        expected = predict(model, images, "binary", tta=0)
        found = probabilities_from_onnx(onnx_file, images, "binary")
        assert found.shape == expected.shape == (count,)
        difference = np.abs(found - expected).max()
        print(f"ONNX vs PyTorch, {count} real test images: max abs difference {difference:.2e}")
        assert difference <= TOLERANCE
    assert len(set(np.round(found, 4))) > 10  # real, varied predictions, not a constant


@pytest.mark.slow
def test_the_spec_is_enough_to_feed_the_onnx_file_by_hand(run, data_dir, tmp_path):
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--model", str(run), "--out", str(onnx_file)]) == 0
    spec = json.loads((tmp_path / "model.preprocessing.json").read_text())
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert spec["input"] == {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, 64, 64],
                             "channel_order": "RGB"}
    assert spec["preprocessing"]["mean"] == list(IMAGENET_MEAN) and spec["preprocessing"]["std"] == list(IMAGENET_STD)
    assert spec["classes"] == ["normal", "pneumonia"] and spec["task"] == "binary"
    assert spec["thresholds"]["youden"] == thresholds["thresholds"]["youden"]["values"]
    assert "augmented passes (rotation ±10°, horizontal flip, 4 px shift)" in spec["test_time_augmentation"]
    assert spec["parity"]["checked"] and spec["parity"]["max_abs_diff_probabilities"] <= TOLERANCE
    # A gray PNG prepared with numpy from the spec alone gives the probability scarce predicts for it.
    with np.load(data_dir / "pneumonia_kaggle_64.npz") as archive:
        gray = archive["test_images"][:5]
    png = tmp_path / "x.png"
    Image.fromarray(gray[0]).save(png)
    pixels = np.asarray(Image.open(png), dtype=np.float32)
    rgb = np.repeat(pixels[None], 3, axis=0) / 255
    mean = np.array(spec["preprocessing"]["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.array(spec["preprocessing"]["std"], dtype=np.float32).reshape(3, 1, 1)
    outputs = onnx_outputs(onnx_file, ((rgb - mean) / std)[None])
    model, _ = load_trained(run / "model.safetensors")
    test = load_resized(str(data_dir / "pneumonia_kaggle_64.npz"), None, "{}", 64).splits["test"]
    expected = predict(model, test.images[:1], "binary", tta=0)
    assert abs(outputs["probabilities"][0, 0] - expected[0]) <= TOLERANCE
    assert outputs["logits"].shape == (1, 1)


@pytest.mark.slow
def test_an_epoch_ensemble_exports_as_one_graph_with_the_same_probabilities(data_dir, tmp_path, capsys):
    """A model that keeps two epochs (recipe option ensemble_epochs) exports as one ONNX graph whose
    probabilities are PyTorch's, i.e. those of the mean of both networks' logits."""
    run = tmp_path / "run"
    scarce.train(data=str(data_dir / "pneumonia_kaggle_64.npz"), n=40, epochs=2, tta=0, threads=1, size=64,
                 seed=0, out=str(run), progress=False, recipe_options={"ensemble_epochs": 2})
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "model.onnx")]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    model, info = load_trained(run / "model.safetensors")
    assert info["ensemble_members"] == 2
    images = load_resized(str(data_dir / "pneumonia_kaggle_64.npz"), None, "{}", 64).splits["test"].images[:20]
    expected = predict(model, images, "binary", tta=0)
    assert np.abs(probabilities_from_onnx(tmp_path / "model.onnx", images, "binary") - expected).max() <= TOLERANCE
    single = [predict(member, images, "binary", tta=0) for member in model.members]
    assert not np.allclose(single[0], single[1])  # two different epochs, not one network twice


def test_an_unknown_format_is_one_sentence(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path), "--format", "tflite"]) == 2
    error = capsys.readouterr().err
    assert error.strip() == "scarce: error: Unknown export format 'tflite'; scarce exports onnx."


def test_the_spec_names_the_recipes_own_test_time_views():
    assert describe_views(Augmentation()) == "rotation ±10°, horizontal flip, 4 px shift"
    assert describe_views(Augmentation(rotation=5, flip=False, shift=0)) == "rotation ±5°, no flip, no shift"
