"""Transfer from the user's own related images: `scarce pretrain`, `--pretrained DIR` in train, study
and lr-find, incompatible sources refused in one sentence, and held-out labels that never reach
the upstream model's training targets."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import knee_findings_table, write_npz
from safetensors.torch import load_file

from scarce.artifacts import save_weights
import scarce.runs.run as run_module
from scarce.cli import main
from scarce.data.dataset import load_dataset
from scarce.errors import ScarceError
from scarce.models.backbones import create_model, layer_groups
from scarce.models.upstream import BACKBONE_FILE, MANIFEST_FILE, source_identity
from scarce.runs.pretrain import pretrain
from scarce.study.runner import run_study
from scarce.study.spec import config_hash, parse_spec
from scarce.training.recipes import get_recipe


def fake_upstream(folder, backbone="efficientnet_lite0", size=64, **info):
    """A backbone file as `scarce pretrain` writes it, from a seeded random model (no training)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(123)
    model = create_model(backbone, "scratch", 7)
    head = set(layer_groups(model).head)
    body = {name: tensor for name, tensor in model.state_dict().items() if name not in head}
    save_weights(folder / BACKBONE_FILE, body, {"backbone": backbone, "size": size, **info})
    return folder, body


class Captured(Exception):
    """Stops a run at the moment fit is called: what fit receives is what the model would learn."""


def capture_fit(monkeypatch, seen, stop=False):
    real_fit = run_module.fit

    def spy(model, train, val, task, *args, **kwargs):
        seen.update(state={k: v.detach().clone() for k, v in model.state_dict().items()},
                    outputs=model.get_classifier().out_features, train=train, val=val, task=task)
        if stop:
            raise Captured
        return real_fit(model, train, val, task, *args, **kwargs)

    monkeypatch.setattr(run_module, "fit", spy)


# ----------------------------------------------------------------------------- upstream on real data, then transfer

