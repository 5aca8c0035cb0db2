"""Recipes: how a model is trained, as data plus a few small pure functions.

A recipe says which optimizer and learning-rate policy to use, how the learning rate differs
between the three layer groups (early body, late body, head), and when each group becomes
trainable. Adding a recipe means adding one entry to ``RECIPES``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, replace

from typing import TYPE_CHECKING

from ..errors import ScarceError

if TYPE_CHECKING:  # torch is imported only by the methods that build an augmentation
    from ..data.augment import Augmentation


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
    # "adam", "adamw" (decoupled weight decay) or "sgd" (momentum = β1, cycled like Adam's β1;
    # weight decay as L2 on the gradient).
    optimizer: str = "adam"
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
    # "pretrained" keeps the weights; "weight-distribution" re-samples every body tensor from
    # N(mean, std) of the pretrained tensor (the paper's control: is transfer only a good init?).
    initialization: str = "pretrained"
    # An optional first phase that trains only the head for this many epochs with its own
    # one-cycle (fastai's fine_tune); the recipe's schedule then runs over the remaining epochs.
    head_only_epochs: int = 0
    head_only_lr: float = 2e-3
    head_only_pct_start: float = 0.99
    # Images per step; 0 = the run's --batch-size. Same epochs, so the same images seen and the
    # same compute, in more (smaller) steps.
    batch_size: int = 0
    # Split each epoch into batches of near-equal size (at most batch_size) instead of full batches
    # and a remainder: no step on a handful of images (noisy gradient and BatchNorm statistics).
    even_batches: bool = False
    # Near-equal batches (as even_batches) that also hold each class in near-equal numbers, for
    # binary and multi-class tasks (multi-label: even batches only): every step sees both classes.
    stratified_batches: bool = False
    # Sharpness-aware minimisation: each step's gradient is taken at the weights moved this far
    # (L2) uphill, which favours flat minima; 0 = off. Twice the forward/backward work per step.
    sam_rho: float = 0.0
    # Augmentation on top of the fixed rotation ±10°, flip and 4-pixel shift (scarce/augment.py):
    # zoom factor 1 ± zoom, brightness offset ± brightness (0..1 images), contrast factor 1 ± contrast.
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    rotation: float = 10.0  # the standard policy's rotation range, ± degrees (0 = none)
    flip: bool = True  # the standard policy's horizontal flip (p = 0.5); False for side-specific anatomy
    shift: int = 4  # the standard policy's shift: random crop after this many pixels of zero padding
    # Random erasing (cutout): with this probability per image, a rectangle of 2-33 % of its area
    # (aspect 0.3-3.3, torchvision's RandomErasing defaults) is set to black; 0 = off.
    erase: float = 0.0
    mixup_alpha: float = 0.0  # MixUp with λ ~ Beta(α, α) per batch; 0 = off
    head_dropout: float = 0.0  # dropout before the classifier
    # How the new head starts: "random" (timm's initialisation) or "linear-probe": a logistic
    # regression fitted to the starting model's features of the clean training images (LP-FT,
    # Kumar et al. 2022), so fine-tuning starts from a head that already fits them.
    head_init: str = "random"
    drop_path: float = 0.0  # stochastic depth: each residual block skipped with up to this probability
    # Keep every BatchNorm layer's running statistics as loaded (ImageNet's or the upstream
    # model's) instead of re-estimating them from small training batches; its weights still train.
    keep_batchnorm_statistics: bool = False
    # Before each validation, re-estimate the BatchNorm running statistics from the clean
    # (un-augmented) training images, as one pass (torch's swa_utils.update_bn), instead of the
    # moving average of the last augmented batches.
    recompute_batchnorm: bool = False
    label_smoothing: float = 0.0  # targets pulled towards uniform by this much (0 = off)
    # Weight of a pairwise ranking loss added to the task's loss: softplus(s_neg − s_pos) over every
    # positive-negative pair in the batch, a smooth surrogate of 1 − AUC (0 = off).
    pairwise: float = 0.0
    # Batch Spectral Shrinkage (Chen et al. 2019): this weight times the square of the smallest
    # singular value of the batch's pooled features is added to the loss, damping the feature
    # directions that fine-tuning on few images picks up least reliably (0 = off).
    bss: float = 0.0
    # Exponential moving average of the weights, updated after every step with this decay
    # (0 = off). Validation, selection and the saved model then use the averaged weights.
    ema_decay: float = 0.0
    # L2-SP (Li et al. 2018), decoupled: after every step each body weight is pulled back toward
    # its starting (pretrained) value, w -= lr * l2_sp * (w - w_start); the head is not. 0 = off.
    l2_sp: float = 0.0
    # Which epoch's weights to keep: the lowest validation loss ("val_loss") or the highest
    # validation AUC ("val_auc", ties broken by the lower loss), or the last epoch ("last").
    # Loss also rewards calibration.
    select_by: str = "val_loss"
    # Greedy weight soup: the kept epoch's weights are averaged with those of the next-best epochs
    # (up to this many epochs in all, best first), each joining only if the average's validation
    # score by ``select_by`` does not get worse. 0 or 1 = off. One model, no extra inference cost.
    soup: int = 0
    # Epoch ensemble (a snapshot ensemble of one run): the kept model holds the weights of this
    # many best epochs by ``select_by`` (best first) and outputs the mean of their logits. No
    # extra training; this many times the inference work and the file size. 0 or 1 = off.
    ensemble_epochs: int = 0
    # What is trained: "cnn" (the backbone, by the fields above) or "radiomics" (texture features
    # and a logistic regression, scarce/radiomics.py; the CNN fields do not apply).
    model: str = "cnn"

    def group_learning_rates(self) -> dict[str, float]:
        """Peak learning rate per layer group: lr·ratio², lr·ratio, lr."""
        return {"early": self.lr * self.group_ratio ** 2, "late": self.lr * self.group_ratio, "head": self.lr}

    def batch_size_for(self, run_batch_size: int) -> int:
        """Images per step: the recipe's own batch size, or the run's when it has none."""
        return self.batch_size or run_batch_size

    @property
    def near_equal_batches(self) -> bool:
        """Whether each epoch is cut into batches of near-equal size (stratified batches are too)."""
        return self.even_batches or self.stratified_batches

    def augmentation(self) -> Augmentation:
        """The training augmentation: the standard policy (with the recipe's rotation range, flip and
        shift) plus the recipe's zoom, brightness, contrast and random erasing."""
        from ..data.augment import Augmentation

        return Augmentation(rotation=self.rotation, flip=self.flip, shift=self.shift, zoom=self.zoom,
                            brightness=self.brightness, contrast=self.contrast, erase=self.erase)

    def tta_views(self) -> Augmentation:
        """The views test-time augmentation draws: the training geometry (rotation, flip, shift), so
        a recipe trained without flips is never tested on flipped images; no zoom, intensity or erasing."""
        return recipe_tta_views(self.to_dict())

    def to_dict(self) -> dict:
        return asdict(self)


