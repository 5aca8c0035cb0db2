"""Recipe trained: the training loop that applies a recipe to a model and keeps the best epoch.

The loop works on uint8 image tensors already in memory: each batch is indexed, augmented on
the fly as one tensor operation, normalised and fed to the model. After every epoch the whole
validation split is scored; the weights of the epoch the recipe's selection rule prefers are kept
(or a greedy soup of the best epochs, or an ensemble of them).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data.augment import normalize, to_float
from ..data.dataset import Split
from ..models.backbones import GROUP_NAMES, group_modules, layer_groups
from ..randomness import integer_seed, numpy_generator, torch_generator
from .history import History, TrainingDiverged
from .losses import mixup, smooth, step_loss, targets_for
from .recipes import SELECT_BY, Recipe
from .regularizers import linear_probe_head, pull_to_start, recompute_batchnorm, sharpness_aware_gradients
from .schedules import make_schedule
from .selection import _snapshot, epoch_ensemble, greedy_soup, validation_score


def batches(n: int, batch_size: int, generator: torch.Generator, even: bool = False,
            strata: torch.Tensor | None = None) -> list[torch.Tensor]:
    """A shuffled split of ``range(n)`` into batches; a last batch of one joins the one before
    (BatchNorm cannot train on a single image). With ``even``, the same number of batches but of
    near-equal sizes (50 images at 16: 13, 13, 12, 12 instead of 16, 16, 16, 2). With ``strata``
    (a class per image), those near-equal batches also hold each class in near-equal numbers: the
    shuffled images, grouped by class, are dealt out to the batches in turn."""
    order = torch.randperm(n, generator=generator)
    if strata is not None:
        grouped = order[torch.argsort(strata[order], stable=True)]
        count = math.ceil(n / batch_size)
        return [grouped[i::count] for i in range(count)]
    if even:
        return list(order.tensor_split(math.ceil(n / batch_size)))
    parts = list(order.split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2] = torch.cat([parts[-2], parts.pop()])
    return parts


def batch_strata(task: str, labels: torch.Tensor) -> torch.Tensor | None:
    """The class of each image for stratified batches; None for multi-label tasks (no single class)."""
    if task == "multilabel":
        return None
    return labels.reshape(len(labels), -1)[:, 0].long()


def steps_per_epoch(n: int, batch_size: int, even: bool = False) -> int:
    steps = math.ceil(n / batch_size)
    if even:
        return steps
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


def make_optimizer(model: nn.Module, recipe: Recipe) -> tuple[torch.optim.Optimizer, dict[str, float]]:
    """One parameter group per layer group, each with its own peak learning rate."""
    groups = layer_groups(model).as_dict()
    parameters = dict(model.named_parameters())
    peaks = recipe.group_learning_rates()
    param_groups = [{"params": [parameters[name] for name in groups[group]], "lr": peaks[group],
                     "name": group} for group in GROUP_NAMES]
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=recipe.lr, momentum=recipe.betas[0],
                                    weight_decay=recipe.weight_decay)
    else:
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
        optimizer = kind(param_groups, lr=recipe.lr, betas=(recipe.betas[0], 0.99),
                         weight_decay=recipe.weight_decay)
    return optimizer, peaks


def set_momentum(optimizer: torch.optim.Optimizer, beta1: float) -> None:
    """Adam's β1 or SGD's momentum, whichever the optimizer has."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (beta1, group["betas"][1])
        else:
            group["momentum"] = beta1


