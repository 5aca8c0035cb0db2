"""Bad input, full disks, hostile files, diverging training and repeatability.

Every bad input ends with exit code 2 (3 for a diverged ``scarce train``, 1 for a study with a
diverged cell), one sentence on stderr, no traceback, and nothing written or lost.
"""

import ast
import errno
import hashlib
import json
import os
import pickle
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_npz
from safetensors.torch import load_file
from test_study import _results, tiny_spec

from scarce.artifacts import atomic_write, load_weights, save_weights
from scarce.cli import main
from scarce.errors import CannotWrite, ScarceError
from scarce.models.backbones import create_model, load_trained
from scarce.study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--n", "8", "--size", "32", "--epochs", "1", "--tta", "0", "--pretrained", "scratch", "--no-progress"]
SPEC = 'size = 32\npretrained = "scratch"\nn = [8]\nseeds = [0]\nepochs = 1\ntta = 0\n'
ONE_RECIPE = '\n[[recipes]]\nrecipe = "scratch"\n'


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the sha256 of its bytes, and every folder (an empty one
    left behind counts too): compared before and after."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _scarce(*args, limit_bytes: int | None = None, cwd=None):
    """``python -m scarce`` in a subprocess; ``limit_bytes`` caps the size of any file it writes
    (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past the cap fails with EFBIG, like a full disk)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-m", "scarce", *args], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=cap if limit_bytes else None, timeout=300)


def _one_sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("scarce: error: ") and len(stderr.strip().splitlines()) == 1, stderr
    return stderr


# ----------------------------------------------------------------------------- bad input at the command line

def _bad_case(name: str, tmp: Path) -> tuple[list[str], str]:
    """Build the bad input ``name`` inside ``tmp``; return (scarce arguments, part of the message)."""
    npz = write_npz(tmp / "tiny.npz", sizes=(24, 16, 16))
    spec = tmp / "spec.toml"
    base = f'data = "{npz}"\n' + SPEC
    (tmp / "a_file").write_text("not a folder")
    if name == "train --out is a file":
        return ["train", "--data", str(npz), "--out", str(tmp / "a_file"), *TRAIN], "is a file; give a folder"
    if name == "train --out below a regular file":
        return ["train", "--data", str(npz), "--out", str(tmp / "a_file" / "run"), *TRAIN], "Not a directory"
    if name == "train --out in /proc (unwritable)":
        return ["train", "--data", str(npz), "--out", "/proc/scarce-run", *TRAIN], "Cannot write to output folder"
    if name == "study --out is a file":
        spec.write_text(base + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "a_file")], "is a file; give a folder"
    if name == "study --out below a regular file":
        spec.write_text(base + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "a_file" / "study")], "Cannot create study folder"
    if name == "study --out in /proc (unwritable)":
        spec.write_text(base + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", "/proc/scarce-study"], "Cannot create study folder"
    if name == "malformed spec":
        spec.write_text(base + "\n[[recipes]\nrecipe = 'scratch'\n")
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "spec.toml is not valid TOML"
    if name == "unknown recipe in spec":
        spec.write_text(base + '\n[[recipes]]\nrecipe = "gradual-unfreeze"\n')
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "Did you mean 'gradual-unfreezing'?"
    if name == "negative n in spec":
        spec.write_text(base.replace("n = [8]", "n = [8, -50]") + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "every n must be positive"
    if name == "n in spec not a list":
        spec.write_text(base.replace("n = [8]", 'n = "8"') + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "'n' must be a non-empty list"
    if name == "recipes not a list of tables":
        spec.write_text(base + "recipes = 5\n")
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "'recipes' must be a list"
    if name == "recipe options not a table":
        spec.write_text(base + ONE_RECIPE + "options = 3\n")
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "options must be a table"
    if name == "recipe option of the wrong type":
        spec.write_text(base + ONE_RECIPE + 'options = { lr = "fast" }\n')
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "Recipe setting lr must be a number"
    if name == "unknown recipe option":
        spec.write_text(base + ONE_RECIPE + "options = { lrr = 1e-3 }\n")
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "Unknown recipe setting(s) lrr"
    if name == "spec setting of the wrong type":
        spec.write_text(base.replace("epochs = 1", 'epochs = "ten"') + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "'epochs' must be a positive whole number"
    if name == "target_auc out of range":
        spec.write_text(base + "target_auc = 1.5\n" + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "s")], "target_auc must lie between 0.5 and 1"
    if name == "missing spec":
        return ["study", "run", str(tmp / "nowhere.toml"), "--out", str(tmp / "s")], "does not exist"
    if name == "--workers 0":
        spec.write_text(base + ONE_RECIPE)
        return ["study", "run", str(spec), "--out", str(tmp / "s"), "--workers", "0"], "--workers must be at least 1"
    if name == "study status of a folder without a study":
        return ["study", "status", str(tmp)], "holds no study (no study.db)"
    if name == "train --tta -1":
        return ["train", "--data", str(npz), "--out", str(tmp / "o"), "--tta", "-1"], "tta must be 0 or a positive"
    study = ["study", "run", str(spec), "--out", str(tmp / "s")]
    config = tmp / "run.toml"
    train = ["train", "--config", str(config), "--data", str(npz), "--out", str(tmp / "o"), *TRAIN]
    # Configs with one bad setting: (config text, part of the message).
    config_cases = {
        "train true or false in quotes": ('overwrite = "false"\n', "overwrite must be true or false, not 'false'"),
        "train negative seed": ("seed = -1\n", "seed must be 0 or a positive whole number, not -1"),
        "train head-only phase as long as the run": ("[recipe_options]\nhead_only_epochs = 1\n",
                                                     "head_only_epochs (1) must be fewer than epochs (1)"),
        "train recipe option called name": ('[recipe_options]\nname = "mine"\n', "Unknown recipe setting(s) name"),
    }
    if name in config_cases:
        text, message = config_cases[name]
        config.write_text(text)
        return train, message
    if name == "train size too large":
        return ["train", "--data", str(npz), "--out", str(tmp / "o"), "--size", "4000"], "size must be at most 1024"
    if name == "train empty data in the config":
        config.write_text('data = ""\n')
        return ["train", "--config", str(config), "--out", str(tmp / "o")], "No data given"
    if name == "train missing data (no empty folder left)":
        return ["train", "--data", str(tmp / "nowhere.npz"), "--out", str(tmp / "new" / "run"), *TRAIN], "was not found"
    # Specs that differ from a valid one in one setting: (spec text, part of the message).
    spec_cases = {
        "recipe option out of range": (base + ONE_RECIPE + "options = { label_smoothing = 1.5 }\n",
                                       "label_smoothing must be at least 0 and below 1, not 1.5"),
        "unfreeze_at without a group that trains at once": (
            base + ONE_RECIPE + "options = { unfreeze_at = [0.5, 0.5, 0.5] }\n", "at least one of them 0"),
        "spec tta negative": (base.replace("tta = 0", "tta = -1") + ONE_RECIPE,
                              "spec.toml: tta must be 0 or a positive whole number"),
        "spec unknown backbone": (base + 'backbone = "resnet_18"\n' + ONE_RECIPE, "spec.toml: Unknown backbone 'resnet_18'"),
        "spec negative seed": (base.replace("seeds = [0]", "seeds = [-1]") + ONE_RECIPE,
                               "seed must be 0 or a positive whole number, not -1"),
        "spec target_auc not a number": (base + 'target_auc = "high"\n' + ONE_RECIPE,
                                         "target_auc must lie between 0.5 and 1, not 'high'"),
        "spec user_n negative": (base + "user_n = -5\n" + ONE_RECIPE, "user_n must be a positive whole number"),
        "spec true or false in quotes": (base + 'allow_leakage = "no"\n' + ONE_RECIPE,
                                         "allow_leakage must be true or false, not 'no'"),
        "spec recipe option naming a missing upstream model": (
            base + ONE_RECIPE + f'options = {{ pretrained = "{tmp / "missing-upstream"}" }}\n', "recipe 'scratch'"),
        "study of missing data (no folder left)": (base.replace(str(npz), str(tmp / "nowhere.npz")) + ONE_RECIPE,
                                                   "was not found"),
    }
    if name in spec_cases:
        text, message = spec_cases[name]
        spec.write_text(text)
        return study, message
    if name == "data option of the wrong kind":
        return ["data", "inspect", str(npz), "--data-option", "classes=5"], "Data option classes must be a list of names"
    if name == "config not UTF-8":
        config.write_bytes(b"\xff\xfee\x00p\x00")
        return train, "is not UTF-8 text; save it as UTF-8"
    if name == "config is a folder":
        config.mkdir()
        return train, "cannot be read (Is a directory)"
    if name == "train recipe option of the wrong type":
        config = tmp / "run.toml"
        config.write_text('[recipe_options]\nfrozen_batchnorm = "yes"\n')
        return (["train", "--config", str(config), "--data", str(npz), "--out", str(tmp / "o")],
                "frozen_batchnorm must be true or false")
    raise AssertionError(name)


CLI_CASES = ["train --out is a file", "train --out below a regular file", "train --out in /proc (unwritable)",
             "study --out is a file", "study --out below a regular file", "study --out in /proc (unwritable)",
             "malformed spec", "unknown recipe in spec", "negative n in spec", "n in spec not a list",
             "recipes not a list of tables", "recipe options not a table", "recipe option of the wrong type",
             "unknown recipe option", "spec setting of the wrong type", "target_auc out of range", "missing spec",
             "--workers 0", "study status of a folder without a study", "train --tta -1",
             "train recipe option of the wrong type", "train true or false in quotes", "train negative seed",
             "train size too large", "train empty data in the config", "train missing data (no empty folder left)",
             "train head-only phase as long as the run", "train recipe option called name",
             "recipe option out of range", "unfreeze_at without a group that trains at once", "spec tta negative",
             "spec unknown backbone", "spec negative seed", "spec target_auc not a number", "spec user_n negative",
             "spec true or false in quotes", "spec recipe option naming a missing upstream model",
             "data option of the wrong kind", "config not UTF-8", "config is a folder",
             "study of missing data (no folder left)"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(name, tmp_path, capsys):
    if "/proc" in name and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    args, message = _bad_case(name, tmp_path)
    before = _snapshot(tmp_path)
    assert main(args) == 2
    error = _one_sentence(capsys.readouterr().err)
    assert message in error, error
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed
    assert not Path("/proc/scarce-run").exists() and not Path("/proc/scarce-study").exists()


def test_nan_labels_in_an_npz_are_one_sentence_without_warnings(tmp_path):
    arrays = dict(np.load(write_npz(tmp_path / "tiny.npz")))
    arrays["val_labels"] = arrays["val_labels"].astype(float)
    arrays["val_labels"][3] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    before = _snapshot(tmp_path)
    for args in (["data", "inspect", str(tmp_path / "nan.npz")],
                 ["train", "--data", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "o"), *TRAIN]):
        result = _scarce(*args)  # a subprocess: a RuntimeWarning would show as a second stderr line
        assert result.returncode == 2
        assert "val_labels contains NaN; every image needs a label" in _one_sentence(result.stderr)
    assert _snapshot(tmp_path) == before


def _damaged_npz(tmp: Path, name: str) -> tuple[Path, str]:
    """A MedMNIST-layout file with the defect ``name``; return it and part of the expected sentence."""
    arrays = dict(np.load(write_npz(tmp / "tiny.npz")))
    path = tmp / "bad.npz"
    if name == "truncated download":
        path.write_bytes((tmp / "tiny.npz").read_bytes()[:3000])
        return path, "is not a readable .npz file"
    if name == "fewer labels than images":
        arrays["train_labels"] = arrays["train_labels"][:-4]
        message = "train_labels has 20 labels for 24 images"
    elif name == "an empty split":
        arrays["test_images"], arrays["test_labels"] = arrays["test_images"][:0], arrays["test_labels"][:0]
        message = "test_images is empty"
    elif name == "negative label":
        arrays["val_labels"][0] = -1
        message = "val_labels holds values that are not whole numbers 0 or more (such as -1)"
    elif name == "fractional label":
        arrays["train_labels"] = arrays["train_labels"].astype(float)
        arrays["train_labels"][0] = 0.7
        message = "(such as 0.7)"
    elif name == "images without a pixel grid":
        arrays["train_images"] = arrays["train_images"].reshape(24, -1)
        message = "train_images has shape (24, 1024); expected N x H x W"
    elif name == "one class only":
        for split in ("train", "val", "test"):
            arrays[f"{split}_labels"][:] = 0
        message = "no training image has class 1"
    elif name == "a class index without training images":
        arrays["train_labels"][arrays["train_labels"] == 1] = 2
        message = "no training image has class 1"
    else:
        raise AssertionError(name)
    np.savez(path, **arrays)
    return path, message


@pytest.mark.parametrize("name", ["truncated download", "fewer labels than images", "an empty split", "negative label",
                                  "fractional label", "images without a pixel grid", "one class only",
                                  "a class index without training images"])
def test_a_damaged_npz_is_one_sentence_naming_the_array(name, tmp_path, capsys):
    path, message = _damaged_npz(tmp_path, name)
    before = _snapshot(tmp_path)
    for args in (["data", "inspect", str(path)], ["train", "--data", str(path), "--out", str(tmp_path / "o"), *TRAIN]):
        assert main(args) == 2
        assert message in _one_sentence(capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_a_test_split_of_one_class_gives_an_undefined_auc_not_a_crash(tmp_path, capsys):
    arrays = dict(np.load(write_npz(tmp_path / "tiny.npz")))
    keep = arrays["test_labels"][:, 0] == 1
    arrays["test_images"], arrays["test_labels"] = arrays["test_images"][keep], arrays["test_labels"][keep]
    np.savez(tmp_path / "one-class-test.npz", **arrays)
    assert main(["train", "--data", str(tmp_path / "one-class-test.npz"), "--out", str(tmp_path / "o"), *TRAIN]) == 0
    assert "test AUC undefined (one class only), accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["test_auc"] is None


# ----------------------------------------------------------------------------- disk full

def test_a_failed_write_names_the_file_and_leaves_the_old_one(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("earlier")

    def fill_the_disk(temporary):
        Path(temporary).write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), temporary)

    with pytest.raises(CannotWrite, match=r"Cannot write .*metrics.json: the disk is full"):
        atomic_write(target, fill_the_disk)
    assert target.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.slow
def test_file_size_limit_during_train_leaves_no_partial_file(tmp_path):
    npz = write_npz(tmp_path / "tiny.npz")
    out = tmp_path / "run"
    result = _scarce("train", "--data", str(npz), "--out", str(out), *TRAIN, limit_bytes=1_000_000)
    assert result.returncode == 2
    assert "model.safetensors: the file would exceed the file-size limit" in _one_sentence(result.stderr)
    assert sorted(p.name for p in out.iterdir()) == []  # no partial checkpoint, no temporary, no metrics
    # Over an earlier run (--overwrite): its weights are untouched, and it no longer claims to be
    # finished, because the new run had started replacing it (metrics.json goes first).
    assert main(["train", "--data", str(npz), "--out", str(out), *TRAIN]) == 0
    earlier = _snapshot(out)
    result = _scarce("train", "--data", str(npz), "--out", str(out), *TRAIN, "--overwrite", limit_bytes=1_000_000)
    assert result.returncode == 2 and "Cannot write" in _one_sentence(result.stderr)
    after = _snapshot(out)
    assert "metrics.json" not in after and after == {k: v for k, v in earlier.items() if k != "metrics.json"}


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                             capture_output=True)
    return mounted.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file-size limit", "full tmpfs"])
def test_disk_full_stops_a_study_loses_no_finished_cell_and_resumes(tmp_path, how):
    spec = tiny_spec(tmp_path, n="[8]", seeds="[0]", tta=0)
    folder = tmp_path / "disk"
    limit = None
    if how == "full tmpfs":
        if not _mount_tmpfs(folder, 96):  # 4 checkpoints of 13 MB fit
            pytest.skip("mounting a tmpfs is not permitted here; the file-size limit case covers it")
    else:
        folder.mkdir()
        limit = 1_000_000
    try:
        out = folder / "study"
        assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 0
        finished = _snapshot(out / "cells")
        first = _results(out)
        if how == "full tmpfs":  # fill the disk, leaving 1 MB: less than one checkpoint (13 MB)
            stats = os.statvfs(folder)
            (folder / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - 1_000_000))
        more = tiny_spec(tmp_path, n="[8]", seeds="[0, 1]", tta=0)
        result = _scarce("study", "run", str(more), "--out", str(out), "--no-progress", limit_bytes=limit)
        assert result.returncode == 2
        error = _one_sentence(result.stderr)
        assert "Cannot write" in error or "could not be written" in error, error
        assert "disk is full" in error or "file-size limit" in error or "full" in error
        assert {k: v for k, v in _snapshot(out / "cells").items() if k in finished} == finished  # nothing lost
        assert not list(out.rglob("*.tmp")) and not (out / "study.lock").exists()
        with sqlite3.connect(out / "study.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT COUNT(*) FROM cells WHERE seed = 0 AND status = 'done'").fetchone()[0] == 2
        db.close()
        (folder / "filler").unlink(missing_ok=True)
        resumed = _scarce("study", "run", str(more), "--out", str(out), "--no-progress")
        assert resumed.returncode == 0, resumed.stderr
        assert [row for row in _results(out) if row["seed"] == "0"] == first and len(_results(out)) == 4
    finally:
        if how == "full tmpfs":
            subprocess.run(["umount", str(folder)], capture_output=True)


# ----------------------------------------------------------------------------- checkpoints and hostile files

def _checkpoint(path: Path, backbone: str = "efficientnet_lite0", state=None, info=None) -> Path:
    state = state if state is not None else create_model(backbone, "scratch", 1).state_dict()
    save_weights(path, state, info if info is not None else {"backbone": backbone, "num_outputs": 1})
    return path


def test_a_corrupted_checkpoint_is_refused_in_one_sentence(tmp_path):
    good = _checkpoint(tmp_path / "model.safetensors")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(data[:8] + b"\xff" * 64 + data[72:])
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(ScarceError, match="is not a valid safetensors file"):
            load_trained(path)
    with pytest.raises(ScarceError, match="does not exist"):
        load_trained(tmp_path / "missing.safetensors")
    model, info = load_trained(good)  # the intact file still loads
    assert info["backbone"] == "efficientnet_lite0" and not model.training


def test_a_checkpoint_of_another_backbone_is_refused(tmp_path):
    resnet = create_model("resnet18", "scratch", 1).state_dict()
    claimed = _checkpoint(tmp_path / "model.safetensors", state=resnet,
                          info={"backbone": "efficientnet_lite0", "num_outputs": 1})
    with pytest.raises(ScarceError, match="does not fit backbone efficientnet_lite0; it was written for another model"):
        load_trained(claimed)
    other_head = _checkpoint(tmp_path / "three.safetensors", state=create_model("efficientnet_lite0", "scratch", 3)
                             .state_dict(), info={"backbone": "efficientnet_lite0", "num_outputs": 1})
    with pytest.raises(ScarceError, match="does not fit backbone"):
        load_trained(other_head)
    bare = tmp_path / "bare.safetensors"
    from safetensors.torch import save_file
    save_file(resnet, str(bare))
    with pytest.raises(ScarceError, match="lacks scarce's metadata"):
        load_trained(bare)


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    hostile = {"classifier.weight": _Payload(marker), "backbone": "efficientnet_lite0"}
    proof = tmp_path / "PROOF"
    pickle.loads(pickle.dumps(_Payload(proof)))  # the payload is live: plain unpickling runs it
    assert proof.exists()
    for name in ("model.safetensors", "model.pt", "model.pth"):
        path = tmp_path / name
        torch.save(hostile, path)  # torch's pickle-based format
        for load in (load_weights, load_trained):
            with pytest.raises(ScarceError, match="scarce loads only safetensors checkpoints"):
                load(path)
        # The one torch.load in scarce uses weights_only=True, which refuses it too (this torch hands
        # a .safetensors name to safetensors, which refuses it as well).
        with pytest.raises((pickle.UnpicklingError, Exception)):
            torch.load(path, weights_only=True)
        raw = tmp_path / f"raw-{name}"
        raw.write_bytes(pickle.dumps(hostile))  # a bare pickle, no torch container
        with pytest.raises(ScarceError, match="not a valid safetensors file"):
            load_weights(raw)
    assert not marker.exists()


def test_spec_and_config_files_are_data_only(tmp_path):
    marker = tmp_path / "MARKER"
    code = f"__import__('os').system('touch {marker}')"
    spec = tmp_path / "spec.toml"
    spec.write_text(f'name = "{code}"\ndata = "x.npz"\n[[recipes]]\nrecipe = "regular"\n')
    assert load_spec(spec).name == code  # a string, never evaluated
    config = tmp_path / "run.toml"
    config.write_text(f'data = "x.npz"\n[recipe_options]\nlr = "{code}"\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                else None)
            yield name, {k.arg: k.value for k in node.keywords}, node.lineno


def test_the_package_never_evaluates_code_or_unpickles():
    """No eval/exec, no pickle.load(s), no torch.load without weights_only=True, no allow_pickle=True."""
    found, torch_loads = [], 0
    for source in sorted((REPO / "scarce").rglob("*.py")):
        for name, keywords, line in _calls(ast.parse(source.read_text(), str(source))):
            where = f"{source.name}:{line} {name}"
            if name in ("eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads", "marshal.loads"):
                found.append(where)
            if name == "torch.load":
                torch_loads += 1
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(where + " without weights_only=True")
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(where + " with allow_pickle")
    assert found == []
    assert torch_loads == 1  # the offline ImageNet file, read with weights_only=True


# ----------------------------------------------------------------------------- divergence

EXPLODING = '\n[[recipes]]\nname = "exploding"\nrecipe = "scratch"\noptions = { lr = 1e20 }\n'


@pytest.mark.slow
def test_a_diverging_arm_is_recorded_reported_and_the_study_exits_1(tmp_path, capsys):
    npz = write_npz(tmp_path / "tiny.npz")
    spec = tmp_path / "spec.toml"
    spec.write_text(f'data = "{npz}"\n' + SPEC.replace("seeds = [0]", "seeds = [0, 1]").replace("epochs = 1", "epochs = 2")
                    + '\n[[recipes]]\nrecipe = "gradual-unfreezing"\n' + EXPLODING)
    out = tmp_path / "study"
    assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 1
    assert "2 diverged, 2 done" in capsys.readouterr().out
    with sqlite3.connect(out / "study.db") as db:
        rows = db.execute("SELECT arm, status, error FROM cells ORDER BY arm, seed").fetchall()
    db.close()
    assert [(arm, status) for arm, status, _ in rows] == [("exploding", "diverged")] * 2 + [("gradual-unfreezing", "done")] * 2
    assert all("training loss became nan" in error for arm, _, error in rows if arm == "exploding")
    assert not (out / "cells" / "exploding" / "n8-s0" / "metrics.json").exists()
    html = (out / "report.html").read_text()
    problems = html.split("<h2>Cells left out of the means</h2>")[1].split("<h2>")[0]
    assert problems.count("<td>exploding</td>") == 2 and "diverged" in problems
    summary = (out / "summary.md").read_text()
    assert "## Cells left out of the means" in summary and "- exploding N=8 seed=0: diverged (training loss became nan" in summary
    statuses = {(r["recipe"], r["status"]) for r in _results(out)}
    assert statuses == {("exploding", "diverged"), ("gradual-unfreezing", "done")}
    # Diverged cells are final: resuming neither retrains them nor changes the exit code.
    assert main(["study", "run", str(spec), "--out", str(out), "--no-progress"]) == 1


def test_a_diverging_train_exits_3_with_one_sentence_and_no_metrics(tmp_path, capsys):
    npz = write_npz(tmp_path / "tiny.npz")
    config = tmp_path / "run.toml"
    config.write_text('recipe = "scratch"\n[recipe_options]\nlr = 1e20\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(npz), "--out", str(out), "--n", "8",
                 "--size", "32", "--epochs", "2", "--tta", "0", "--no-progress"]) == 3
    error = capsys.readouterr().err
    assert error.startswith("scarce: error: training loss became nan at epoch 2")
    assert "lower the learning rate" in error and len(error.strip().splitlines()) == 1
    assert list(out.iterdir()) == []  # no metrics.json, no weights


# ----------------------------------------------------------------------------- determinism

@pytest.mark.slow
def test_the_same_train_command_twice_gives_identical_metrics_and_weights(tmp_path):
    npz = write_npz(tmp_path / "tiny.npz")
    args = ["train", "--data", str(npz), "--n", "16", "--size", "32", "--epochs", "2", "--tta", "2",
            "--pretrained", "scratch", "--seed", "3", "--threads", "1", "--no-progress"]
    for name in ("a", "b"):
        result = _scarce(*args, "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("a", "b")]
    for m in metrics:
        del m["train_seconds"], m["test_seconds"], m["timings"]  # wall-clock, not results
    assert metrics[0] == metrics[1]
    weights = [load_file(str(tmp_path / name / "model.safetensors")) for name in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (np.load(tmp_path / "a" / "test_probabilities.npy") == np.load(tmp_path / "b" / "test_probabilities.npy")).all()
