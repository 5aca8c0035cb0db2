"""Model evaluated: losses, predictions with test-time augmentation, and honest metrics.

Metrics are pure functions of labels and probabilities. The AUC comes with a bootstrap 95%
confidence interval over test images; accuracy, sensitivity and specificity threshold the
*probability* at 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from .augment import Augmentation, normalize, to_float


def task_loss(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for binary and multi-label tasks, cross-entropy for multi-class."""
    if task == "multiclass":
        return F.cross_entropy(logits, labels.long())
    return F.binary_cross_entropy_with_logits(logits, labels.float().view_as(logits))


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Binary: P(positive) per image (N,). Multi-class: softmax (N, K). Multi-label: sigmoid (N, K)."""
    if task == "multiclass":
        return logits.softmax(dim=1)
    probs = logits.sigmoid()
    return probs[:, 0] if task == "binary" else probs


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                   augmentation: Augmentation | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits for uint8 images in eval mode, optionally through one augmented view per image."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start:start + batch_size])
        if augmentation is not None:
            batch = augmentation(batch, generator)
        outputs.append(model(normalize(batch)))
    return torch.cat(outputs)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, task: str, tta: int = 0, seed: int = 0,
            augmentation: Augmentation = Augmentation(), batch_size: int = 256) -> np.ndarray:
    """Probabilities, averaged over one clean pass and ``tta`` augmented passes.

    Each augmented pass draws its own random views (pass k uses seed ``seed + k``), so passes
    differ from each other and from the clean one; averaging is over probabilities, not logits.
    """
    views = [probabilities(task, predict_logits(model, images, batch_size))]
    for k in range(1, tta + 1):
        generator = torch.Generator().manual_seed(seed + k)
        views.append(probabilities(task, predict_logits(model, images, batch_size, augmentation, generator)))
    return torch.stack(views).mean(dim=0).numpy()


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present (undefined, not an error)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, metric=auc, resamples: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``metric`` over images (resampled with replacement)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(labels), len(labels))
        value = metric(labels[pick], scores[pick])
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


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


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Macro one-vs-rest AUC (with CI) over the classes present, and top-1 accuracy."""
    labels = np.asarray(labels)
    per_class = [auc(labels == k, probs[:, k]) for k in range(probs.shape[1])]

    def macro(y, p):
        values = [auc(y == k, p[:, k]) for k in range(p.shape[1])]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {"auc": macro(labels, probs), "auc_ci": bootstrap_ci(labels, probs, macro, resamples, seed=seed),
            "per_class_auc": per_class, "accuracy": float((probs.argmax(axis=1) == labels).mean()),
            "n": int(len(labels))}


def multilabel_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5,
                       resamples: int = 2000, seed: int = 0) -> dict:
    """Per-label AUC (None where a label has only one value) and their mean, with a CI for the mean."""
    labels = np.asarray(labels)

    def mean_auc(y, p):
        values = [auc(y[:, k], p[:, k]) for k in range(p.shape[1])]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {"auc": mean_auc(labels, probs), "auc_ci": bootstrap_ci(labels, probs, mean_auc, resamples, seed=seed),
            "per_label_auc": [auc(labels[:, k], probs[:, k]) for k in range(probs.shape[1])],
            "accuracy": float(((probs >= threshold) == labels).mean()), "n": int(len(labels))}


def task_metrics(task: str, labels: np.ndarray, probs: np.ndarray, seed: int = 0) -> dict:
    if task == "binary":
        return binary_metrics(labels, probs, seed=seed)
    if task == "multiclass":
        return multiclass_metrics(labels, probs, seed=seed)
    return multilabel_metrics(labels, probs, seed=seed)
