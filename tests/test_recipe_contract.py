"""The recipe contract: every registered recipe trains, follows its own freezing plan, writes its
own checkpoint, and is evaluated from exactly that checkpoint (like scikit-learn's check_estimator)."""

import hashlib

import pytest
import torch
from conftest import synthetic_split, write_npz

import scarce
from scarce.models.backbones import GROUP_NAMES, create_model, layer_groups
from scarce.training.loop import fit, steps_per_epoch
from scarce.training.recipes import RECIPES, get_recipe
from scarce.training.schedules import step_plan, trainable_groups


def _expected_trainable(recipe, step, total, head_only_steps):
    if recipe.schedule == "one-cycle":
        return step_plan(step, total, head_only_steps, recipe)[0]
    return trainable_groups(step, total, recipe)


@pytest.mark.parametrize("name", sorted(name for name, recipe in RECIPES.items() if recipe.model == "cnn"))
def test_recipe_follows_its_freezing_plan(name):
    recipe = get_recipe(name)
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    groups = layer_groups(model).as_dict()
    before = {g: [p.detach().clone() for n, p in model.named_parameters() if n in set(groups[g])] for g in GROUP_NAMES}
    epochs, n = 3, 32
    total = epochs * steps_per_epoch(n, 16)
    head_only_steps = min(epochs, recipe.head_only_epochs) * steps_per_epoch(n, 16)
    seen = []

    def on_step(step, model, optimizer):
        expected = _expected_trainable(recipe, step, total, head_only_steps)
        now = {g: [p.detach().clone() for nm, p in model.named_parameters() if nm in set(groups[g])]
               for g in GROUP_NAMES}
        for group in GROUP_NAMES:
            changed = any(not torch.equal(a, b) for a, b in zip(before[group], now[group]))
            assert changed == expected[group], (name, step, group)
            before[group] = now[group]
        seen.append(step)

    fit(model, synthetic_split(n), synthetic_split(16, seed=1), "binary", recipe, epochs, progress=False,
        on_step=on_step)
    assert seen == list(range(len(seen))) and len(seen) >= 1


@pytest.mark.slow
def test_every_recipe_writes_its_own_checkpoint_and_is_evaluated_from_it(tmp_path):
    data = write_npz(tmp_path / "tiny.npz")
    hashes = {}
    for name in sorted(RECIPES):
        out = tmp_path / name
        result = scarce.train(data=str(data), out=str(out), recipe=name, epochs=2, size=32, tta=1,
                              pretrained="scratch", progress=False)
        checkpoint = (out / "model.safetensors").read_bytes()
        assert result.metrics["evaluated_checkpoint_sha256"] == hashlib.sha256(checkpoint).hexdigest()
        assert result.metrics["recipe"] == name
        hashes[name] = result.metrics["evaluated_checkpoint_sha256"]
    assert len(set(hashes.values())) == len(RECIPES)  # no arm evaluates another arm's file