def recipe_tta_views(recipe: dict) -> Augmentation:
    """TTA views for a recipe as stored in run.json (fields it lacks take the standard policy's value)."""
    from ..data.augment import Augmentation

    standard = Augmentation()
    return Augmentation(rotation=float(recipe.get("rotation", standard.rotation)),
                        flip=bool(recipe.get("flip", standard.flip)), shift=int(recipe.get("shift", standard.shift)))


_ALL_TRAINABLE = (0.0, 0.0, 0.0)


_PAPER = Recipe(
    name="gradual-unfreezing",
    description="The paper's best: one-cycle, discriminative learning rates (lr/9, lr/3, lr), head "
                "only at first, late body from 10% and early body from 20% of the iterations.",
)


_SMALL_DATA = Recipe(name="small-data", description="scarce's default: pretrained, every layer trainable from the first "
    "step with one learning rate, one-cycle with peak 3e-3 (Adam, β1 0.95→0.85→0.95), batches of at "
    "most 8 images of near-equal size, and the 5 epochs with the highest validation AUC kept as one "
    "model that averages their logits (an epoch ensemble). Chosen on validation AUC (docs/benchmarks.md).",
    lr=3e-3, group_ratio=1.0, unfreeze_at=_ALL_TRAINABLE, select_by="val_auc", batch_size=8,
    even_batches=True, ensemble_epochs=5)


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in [
    _SMALL_DATA,
    replace(_SMALL_DATA, name="small-data-b16", batch_size=0, even_batches=False, ensemble_epochs=0,
            description="small-data as it was before batches of 8 and the epoch ensemble (the default "
                        "until the search of docs/benchmarks.md): the run's batch size (16), full batches "
                        "and a remainder, the one epoch with the highest validation AUC kept."),
    _PAPER,
    Recipe(name="regular", description="The paper's baseline: everything trainable, Adam lr 1e-3, "
           "divided by 10 when the validation loss rose by more than 1e-3, stop under 1e-6.",
           schedule="plateau", group_ratio=1.0, unfreeze_at=_ALL_TRAINABLE, betas=(0.9, 0.9)),
    Recipe(name="one-cycle", description="The one-cycle policy alone: all layers trainable from the "
           "start, one learning rate (the paper's E3 arm).", group_ratio=1.0, unfreeze_at=_ALL_TRAINABLE),
    Recipe(name="fine-tune-all", description="Transfer by fine-tuning everything: pretrained, all layers "
           "trainable, one learning rate, one-cycle (an E4 arm).", group_ratio=1.0, unfreeze_at=_ALL_TRAINABLE),
    Recipe(name="feature-extractor", description="Transfer as a fixed feature extractor: the body stays "
           "frozen, only the head trains, one-cycle (an E4 arm).", unfreeze_at=(None, None, 0.0)),
    Recipe(name="fastai-fine-tune", description="fastai's fine_tune(9, base_lr=2e-3, freeze_epochs=1) "
           "with its defaults: one epoch head only (one-cycle, lr 2e-3, pct_start 0.99), then everything "
           "with one-cycle from lr/100 (early) to lr = 1e-3 (head), pct_start 0.3, div 5; AdamW wd 0.01.",
           lr=1e-3, group_ratio=0.1, unfreeze_at=_ALL_TRAINABLE, optimizer="adamw", weight_decay=0.01,
           div_factor=5.0, final_div_factor=2e4, head_only_epochs=1, head_only_lr=2e-3,
           frozen_batchnorm=False),
    Recipe(name="weight-distribution", description="The paper's control: every pretrained tensor is "
           "replaced by samples from N(mean, std) of that tensor, then trained like gradual-unfreezing; "
           "if it matches transfer, transfer was only a good initialisation (E6).",
           initialization="weight-distribution"),
    Recipe(name="scratch", description="No transfer: random initialisation, all layers trainable with "
           "one learning rate (no discriminative ratios for random layers), one-cycle.",
           group_ratio=1.0, unfreeze_at=_ALL_TRAINABLE, pretrained="scratch"),
    Recipe(name="scratch-regular", description="No transfer with the 'regular' plateau policy: the paper's "
           "E3 baseline arm.", schedule="plateau", group_ratio=1.0, unfreeze_at=_ALL_TRAINABLE,
           betas=(0.9, 0.9), pretrained="scratch"),
    Recipe(name="radiomics-lr", description="The paper's radiomics baseline, no CNN: 79 features per image "
           "(GLCM contrast, dissimilarity, homogeneity, energy, correlation, ASM at distances 1, 2, 4, 6 and "
           "angles 0, π/4, π/2; intensity mean, std, central moments 2-5, entropy), standardised, "
           "cross-validated L2 logistic regression (E1, E9).", model="radiomics"),
]}