class GroupFreezer:
    """Sets ``requires_grad`` (and, if the recipe says so, BatchNorm mode) per layer group."""

    def __init__(self, model: nn.Module, recipe: Recipe):
        self.model = model
        self.recipe = recipe
        names = layer_groups(model).as_dict()
        parameters = dict(model.named_parameters())
        self.parameters = {g: [parameters[n] for n in names[g]] for g in GROUP_NAMES}
        self.norms = {g: [m for m in group_modules(model, names[g]) if isinstance(m, nn.modules.batchnorm._BatchNorm)]
                      for g in GROUP_NAMES}
        self.state: dict[str, bool] | None = None

    def apply(self, trainable: dict[str, bool]) -> None:
        self.state = trainable
        for group, on in trainable.items():
            for parameter in self.parameters[group]:
                parameter.requires_grad_(on)

    def set_train_mode(self) -> None:
        """model.train(), except BatchNorm layers of frozen groups (or, with the recipe's
        ``keep_batchnorm_statistics``, all of them) keep their statistics."""
        self.model.train()
        if self.recipe.keep_batchnorm_statistics:
            for norms in self.norms.values():
                for norm in norms:
                    norm.eval()
        elif self.recipe.frozen_batchnorm and self.state:
            for group, on in self.state.items():
                if not on:
                    for norm in self.norms[group]:
                        norm.eval()


