"""Recipes and the training loop: schedule values, learning-rate ratios, gradual unfreezing."""

import math

import pytest
import torch

from scarce.errors import ScarceError
from scarce.models import create_model, layer_groups
from scarce.recipes import get_recipe, one_cycle, plateau_step, trainable_groups
from scarce.train import fit, make_optimizer, smooth, steps_per_epoch

from conftest import synthetic_split

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


def test_unknown_selection_rule_is_one_sentence():
    with pytest.raises(ScarceError, match="select_by must be one of val_loss, val_auc, last"):
        get_recipe("regular", select_by="val_accuracy")


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
