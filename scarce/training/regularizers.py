"""Optional training features that act on weights or gradients (SAM, L2-SP, BatchNorm)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..data.augment import normalize, to_float
from ..data.dataset import Split


def linear_probe_head(model: nn.Module, train: Split, task: str) -> None:
    """Set the classifier to a logistic regression (scikit-learn, L2, C = 1) fitted to the model's
    pooled features of the clean training images: one multinomial model for multi-class, one
    binary model per label otherwise. A label with a single class present keeps its head row."""
    from sklearn.linear_model import LogisticRegression

    model.eval()
    with torch.no_grad():
        features = torch.cat([model.forward_head(model.forward_features(batch), pre_logits=True)
                              for batch in _clean_batches(train.images)]).numpy()
    classifier = model.get_classifier()
    labels = np.asarray(train.labels)
    with torch.no_grad():
        if task == "multiclass":
            if len(np.unique(labels)) == classifier.out_features:
                probe = LogisticRegression(max_iter=2000).fit(features, labels)
                classifier.weight.copy_(torch.as_tensor(probe.coef_))
                classifier.bias.copy_(torch.as_tensor(probe.intercept_))
            return
        for k, column in enumerate(labels.reshape(len(labels), -1).T):
            if len(np.unique(column)) == 2:
                probe = LogisticRegression(max_iter=2000).fit(features, column)
                classifier.weight[k].copy_(torch.as_tensor(probe.coef_[0]))
                classifier.bias[k] = float(probe.intercept_[0])


@torch.no_grad()
def pull_to_start(optimizer: torch.optim.Optimizer, starting: dict[int, torch.Tensor], strength: float) -> None:
    """Decoupled L2-SP: move each body weight back toward its starting value by lr·strength of the gap."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) in starting and param.grad is not None:
                param.sub_(param - starting[id(param)], alpha=group["lr"] * strength)


def sharpness_aware_gradients(model: nn.Module, compute_loss, rho: float) -> None:
    """SAM (Foret et al. 2021): replace the gradients in ``.grad`` by those at the worst nearby point.

    The trainable weights move by ``rho`` along the normalised gradient, the loss is computed and
    differentiated there (BatchNorm statistics untouched), and the weights move back; the
    optimizer then steps from the original weights with the new gradients.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
    scale = rho / (norm + 1e-12)
    with torch.no_grad():
        moves = [p.grad * scale for p in params]
        for p, move in zip(params, moves):
            p.add_(move)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running statistics = running·(1 - 0) + batch·0: unchanged
    for p in params:
        p.grad = None
    compute_loss().backward()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    with torch.no_grad():
        for p, move in zip(params, moves):
            p.sub_(move)


def recompute_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """BatchNorm running statistics re-estimated from ``images`` (uint8, un-augmented) in one pass."""
    with torch.no_grad():
        update_bn(_clean_batches(images, batch_size), model)


def _clean_batches(images: torch.Tensor, batch_size: int = 256):
    """Normalised float batches of uint8 images, un-augmented, in order."""
    for start in range(0, len(images), batch_size):
        yield normalize(to_float(images[start:start + batch_size]))
