"""The learning-rate finder, and training + evaluation of multi-class and multi-label tasks."""

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_split, write_npz

import scarce
import scarce.training.recipes
from scarce.cli import main
from scarce.models.backbones import create_model
from scarce.runs.run import find_lr
from scarce.training.lr_find import lr_sweep, suggest_lr
from scarce.training.recipes import get_recipe


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    # A loss that falls fastest at lr = 1e-3 (x = -3), bottoms out at 1e-1 and then explodes.
    loss = 1 - np.tanh((x + 3) * 2) * 0.5 + np.where(x > -1, (x + 1) ** 2 * 10, 0)
    suggestion = suggest_lr(lrs, loss)
    assert suggestion == pytest.approx(1e-3, rel=0.3)
    # Noise early in the sweep (a sharp one-point drop, as small batches give) does not win.
    noisy = loss.copy()
    noisy[6:8] += [0.3, -0.3]  # a slope between neighbours would pick 5e-6 here
    assert suggest_lr(lrs, noisy) == pytest.approx(1e-3, rel=0.3)


def test_sweep_grows_geometrically_stops_on_divergence_and_leaves_model_and_rng_alone():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", "scratch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    sweep = lr_sweep(model, synthetic_split(32), "binary", get_recipe("gradual-unfreezing"), start=1e-5, end=1e3,
                     steps=60)
    ratios = np.diff(np.log(sweep["lrs"]))
    assert np.allclose(ratios, ratios[0])
    assert len(sweep["lrs"]) < 60  # a learning rate of 1e3 diverges well before the end
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_lr_find_does_not_change_a_following_training_run(tmp_path):
    data = write_npz(tmp_path / "tiny.npz")
    common = dict(data=str(data), epochs=2, size=32, tta=1, pretrained="scratch", progress=False)
    alone = scarce.train(out=str(tmp_path / "a"), **common).metrics
    find_lr(out=str(tmp_path / "lr"), **common)
    after = scarce.train(out=str(tmp_path / "b"), **common).metrics
    for key in ("test_auc", "test_accuracy", "best_val_loss", "evaluated_checkpoint_sha256"):
        assert alone[key] == after[key], key
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("recipe", ["gradual-unfreezing", "regular"])
def test_multiclass_training_reports_macro_and_per_class_auc(tmp_path, recipe):
    data = write_npz(tmp_path / "three.npz", classes=3, sizes=(30, 15, 15))
    metrics = scarce.train(data=str(data), out=str(tmp_path / "out"), epochs=2, size=32, tta=2,
                           recipe=recipe, pretrained="scratch", progress=False,
                           recipe_options={"mixup_alpha": 0.4, "head_dropout": 0.2}).metrics
    assert metrics["n_train"] == 30 and metrics["train_class_counts"] == {f"class_{i}": 10 for i in range(3)}
    assert len(metrics["test_per_class_auc"]) == 3
    assert 0 <= metrics["test_auc"] <= 1 and 0 <= metrics["test_accuracy"] <= 1


def test_multilabel_training_reports_per_label_auc(tmp_path):
    data = write_npz(tmp_path / "multi.npz", task="multilabel", classes=3, sizes=(30, 15, 15))
    result = scarce.train(data=str(data), out=str(tmp_path / "out"), epochs=2, size=32, tta=2,
                          pretrained="scratch", progress=False)
    with torch.no_grad():  # the default keeps both epochs as one ensemble: 3 logits per image
        assert result.model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert len(result.model.members) == 2 and result.metrics["epoch_ensemble"]
    assert len(result.metrics["test_per_label_auc"]) == 3
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["data"]["task"] == "multilabel"


@pytest.mark.slow
def test_lr_find_command_on_real_data(data_dir, tmp_path, capsys):
    out = tmp_path / "lr"
    code = main(["lr-find", "--data", str(data_dir / "pneumonia_kaggle_64.npz"), "--n", "200", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    result = json.loads((out / "lr_find.json").read_text())
    assert 1e-6 < result["suggested_lr"] < 1
    assert (out / "lr_find.png").stat().st_size > 10_000
    assert "suggested learning rate" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(scarce.training.recipes.RECIPES))
def test_every_recipe_runs_from_the_command_line_on_real_data(data_dir, tmp_path, recipe):
    out = tmp_path / recipe
    assert main(["train", "--data", str(data_dir / "pneumonia_kaggle_64.npz"), "--n", "20", "--epochs", "2",
                 "--tta", "0", "--recipe", recipe, "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == recipe and metrics["n_train"] == 20 and metrics["test_n"] == 1291
