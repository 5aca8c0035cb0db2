"""The losses one training step minimises, and the target transforms (smoothing, MixUp)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .recipes import Recipe


def targets_for(task: str, labels: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Float training targets: (B, 1) for binary, one-hot (B, K) for multi-class, (B, K) for multi-label."""
    if task == "multiclass":
        return F.one_hot(labels.long(), num_outputs).float()
    return labels.float().view(len(labels), -1)


def soft_target_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The task's loss on (possibly mixed) float targets: cross-entropy or BCE-with-logits."""
    if task == "multiclass":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def step_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, task: str, recipe: Recipe) -> torch.Tensor:
    """The loss one training step minimises: the task's (with the recipe's ranking term), plus the
    recipe's spectral shrinkage of the pooled features when ``recipe.bss`` is above 0."""
    if recipe.bss <= 0:
        return training_loss(task, model(inputs), targets, recipe.pairwise)
    features = model.forward_head(model.forward_features(inputs), pre_logits=True)
    logits = model.get_classifier()(features)
    return training_loss(task, logits, targets, recipe.pairwise) + recipe.bss * smallest_singular_value(features) ** 2


def smallest_singular_value(features: torch.Tensor) -> torch.Tensor:
    """The smallest singular value of a batch's feature matrix (images × features)."""
    return torch.linalg.svdvals(features)[-1]


def training_loss(task: str, logits: torch.Tensor, targets: torch.Tensor, pairwise: float = 0.0) -> torch.Tensor:
    """The task's loss, plus ``pairwise`` times the pairwise ranking loss when that is above 0."""
    loss = soft_target_loss(task, logits, targets)
    return loss + pairwise * pairwise_ranking_loss(logits, targets) if pairwise > 0 else loss


def pairwise_ranking_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A smooth surrogate of 1 − AUC: softplus(s_neg − s_pos) averaged over every (positive, negative)
    pair of images in the batch, per output (one-vs-rest), over the outputs that have both.

    Targets at or above 0.5 count as positive (so smoothed or mixed targets still rank); a batch
    with no such pair adds 0.
    """
    positive = targets >= 0.5
    total, outputs = logits.new_zeros(()), 0
    for k in range(logits.shape[1]):
        pos, neg = logits[positive[:, k], k], logits[~positive[:, k], k]
        if len(pos) and len(neg):
            total = total + F.softplus(neg[None, :] - pos[:, None]).mean()
            outputs += 1
    return total / max(outputs, 1)


def smooth(task: str, targets: torch.Tensor, amount: float) -> torch.Tensor:
    """Label smoothing: targets moved ``amount`` of the way towards 1/K (multi-class) or 1/2."""
    uniform = 1.0 / targets.shape[1] if task == "multiclass" else 0.5
    return targets * (1 - amount) + amount * uniform


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float, rng: np.random.Generator,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp: each image and target blended with a shuffled partner, λ ~ Beta(α, α) per batch."""
    lam = float(rng.beta(alpha, alpha))
    partner = torch.randperm(len(images), generator=generator)
    return lam * images + (1 - lam) * images[partner], lam * targets + (1 - lam) * targets[partner]
