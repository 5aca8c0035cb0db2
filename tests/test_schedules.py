"""Schedule objects: plans per step and per-epoch reactions, against hand-computed values."""

import dataclasses

import pytest

from scarce.training.recipes import get_recipe
from scarce.training.schedules import HeadOnlyPhase, OneCycle, Plateau, make_schedule


def test_one_cycle_warm_up_starts_at_peak_over_div_factor_peaks_and_ends_at_end():
    recipe = get_recipe("small-data")
    total = 100
    schedule = make_schedule(recipe, 10, 10)
    assert isinstance(schedule, OneCycle)
    head = recipe.group_learning_rates()["head"]
    assert schedule.step_update(0)[1]["head"] == pytest.approx(head / recipe.div_factor)
    warm = round(recipe.pct_start * total)
    assert schedule.step_update(warm)[1]["head"] == pytest.approx(head)
    assert schedule.step_update(total - 1)[1]["head"] == pytest.approx(head / recipe.div_factor
                                                                         / recipe.final_div_factor)
    assert schedule.step_update(0)[2] == pytest.approx(recipe.betas[0])
    assert schedule.step_update(warm)[2] == pytest.approx(recipe.betas[1])


def test_head_only_phase_trains_the_head_first_then_runs_the_main_cycle_from_its_start():
    recipe = get_recipe("fastai-fine-tune")
    schedule = make_schedule(recipe, 5, 3)
    assert isinstance(schedule, HeadOnlyPhase)
    trainable, rates, _ = schedule.step_update(0)
    assert trainable == {"early": False, "late": False, "head": True}
    assert rates["head"] == pytest.approx(recipe.head_only_lr / 25)
    main = OneCycle(recipe, 10)
    assert schedule.step_update(5) == main.step_update(0)
    assert schedule.step_update(14) == main.step_update(9)


def test_plateau_divides_on_a_rise_above_threshold_only_and_stops_under_min_lr():
    recipe = dataclasses.replace(get_recipe("regular"), plateau_min_lr=5e-5)
    schedule = make_schedule(recipe, 4, 10)
    assert isinstance(schedule, Plateau)
    lr = recipe.group_learning_rates()["head"]
    schedule.step(0, 0.5)
    schedule.step(1, 0.5 + recipe.plateau_threshold / 2)
    assert schedule.step_update(8)[1]["head"] == pytest.approx(lr) and not schedule.stop
    schedule.step(2, 0.6)
    assert schedule.step_update(12)[1]["head"] == pytest.approx(lr * recipe.plateau_factor)
    schedule.step(3, 0.7)
    assert schedule.stop == (recipe.lr * recipe.plateau_factor ** 2 < 5e-5)


def test_unfreezing_at_fractions_and_above_1_means_never():
    recipe = dataclasses.replace(get_recipe("small-data"), unfreeze_at=(0.5, 0.2, 0.0))
    schedule = make_schedule(recipe, 10, 10)
    assert schedule.step_update(19)[0] == {"early": False, "late": False, "head": True}
    assert schedule.step_update(20)[0] == {"early": False, "late": True, "head": True}
    assert schedule.step_update(50)[0] == {"early": True, "late": True, "head": True}
    never = dataclasses.replace(recipe, unfreeze_at=(1.5, 0.2, 0.0))
    assert not any(make_schedule(never, 10, 10).step_update(s)[0]["early"] for s in range(100))
