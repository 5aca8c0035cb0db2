"""Recipes: how a model is trained, as data plus a few small pure functions.

A recipe says which optimizer and learning-rate policy to use, how the learning rate differs
between the three layer groups (early body, late body, head), and when each group becomes
trainable. Adding a recipe means adding one entry to ``RECIPES``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, replace

from .errors import ScarceError
from .models import GROUP_NAMES


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    schedule: str = "one-cycle"  # "one-cycle" (per iteration) or "plateau" (per epoch)
    lr: float = 1e-3  # the head's learning rate (its peak, for one-cycle)
    group_ratio: float = 1 / 3  # late body gets lr·ratio, early body lr·ratio²; 1.0 = one rate
    # Fraction of all training iterations after which (early, late, head) become trainable;
    # 0 = from the start, None = never (stays frozen).
    unfreeze_at: tuple[float | None, float | None, float | None] = (0.2, 0.1, 0.0)
    optimizer: str = "adam"  # "adam" or "adamw" (decoupled weight decay)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.95, 0.85)  # β1 at the ends / at the peak of the cycle; β2 = 0.99
    pct_start: float = 0.3  # share of iterations spent warming up
    div_factor: float = 25.0  # start lr = peak / div_factor
    final_div_factor: float = 1e4  # final lr = start lr / final_div_factor
    plateau_factor: float = 0.1  # plateau: multiply lr by this when the val loss rose
    plateau_threshold: float = 1e-3  # … by more than this
    plateau_min_lr: float = 1e-6  # plateau: stop once lr falls below this
    frozen_batchnorm: bool = True  # frozen groups also keep their BatchNorm statistics
    pretrained: str | None = None  # force a source ("scratch"); None = the run's --pretrained

    def group_learning_rates(self) -> dict[str, float]:
        """Peak learning rate per layer group: lr·ratio², lr·ratio, lr."""
        return {"early": self.lr * self.group_ratio ** 2, "late": self.lr * self.group_ratio, "head": self.lr}

    def to_dict(self) -> dict:
        return asdict(self)


def one_cycle(step: int, total: int, peak: float, recipe: Recipe) -> tuple[float, float]:
    """Learning rate and Adam β1 at ``step`` of ``total`` under the one-cycle policy.

    Cosine warm-up from peak/div_factor to peak over the first ``pct_start`` of the steps, then
    cosine decay to peak/div_factor/final_div_factor; β1 moves the opposite way (high, low, high).
    """
    start = peak / recipe.div_factor
    end = start / recipe.final_div_factor
    high, low = recipe.betas
    warm = max(1, round(recipe.pct_start * total))
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


def plateau_step(lr: float, previous_loss: float | None, loss: float, recipe: Recipe) -> float:
    """The next epoch's learning rate under the 'regular' policy: ÷10 when the val loss rose."""
    if previous_loss is not None and loss > previous_loss + recipe.plateau_threshold:
        return lr * recipe.plateau_factor
    return lr


_PAPER = Recipe(
    name="gradual-unfreezing",
    description="The paper's best: one-cycle, discriminative learning rates (lr/9, lr/3, lr), head "
                "only at first, late body from 10% and early body from 20% of the iterations.",
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in [
    _PAPER,
    Recipe(name="regular", description="The paper's baseline: everything trainable, Adam lr 1e-3, "
           "divided by 10 when the validation loss rose by more than 1e-3, stop under 1e-6.",
           schedule="plateau", group_ratio=1.0, unfreeze_at=(0.0, 0.0, 0.0), betas=(0.9, 0.9)),
    Recipe(name="one-cycle", description="The one-cycle policy alone: all layers trainable, one learning rate.",
           group_ratio=1.0, unfreeze_at=(0.0, 0.0, 0.0)),
    Recipe(name="fine-tune-all", description="Pretrained, everything trainable from the start, one "
           "learning rate, one-cycle.", group_ratio=1.0, unfreeze_at=(0.0, 0.0, 0.0)),
    Recipe(name="feature-extractor", description="Body frozen (a fixed feature extractor), only the "
           "head trains, one-cycle.", unfreeze_at=(None, None, 0.0)),
    Recipe(name="scratch", description="No transfer: random initialisation, all layers trainable with "
           "one learning rate (no discriminative ratios for random layers), one-cycle.",
           group_ratio=1.0, unfreeze_at=(0.0, 0.0, 0.0), pretrained="scratch"),
]}
DEFAULT_RECIPE = "gradual-unfreezing"


def get_recipe(name: str, **overrides) -> Recipe:
    """The registered recipe ``name``, with ``overrides`` replacing its fields."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else f" Known recipes: {', '.join(RECIPES)}."
        raise ScarceError(f"Unknown recipe '{name}'.{hint}")
    fields = set(Recipe.__dataclass_fields__) - {"name", "description"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ScarceError(f"Unknown recipe setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}.")
    return replace(RECIPES[name], **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
