"""Which weights a run keeps: the best epoch, a greedy soup or an epoch ensemble."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..data.dataset import Split
from ..evaluation.inference import predict_logits, probabilities, task_loss
from ..evaluation.metrics import point_auc
from ..models.backbones import EpochEnsemble
from .history import History
from .regularizers import recompute_batchnorm


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def validation_score(model: nn.Module, val: Split, task: str, select_by: str) -> tuple[tuple, float, float]:
    """The selection score of ``model`` on the validation split (higher is better: the negative
    loss, or the AUC with the negative loss breaking ties), with its loss and AUC (NaN if undefined)."""
    logits = predict_logits(model, val.images, batch_size=256)
    loss = task_loss(task, logits, torch.as_tensor(val.labels)).item()
    auc = point_auc(task, val.labels, probabilities(task, logits).numpy())
    score = (-loss, 0.0) if select_by == "val_loss" else (auc or -math.inf, -loss)
    return score, loss, math.nan if auc is None else auc


def greedy_soup(model: nn.Module, candidates: list, val: Split, task: str, select_by: str,
                history: History, batchnorm_images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Greedy weight soup (Wortsman et al. 2022) over epochs of one run.

    ``candidates`` are (score, epoch, weights), best first. Starting from the best epoch, each next
    one joins the uniform average if the average's validation score does not get worse. Integer
    buffers (BatchNorm's step counter) come from the best epoch; with ``batchnorm_images`` every
    average's BatchNorm statistics are re-estimated from them. ``model`` ends up holding the soup.
    """
    best_score, _, best = candidates[0]
    chosen = [best]
    for score, epoch, weights in candidates[1:]:
        _load_average(model, [*chosen, weights], batchnorm_images)
        trial_score, loss, auc = validation_score(model, val, task, select_by)
        if trial_score >= best_score:
            chosen.append(weights)
            best_score = trial_score
            history.kept_epochs.append(epoch)
            history.kept_val = {"val_loss": loss, "val_auc": auc}
    _load_average(model, chosen, batchnorm_images)
    return _snapshot(model)


def epoch_ensemble(model: nn.Module, candidates: list, val: Split, task: str, select_by: str,
                   history: History) -> dict[str, torch.Tensor]:
    """A snapshot ensemble of one run: the weights of ``candidates`` (score, epoch, weights; best
    first) as one :class:`EpochEnsemble`, whose logits are their mean; return its state dict
    (``members.<i>.<name>``) and record its epochs and validation loss and AUC in ``history``."""
    members = []
    for _, _, weights in candidates:
        member = copy.deepcopy(model)
        member.load_state_dict(weights)
        members.append(member)
    ensemble = EpochEnsemble(members)
    _, loss, auc = validation_score(ensemble, val, task, select_by)
    history.kept_epochs = [epoch for _, epoch, _ in candidates]
    history.kept_val = {"val_loss": loss, "val_auc": auc}
    return _snapshot(ensemble)


def _load_average(model: nn.Module, states: list[dict[str, torch.Tensor]], batchnorm_images) -> None:
    model.load_state_dict(_average(states))
    if batchnorm_images is not None:
        recompute_batchnorm(model, batchnorm_images)


def _average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    first = states[0]
    return {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone()
            for k, v in first.items()}
