"""Recipes and the training loop: schedule values, learning-rate ratios, gradual unfreezing."""

import copy
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_split
from torch import nn

from scarce.artifacts import save_weights
from scarce.data.augment import Augmentation, normalize, to_float
from scarce.errors import ScarceError
from scarce.models.backbones import EpochEnsemble, create_model, layer_groups, load_trained
from scarce.training.history import History
from scarce.training.loop import batch_strata, batches, fit, make_optimizer, steps_per_epoch
from scarce.training.losses import pairwise_ranking_loss, smooth, step_loss, training_loss
from scarce.training.recipes import get_recipe, recipe_tta_views
from scarce.training.regularizers import linear_probe_head, pull_to_start, sharpness_aware_gradients
from scarce.training.schedules import one_cycle, plateau_step, trainable_groups
from scarce.training.selection import greedy_soup, validation_score

PAPER = get_recipe("gradual-unfreezing")


def test_one_cycle_starts_at_peak_over_25_peaks_at_30_percent_and_ends_near_zero():
    total, peak = 1000, 1e-3
    lrs = [one_cycle(step, total, peak)[0] for step in range(total)]
    assert lrs[0] == pytest.approx(peak / 25)
    assert max(lrs) == pytest.approx(peak)
    assert lrs.index(max(lrs)) == 300
    assert lrs[-1] == pytest.approx(peak / 25 / 1e4)
    # Cosine shape: halfway through the warm-up the lr is halfway between start and peak.
    assert lrs[150] == pytest.approx((peak / 25 + peak) / 2)
    assert all(a <= b for a, b in zip(lrs[:300], lrs[1:301]))
    assert all(a >= b for a, b in zip(lrs[300:], lrs[301:]))


def test_beta1_cycles_inversely_to_the_learning_rate():
    total = 100
    betas = [one_cycle(step, total, 1e-3)[1] for step in range(total)]
    assert betas[0] == pytest.approx(0.95)
    assert betas[30] == pytest.approx(0.85)
    assert betas[-1] == pytest.approx(0.95)
    assert min(betas) == pytest.approx(0.85)


def test_discriminative_learning_rates_are_lr_over_9_lr_over_3_and_lr():
    model = create_model("efficientnet_lite0", "scratch")
    optimizer, peaks = make_optimizer(model, PAPER)
    assert peaks == pytest.approx({"early": 1e-3 / 9, "late": 1e-3 / 3, "head": 1e-3})
    by_name = {group["name"]: group for group in optimizer.param_groups}
    groups = layer_groups(model)
    for name in ("early", "late", "head"):
        assert len(by_name[name]["params"]) == len(getattr(groups, name))
    one_rate = make_optimizer(model, get_recipe("scratch"))[1]
    assert len(set(one_rate.values())) == 1


def test_unfreeze_points_are_10_and_20_percent_of_iterations():
    total = 50
    late_from = min(s for s in range(total) if trainable_groups(s, total, PAPER)["late"])
    early_from = min(s for s in range(total) if trainable_groups(s, total, PAPER)["early"])
    assert (late_from, early_from) == (5, 10)
    assert trainable_groups(0, total, PAPER) == {"early": False, "late": False, "head": True}
    never = get_recipe("feature-extractor")
    assert not any(trainable_groups(s, total, never)["early"] for s in range(total))


