"""Decisions from probabilities: thresholds chosen on validation data, confusion counts, calibration.

Pure functions of labels and probabilities (no torch, no files), like ``metrics.py``. A case is
called positive when its probability is *at least* the threshold (``p >= t``), the rule
``metrics.binary_metrics`` uses at 0.5. Binary tasks threshold P(positive class); multi-label
tasks threshold each label on its own; multi-class tasks decide by the largest probability.
"""

from __future__ import annotations

import numpy as np

TARGET_SENSITIVITY = 0.9


THRESHOLD_NAMES = ("youden", "0.5", "sensitivity90")  # the first is the default


RULE = "positive when probability >= threshold"


_EPS = 1e-12  # sensitivities are ratios of counts; compare them with a little slack


def operating_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold (ascending), with the sensitivity and specificity it gives.

    Both classes must be present. Uses sorted counts, so it stays fast on large validation sets.
    """
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=float)
    positives, negatives = np.sort(scores[labels]), np.sort(scores[~labels])
    thresholds = np.unique(scores)
    true_positives = len(positives) - np.searchsorted(positives, thresholds, side="left")  # scores >= t
    false_positives = len(negatives) - np.searchsorted(negatives, thresholds, side="left")
    return thresholds, true_positives / len(positives), 1 - false_positives / len(negatives)


def _both_classes(labels: np.ndarray) -> bool:
    labels = np.asarray(labels).astype(bool)
    return bool(labels.any() and not labels.all())


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The threshold maximising Youden's J = sensitivity + specificity − 1 (None with one class).

    Of several thresholds with the same J the highest is taken: the same sensitivity-specificity
    trade-off, with fewer false alarms on new data.
    """
    if not _both_classes(labels):
        return None
    thresholds, sensitivity, specificity = operating_points(labels, scores)
    youden = sensitivity + specificity - 1
    return float(thresholds[np.flatnonzero(youden >= youden.max() - _EPS)[-1]])


def sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float = TARGET_SENSITIVITY) -> float | None:
    """The highest threshold whose sensitivity is at least ``target`` (None without positives).

    The lowest score always reaches sensitivity 1, so a threshold exists whenever positives do.
    """
    if not _both_classes(labels):
        return None
    thresholds, sensitivity, _ = operating_points(labels, scores)
    return float(thresholds[np.flatnonzero(sensitivity >= target - _EPS)[-1]])


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Counts and rates of ``scores >= threshold`` against 0/1 ``labels``."""
    labels = np.asarray(labels).astype(bool)
    called = np.asarray(scores) >= threshold
    tp, fp = int((called & labels).sum()), int((called & ~labels).sum())
    fn, tn = int((~called & labels).sum()), int((~called & ~labels).sum())
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "accuracy": (tp + tn) / len(labels) if len(labels) else None}


def thresholded_outputs(task: str, classes: list[str]) -> list[str]:
    """What each threshold applies to: the positive class (binary), every label (multi-label), nothing (multi-class)."""
    if task == "binary":
        return [classes[1]]
    return list(classes) if task == "multilabel" else []


def output_columns(task: str, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities as 0/1 and score columns, one per thresholded output (N x K)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if task == "binary":
        return labels.reshape(-1, 1), probs.reshape(-1, 1)
    return labels, probs


def choose_thresholds(task: str, labels: np.ndarray, probs: np.ndarray, classes: list[str],
                      target: float = TARGET_SENSITIVITY, chosen_on: dict | None = None) -> dict:
    """The thresholds of ``THRESHOLD_NAMES`` for every output, chosen on (validation) labels and probabilities.

    An output with a single class in ``labels`` cannot have a Youden or sensitivity threshold;
    it gets 0.5 for those and is listed under ``undefined``.
    """
    result = {"task": task, "rule": RULE, "outputs": thresholded_outputs(task, classes),
              "target_sensitivity": target, "chosen_on": chosen_on or {}}
    if task == "multiclass":
        return {**result, "decision": "argmax", "thresholds": {}, "undefined": []}
    label_columns, score_columns = output_columns(task, labels, probs)
    rules = {"youden": youden_threshold, "0.5": lambda y, p: 0.5,
             "sensitivity90": lambda y, p: sensitivity_threshold(y, p, target)}
    thresholds, undefined = {}, []
    for name, rule in rules.items():
        values, points = [], []
        for k, output in enumerate(result["outputs"]):
            value = rule(label_columns[:, k], score_columns[:, k])
            if value is None:
                value = 0.5
                if output not in undefined:
                    undefined.append(output)
            values.append(value)
            points.append(confusion(label_columns[:, k], score_columns[:, k], value))
        thresholds[name] = {"values": values,
                            "sensitivity": [p["sensitivity"] for p in points],
                            "specificity": [p["specificity"] for p in points]}
    return {**result, "decision": "threshold", "thresholds": thresholds, "undefined": undefined}


def decide(task: str, probs: np.ndarray, values: list[float] | None = None) -> np.ndarray:
    """Decisions: class index per image (binary, multi-class), or 0/1 per label (multi-label)."""
    probs = np.asarray(probs)
    if task == "multiclass":
        return probs.argmax(axis=1)
    if task == "binary":
        return (probs >= values[0]).astype(np.int64)
    return (probs >= np.asarray(values).reshape(1, -1)).astype(np.int64)


def multiclass_confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> list[list[int]]:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix.tolist()


def reliability(outcomes: np.ndarray, confidences: np.ndarray, bins: int = 10) -> dict:
    """Reliability curve over ``bins`` equal-width bins of [0, 1], and the expected calibration error.

    ``outcomes`` are 0/1 (did the event happen), ``confidences`` the predicted probabilities of
    it. ECE = Σ_b (n_b / N) · |observed_b − mean predicted_b|; a bin holds p in [low, high), the
    last one also p = 1. Empty bins are listed with n = 0 and add nothing.
    """
    outcomes = np.asarray(outcomes, dtype=float).ravel()
    confidences = np.asarray(confidences, dtype=float).ravel()
    index = np.clip((confidences * bins).astype(int), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        row = {"low": b / bins, "high": (b + 1) / bins, "n": n, "mean_predicted": None, "observed": None}
        if n:
            row["mean_predicted"] = float(confidences[members].mean())
            row["observed"] = float(outcomes[members].mean())
            ece += n / len(outcomes) * abs(row["observed"] - row["mean_predicted"])
        curve.append(row)
    return {"bins": bins, "ece": float(ece), "n": int(len(outcomes)), "curve": curve}


def calibration(task: str, labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """The task's reliability curve: P(positive) for binary, every label's probability pooled for
    multi-label, and the top-class confidence against top-1 correctness for multi-class."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if task == "multiclass":
        result = reliability(probs.argmax(axis=1) == labels, probs.max(axis=1), bins)
        return {**result, "of": "top-class confidence vs top-1 correct"}
    of = "P(positive class)" if task == "binary" else "each label's probability, pooled over labels"
    return {**reliability(labels, probs, bins), "of": of}
