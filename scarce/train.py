"""Recipe trained: the training loop that applies a recipe to a model and keeps the best epoch.

The loop works on uint8 image tensors already in memory: each batch is indexed, augmented on
the fly as one tensor operation, normalised and fed to the model. After every epoch the whole
validation split is scored; the weights of the epoch the recipe's selection rule prefers are kept
(or a greedy soup of the best epochs, or an ensemble of them).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from tqdm.auto import tqdm

from .augment import normalize, to_float
from .data import Split
from .evaluate import predict_logits, probabilities, task_loss
from .metrics import point_auc
from .models import GROUP_NAMES, EpochEnsemble, group_modules, layer_groups
from .recipes import SELECT_BY, Recipe, plateau_step, step_plan, trainable_groups


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class History:
    """Per-epoch record of a training run."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    # The epochs in the kept model (a soup or an ensemble of them, best first; else just
    # best_epoch), and that model's validation loss and AUC.
    kept_epochs: list[int] = field(default_factory=list)
    kept_val: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Where the training time went: batch assembly + augmentation, forward/backward/step,
    # validation after each epoch (seconds).
    timings: dict = field(default_factory=lambda: {"augment": 0.0, "forward_backward": 0.0, "validate": 0.0})


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
    generator, augmentation = torch.Generator().manual_seed(seed), recipe.augmentation()
    mixup_rng = np.random.default_rng(seed)
    optimizer = make_optimizer(model, recipe)[0]
    freezer = GroupFreezer(model, recipe)
    per_epoch = steps_per_epoch(len(train), batch_size, recipe.near_equal_batches)
    total, head_only_steps = epochs * per_epoch, min(epochs, recipe.head_only_epochs) * per_epoch
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
    started, step, lr_scale, previous_val = time.perf_counter(), 0, 1.0, None
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, leave=False)
    for epoch in range(epochs):
        running, seen = 0.0, 0
        for index in batches(len(train), batch_size, generator, recipe.near_equal_batches, strata):
            if recipe.schedule == "one-cycle":
                trainable, rates, beta1 = step_plan(step, total, head_only_steps, recipe)
            else:
                trainable = trainable_groups(step, total, recipe)
                rates = {g: lr * lr_scale for g, lr in recipe.group_learning_rates().items()}
                beta1 = recipe.betas[0]
            if trainable != freezer.state:
                freezer.apply(trainable)
            freezer.set_train_mode()
            for param_group in optimizer.param_groups:
                param_group["lr"] = rates[param_group["name"]]
            set_momentum(optimizer, beta1)
            clock = time.perf_counter()
            images = to_float(train.images[index])
            images = augmentation(images, generator)
            targets = targets_for(task, labels[index], num_outputs)
            if recipe.label_smoothing > 0:
                targets = smooth(task, targets, recipe.label_smoothing)
            if recipe.mixup_alpha > 0:
                images, targets = mixup(images, targets, recipe.mixup_alpha, mixup_rng, generator)
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
        if recipe.schedule == "plateau":
            lr_scale = plateau_step(lr_scale * recipe.lr, previous_val, val_loss, recipe) / recipe.lr
            previous_val = val_loss
            if lr_scale * recipe.lr < recipe.plateau_min_lr:
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


def _lap(timings: dict, phase: str, since: float) -> float:
    """Add the time since ``since`` to ``timings[phase]``; return now."""
    now = time.perf_counter()
    timings[phase] += now - since
    return now


def _num_outputs(model: nn.Module) -> int:
    return model.get_classifier().out_features


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
