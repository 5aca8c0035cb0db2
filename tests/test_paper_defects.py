"""One test per defect of the paper's original code (see PAPER.md), written to fail on that code.

Defect 1 (evaluation loaded another arm's checkpoint) is the recipe contract in
test_recipe_contract.py; defects 6, 7 and 8 (crops, TTA, accuracy on logits) are in
test_augment.py and test_evaluate.py.
"""

import numpy as np
import pytest
import torch
from conftest import synthetic_split

from scarce.models.backbones import GROUP_NAMES, create_model, layer_groups, resample_weight_distribution
from scarce.training.loop import fit, make_optimizer, steps_per_epoch
from scarce.training.losses import mixup
from scarce.training.recipes import RECIPES, get_recipe
from scarce.training.schedules import step_plan


def test_2_weight_distribution_control_uses_the_real_standard_deviation():
    pretrained = create_model("efficientnet_lite0", "imagenet")
    original = {n: p.detach().clone() for n, p in pretrained.named_parameters()}
    resampled = resample_weight_distribution(pretrained, torch.Generator().manual_seed(0))
    groups = layer_groups(resampled)
    checked = 0
    for name, parameter in resampled.named_parameters():
        source = original[name]
        if name in groups.head:
            assert torch.equal(parameter, source)
            continue
        if source.numel() < 5000:  # sample std within 5% needs enough samples
            continue
        assert not torch.equal(parameter, source)
        assert parameter.std().item() == pytest.approx(source.std().item(), rel=0.05), name
        assert parameter.mean().item() == pytest.approx(source.mean().item(), abs=0.1 * source.std().item() + 1e-6)
        checked += 1
    assert checked > 30
    # The bug being guarded against: std set to the mean (for conv weights the mean is ~0).
    stem = original["conv_stem.weight"]
    assert abs(stem.mean().item()) < stem.std().item() / 2


@pytest.mark.parametrize("name", ["scratch", "scratch-regular"])
def test_3_scratch_arms_use_one_learning_rate_and_no_transfer(name):
    recipe = get_recipe(name)
    assert recipe.pretrained == "scratch"
    model = create_model("efficientnet_lite0", "scratch")
    optimizer, peaks = make_optimizer(model, recipe)
    assert len(set(peaks.values())) == 1
    assert len({group["lr"] for group in optimizer.param_groups}) == 1
    if recipe.schedule == "one-cycle":
        rates = step_plan(10, 100, 0, recipe)[1]
        assert len(set(rates.values())) == 1


def test_4_fastai_arm_cycles_beta1_in_the_betas_key_too():
    recipe = get_recipe("fastai-fine-tune")
    model = create_model("efficientnet_lite0", "scratch")
    betas = []
    fit(model, synthetic_split(32), synthetic_split(16, seed=1), "binary", recipe, 3, progress=False,
        on_step=lambda step, m, optimizer: betas.append(optimizer.param_groups[0]["betas"][0]))
    assert max(betas) > 0.93 and min(betas) < 0.87
    assert "momentum" not in make_optimizer(model, recipe)[0].param_groups[0]


def test_5_adamw_shrinks_weights_by_one_minus_lr_times_wd():
    recipe = get_recipe("fine-tune-all", optimizer="adamw", weight_decay=0.1, lr=0.01)
    model = create_model("efficientnet_lite0", "scratch")
    optimizer, _ = make_optimizer(model, recipe)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)  # no gradient: only the decay acts
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter, before[name] * (1 - 0.01 * 0.1), atol=1e-7), name


def test_9_plateau_policy_keeps_one_optimizer_and_its_state_across_epochs():
    recipe = get_recipe("regular")
    model = create_model("efficientnet_lite0", "scratch")
    seen = []

    def on_step(step, model, optimizer):
        first = optimizer.param_groups[-1]["params"][0]
        seen.append((id(optimizer), int(optimizer.state[first]["step"])))

    fit(model, synthetic_split(32), synthetic_split(16, seed=1), "binary", recipe, 3, progress=False, on_step=on_step)
    assert len({optimizer for optimizer, _ in seen}) == 1
    assert [count for _, count in seen] == list(range(1, len(seen) + 1))  # Adam's step count never restarts
    assert len(seen) == 3 * steps_per_epoch(32, 16)


@pytest.mark.parametrize("name", sorted(set(RECIPES) - {"feature-extractor"}))
def test_10_every_transfer_arm_really_unfreezes_everything(name):
    recipe = get_recipe(name)
    total, head_only = 100, 10 * recipe.head_only_epochs
    if recipe.schedule == "one-cycle":
        final = step_plan(total - 1, total, head_only, recipe)[0]
    else:
        final = {g: at is not None for g, at in zip(GROUP_NAMES, recipe.unfreeze_at)}
    assert all(final.values())


def test_feature_extractor_is_the_only_recipe_that_never_unfreezes_the_body():
    recipe = get_recipe("feature-extractor")
    assert step_plan(99, 100, 0, recipe)[0] == {"early": False, "late": False, "head": True}


def test_mixup_blends_images_and_targets_with_one_beta_draw_per_batch():
    images = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(8)])
    targets = torch.arange(8, dtype=torch.float32).view(8, 1)
    mixed, mixed_targets = mixup(images, targets, 0.4, np.random.default_rng(0), torch.Generator().manual_seed(0))
    lam = float(np.random.default_rng(0).beta(0.4, 0.4))
    # Images and targets are mixed with the same λ and the same partner.
    partner = (mixed[:, 0, 0, 0] - lam * images[:, 0, 0, 0]) / (1 - lam)
    assert torch.allclose(partner.round(), partner, atol=1e-4)
    assert torch.allclose(mixed_targets[:, 0], mixed[:, 0, 0, 0], atol=1e-5)


def test_head_dropout_and_batchnorm_option_are_applied():
    model = create_model("efficientnet_lite0", "scratch", drop_rate=0.3)
    assert model.drop_rate == 0.3
    recipe = get_recipe("gradual-unfreezing", frozen_batchnorm=False)
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    name = "blocks.0.0.bn1.running_mean"
    start = model.state_dict()[name].clone()
    changed = []
    fit(model, synthetic_split(32), synthetic_split(16, seed=1), "binary", recipe, 5, progress=False,
        on_step=lambda step, m, o: changed.append(not torch.equal(m.state_dict()[name], start)))
    assert changed[0]  # statistics of the still-frozen early body moved at step 0
