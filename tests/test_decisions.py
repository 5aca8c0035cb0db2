"""Decision thresholds, confusion counts and calibration: pure functions, checked on worked examples."""

import re

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from scarce.evaluation.decisions import (
    calibration,
    choose_thresholds,
    confusion,
    decide,
    multiclass_confusion,
    reliability,
    sensitivity_threshold,
    youden_threshold,
)
from scarce.runs.model_card import markdown_text
from scarce.use.predict import heatmap_name


def test_youden_threshold_of_a_worked_example():
    # At 0.4: all 3 positives and 3 of 4 negatives are right (J = 0.75); at 0.7: J = 2/3; at 0.5: J = 5/12.
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.4, 0.7, 0.9])
    assert youden_threshold(labels, scores) == 0.4
    point = confusion(labels, scores, 0.4)
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (3, 1, 3, 0)
    assert point["sensitivity"] == 1.0 and point["specificity"] == 0.75 and point["accuracy"] == 6 / 7


def test_youden_ties_take_the_highest_threshold():
    # 0.35 (sens 1, spec 0.5) and 0.8 (sens 0.5, spec 1) both give J = 0.5: fewer false alarms wins.
    assert youden_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.8


def test_youden_reaches_the_best_j_of_the_roc_curve():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 2)  # rounded: ties between scores too
    fpr, tpr, _ = roc_curve(labels, scores)
    threshold = youden_threshold(labels, scores)
    point = confusion(labels, scores, threshold)
    assert point["sensitivity"] + point["specificity"] - 1 == pytest.approx((tpr - fpr).max(), abs=1e-12)


def test_sensitivity_threshold_is_the_highest_that_reaches_the_target():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.random(300) + labels * 0.3
    threshold = sensitivity_threshold(labels, scores, 0.9)
    assert confusion(labels, scores, threshold)["sensitivity"] >= 0.9
    higher = np.unique(scores[scores > threshold])[0]
    assert confusion(labels, scores, higher)["sensitivity"] < 0.9
    # 10 positives: 0.9 needs 9 of them, so the 9th highest positive score is the threshold
    labels = np.array([1] * 10 + [0] * 5)
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.1, 0.5, 0.4, 0.3, 0.2, 0.05])
    assert sensitivity_threshold(labels, scores, 0.9) == 0.55


def test_undefined_thresholds_fall_back_to_half_and_are_listed():
    labels = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])  # label "b" is always on in validation
    probs = np.array([[0.2, 0.9], [0.7, 0.8], [0.4, 0.6], [0.9, 0.7]])
    result = choose_thresholds("multilabel", labels, probs, ["a", "b"])
    assert result["outputs"] == ["a", "b"] and result["undefined"] == ["b"]
    assert result["thresholds"]["youden"]["values"] == [0.7, 0.5]
    assert result["thresholds"]["0.5"]["values"] == [0.5, 0.5]
    assert choose_thresholds("multiclass", np.array([0, 1, 2]), np.eye(3), ["x", "y", "z"])["decision"] == "argmax"


def test_decisions_per_task():
    assert decide("binary", np.array([0.2, 0.5, 0.7]), [0.5]).tolist() == [0, 1, 1]
    assert decide("multilabel", np.array([[0.2, 0.6], [0.8, 0.3]]), [0.1, 0.7]).tolist() == [[1, 0], [1, 0]]
    assert decide("multiclass", np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])).tolist() == [1, 0]
    assert multiclass_confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3) == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_expected_calibration_error_of_a_worked_example():
    # 10 images at p = 0.05 of which 1 positive (observed 0.1), 10 at p = 0.95 all positive (observed 1):
    # each bin is off by 0.05, so ECE = 0.05. p = 1.0 falls in the last bin, not an eleventh.
    confidences = np.array([0.05] * 10 + [0.95] * 9 + [1.0])
    outcomes = np.array([1] + [0] * 9 + [1] * 10)
    result = reliability(outcomes, confidences, bins=10)
    assert result["ece"] == pytest.approx((0.05 + abs(1 - (0.95 * 9 + 1.0) / 10)) / 2)
    assert [row["n"] for row in result["curve"]] == [10, 0, 0, 0, 0, 0, 0, 0, 0, 10]
    assert result["curve"][0]["observed"] == pytest.approx(0.1)
    assert result["curve"][1]["observed"] is None


def test_calibrated_probabilities_have_small_ece_and_overconfident_ones_large():
    rng = np.random.default_rng(2)
    p = rng.random(20000)
    outcomes = rng.random(20000) < p
    assert calibration("binary", outcomes.astype(int), p)["ece"] < 0.02
    overconfident = np.where(p > 0.5, 1.0, 0.0)
    assert calibration("binary", outcomes.astype(int), overconfident)["ece"] > 0.2


def test_multiclass_calibration_uses_the_top_class():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    result = calibration("multiclass", np.array([0, 1, 1]), probs, bins=10)
    # confidences 0.9 (right), 0.8 (right), 0.6 (wrong): bins 9, 8, 6
    assert result["ece"] == pytest.approx((0.1 + 0.2 + 0.6) / 3)


def test_user_strings_cannot_break_markdown_or_file_names():
    text = markdown_text("<img src=x>|a\n# b [c](d) *e*")
    assert "\n" not in text
    assert not re.search(r"(?<!\\)[<>|\[\]*#]", text)  # every markup character escaped
    assert text == r"\<img src=x\>\|a \# b \[c\](d) \*e\*"
    assert heatmap_name(3, "normal/a b.png") == "00003_normal__a_b.png"
    assert heatmap_name(4, "test/17") == "00004_test__17.png"
    assert "/" not in heatmap_name(5, "../../etc/passwd") and heatmap_name(6, "///") == "00006_image.png"
