"""Learning-rate, momentum and unfreezing policies as pure functions of the step."""

from __future__ import annotations

import math

from ..models.backbones import GROUP_NAMES
from .recipes import Recipe


def one_cycle(step: int, total: int, peak: float, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, betas: tuple[float, float] = (0.95, 0.85)) -> tuple[float, float]:
    """Learning rate and Adam β1 at ``step`` of ``total`` under the one-cycle policy.

    Cosine warm-up from peak/div_factor to peak over the first ``pct_start`` of the steps, then
    cosine decay to peak/div_factor/final_div_factor; β1 moves the opposite way (high, low, high).
    """
    start = peak / div_factor
    end = start / final_div_factor
    high, low = betas
    warm = max(1, round(pct_start * total))
    if step < warm:
        t = step / warm
        return _cosine(start, peak, t), _cosine(high, low, t)
    t = min(1.0, (step - warm) / max(1, total - 1 - warm))
    return _cosine(peak, end, t), _cosine(low, high, t)


def _cosine(begin: float, finish: float, t: float) -> float:
    return finish + (begin - finish) * (1 + math.cos(math.pi * t)) / 2


def trainable_groups(step: int, total: int, recipe: Recipe) -> dict[str, bool]:
    """Which layer groups train at ``step``: those whose unfreeze point has been reached."""
    return {group: at is not None and step >= at * total for group, at in zip(GROUP_NAMES, recipe.unfreeze_at)}


def step_plan(step: int, total: int, head_only_steps: int, recipe: Recipe
              ) -> tuple[dict[str, bool], dict[str, float], float]:
    """Trainable groups, learning rate per group and β1 at ``step`` of a one-cycle recipe.

    The optional head-only phase comes first, with its own one-cycle; the recipe's main cycle,
    with discriminative rates and unfreezing, runs over the steps after it.
    """
    if step < head_only_steps:
        # fastai's fit_one_cycle defaults for this phase: div 25, final lr = peak / 1e5.
        lr, beta1 = one_cycle(step, head_only_steps, recipe.head_only_lr, recipe.head_only_pct_start,
                              25.0, 1e5 / 25.0, recipe.betas)
        return {"early": False, "late": False, "head": True}, dict.fromkeys(GROUP_NAMES, lr), beta1
    step, total = step - head_only_steps, total - head_only_steps
    rates, beta1 = {}, recipe.betas[0]
    for group, peak in recipe.group_learning_rates().items():
        rates[group], beta1 = one_cycle(step, total, peak, recipe.pct_start, recipe.div_factor,
                                        recipe.final_div_factor, recipe.betas)
    return trainable_groups(step, total, recipe), rates, beta1


def plateau_step(lr: float, previous_loss: float | None, loss: float, recipe: Recipe) -> float:
    """The next epoch's learning rate under the 'regular' policy: ÷10 when the val loss rose."""
    if previous_loss is not None and loss > previous_loss + recipe.plateau_threshold:
        return lr * recipe.plateau_factor
    return lr


# Schedule objects, in the shape of timm's schedulers: ``step_update(num_updates)`` before every
# optimizer step gives the plan for that step; ``step(epoch, val_loss)`` after every validation
# lets a per-epoch policy react. They are pure: no optimizer, no torch.

Plan = tuple[dict[str, bool], dict[str, float], float]  # trainable groups, lr per group, β1


class OneCycle:
    """The recipe's one-cycle over ``total`` steps, with discriminative rates and unfreezing."""

    def __init__(self, recipe: Recipe, total: int):
        self.recipe, self.total = recipe, total

    def step_update(self, num_updates: int) -> Plan:
        return step_plan(num_updates, self.total, 0, self.recipe)

    def step(self, epoch: int, val_loss: float) -> None:
        """One-cycle does not react to validation."""

    stop = False


class HeadOnlyPhase:
    """fastai's fine_tune: a head-only one-cycle over ``head_steps``, then ``main`` after it."""

    def __init__(self, recipe: Recipe, head_steps: int, total: int, main):
        self.recipe, self.head_steps, self.total, self.main = recipe, head_steps, total, main

    def step_update(self, num_updates: int) -> Plan:
        if num_updates < self.head_steps:
            return step_plan(num_updates, self.total, self.head_steps, self.recipe)
        return self.main.step_update(num_updates - self.head_steps)

    def step(self, epoch: int, val_loss: float) -> None:
        self.main.step(epoch, val_loss)

    @property
    def stop(self) -> bool:
        return self.main.stop


class Plateau:
    """The 'regular' policy: constant lr per group, ÷ plateau_factor when the val loss rose."""

    def __init__(self, recipe: Recipe, total: int):
        self.recipe, self.total = recipe, total
        self.scale, self.previous_loss = 1.0, None
        self.base = recipe.group_learning_rates()

    def step_update(self, num_updates: int) -> Plan:
        rates = {group: lr * self.scale for group, lr in self.base.items()}
        return trainable_groups(num_updates, self.total, self.recipe), rates, self.recipe.betas[0]

    def step(self, epoch: int, val_loss: float) -> None:
        lr = self.recipe.lr
        self.scale = plateau_step(self.scale * lr, self.previous_loss, val_loss, self.recipe) / lr
        self.previous_loss = val_loss

    @property
    def stop(self) -> bool:
        """True once the learning rate fell under ``plateau_min_lr``: training should end."""
        return self.scale * self.recipe.lr < self.recipe.plateau_min_lr


def make_schedule(recipe: Recipe, steps_per_epoch: int, epochs: int):
    """The schedule object for ``recipe`` over ``epochs`` of ``steps_per_epoch`` steps."""
    total = epochs * steps_per_epoch
    if recipe.schedule == "plateau":
        return Plateau(recipe, total)
    head_steps = min(epochs, recipe.head_only_epochs) * steps_per_epoch
    if head_steps == 0:
        return OneCycle(recipe, total)
    return HeadOnlyPhase(recipe, head_steps, total, OneCycle(recipe, total - head_steps))