@pytest.fixture(scope="module")
def covid_upstream(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("upstream") / "covid"
    code = main(["pretrain", "--data", str(data_dir / "cxr_covid_64.npz"), "--allow-leakage", "--n", "32",
                 "--epochs", "1", "--threads", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.mark.slow
def test_pretrain_writes_backbone_without_head_and_a_manifest(covid_upstream, data_dir):
    manifest = json.loads((covid_upstream / MANIFEST_FILE).read_text())
    backbone = load_file(covid_upstream / BACKBONE_FILE)
    full = load_file(covid_upstream / "model.safetensors")
    assert set(full) - set(backbone) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(backbone[name], full[name]) for name in backbone)
    covid_sha = hashlib.sha256((data_dir / "cxr_covid_64.npz").read_bytes()).hexdigest()
    assert manifest["source"]["fingerprint"] == covid_sha
    assert manifest["source"]["task"] == "binary" and manifest["source"]["classes"] == ["normal", "covid"]
    assert manifest["source"]["excluded_labels"] == []
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["size"] == 64
    assert manifest["training"]["recipe"] == "fine-tune-all" and manifest["training"]["epochs"] == 1
    assert manifest["training"]["n_train"] == 32 and manifest["training"]["seed"] == 0
    assert manifest["initialised_from"] == "imagenet"
    assert 0 <= manifest["val"]["auc"] <= 1 and manifest["val"]["loss"] > 0
    assert manifest["backbone_sha256"] == hashlib.sha256((covid_upstream / BACKBONE_FILE).read_bytes()).hexdigest()
    assert manifest["versions"]["torch"]


@pytest.mark.slow
def test_train_from_upstream_loads_its_backbone_and_makes_a_new_head(covid_upstream, data_dir, tmp_path, monkeypatch):
    seen = {}
    capture_fit(monkeypatch, seen)
    out = tmp_path / "target"
    assert main(["train", "--data", str(data_dir / "pneumonia_kaggle_64.npz"), "--n", "16", "--epochs", "1",
                 "--tta", "0", "--threads", "1", "--pretrained", str(covid_upstream), "--out", str(out),
                 "--no-progress"]) == 0
    backbone = load_file(covid_upstream / BACKBONE_FILE)
    upstream_head = load_file(covid_upstream / "model.safetensors")["classifier.weight"]
    built = seen["state"]  # the model as fit received it, before any training step
    assert set(built) - set(backbone) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(built[name], backbone[name]) for name in backbone)
    assert built["classifier.weight"].shape == (1, 1280)  # binary target: one logit
    assert not torch.equal(built["classifier.weight"], upstream_head)
    record = json.loads((out / "run.json").read_text())["pretrained_source"]
    assert record["sha256"] == hashlib.sha256((covid_upstream / BACKBONE_FILE).read_bytes()).hexdigest()
    assert record["manifest"] == json.loads((covid_upstream / MANIFEST_FILE).read_text())
    assert json.loads((out / "metrics.json").read_text())["pretrained"] == str(covid_upstream)


@pytest.mark.slow
def test_upstream_file_serves_a_multiclass_target_with_a_head_of_its_size(covid_upstream):
    recipe = get_recipe("gradual-unfreezing")
    model = run_module.build_model("efficientnet_lite0", str(covid_upstream / BACKBONE_FILE), 5, recipe, 0, 64)
    backbone = load_file(covid_upstream / BACKBONE_FILE)
    state = model.state_dict()
    assert all(torch.equal(state[name], backbone[name]) for name in backbone)
    assert model.get_classifier().out_features == 5


# ----------------------------------------------------------------------------- incompatible sources

def test_a_different_backbone_or_size_is_refused_in_one_sentence(tmp_path, capsys):
    source, _ = fake_upstream(tmp_path / "up")
    data = write_npz(tmp_path / "tiny.npz", size=32)
    base = ["train", "--data", str(data), "--epochs", "1", "--pretrained", str(source), "--out", str(tmp_path / "o")]
    assert main(base + ["--size", "32"]) == 2
    assert "trained on 64 px images but this run uses 32 px" in capsys.readouterr().err
    assert main(base + ["--size", "64", "--backbone", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "holds the backbone efficientnet_lite0 but this run builds resnet18" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_tensors_of_another_architecture_are_refused(tmp_path):
    folder, _ = fake_upstream(tmp_path / "up", backbone="resnet18")
    file = folder / BACKBONE_FILE
    renamed = tmp_path / "liar.safetensors"  # metadata claims efficientnet_lite0, tensors are resnet18's
    save_weights(renamed, load_file(file), {"backbone": "efficientnet_lite0", "size": 64})
    with pytest.raises(ScarceError, match="does not fit efficientnet_lite0"):
        run_module.build_model("efficientnet_lite0", str(renamed), 1, get_recipe("fine-tune-all"), 0, 64)


def test_only_safetensors_sources_are_loaded(tmp_path):
    pickled = tmp_path / "weights.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    recipe = get_recipe("fine-tune-all")
    with pytest.raises(ScarceError, match="not a .safetensors file"):
        run_module.build_model("efficientnet_lite0", str(pickled), 1, recipe, 0, 64)
    disguised = tmp_path / "weights.safetensors"
    shutil.copy(pickled, disguised)
    with pytest.raises(ScarceError, match="not a valid safetensors file"):
        run_module.build_model("efficientnet_lite0", str(disguised), 1, recipe, 0, 64)
    with pytest.raises(ScarceError, match="neither imagenet, scratch, nor an existing folder"):
        run_module.build_model("efficientnet_lite0", str(tmp_path / "missing"), 1, recipe, 0, 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScarceError, match="holds no backbone.safetensors"):
        run_module.build_model("efficientnet_lite0", str(tmp_path / "empty"), 1, recipe, 0, 64)


def test_lr_find_starts_from_the_upstream_backbone(tmp_path, monkeypatch):
    source, body = fake_upstream(tmp_path / "up", size=32)
    data = write_npz(tmp_path / "tiny.npz", size=32)
    seen = {}

    def spy(model, *args, **kwargs):
        seen["state"] = model.state_dict()
        raise Captured

    monkeypatch.setattr(run_module, "lr_sweep", spy)
    with pytest.raises(Captured):
        run_module.find_lr(data=str(data), size=32, pretrained=str(source), out=str(tmp_path / "lr"), threads=1)
    assert all(torch.equal(seen["state"][name], tensor) for name, tensor in body.items())


# ----------------------------------------------------------------------------- held-out labels

@pytest.mark.slow
def test_an_excluded_class_never_reaches_the_upstream_training(data_dir, tmp_path, monkeypatch):
    seen = {}
    capture_fit(monkeypatch, seen, stop=True)
    with pytest.raises(Captured):
        pretrain(data=str(data_dir / "knee_oa_64.npz"), out=str(tmp_path / "up"), exclude_labels=["KL4"],
                 threads=1, progress=False)
    with np.load(data_dir / "knee_oa_64.npz") as raw:
        train_labels, train_images = raw["train_labels"][:, 0], raw["train_images"]
        val_labels = raw["val_labels"][:, 0]
    kept = train_labels != 4
    assert seen["task"] == "multiclass" and seen["outputs"] == 4
    assert len(seen["train"]) == kept.sum() and set(np.unique(seen["train"].labels)) == {0, 1, 2, 3}
    assert np.array_equal(seen["train"].labels, train_labels[kept])  # KL0..KL3 keep their numbers
    assert torch.equal(seen["train"].images[:, 0], torch.from_numpy(train_images[kept]))  # no KL4 image
    assert len(seen["val"]) == (val_labels != 4).sum()


def test_an_excluded_multilabel_column_is_dropped_from_the_targets(tmp_path, monkeypatch):
    data = write_npz(tmp_path / "findings.npz", task="multilabel", classes=4, size=32)
    seen = {}
    capture_fit(monkeypatch, seen, stop=True)
    with pytest.raises(Captured):
        pretrain(data=str(data), out=str(tmp_path / "up"), size=32, pretrained="scratch",
                 exclude_labels=["class_1"], threads=1, progress=False)
    with np.load(data) as raw:
        original = raw["train_labels"]
    assert seen["task"] == "multilabel" and seen["outputs"] == 3
    assert np.array_equal(seen["train"].labels, original[:, [0, 2, 3]])  # every image, minus the column
    assert original[:, 1].any()  # the dropped label was there to drop


@pytest.mark.slow
def test_a_real_multilabel_upstream_trains_without_the_held_out_finding(data_dir, tmp_path, monkeypatch):
    """The paper's "diseases without the target" arm on real images: the knee PNGs as a findings
    table (osteophyte, narrowing, any); `narrowing` is held out, the upstream trains on the rest."""
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    knee = data_dir / "samples" / "knee_png"
    table = knee_findings_table(knee, tmp_path / "findings.csv")
    options = {"root": str(knee.parent.parent), "label_column": "finding", "label_separator": "|", "size": 32}
    full = load_dataset(table, **options)
    assert "narrowing" in full.classes and full.task == "multilabel"
    seen = {}
    capture_fit(monkeypatch, seen)
    args = ["pretrain", "--data", str(table), "--out", str(tmp_path / "up"), "--size", "32", "--epochs", "1",
            "--exclude-label", "narrowing", "--threads", "1", "--no-progress", "--pretrained", "scratch"]
    for key, value in options.items():
        args += ["--data-option", f"{key}={value}"]
    assert main(args) == 0
    keep = [i for i, name in enumerate(full.classes) if name != "narrowing"]
    assert seen["task"] == "multilabel" and seen["outputs"] == 2
    for split in ("train", "val"):  # every image stays; only the held-out column is gone
        assert torch.equal(seen[split].images, full.splits[split].images.expand(-1, 3, -1, -1))  # gray → 3 channels
        assert np.array_equal(seen[split].labels, full.splits[split].labels[:, keep])
    assert full.splits["train"].labels[:, full.classes.index("narrowing")].any()  # it was there to drop
    manifest = json.loads((tmp_path / "up" / MANIFEST_FILE).read_text())
    assert manifest["source"]["excluded_labels"] == ["narrowing"]
    assert sorted(manifest["source"]["classes"]) == sorted(full.classes[i] for i in keep)
    assert (tmp_path / "up" / BACKBONE_FILE).exists()


def test_excluded_labels_are_recorded_in_the_manifest(tmp_path):
    data = write_npz(tmp_path / "grades.npz", classes=3, size=32)
    manifest = pretrain(data=str(data), out=str(tmp_path / "up"), size=32, pretrained="scratch", epochs=1,
                        exclude_labels=["class_2"], threads=1, progress=False)
    assert manifest["source"]["excluded_labels"] == ["class_2"]
    assert manifest["source"]["classes"] == ["class_0", "class_1"] and manifest["source"]["task"] == "binary"


def test_unknown_or_impossible_exclusions_are_one_sentence(tmp_path, capsys):
    data = write_npz(tmp_path / "tiny.npz", size=32)
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "up"), "--size", "32"]
    assert main(args + ["--exclude-label", "emphysema"]) == 2
    assert "Cannot exclude label 'emphysema': tiny has the labels class_0, class_1" in capsys.readouterr().err
    assert main(args + ["--exclude-label", "class_0"]) == 2
    assert "fewer than two classes" in capsys.readouterr().err


# ----------------------------------------------------------------------------- studies

def test_study_paths_are_made_absolute_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec({"data": "x.npz", "pretrained": "runs/up-a",
                       "recipes": [{"recipe": "fine-tune-all"},
                                   {"name": "b", "recipe": "fine-tune-all", "pretrained": "runs/up-b"},
                                   {"name": "i", "recipe": "fine-tune-all", "pretrained": "imagenet"}]})
    assert spec.pretrained == str(tmp_path / "runs/up-a")
    assert [arm.pretrained for arm in spec.arms] == [None, str(tmp_path / "runs/up-b"), "imagenet"]


def test_a_study_cell_is_identified_by_the_upstream_weights_not_their_path(tmp_path):
    source, _ = fake_upstream(tmp_path / "up")
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    spec = parse_spec({"data": "x.npz", "recipes": [
        {"name": "a", "recipe": "fine-tune-all", "pretrained": str(source)},
        {"name": "b", "recipe": "fine-tune-all", "pretrained": str(moved)}]})
    assert config_hash(spec.cell_config("a", 50, 0, tmp_path)) == config_hash(spec.cell_config("b", 50, 0, tmp_path))
    fake_upstream(moved, size=64, retrained=True)  # same place, other weights' metadata: another file
    assert source_identity(str(moved)) != source_identity(str(source))
    assert config_hash(spec.cell_config("a", 50, 0, tmp_path)) != config_hash(spec.cell_config("b", 50, 0, tmp_path))


def test_a_study_refuses_an_unfit_upstream_before_any_cell(tmp_path):
    source, _ = fake_upstream(tmp_path / "up", size=64)
    data = write_npz(tmp_path / "tiny.npz", size=32)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'data = "{data}"\nsize = 32\n[[recipes]]\nname = "same-body-part"\nrecipe = "fine-tune-all"\n'
                    f'pretrained = "{source}"\n')
    with pytest.raises(ScarceError, match="recipe 'same-body-part': Pretrained source .* 64 px .* 32 px"):
        run_study(spec, tmp_path / "study", progress=False)
    assert not (tmp_path / "study" / "cells").exists()