def _train_and_watch(recipe, epochs=5, n=32):
    """Run fit on tiny data and record, after every step, one weight and one BN buffer per group."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    watched = {"early": "blocks.0.0.conv_dw.weight", "late": "blocks.5.0.conv_pw.weight",
               "head": "classifier.weight"}
    buffers = {"early": "blocks.0.0.bn1.running_mean", "late": "blocks.5.0.bn1.running_mean"}
    trace = []

    def on_step(step, model, optimizer):
        state = model.state_dict()
        trace.append({
            "weights": {g: state[n].clone() for g, n in watched.items()},
            "buffers": {g: state[n].clone() for g, n in buffers.items()},
            "betas": [g["betas"][0] for g in optimizer.param_groups],
            "lrs": [g["lr"] for g in optimizer.param_groups],
        })

    initial = {g: model.state_dict()[n].clone() for g, n in watched.items()}
    initial_buffers = {g: model.state_dict()[n].clone() for g, n in buffers.items()}
    fit(model, synthetic_split(n), synthetic_split(16, seed=1), "binary", recipe, epochs, batch_size=16,
        progress=False, on_step=on_step)
    return initial, initial_buffers, trace


def test_frozen_groups_stay_unchanged_until_their_unfreeze_step_then_change():
    initial, initial_buffers, trace = _train_and_watch(PAPER)
    total = len(trace)
    assert total == 5 * steps_per_epoch(32, 16) == 10
    # Late body unfreezes at step 1 (10%), early body at step 2 (20%).
    for group, first in (("late", 1), ("early", 2)):
        for step in range(first):
            assert torch.equal(trace[step]["weights"][group], initial[group]), (group, step)
            assert torch.equal(trace[step]["buffers"][group], initial_buffers[group]), (group, step)
        assert not torch.equal(trace[first]["weights"][group], initial[group]), group
        assert not torch.equal(trace[first]["buffers"][group], initial_buffers[group]), group
    assert not torch.equal(trace[0]["weights"]["head"], initial["head"])


def test_beta1_really_cycles_in_the_optimizer_betas_during_training():
    _, _, trace = _train_and_watch(PAPER)
    total = len(trace)
    expected = [one_cycle(step, total, 1e-3)[1] for step in range(total)]
    observed = [entry["betas"][-1] for entry in trace]
    assert observed == pytest.approx(expected)
    assert max(observed) > 0.94 and min(observed) < 0.86
    ratios = [entry["lrs"][2] / entry["lrs"][0] for entry in trace]
    assert ratios == pytest.approx([9.0] * total)


def test_plateau_divides_by_ten_only_when_the_loss_rose_by_more_than_the_threshold():
    recipe = get_recipe("regular")
    assert plateau_step(1e-3, None, 0.5, recipe) == 1e-3
    assert plateau_step(1e-3, 0.5, 0.5005, recipe) == 1e-3
    assert plateau_step(1e-3, 0.5, 0.502, recipe) == pytest.approx(1e-4)


def test_regular_recipe_trains_all_groups_with_one_rate_and_keeps_its_optimizer():
    recipe = get_recipe("regular")
    initial, _, trace = _train_and_watch(recipe, epochs=2)
    assert all(not torch.equal(trace[0]["weights"][g], initial[g]) for g in initial)
    assert all(len(set(entry["lrs"])) == 1 for entry in trace)


def test_plateau_recipes_follow_unfreeze_at_like_one_cycle_ones_and_above_1_means_never():
    recipe = get_recipe("regular", unfreeze_at=[2.0, 0.5, 0.0])  # early never, late from half-way
    initial, _, trace = _train_and_watch(recipe, epochs=2)  # 4 steps
    assert all(torch.equal(entry["weights"]["early"], initial["early"]) for entry in trace)
    assert torch.equal(trace[1]["weights"]["late"], initial["late"])
    assert not torch.equal(trace[2]["weights"]["late"], initial["late"])
    assert not torch.equal(trace[0]["weights"]["head"], initial["head"])


def test_best_epoch_is_the_one_with_the_lowest_validation_loss():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    best, history = fit(model, synthetic_split(32), synthetic_split(16, seed=1), "binary", PAPER, 4,
                        progress=False)
    losses = [e["val_loss"] for e in history.epochs]
    assert history.best_epoch == losses.index(min(losses)) + 1
    assert set(best) == set(model.state_dict())


def test_unknown_recipe_suggests_the_closest_name():
    with pytest.raises(ScarceError, match="Unknown recipe 'gradual-unfreeze'. Did you mean 'gradual-unfreezing'"):
        get_recipe("gradual-unfreeze")
    with pytest.raises(ScarceError, match="Unknown recipe setting"):
        get_recipe("regular", learning_rate=1)
    assert get_recipe("regular", lr=3e-4).lr == 3e-4
    assert math.isclose(get_recipe("gradual-unfreezing").group_ratio, 1 / 3)


@pytest.mark.parametrize("select_by", ["val_loss", "val_auc", "last"])
def test_kept_epoch_follows_the_recipes_selection_rule(select_by):
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    recipe = get_recipe("scratch", select_by=select_by, lr=3e-3)
    state, history = fit(model, synthetic_split(32, seed=0), synthetic_split(24, seed=1), "binary", recipe,
                         epochs=4, batch_size=8, seed=0, progress=False)
    losses = [e["val_loss"] for e in history.epochs]
    aucs = [e["val_auc"] for e in history.epochs]
    assert all(0.0 <= a <= 1.0 for a in aucs)
    if select_by == "val_loss":
        assert history.best_epoch == 1 + losses.index(min(losses))
    elif select_by == "last":
        assert history.best_epoch == 4
    else:  # highest AUC; among equal AUCs the lower loss
        best = max(range(4), key=lambda i: (aucs[i], -losses[i]))
        assert history.best_epoch == best + 1
    # the returned weights are the kept epoch's, in the standard (contiguous) layout's values
    assert set(state) == set(model.state_dict())
    assert set(history.timings) == {"augment", "forward_backward", "validate"}
    assert all(v > 0 for v in history.timings.values())


@pytest.mark.parametrize("key, value, allowed", [
    ("select_by", "val_accuracy", "val_loss, val_auc, last"),
    ("optimizer", "lion", "adam, adamw, sgd"),
    ("schedule", "cosine", "one-cycle, plateau"),
    ("initialization", "random", "pretrained, weight-distribution"),
    ("model", "vit", "cnn, radiomics")])
def test_unknown_text_setting_is_one_sentence_naming_the_allowed_values(key, value, allowed):
    with pytest.raises(ScarceError, match=f"^Recipe setting {key} must be one of {allowed}, not '{value}'.$"):
        get_recipe("regular", **{key: value})


@pytest.mark.parametrize("key, value, words", [
    ("lr", -3e-3, "a number above 0"), ("div_factor", 0.0, "a number above 0"),
    ("weight_decay", -0.1, "0 or more"), ("pct_start", 1.5, "between 0 and 1 (both excluded)"),
    ("plateau_factor", 0.0, "above 0 and at most 1"), ("label_smoothing", 1.5, "at least 0 and below 1"),
    ("ema_decay", 1.0, "at least 0 and below 1"), ("erase", 1.5, "between 0 and 1"),
    ("rotation", 720.0, "between 0 and 180 degrees")])
def test_a_number_setting_outside_its_range_is_one_sentence(key, value, words):
    with pytest.raises(ScarceError, match=f"^Recipe setting {key} must be {re.escape(words)}, not {value!r}.$"):
        get_recipe("small-data", **{key: value})
    get_recipe("small-data", **{key: {"lr": 1e-2, "div_factor": 10.0, "weight_decay": 0.0, "pct_start": 0.5,
                                      "plateau_factor": 1.0, "label_smoothing": 0.0, "ema_decay": 0.0,
                                      "erase": 1.0, "rotation": 180.0}[key]})  # the edge that is allowed


@pytest.mark.parametrize("overrides, message", [
    ({"betas": [1.5, 0.85]}, "betas must be two numbers at least 0 and below 1"),
    ({"unfreeze_at": ["a", "b", "c"]}, "unfreeze_at must be three fractions 0 or more"),
    ({"unfreeze_at": [0.5, 0.5, 2.0]}, "at least one of them 0 so that a group trains from the start"),
    ({"pretrained": 5}, "pretrained must be imagenet, scratch or a path, not 5"),
    ({"name": "mine"}, "Unknown recipe setting(s) name")])
def test_settings_that_cannot_train_are_refused(overrides, message):
    with pytest.raises(ScarceError, match=re.escape(message)):
        get_recipe("small-data", **overrides)
    with pytest.raises(ScarceError, match="A recipe is given by its name"):
        get_recipe(5)


def test_batch_spectral_shrinkage_adds_the_squared_smallest_singular_value_of_the_pooled_features():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch").eval()
    inputs, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8, 1)).float()
    plain = step_loss(model, inputs, targets, "binary", get_recipe("small-data"))
    features = model.forward_head(model.forward_features(inputs), pre_logits=True)
    smallest = np.linalg.svd(features.detach().numpy(), compute_uv=False).min()
    shrunk = step_loss(model, inputs, targets, "binary", get_recipe("small-data", bss=0.01))
    assert plain.item() == pytest.approx(training_loss("binary", model(inputs), targets).item())
    assert shrunk.item() - plain.item() == pytest.approx(0.01 * smallest ** 2, rel=1e-4)
    shrunk.backward()  # the term has a gradient, through the body
    assert model.conv_stem.weight.grad is not None and model.conv_stem.weight.grad.abs().sum() > 0


def test_sgd_steps_are_momentum_sgd_steps_and_its_momentum_cycles_like_adams_beta1():
    recipe = get_recipe("fine-tune-all", optimizer="sgd", lr=0.01, weight_decay=0.1)
    model = create_model("efficientnet_lite0", "scratch")
    optimizer, _ = make_optimizer(model, recipe)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.95
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # first step: the momentum buffer is the gradient plus L2 decay
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter, before[name] - 0.01 * (1 + 0.1 * before[name]), atol=1e-6), name
    momenta = []
    fit(model, synthetic_split(32), synthetic_split(16, seed=1), "binary", recipe, 5, batch_size=16,
        progress=False, on_step=lambda step, m, opt: momenta.append(opt.param_groups[0]["momentum"]))
    assert momenta == pytest.approx([one_cycle(step, 10, 0.01)[1] for step in range(10)])
    assert max(momenta) > 0.94 and min(momenta) < 0.86


def test_weight_average_follows_every_step_and_is_what_is_returned():
    """ema_decay d: after the first step the average is the weights, then avg ← d·avg + (1-d)·w,
    for parameters and BatchNorm statistics alike; the kept state is the average, not the model."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    recipe = get_recipe("scratch", ema_decay=0.8, select_by="last")
    names = ["conv_stem.weight", "bn1.running_mean", "classifier.bias"]
    expected = {}

    def follow(step, model, optimizer):
        state = model.state_dict()
        for name in names:
            weights = state[name].detach().clone()
            expected[name] = weights if step == 0 else 0.8 * expected[name] + 0.2 * weights

    state, history = fit(model, synthetic_split(32, seed=0), synthetic_split(16, seed=1), "binary", recipe,
                         epochs=2, batch_size=8, seed=0, progress=False, on_step=follow)
    for name in names:
        torch.testing.assert_close(state[name], expected[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(state[name], model.state_dict()[name])  # the average, not the last weights


def test_label_smoothing_moves_targets_towards_uniform():
    binary = torch.tensor([[1.0], [0.0]])
    assert torch.allclose(smooth("binary", binary, 0.1), torch.tensor([[0.95], [0.05]]))
    onehot = torch.tensor([[0.0, 1.0, 0.0]])
    assert torch.allclose(smooth("multiclass", onehot, 0.3), torch.tensor([[0.1, 0.8, 0.1]]))
    assert torch.allclose(smooth("multilabel", torch.tensor([[1.0, 0.0]]), 0.2), torch.tensor([[0.9, 0.1]]))


def _fit_keeping_every_epoch(recipe, epochs: int):
    """A scratch EfficientNet-Lite0 trained on 32 synthetic images in batches of 8; returns the
    model, the validation split, fit's kept weights and history, and every epoch's weights."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    per_epoch, epoch_states = steps_per_epoch(32, 8), {}

    def keep_epoch_end(step, model, optimizer):
        if (step + 1) % per_epoch == 0:
            epoch_states[(step + 1) // per_epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    val = synthetic_split(24, seed=1)
    state, history = fit(model, synthetic_split(32, seed=0), val, "binary", recipe, epochs=epochs, batch_size=8,
                         seed=0, progress=False, on_step=keep_epoch_end)
    return model, val, state, history, epoch_states


def test_greedy_soup_averages_the_best_epochs_that_do_not_hurt_validation():
    """soup = 4: the kept weights are the uniform average of the listed epochs' weights, the first
    being the best single epoch, all among the 4 best; the soup validates at least as well."""
    model, val, state, history, epoch_states = _fit_keeping_every_epoch(
        get_recipe("scratch", select_by="val_auc", soup=4, lr=3e-3), epochs=6)
    scores = {e["epoch"]: (e["val_auc"], -e["val_loss"]) for e in history.epochs}
    top4 = sorted(scores, key=scores.get, reverse=True)[:4]
    assert history.kept_epochs[0] == history.best_epoch == top4[0]
    assert set(history.kept_epochs) <= set(top4)
    for name in ["conv_stem.weight", "bn1.running_var", "classifier.bias"]:
        expected = torch.stack([epoch_states[e][name] for e in history.kept_epochs]).mean(0)
        torch.testing.assert_close(state[name], expected)
    model.load_state_dict(state)
    score, loss, auc = validation_score(model, val, "binary", "val_auc")
    assert score >= (scores[history.best_epoch][0], scores[history.best_epoch][1])
    assert math.isclose(history.kept_val["val_auc"], auc) and math.isclose(history.kept_val["val_loss"], loss)


def test_epoch_ensemble_keeps_the_best_epochs_and_averages_their_logits(tmp_path):
    """ensemble_epochs = 3: the kept model holds the weights of the 3 best epochs by validation AUC,
    best first; its output is the mean of their logits; it survives a save and load."""
    _, val, state, history, epoch_states = _fit_keeping_every_epoch(
        get_recipe("scratch", select_by="val_auc", ensemble_epochs=3, lr=3e-3), epochs=5)
    scores = {e["epoch"]: (e["val_auc"], -e["val_loss"]) for e in history.epochs}
    assert history.kept_epochs == sorted(scores, key=scores.get, reverse=True)[:3]
    assert history.kept_epochs[0] == history.best_epoch
    for i, epoch in enumerate(history.kept_epochs):
        torch.testing.assert_close(state[f"members.{i}.conv_head.weight"], epoch_states[epoch]["conv_head.weight"])
    save_weights(tmp_path / "model.safetensors", state,
                 {"backbone": "efficientnet_lite0", "num_outputs": 1, "ensemble_members": 3})
    ensemble, _ = load_trained(tmp_path / "model.safetensors")
    assert isinstance(ensemble, EpochEnsemble) and len(ensemble.members) == 3
    images = normalize(to_float(val.images[:5]))
    with torch.no_grad():
        logits = torch.stack([member(images) for member in ensemble.members]).mean(0)
        torch.testing.assert_close(ensemble(images), logits)
    _, loss, auc = validation_score(ensemble, val, "binary", "val_auc")
    assert math.isclose(history.kept_val["val_auc"], auc) and math.isclose(history.kept_val["val_loss"], loss, rel_tol=1e-5)


def test_ensemble_and_soup_exclude_each_other():
    with pytest.raises(ScarceError, match="soup and ensemble_epochs exclude each other"):
        get_recipe("small-data", soup=3, ensemble_epochs=3)
    with pytest.raises(ScarceError, match="ensemble_epochs must be 0"):
        get_recipe("small-data", ensemble_epochs=-1)


def test_soup_needs_a_validation_ranking():
    with pytest.raises(ScarceError, match="soup needs select_by val_loss or val_auc"):
        get_recipe("small-data", soup=3, select_by="last")


def test_kept_batchnorm_statistics_stay_while_the_weights_train():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state, _ = fit(model, synthetic_split(32, seed=0), synthetic_split(16, seed=1), "binary",
                   get_recipe("scratch", keep_batchnorm_statistics=True, select_by="last"), epochs=1,
                   batch_size=16, seed=0, progress=False)
    for name in ["bn1.running_mean", "blocks.3.0.bn2.running_var"]:
        assert torch.equal(state[name], before[name])
    assert not torch.equal(state["bn1.weight"], before["bn1.weight"])


def test_drop_path_reaches_the_backbones_blocks():
    model = create_model("efficientnet_lite0", "scratch", drop_path_rate=0.2)
    rates = [block.drop_path.drop_prob for stage in model.blocks for block in stage
             if hasattr(block.drop_path, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.2, abs=0.03) and min(rates) > 0


def test_greedy_soup_adds_an_epoch_only_when_the_average_validates_no_worse():
    """Three 'epochs' of a linear model on brightness: averaging the best with the second lowers
    the validation loss (it joins); adding the third raises it again (it stays out)."""
    val = synthetic_split(24, seed=1)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1))

    def weights(w, b):
        return {"2.weight": torch.full((1, 3), float(w)), "2.bias": torch.tensor([float(b)])}

    candidates = []
    for epoch, (w, b) in enumerate([(2, -4), (2, 0), (2, 4)], start=1):
        model.load_state_dict(weights(w, b))
        candidates.append((validation_score(model, val, "binary", "val_loss")[0], epoch, weights(w, b)))
    assert [c[1] for c in sorted(candidates, key=lambda c: c[0], reverse=True)] == [1, 2, 3]
    history = History(kept_epochs=[1])
    soup = greedy_soup(model, candidates, val, "binary", "val_loss", history)
    assert history.kept_epochs == [1, 2]
    torch.testing.assert_close(soup["2.bias"], torch.tensor([-2.0]))
    model.load_state_dict(soup)
    _, loss, _ = validation_score(model, val, "binary", "val_loss")
    assert loss < -candidates[0][0][0] and math.isclose(history.kept_val["val_loss"], loss)


def test_recomputed_batchnorm_statistics_are_those_of_the_clean_training_images():
    """recompute_batchnorm: bn1's running mean/var are exactly the statistics of conv_stem's output
    on the un-augmented training images under the kept weights (one batch: N <= 256)."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    train = synthetic_split(32, seed=0)
    state, _ = fit(model, train, synthetic_split(16, seed=1), "binary",
                   get_recipe("scratch", recompute_batchnorm=True, select_by="last"), epochs=2, batch_size=16,
                   seed=0, progress=False)
    model.load_state_dict(state)
    with torch.no_grad():
        stem = model.conv_stem(normalize(to_float(train.images)))
    torch.testing.assert_close(state["bn1.running_mean"], stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["bn1.running_var"], stem.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)


def test_sam_takes_the_gradient_uphill_and_puts_the_weights_back():
    """sam_rho: after the call the weights are unchanged, BatchNorm statistics too, and .grad is
    the gradient at w + rho * g / |g| (checked against autograd at that point)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).train()
    x, y = torch.randn(8, 3), torch.rand(8, 1)

    def loss():
        return torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)

    loss().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    sharpness_aware_gradients(model, loss, rho=0.3)
    after = model.state_dict()
    for name in before:
        if name != "1.num_batches_tracked":
            torch.testing.assert_close(after[name], before[name])
    norm = torch.norm(torch.stack([g.norm() for g in grads]))
    uphill = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(uphill.parameters(), grads):
            p.add_(g * 0.3 / norm)
    for m in uphill.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.momentum = 0.0
    expected = torch.autograd.grad(torch.nn.functional.binary_cross_entropy_with_logits(uphill(x), y),
                                   list(uphill.parameters()))
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    flat = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(flat, torch.cat([g.flatten() for g in grads]), atol=1e-4)  # not the plain gradient


def test_pull_to_start_moves_body_weights_back_by_lr_times_strength_of_the_gap_and_skips_the_rest():
    body, head, frozen = nn.Parameter(torch.tensor([1.0, 3.0])), nn.Parameter(torch.tensor([2.0])), \
        nn.Parameter(torch.tensor([5.0]))
    optimizer = torch.optim.SGD([{"params": [body, frozen], "lr": 0.1, "name": "late"},
                                 {"params": [head], "lr": 0.1, "name": "head"}], lr=0.1)
    starting = {id(body): torch.tensor([0.0, 1.0]), id(frozen): torch.tensor([0.0])}
    body.grad, head.grad = torch.zeros(2), torch.zeros(1)  # frozen has no gradient: it is not trained
    pull_to_start(optimizer, starting, strength=4.0)
    torch.testing.assert_close(body.detach(), torch.tensor([1.0 - 0.4 * 1.0, 3.0 - 0.4 * 2.0]))
    assert head.item() == 2.0 and frozen.item() == 5.0


def test_l2_sp_keeps_the_body_closer_to_its_starting_weights():
    recipe = get_recipe("fine-tune-all")
    free_start, _, free = _train_and_watch(recipe, epochs=3)
    held_start, _, held = _train_and_watch(replace(recipe, l2_sp=500.0), epochs=3)
    for group in ("early", "late"):
        torch.testing.assert_close(free_start[group], held_start[group])
        moved_free = (free[-1]["weights"][group] - free_start[group]).norm()
        moved_held = (held[-1]["weights"][group] - held_start[group]).norm()
        assert moved_held < 0.8 * moved_free, group
    assert not torch.equal(held[-1]["weights"]["head"], held_start["head"])


def test_recipe_rotation_and_erasing_reach_the_augmentation():
    policy = get_recipe("small-data", rotation=0.0, erase=0.25).augmentation()
    assert (policy.rotation, policy.erase, policy.shift, policy.flip) == (0.0, 0.25, 4, True)
    assert get_recipe("small-data").augmentation().rotation == 10.0


def test_recipe_flip_and_shift_reach_training_and_test_time_views():
    recipe = get_recipe("small-data", flip=False, shift=2, zoom=0.1)
    assert (recipe.augmentation().flip, recipe.augmentation().shift, recipe.augmentation().zoom) == (False, 2, 0.1)
    views = recipe.tta_views()  # the geometry only: no zoom at test time
    assert (views.rotation, views.flip, views.shift, views.zoom) == (10.0, False, 2, 0.0)
    assert recipe_tta_views({}) == Augmentation()  # a run.json from before these fields: the standard views
    with pytest.raises(ScarceError, match="shift must be 0"):
        get_recipe("small-data", shift=-1)
    with pytest.raises(ScarceError, match="flip.*true or false"):
        get_recipe("small-data", flip=1)


def test_pairwise_ranking_loss_is_the_mean_softplus_over_positive_negative_pairs():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0], [-1.0, 1.0], [0.5, -2.0]])
    targets = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.0, 0.0], [0.2, 1.0]])  # 0.9 counts as positive
    first = sum(F.softplus(torch.tensor(n - p)) for p in (2.0, 1.0) for n in (-1.0, 0.5)) / 4
    second = sum(F.softplus(torch.tensor(n - -2.0)) for n in (0.0, 3.0, 1.0)) / 3
    torch.testing.assert_close(pairwise_ranking_loss(logits, targets), (first + second) / 2)
    assert pairwise_ranking_loss(logits, torch.ones(4, 2)) == 0  # no pair: nothing to rank
    far = torch.tensor([[20.0], [-20.0]])
    assert pairwise_ranking_loss(far, torch.tensor([[1.0], [0.0]])) < 1e-6  # ranked right with a margin
    assert pairwise_ranking_loss(far, torch.tensor([[0.0], [1.0]])) > 39  # ranked wrong
    bce = training_loss("binary", logits[:, :1], targets[:, :1])
    torch.testing.assert_close(training_loss("binary", logits[:, :1], targets[:, :1], pairwise=2.0),
                               bce + 2 * pairwise_ranking_loss(logits[:, :1], targets[:, :1]))


@pytest.mark.parametrize("task,classes", [("binary", 2), ("multiclass", 3)])
def test_linear_probe_head_is_the_logistic_regression_of_the_clean_training_features(task, classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    outputs = 1 if task == "binary" else classes
    model = create_model("efficientnet_lite0", "scratch", outputs).eval()
    train = synthetic_split(30, seed=0, classes=classes)
    with torch.no_grad():
        features = model.forward_head(model.forward_features(normalize(to_float(train.images))), pre_logits=True)
    probe = LogisticRegression(max_iter=2000).fit(features.numpy(), train.labels)
    linear_probe_head(model, train, task)
    torch.testing.assert_close(model.get_classifier().weight, torch.as_tensor(probe.coef_, dtype=torch.float32))
    torch.testing.assert_close(model.get_classifier().bias, torch.as_tensor(probe.intercept_, dtype=torch.float32))
    with torch.no_grad():
        logits = model(normalize(to_float(train.images)))
    if task == "binary":  # the head already separates the (easy) training images
        assert roc_auc_score(train.labels, logits[:, 0].numpy()) > 0.9


def test_unknown_head_init_is_one_sentence():
    with pytest.raises(ScarceError, match="head_init must be one of random, linear-probe"):
        get_recipe("small-data", head_init="zeros")


def test_even_batches_have_near_equal_sizes_and_cover_every_image_once():
    generator = torch.Generator().manual_seed(0)
    parts = batches(50, 16, generator, even=True)
    assert sorted(len(p) for p in parts) == [12, 12, 13, 13]
    assert sorted(torch.cat(parts).tolist()) == list(range(50))
    assert [len(p) for p in batches(50, 16, torch.Generator().manual_seed(0))] == [16, 16, 16, 2]
    assert steps_per_epoch(50, 16, even=True) == len(parts) == 4
    steps = []
    fit(create_model("efficientnet_lite0", "scratch"), synthetic_split(20, seed=0), synthetic_split(8, seed=1),
        "binary", get_recipe("scratch", even_batches=True), epochs=1, batch_size=16, progress=False,
        on_step=lambda step, model, optimizer: steps.append(step))
    assert steps == [0, 1]  # 20 images at 16: two steps of 10, not 16 + 4


def test_stratified_batches_hold_each_class_in_near_equal_numbers():
    labels = torch.tensor([0] * 30 + [1] * 20)  # unbalanced on purpose: 3 of 5 per class share
    parts = batches(50, 8, torch.Generator().manual_seed(0), strata=labels)
    assert sorted(torch.cat(parts).tolist()) == list(range(50)) and len(parts) == 7
    assert {len(p) for p in parts} <= {7, 8}
    assert all(int(labels[p].sum()) in (2, 3) for p in parts)  # 20 positives over 7 batches
    plain = batches(50, 8, torch.Generator().manual_seed(0), even=True)
    assert len({int(labels[p].sum()) for p in plain}) > 2  # random batches do vary more
    assert batch_strata("binary", labels.view(-1, 1).float()).tolist() == labels.tolist()
    assert batch_strata("multilabel", torch.ones(4, 3)) is None
    states = {}
    for option in ("even_batches", "stratified_batches"):  # same steps and draws; only the grouping differs
        seen = []
        torch.manual_seed(0)
        states[option], _ = fit(create_model("efficientnet_lite0", "scratch"), synthetic_split(20, seed=0),
                                synthetic_split(8, seed=1), "binary", get_recipe("scratch", **{option: True},
                                select_by="last"), epochs=2, batch_size=16, progress=False,
                                on_step=lambda step, model, optimizer: seen.append(step))
        assert seen == [0, 1, 2, 3]  # 20 images at 16: two near-equal steps per epoch
    assert not torch.equal(states["even_batches"]["conv_head.weight"], states["stratified_batches"]["conv_head.weight"])
    # multi-label images have no single class: near-equal batches, as many steps as the schedule counts
    tagged = [synthetic_split(n, seed=seed) for n, seed in ((17, 0), (8, 1))]
    for split in tagged:
        split.labels = np.stack([split.labels, 1 - split.labels, split.labels], axis=1)
    seen = []
    fit(create_model("efficientnet_lite0", "scratch", 3), tagged[0], tagged[1], "multilabel",
        get_recipe("scratch", stratified_batches=True, select_by="last"), epochs=1, batch_size=16, progress=False,
        on_step=lambda step, model, optimizer: seen.append(optimizer.param_groups[-1]["lr"]))
    assert len(seen) == steps_per_epoch(17, 16, even=True) == 2  # 9 + 8, not 16 + 1 joined into one