def fit(model: nn.Module, train: Split, val: Split, task: str, recipe: Recipe, epochs: int,
        batch_size: int = 16, seed: int = 0, progress: bool = True, on_step=None) -> tuple[dict[str, torch.Tensor], History]:
    """Train ``model`` in place; return the best epoch's weights and the history.

    Each batch is augmented by the recipe's policy (``recipe.augmentation()``).

    The best epoch is the one with the lowest validation loss, or with ``recipe.select_by =
    "val_auc"`` the highest validation AUC (ties: the lower loss), or with ``"last"`` the last.
    With ``recipe.ensemble_epochs = k > 1`` the k best epochs are returned as one ensemble
    (:func:`epoch_ensemble`); with ``recipe.soup`` a greedy soup of them (:func:`greedy_soup`).
    With ``recipe.ema_decay > 0`` an exponential moving average of the weights (parameters and
    BatchNorm statistics) follows every step, and it is what is validated and returned.

    One optimizer lives for the whole run (its state persists across epochs and unfreezing).
    The model is moved to the channels_last memory format (faster; same weights, only their layout).
    ``on_step(step, model, optimizer)`` is called after every optimizer step (tests use it).
    """
    # channels_last: the CPU convolution kernels (oneDNN) run EfficientNet's depthwise and 1x1
    # convolutions about 1.6x faster in this layout (benchmarks/throughput.py); the input batches
    # stay NCHW and each convolution follows its weight's layout.
    model.to(memory_format=torch.channels_last)
    if recipe.head_init == "linear-probe":
        linear_probe_head(model, train, task)
    # Each random draw comes from its own stream (scarce.randomness), so turning on an option
    # that draws (augmentation, MixUp) never changes the batch order or another option's draws.
    order, augmentation = torch_generator(seed, "batches"), recipe.augmentation()
    torch.manual_seed(integer_seed(seed, "dropout"))  # dropout and stochastic depth
    optimizer = make_optimizer(model, recipe)[0]
    freezer = GroupFreezer(model, recipe)
    per_epoch = steps_per_epoch(len(train), batch_size, recipe.near_equal_batches)
    total, schedule = epochs * per_epoch, make_schedule(recipe, per_epoch, epochs)
    labels = torch.as_tensor(train.labels)
    strata = batch_strata(task, labels) if recipe.stratified_batches else None
    num_outputs = _num_outputs(model)
    if recipe.select_by not in SELECT_BY:
        raise ValueError(f"select_by must be one of {', '.join(SELECT_BY)}, not {recipe.select_by!r}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True) \
        if recipe.ema_decay > 0 else None
    evaluated = model if ema is None else ema.module
    starting = {id(p): p.detach().clone() for g in optimizer.param_groups if g["name"] != "head"
                for p in g["params"]} if recipe.l2_sp > 0 else {}
    history, best_score, best_state, candidates = History(), (-math.inf, -math.inf), None, []
    keep = max(recipe.soup, recipe.ensemble_epochs)  # best epochs' weights kept for a soup or an ensemble
    started, step = time.perf_counter(), 0
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, leave=False)
    for epoch in range(epochs):
        running, seen = 0.0, 0
        for index in batches(len(train), batch_size, order, recipe.near_equal_batches, strata):
            trainable, rates, beta1 = schedule.step_update(step)
            if trainable != freezer.state:
                freezer.apply(trainable)
            freezer.set_train_mode()
            for param_group in optimizer.param_groups:
                param_group["lr"] = rates[param_group["name"]]
            set_momentum(optimizer, beta1)
            clock = time.perf_counter()
            images = to_float(train.images[index])
            images = augmentation(images, torch_generator(seed, "augment", step))
            targets = targets_for(task, labels[index], num_outputs)
            if recipe.label_smoothing > 0:
                targets = smooth(task, targets, recipe.label_smoothing)
            if recipe.mixup_alpha > 0:
                images, targets = mixup(images, targets, recipe.mixup_alpha, numpy_generator(seed, "mixup", step, 0),
                                        torch_generator(seed, "mixup", step, 1))
            clock = _lap(history.timings, "augment", clock)
            loss = step_loss(model, normalize(images), targets, task, recipe)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.sam_rho > 0:
                sharpness_aware_gradients(model, lambda: step_loss(model, normalize(images), targets, task, recipe),
                                          recipe.sam_rho)
            optimizer.step()
            if starting:
                pull_to_start(optimizer, starting, recipe.l2_sp)
            if ema is not None:
                ema.update_parameters(model)
            _lap(history.timings, "forward_backward", clock)
            if on_step is not None:
                on_step(step, model, optimizer)
            running, seen, step = running + loss.item() * len(index), seen + len(index), step + 1
            bar.update()
        clock = time.perf_counter()
        if recipe.recompute_batchnorm:
            recompute_batchnorm(evaluated, train.images)
        score, val_loss, val_auc = validation_score(evaluated, val, task, recipe.select_by)
        if recipe.select_by == "last":
            score = (epoch, 0.0)
        record = {"epoch": epoch + 1, "train_loss": running / seen, "val_loss": val_loss, "val_auc": val_auc,
                  "lr": optimizer.param_groups[-1]["lr"]}
        history.epochs.append(record)
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        improved = math.isfinite(val_loss) and score > best_score
        snapshot = _snapshot(evaluated) if improved or (math.isfinite(val_loss) and keep > 1) else None
        if snapshot is not None and keep > 1:
            candidates = sorted([*candidates, (score, epoch + 1, snapshot)], key=lambda c: c[0],
                                reverse=True)[:keep]
        if improved:
            best_score, history.best_epoch, best_state = score, epoch + 1, snapshot
            history.kept_epochs, history.kept_val = [epoch + 1], {"val_loss": val_loss, "val_auc": val_auc}
        _lap(history.timings, "validate", clock)
        schedule.step(epoch, val_loss)
        if schedule.stop:
            break
    bar.close()
    if best_state is None:  # every validation loss was NaN
        raise TrainingDiverged("validation loss was never finite")
    if len(candidates) > 1:
        clock = time.perf_counter()
        if recipe.ensemble_epochs > 1:
            best_state = epoch_ensemble(evaluated, candidates, val, task, recipe.select_by, history)
        else:
            best_state = greedy_soup(evaluated, candidates, val, task, recipe.select_by, history,
                                     train.images if recipe.recompute_batchnorm else None)
        _lap(history.timings, "validate", clock)
    history.seconds = time.perf_counter() - started
    return best_state, history


def _lap(timings: dict, phase: str, since: float) -> float:
    """Add the time since ``since`` to ``timings[phase]``; return now."""
    now = time.perf_counter()
    timings[phase] += now - since
    return now


def _num_outputs(model: nn.Module) -> int:
    return model.get_classifier().out_features