@pytest.mark.slow
def test_a_study_arm_trains_from_an_upstream_model(tmp_path, monkeypatch):
    source, _ = fake_upstream(tmp_path / "runs" / "upstream", size=32)
    data = write_npz(tmp_path / "tiny.npz", size=32)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'data = "{data}"\nsize = 32\nn = [8]\nseeds = [0]\nepochs = 1\ntta = 0\n'
                    '[[recipes]]\nname = "upstream"\nrecipe = "fine-tune-all"\npretrained = "runs/upstream"\n')
    monkeypatch.chdir(tmp_path)
    assert run_study(spec, "study", progress=False) == {"done": 1}
    run = json.loads((tmp_path / "study/cells/upstream/n8-s0/run.json").read_text())
    assert run["pretrained_source"]["file"] == str((source / BACKBONE_FILE).resolve())


def test_an_ensemble_recipe_is_refused_before_any_training(tmp_path):
    """An upstream model is one backbone, so a recipe that keeps an ensemble of epochs is refused
    in one sentence and the output folder gets no manifest."""
    data = write_npz(tmp_path / "tiny.npz", size=32)
    with pytest.raises(ScarceError, match="keeps an ensemble of epochs, but an upstream model is one backbone"):
        pretrain(data=str(data), out=str(tmp_path / "up"), size=32, recipe="small-data",
                 recipe_options={"ensemble_epochs": 3})
    assert not (tmp_path / "up" / MANIFEST_FILE).exists()


