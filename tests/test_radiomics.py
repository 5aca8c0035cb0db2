"""The radiomics baseline: its 79 features match their definitions (checked by hand and by an
independent numpy implementation), the saved model is tensors only and predicts like the fitted
pipeline, features are cached, and `radiomics-lr` runs in `scarce train` and in a study next to a
CNN recipe, on the same subsets."""

import json

import numpy as np
import pytest
import torch
from conftest import write_npz
from safetensors import safe_open

import scarce.models.radiomics as radiomics
from scarce.cli import main
from scarce.evaluation.inference import probabilities
from scarce.models.radiomics import FEATURE_NAMES, decision, fit_logistic, image_features, model_tensors
from scarce.study.runner import run_study

HALVES = np.array([[0, 0, 255, 255]] * 4, dtype=np.uint8)  # left half black, right half white


def feature(values, name):
    return values[FEATURE_NAMES.index(name)]


def test_there_are_79_named_features():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 79 == 4 * 3 * 6 + 7
    assert image_features(HALVES).shape == (79,)


def test_features_of_a_hand_checked_image():
    values = image_features(HALVES)
    # 64 levels: 0 -> 0, 255 -> 63. Horizontal pairs at distance 1, both directions (symmetric):
    # P(0,0) = P(63,63) = 8/24, P(0,63) = P(63,0) = 4/24.
    assert feature(values, "glcm_contrast_d1_a0") == pytest.approx(2 * 4 / 24 * 63 ** 2)  # 1323
    assert feature(values, "glcm_dissimilarity_d1_a0") == pytest.approx(2 * 4 / 24 * 63)
    assert feature(values, "glcm_ASM_d1_a0") == pytest.approx(2 * (8 / 24) ** 2 + 2 * (4 / 24) ** 2)  # 5/18
    assert feature(values, "glcm_energy_d1_a0") == pytest.approx(np.sqrt(5 / 18))
    assert feature(values, "glcm_homogeneity_d1_a0") == pytest.approx(16 / 24 + 8 / 24 / (1 + 63 ** 2))
    assert feature(values, "glcm_correlation_d1_a0") == pytest.approx(1 / 3)
    # Vertical neighbours always share their level.
    assert feature(values, "glcm_contrast_d1_a90") == 0
    assert feature(values, "glcm_ASM_d1_a90") == pytest.approx(0.5)
    # First order on the 8-bit values: half 0, half 255.
    assert feature(values, "mean") == pytest.approx(127.5)
    assert feature(values, "std") == pytest.approx(127.5)
    assert feature(values, "moment2") == pytest.approx(127.5 ** 2)
    assert feature(values, "moment3") == pytest.approx(0, abs=1e-6)
    assert feature(values, "moment4") == pytest.approx(127.5 ** 4)
    assert feature(values, "moment5") == pytest.approx(0, abs=1e-3)
    assert feature(values, "entropy") == pytest.approx(1.0)  # two equally likely values: one bit


def numpy_glcm(levels_image, row_offset, col_offset, levels):
    """Symmetric, normalised co-occurrence matrix, written out pixel by pixel."""
    counts = np.zeros((levels, levels))
    height, width = levels_image.shape
    for r in range(height):
        for c in range(width):
            r2, c2 = r + row_offset, c + col_offset
            if 0 <= r2 < height and 0 <= c2 < width:
                counts[levels_image[r, c], levels_image[r2, c2]] += 1
    counts = counts + counts.T
    return counts / counts.sum()


def numpy_properties(p):
    i, j = np.indices(p.shape)
    mean_i, mean_j = (i * p).sum(), (j * p).sum()
    std_i, std_j = np.sqrt(((i - mean_i) ** 2 * p).sum()), np.sqrt(((j - mean_j) ** 2 * p).sum())
    asm = (p ** 2).sum()
    return {"contrast": (p * (i - j) ** 2).sum(), "dissimilarity": (p * abs(i - j)).sum(),
            "homogeneity": (p / (1 + (i - j) ** 2)).sum(), "energy": np.sqrt(asm),
            "correlation": (p * (i - mean_i) * (j - mean_j)).sum() / (std_i * std_j), "ASM": asm}


def test_every_feature_matches_an_independent_numpy_implementation():
    image = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)
    values = image_features(image)
    levels_image = image.astype(int) * 64 // 256
    for d in (1, 2, 4, 6):
        # scikit-image's offsets: (round(d·sin θ), round(d·cos θ)) rows down, columns right.
        diagonal = round(d * np.sin(np.pi / 4))
        for angle, offset in ((0, (0, d)), (45, (diagonal, diagonal)), (90, (d, 0))):
            expected = numpy_properties(numpy_glcm(levels_image, *offset, 64))
            for prop, value in expected.items():
                assert feature(values, f"glcm_{prop}_d{d}_a{angle}") == pytest.approx(value, rel=1e-9), (prop, d, angle)
    pixels = image.astype(float).ravel()
    centred = pixels - pixels.mean()
    histogram = np.bincount(image.ravel(), minlength=256) / pixels.size
    entropy = -sum(p * np.log2(p) for p in histogram if p > 0)
    for name, value in [("mean", pixels.mean()), ("std", pixels.std()), ("moment2", (centred ** 2).mean()),
                        ("moment3", (centred ** 3).mean()), ("moment4", (centred ** 4).mean()),
                        ("moment5", (centred ** 5).mean()), ("entropy", entropy)]:
        assert feature(values, name) == pytest.approx(value, rel=1e-9), name


