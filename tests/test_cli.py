"""The command line end to end on the real pediatric pneumonia data, and its error boundary."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from scarce.cli import main

pytestmark = pytest.mark.slow


def test_train_writes_metrics_weights_and_provenance(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(data_dir / "pneumonia_kaggle_64.npz"), "--n", "32", "--seed", "1",
                 "--epochs", "2", "--tta", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 32 and metrics["seed"] == 1 and metrics["epochs"] == 2
    assert metrics["recipe"] == "small-data"
    assert metrics["train_class_counts"] == {"normal": 16, "pneumonia": 16}
    assert 0.5 < metrics["test_auc"] <= 1.0  # pretrained features beat chance even after 2 epochs
    low, high = metrics["test_auc_ci"]
    assert low < metrics["test_auc"] < high
    assert metrics["test_n"] == 1291
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["seed"] == 1 and run["recipe"]["unfreeze_at"] == [0.0, 0.0, 0.0]
    assert run["recipe"]["select_by"] == "val_auc" and run["recipe"]["lr"] == 3e-3
    assert len(run["data"]["fingerprint"]) == 64 and run["data"]["counts"]["test"] == [327, 964]
    assert run["versions"]["torch"] == "2.14.1" and run["versions"]["timm"]
    assert len(run["data"]["train_subset_indices"]) == 32
    # The default keeps its best epochs (here both) as one ensemble: one network per epoch in the file.
    weights = load_file(str(out / "model.safetensors"))
    assert weights["members.0.classifier.weight"].shape == weights["members.1.classifier.weight"].shape == (1, 1280)
    assert not any(name.startswith("members.2.") for name in weights)
    assert metrics["epoch_ensemble"] is True and sorted(metrics["kept_epochs"]) == [1, 2]
    assert len((out / "history.csv").read_text().splitlines()) == 3
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    printed = capsys.readouterr().out
    assert "test AUC" in printed
    assert f"best epoch {metrics['best_epoch']}/2 (an ensemble of epochs {metrics['kept_epochs'][0]}, " in printed


def test_config_file_and_data_directory_are_used(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_DATA_DIR", str(data_dir))
    config = tmp_path / "run.toml"
    config.write_text('data = "pneumoniamnist.npz"\nn = 20\nepochs = 1\nsize = 32\ntta = 0\n'
                      'recipe = "scratch"\n[recipe_options]\nlr = 0.002\n')
    out = tmp_path / "out"
    # pneumoniamnist.npz has 8 identical images in train and val: refused unless allowed, then recorded.
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 2
    assert not (out / "metrics.json").exists()
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress", "--allow-leakage"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["leakage"]["leak"] and run["data"]["leakage"]["allowed"]
    assert run["config"]["allow_leakage"] is True
    assert run["config"]["size"] == 32 and run["recipe"]["lr"] == 0.002
    assert run["data"]["name"] == "pneumoniamnist" and run["data"]["image_size"] == [3, 32, 32]


def _scarce(*args):
    return subprocess.run([sys.executable, "-m", "scarce", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--data", "no_such_file.npz"], "Data file no_such_file.npz was not found"),
    (["--data", "pneumonia_kaggle_64.npz", "--n", "0"], "n must be a positive whole number"),
    (["--data", "pneumonia_kaggle_64.npz", "--recipe", "regulr"], "Did you mean 'regular'"),
    (["--data", "pneumonia_kaggle_64.npz", "--n", "5000"], "only 867 exist"),
    (["--data", "pneumonia_kaggle_64.npz", "--backbone", "resnet_18"], "Unknown backbone 'resnet_18'"),
])
def test_bad_input_is_one_sentence_and_exit_code_2(data_dir, tmp_path, args, message):
    out = tmp_path / "out"
    result = _scarce("train", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "1", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()


def test_a_finished_run_is_never_overwritten_without_asking(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"test_auc": 0.9}')
    result = _scarce("train", "--data", "x.npz", "--out", str(out))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "metrics.json").read_text() == '{"test_auc": 0.9}'


def test_malformed_config_names_the_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("n = [oops\n")
    result = _scarce("train", "--config", str(config))
    assert result.returncode == 2 and "bad.toml is not valid TOML" in result.stderr
    config.write_text("epocs = 3\n")
    result = _scarce("train", "--config", str(config))
    assert result.returncode == 2 and "unknown field 'epocs'. Did you mean 'epochs'?" in result.stderr


@pytest.mark.parametrize("command, default", [("train", "runs/train"), ("lr-find", "runs/lr-find")])
def test_help_names_each_commands_own_default_output_folder(command, default, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert f"output folder (default {default})" in " ".join(capsys.readouterr().out.split())