DEFAULT_RECIPE = "small-data"


SELECT_BY = ("val_loss", "val_auc", "last")


HEAD_INITS = ("random", "linear-probe")


# Every text setting and the values it may take, checked once in get_recipe.
CHOICES = {"schedule": ("one-cycle", "plateau"), "optimizer": ("adam", "adamw", "sgd"),
           "initialization": ("pretrained", "weight-distribution"), "select_by": SELECT_BY,
           "head_init": HEAD_INITS, "model": ("cnn", "radiomics")}


# Every number setting's allowed range, checked once in get_recipe: (settings, low, high, low
# included, high included, the range in words).
LIMITS = [
    (("lr", "group_ratio", "div_factor", "final_div_factor", "head_only_lr"), 0, math.inf, False, False,
     "a number above 0"),
    (("weight_decay", "plateau_threshold", "plateau_min_lr", "sam_rho", "mixup_alpha", "pairwise", "bss", "l2_sp",
      "head_only_epochs", "soup"), 0, math.inf, True, False, "0 or more"),
    (("pct_start", "head_only_pct_start"), 0, 1, False, False, "between 0 and 1 (both excluded)"),
    (("plateau_factor",), 0, 1, False, True, "above 0 and at most 1"),
    (("zoom", "head_dropout", "drop_path", "label_smoothing", "ema_decay"), 0, 1, True, False,
     "at least 0 and below 1"),
    (("brightness", "contrast", "erase"), 0, 1, True, True, "between 0 and 1"),
    (("rotation",), 0, 180, True, True, "between 0 and 180 degrees"),
]