def test_diagonal_distances_1_and_2_coincide_as_in_scikit_image():
    # round(2·sin 45°) = 1: scikit-image's π/4 offset at distance 2 is one pixel down and right.
    values = image_features(np.random.default_rng(1).integers(0, 256, (16, 16)).astype(np.uint8))
    assert feature(values, "glcm_contrast_d1_a45") == feature(values, "glcm_contrast_d2_a45")
    assert feature(values, "glcm_contrast_d1_a0") != feature(values, "glcm_contrast_d2_a0")


def test_gray_images_use_one_channel_and_colour_uses_luma():
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert np.array_equal(radiomics.gray_images(gray.expand(-1, 3, -1, -1)), gray[:, 0].numpy())
    colour = torch.zeros((1, 3, 2, 2), dtype=torch.uint8)
    colour[:, 1] = 100
    assert (radiomics.gray_images(colour) == 59).all()  # 0.587 · 100


# ----------------------------------------------------------------------------- the classifier

@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_the_saved_tensors_predict_exactly_like_the_fitted_pipeline(task):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 79)) * rng.uniform(1, 1000, 79)  # unscaled, like raw moments
    signal = x[:, 0] / 1000 + rng.normal(size=60)
    labels = {"binary": (signal > 0).astype(int), "multiclass": np.digitize(signal, [-0.5, 0.5]),
              "multilabel": np.stack([signal > 0, x[:, 1] > 0, rng.random(60) > 0.5], axis=1).astype(int)}[task]
    pipeline = fit_logistic(x, labels, task)
    tensors = model_tensors(pipeline, task)
    assert set(tensors) == {"scaler_mean", "scaler_scale", "coef", "intercept", "C"}
    ours = probabilities(task, decision(tensors, x)).numpy()
    theirs = pipeline.predict_proba(x)
    if task == "binary":
        theirs = theirs[:, 1]
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_features_are_cached_and_keyed_by_the_images(tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path))
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    first = radiomics.cached_features(images)
    assert len(list((tmp_path / "radiomics").glob("features-*.npy"))) == 1
    assert not list((tmp_path / "radiomics").glob(".*.tmp"))

    def recompute(images):
        raise AssertionError("recomputed")

    monkeypatch.setattr(radiomics, "features", recompute)
    np.testing.assert_array_equal(radiomics.cached_features(images), first)
    with pytest.raises(AssertionError, match="recomputed"):
        radiomics.cached_features(images.flip(-1))  # other images: another key


# ----------------------------------------------------------------------------- runs

@pytest.mark.parametrize("task, classes", [("multiclass", 3), ("multilabel", 3)])
def test_radiomics_lr_writes_the_files_of_a_run(tmp_path, monkeypatch, capsys, task, classes):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    data = write_npz(tmp_path / "tiny.npz", task=task, classes=classes, sizes=(30, 16, 16), size=32)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--size", "32", "--recipe", "radiomics-lr", "--out", str(out)]) == 0
    assert "cross-validated C" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "radiomics-lr" and metrics["n_train"] == 30 and metrics["test_n"] == 16
    assert metrics["test_auc"] > 0.7  # it learns (chance is 0.5) from 30 images and 79 features
    probs = np.load(out / "test_probabilities.npy", allow_pickle=False)
    assert probs.shape == (16, 3)
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        info = json.loads(handle.metadata()["scarce"])
        assert set(handle.keys()) == {"scaler_mean", "scaler_scale", "coef", "intercept", "C"}
    assert info["model"] == "radiomics-lr" and info["features"] == FEATURE_NAMES
    run = json.loads((out / "run.json").read_text())
    assert run["radiomics"]["gray_levels"] == 64 and run["data"]["train_subset_sha256"]
    assert json.loads((out / "thresholds.json").read_text())["chosen_on"]["split"] == "val"
    assert not (out / "history.csv").exists()


def test_radiomics_lr_is_listed_and_has_no_learning_rate_to_find(tmp_path, capsys):
    assert main(["recipes"]) == 0
    assert "radiomics-lr: The paper's radiomics baseline" in capsys.readouterr().out
    data = write_npz(tmp_path / "tiny.npz", size=32)
    assert main(["lr-find", "--data", str(data), "--recipe", "radiomics-lr", "--out", str(tmp_path / "lr")]) == 2
    assert "has no learning rate to find" in capsys.readouterr().err


@pytest.mark.slow
def test_radiomics_lr_runs_in_a_study_next_to_a_cnn_on_the_same_subset(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real_features = radiomics.features
    monkeypatch.setattr(radiomics, "features", lambda images: calls.append(len(images)) or real_features(images))
    spec = tmp_path / "spec.toml"
    spec.write_text(f'data = "{data_dir / "pneumonia_kaggle_64.npz"}"\nsize = 64\nn = [40]\nseeds = [0]\n'
                    'epochs = 1\ntta = 0\n[[recipes]]\nrecipe = "fine-tune-all"\n'
                    '[[recipes]]\nrecipe = "radiomics-lr"\n')
    out = tmp_path / "study"
    assert run_study(spec, out, progress=False) == {"done": 2}
    assert sorted(calls) == [539, 1291, 3386]  # each split once, up front, not again in the cell
    runs = {arm: json.loads((out / "cells" / arm / "n40-s0" / "run.json").read_text())
            for arm in ("fine-tune-all", "radiomics-lr")}
    assert runs["fine-tune-all"]["data"]["train_subset_sha256"] == runs["radiomics-lr"]["data"]["train_subset_sha256"]
    metrics = json.loads((out / "cells/radiomics-lr/n40-s0/metrics.json").read_text())
    assert metrics["test_n"] == 1291 and 0.5 < metrics["test_auc"] <= 1
    assert "radiomics-lr" in (out / "results.csv").read_text()
