"""Model evaluated: losses, and predictions with test-time augmentation (metrics: ``metrics.py``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import Augmentation, normalize, to_float
from ..randomness import torch_generator
from .decisions import choose_thresholds


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
    model.eval().to(memory_format=torch.channels_last)  # faster on CPU, see train.fit
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

    Each augmented pass k draws its own views from sub-stream k of the "tta" random stream, so
    passes differ from each other, from the clean one and from every other seed's passes;
    averaging is over probabilities, not logits.
    """
    views = [probabilities(task, predict_logits(model, images, batch_size))]
    for k in range(1, tta + 1):
        generator = torch_generator(seed, "tta", k)
        views.append(probabilities(task, predict_logits(model, images, batch_size, augmentation, generator)))
    return torch.stack(views).mean(dim=0).numpy()


def validation_thresholds(model: nn.Module, val, task: str, classes: list[str], tta: int, seed: int,
                          views: Augmentation = Augmentation()) -> dict:
    """Thresholds chosen on the validation split (``thresholds.json``), predicted with the test's TTA and seed."""
    probs = predict(model, val.images, task, tta=tta, seed=seed, augmentation=views)
    return choose_thresholds(task, val.labels, probs, classes, chosen_on={
        "split": "val", "n": len(val), "tta_passes": {"clean": 1, "augmented": tta}, "seed": seed})
