"""The learning-rate finder: an exponential sweep of the learning rate on a copy of the model.

The head's learning rate grows geometrically from ``start`` to ``end`` over ``steps`` batches
(body groups follow the recipe's ratios); the loss is smoothed with a bias-corrected moving
average and the sweep stops once it exceeds ``diverge`` times its best value. It never touches
the caller's model or random state, so a later training run is unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_write
from ..data.augment import normalize, to_float
from ..data.dataset import Split
from ..models.backbones import GROUP_NAMES
from ..randomness import integer_seed, torch_generator
from .loop import GroupFreezer, batch_strata, batches, make_optimizer
from .losses import targets_for, training_loss


def lr_sweep(model: nn.Module, train: Split, task: str, recipe, start: float = 1e-7, end: float = 10.0,
             steps: int = 100, batch_size: int = 16, seed: int = 0, smoothing: float = 0.98,
             diverge: float = 4.0) -> dict:
    """Learning rates tried, raw and smoothed losses; runs on a deep copy with its own RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(integer_seed(seed, "lr_find", 0))
        model = copy.deepcopy(model)
        order, augment = torch_generator(seed, "lr_find", 1), torch_generator(seed, "lr_find", 2)
        optimizer = make_optimizer(model, recipe)[0]
        freezer = GroupFreezer(model, recipe)
        freezer.apply(dict.fromkeys(GROUP_NAMES, True))
        ratios = {g: lr / recipe.lr for g, lr in recipe.group_learning_rates().items()}
        labels = torch.as_tensor(train.labels)
        strata = batch_strata(task, labels) if recipe.stratified_batches else None
        num_outputs = model.get_classifier().out_features
        factor = (end / start) ** (1 / max(1, steps - 1))
        lrs, raw, smooth, average, best = [], [], [], 0.0, np.inf
        augmentation = recipe.augmentation()
        while len(lrs) < steps:
            for index in batches(len(train), batch_size, order, recipe.near_equal_batches, strata):
                lr = start * factor ** len(lrs)
                for group in optimizer.param_groups:
                    group["lr"] = lr * ratios[group["name"]]
                freezer.set_train_mode()
                images = augmentation(to_float(train.images[index]), augment)
                loss = training_loss(task, model(normalize(images)), targets_for(task, labels[index], num_outputs),
                                     recipe.pairwise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value = loss.item()
                average = smoothing * average + (1 - smoothing) * value
                smoothed = average / (1 - smoothing ** (len(lrs) + 1))
                lrs.append(lr), raw.append(value), smooth.append(smoothed)
                best = min(best, smoothed)
                if not np.isfinite(value) or smoothed > diverge * best or len(lrs) >= steps:
                    return {"lrs": lrs, "losses": raw, "smoothed": smooth}
    return {"lrs": lrs, "losses": raw, "smoothed": smooth}


def suggest_lr(lrs: list[float], smoothed: list[float], skip_start: int = 5) -> float:
    """The rule: the learning rate where the smoothed loss falls fastest against log(lr),
    looking only before the loss minimum and past the first ``skip_start`` noisy points.

    The slope is taken over a window of a tenth of the sweep (at least 3 points), not between
    neighbours: with small batches neighbouring losses differ mostly by noise. The suggestion
    is the middle of the steepest window.
    """
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    finite = np.isfinite(smoothed)
    lrs, smoothed = lrs[finite], smoothed[finite]
    stop = int(np.argmin(smoothed)) + 1
    begin = min(skip_start, max(0, stop - 3))
    if stop - begin < 3:
        return float(lrs[max(0, stop - 1)] / 10)
    logs, values = np.log(lrs[begin:stop]), smoothed[begin:stop]
    width = min(len(values) - 1, max(2, len(lrs) // 10))
    slopes = (values[width:] - values[:-width]) / (logs[width:] - logs[:-width])
    steepest = int(np.argmin(slopes))
    return float(np.exp((logs[steepest] + logs[steepest + width]) / 2))


def plot_sweep(sweep: dict, suggestion: float, path) -> None:
    """Loss against learning rate (log scale) with the suggestion marked, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(sweep["lrs"], sweep["losses"], alpha=0.3, label="loss")
    axis.plot(sweep["lrs"], sweep["smoothed"], label="smoothed loss")
    axis.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (head)")
    axis.set_ylabel("training loss")
    finite = [v for v in sweep["smoothed"] if np.isfinite(v)]
    if finite:
        axis.set_ylim(min(finite) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    axis.legend()
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)
