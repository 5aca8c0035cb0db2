"""Metrics: pure functions of labels and probabilities (no torch), with bootstrap intervals.

The AUC comes with a bootstrap 95% confidence interval over test images; accuracy, sensitivity
and specificity threshold the *probability* at 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ..randomness import numpy_generator


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (undefined, not an error).

    Computed by the rank (Mann-Whitney) formula with ties counted half: the same number as
    scikit-learn's ``roc_auc_score`` (tested), many times faster inside bootstrap loops.
    """
    positive = np.asarray(labels).astype(bool)
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if n_positive == 0 or n_negative == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def percentile_bootstrap(count: int, statistic, resamples: int = 2000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float] | None:
    """The one bootstrap of scarce: a percentile interval of ``statistic(pick)`` over ``resamples``
    draws of ``count`` items with replacement (``pick`` is an index array), from the run's
    "bootstrap" random stream. Draws where the statistic is None (e.g. a resample with one class)
    are skipped; None when no draw is usable."""
    rng = numpy_generator(seed, "bootstrap")
    values = []
    for _ in range(resamples):
        value = statistic(rng.integers(0, count, count))
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, metric=auc, resamples: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``metric`` over images (resampled with replacement)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    return percentile_bootstrap(len(labels), lambda pick: metric(labels[pick], scores[pick]), resamples, level, seed)


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5,
                   resamples: int = 2000, seed: int = 0) -> dict:
    """AUC with 95% CI, and accuracy, sensitivity and specificity at a probability threshold."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probs) >= threshold).astype(int)
    positives, negatives = labels == 1, labels == 0
    return {
        "auc": auc(labels, probs),
        "auc_ci": bootstrap_ci(labels, probs, resamples=resamples, seed=seed),
        "accuracy": float((predicted == labels).mean()),
        "sensitivity": float(predicted[positives].mean()) if positives.any() else None,
        "specificity": float(1 - predicted[negatives].mean()) if negatives.any() else None,
        "threshold": threshold,
        "n": int(len(labels)),
    }


def output_truths(task: str, labels: np.ndarray, outputs: int) -> list[np.ndarray]:
    """The 0/1 truth of each output: one-vs-rest per class (multi-class) or each label column (multi-label)."""
    labels = np.asarray(labels)
    return [labels == k for k in range(outputs)] if task == "multiclass" else [labels[:, k] for k in range(outputs)]


def scored_outputs(task: str, labels: np.ndarray, outputs: int) -> list[int]:
    """The outputs whose AUC is defined on ``labels`` (both values present): the ones a macro AUC averages."""
    return [k for k, truth in enumerate(output_truths(task, labels, outputs)) if len(np.unique(truth)) == 2]


def macro_auc(task: str, labels: np.ndarray, probs: np.ndarray, outputs: list[int]) -> float | None:
    """Mean AUC over ``outputs``; None when any of them is undefined here, so that every bootstrap
    resample measures the same quantity as the full set (a resample missing a class is skipped)."""
    truths = output_truths(task, labels, probs.shape[1])
    values = [auc(truths[k], probs[:, k]) for k in outputs]
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Macro one-vs-rest AUC (with CI) over the classes present, and top-1 accuracy."""
    labels = np.asarray(labels)
    outputs = scored_outputs("multiclass", labels, probs.shape[1])

    def macro(y, p):
        return macro_auc("multiclass", y, p, outputs)

    return {"auc": macro(labels, probs), "auc_ci": bootstrap_ci(labels, probs, macro, resamples, seed=seed),
            "per_class_auc": [auc(labels == k, probs[:, k]) for k in range(probs.shape[1])],
            "accuracy": float((probs.argmax(axis=1) == labels).mean()), "n": int(len(labels))}


def multilabel_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5,
                       resamples: int = 2000, seed: int = 0) -> dict:
    """Per-label AUC (None where a label has only one value) and their mean, with a CI for the mean."""
    labels = np.asarray(labels)
    outputs = scored_outputs("multilabel", labels, probs.shape[1])

    def mean_auc(y, p):
        return macro_auc("multilabel", y, p, outputs)

    return {"auc": mean_auc(labels, probs), "auc_ci": bootstrap_ci(labels, probs, mean_auc, resamples, seed=seed),
            "per_label_auc": [auc(labels[:, k], probs[:, k]) for k in range(probs.shape[1])],
            "accuracy": float(((probs >= threshold) == labels).mean()), "n": int(len(labels))}


def point_auc(task: str, labels: np.ndarray, probs: np.ndarray) -> float | None:
    """The task's AUC without an interval: binary AUC, macro one-vs-rest (multi-class) or the
    mean over labels (multi-label), over the outputs defined on ``labels``; None when none is."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    if task == "binary":
        return auc(labels, probs)
    return macro_auc(task, labels, probs, scored_outputs(task, labels, probs.shape[1]))


def task_metrics(task: str, labels: np.ndarray, probs: np.ndarray, seed: int = 0) -> dict:
    if task == "binary":
        return binary_metrics(labels, probs, seed=seed)
    if task == "multiclass":
        return multiclass_metrics(labels, probs, seed=seed)
    return multilabel_metrics(labels, probs, seed=seed)