def get_recipe(name: str, /, **overrides) -> Recipe:
    """The registered recipe ``name``, with ``overrides`` replacing its fields."""
    if not isinstance(name, str):
        raise ScarceError(f"A recipe is given by its name (text), not {name!r}; see `scarce recipes`.")
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else f" Known recipes: {', '.join(RECIPES)}."
        raise ScarceError(f"Unknown recipe '{name}'.{hint}")
    fields = set(Recipe.__dataclass_fields__) - {"name", "description"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = (f"Did you mean '{close[0]}'?" if close else f"Known: {', '.join(sorted(fields))}.")
        raise ScarceError(f"Unknown recipe setting(s) {', '.join(unknown)}. {hint}")
    for key, value in overrides.items():
        _check_type(key, value, Recipe.__dataclass_fields__[key].default)
    recipe = replace(RECIPES[name], **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    for key, allowed in CHOICES.items():
        if getattr(recipe, key) not in allowed:
            raise ScarceError(f"Recipe setting {key} must be one of {', '.join(allowed)}, not {getattr(recipe, key)!r}.")
    for keys, low, high, low_in, high_in, words in LIMITS:
        for key in keys:
            value = getattr(recipe, key)
            if not ((low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
                raise ScarceError(f"Recipe setting {key} must be {words}, not {value!r}.")
    if not all(is_number(beta) and 0 <= beta < 1 for beta in recipe.betas):
        raise ScarceError(f"Recipe setting betas must be two numbers at least 0 and below 1, not {list(recipe.betas)}.")
    starts = [at for at in recipe.unfreeze_at if at is not None]
    if not all(is_number(at) and at >= 0 for at in starts) \
            or 0 not in starts:
        raise ScarceError(f"Recipe setting unfreeze_at must be three fractions 0 or more (above 1 = never), at "
                          f"least one of them 0 so that a group trains from the start, not {list(recipe.unfreeze_at)}.")
    if recipe.pretrained is not None and not isinstance(recipe.pretrained, str):
        raise ScarceError(f"Recipe setting pretrained must be imagenet, scratch or a path, not {recipe.pretrained!r}.")
    if recipe.soup > 1 and recipe.select_by == "last":
        raise ScarceError("Recipe setting soup needs select_by val_loss or val_auc to rank epochs, not 'last'.")
    if recipe.soup > 1 and recipe.ensemble_epochs > 1:
        raise ScarceError("Recipe settings soup and ensemble_epochs exclude each other: average the "
                          "epochs' weights (soup) or their logits (ensemble_epochs), not both; set "
                          "ensemble_epochs = 0 to use a soup.")
    if recipe.ensemble_epochs < 0:
        raise ScarceError(f"Recipe setting ensemble_epochs must be 0 (off) or more, not {recipe.ensemble_epochs}.")
    if recipe.shift < 0:
        raise ScarceError(f"Recipe setting shift must be 0 (none) or more pixels, not {recipe.shift}.")
    if recipe.batch_size < 0:
        raise ScarceError(f"Recipe setting batch_size must be 0 (the run's) or more, not {recipe.batch_size}.")
    return recipe


def is_number(value) -> bool:
    """A plain int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_type(key: str, value, default) -> None:
    """Refuse an override of the wrong kind (``lr = "fast"``) before it reaches arithmetic."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):
        ok, kind = is_number(value) and (isinstance(value, int) or isinstance(default, float)), \
            "a number" if isinstance(default, float) else "a whole number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "text"
    elif isinstance(default, tuple):
        ok, kind = isinstance(value, (list, tuple)) and len(value) == len(default), f"a list of {len(default)} values"
    else:
        return
    if not ok:
        raise ScarceError(f"Recipe setting {key} must be {kind}, not {value!r}.")
