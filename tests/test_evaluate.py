"""Evaluation: metrics from probabilities, bootstrap intervals, and test-time augmentation."""

import numpy as np
import pytest
import torch
from conftest import synthetic_split
from sklearn.metrics import roc_auc_score

from scarce.evaluation.inference import predict, predict_logits
from scarce.evaluation.metrics import auc, binary_metrics, bootstrap_ci, multilabel_metrics
from scarce.models.backbones import create_model
from scarce.randomness import torch_generator


def test_accuracy_sensitivity_specificity_threshold_probabilities():
    labels = np.array([1, 1, 1, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.4, 0.45, 0.2, 0.55])
    m = binary_metrics(labels, probs, resamples=200)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs))


def test_accuracy_is_not_computed_on_logits():
    # Logits of -0.2 mean probability 0.45: thresholding logits at 0.5 would call every one negative.
    labels = np.array([1, 1, 0, 0])
    logits = torch.tensor([0.3, 0.1, -0.2, -1.0])
    probs = logits.sigmoid().numpy()
    assert binary_metrics(labels, probs, resamples=10)["accuracy"] == 1.0
    assert ((logits.numpy() >= 0.5) == labels).mean() == 0.5


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small_y = rng.integers(0, 2, 100)
    small_s = small_y + rng.normal(0, 1, 100)
    large_y = rng.integers(0, 2, 2000)
    large_s = large_y + rng.normal(0, 1, 2000)
    low, high = bootstrap_ci(small_y, small_s, resamples=500)
    assert low < auc(small_y, small_s) < high
    low2, high2 = bootstrap_ci(large_y, large_s, resamples=500)
    assert high2 - low2 < (high - low) / 2


def test_auc_is_undefined_not_an_error_when_one_class_is_missing():
    assert auc(np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])) is None
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.7, 0.6]])
    m = multilabel_metrics(labels, probs, resamples=50)
    assert m["per_label_auc"] == [1.0, None]
    assert m["auc"] == 1.0


def test_tta_is_a_clean_pass_plus_distinct_augmented_passes_averaged_as_probabilities():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    images = synthetic_split(8).images
    clean = predict_logits(model, images).sigmoid()[:, 0]
    passes = []
    from scarce.data.augment import Augmentation
    from scarce.evaluation.inference import probabilities
    for k in (1, 2, 3):
        logits = predict_logits(model, images, augmentation=Augmentation(),
                                generator=torch_generator(10, "tta", k))
        passes.append(probabilities("binary", logits))
    assert not torch.allclose(passes[0], passes[1]) and not torch.allclose(passes[1], passes[2])
    assert not torch.allclose(passes[0], clean)
    expected = torch.stack([clean, *passes]).mean(dim=0).numpy()
    assert predict(model, images, "binary", tta=3, seed=10) == pytest.approx(expected, abs=1e-6)
    assert predict(model, images, "binary", tta=0) == pytest.approx(clean.numpy(), abs=1e-6)


def test_prediction_runs_without_gradients_and_in_eval_mode():
    model = create_model("efficientnet_lite0", "scratch")
    model.train()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append((module.training, out.requires_grad)))
    predict(model, synthetic_split(4).images, "binary", tta=1)
    assert seen and all(mode == (False, False) for mode in seen)


def test_rank_auc_equals_scikit_learn_including_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 200)
        scores = np.round(labels * 0.3 + rng.normal(0, 0.5, 200), 1)  # many ties
        assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