def test_pretrain_never_replaces_a_training_run_nor_loses_an_upstream_model_on_bad_input(covid_upstream, tmp_path,
                                                                                          capsys):
    data = write_npz(tmp_path / "tiny.npz", size=32)
    tiny = ["--size", "32", "--epochs", "1", "--pretrained", "scratch", "--threads", "1", "--no-progress"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--tta", "0", *tiny]) == 0
    run_files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), *tiny]) == 2
    assert "already holds a finished run (metrics.json)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == run_files

    upstream = shutil.copytree(covid_upstream, tmp_path / "upstream")
    kept = {p.name: p.read_bytes() for p in upstream.iterdir()}
    assert main(["pretrain", "--data", str(tmp_path / "nowhere.npz"), "--out", str(upstream), "--overwrite",
                 *tiny]) == 2
    assert "was not found" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in upstream.iterdir()} == kept


def test_a_damaged_manifest_stops_the_run_before_training(covid_upstream, tmp_path, capsys):
    upstream = shutil.copytree(covid_upstream, tmp_path / "upstream")
    (upstream / MANIFEST_FILE).write_text('{"format": ')
    data = write_npz(tmp_path / "tiny.npz", size=64)
    assert main(["train", "--data", str(data), "--pretrained", str(upstream), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--threads", "1", "--no-progress"]) == 2
    assert f"{upstream / MANIFEST_FILE} is not readable JSON" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
