"""Using a trained model: thresholds stored at training, predict, evaluate, Grad-CAM, model card, errors.

One tiny model is trained once on the real pediatric pneumonia data (40 images, 1 epoch, one
augmented test-time pass); a folder of real PNGs is written from its test split.
"""

import base64
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import knee_findings_table
from PIL import Image

import scarce
from scarce.cli import main
from scarce.data.augment import normalize, to_float
from scarce.data.cache import load_resized
from scarce.evaluation.decisions import reliability, sensitivity_threshold, youden_threshold
from scarce.evaluation.inference import predict
from scarce.models.backbones import load_trained
from scarce.use.explain import explained_classes, grad_cam, target_layer
from scarce.use.predict import load_images, load_model_folder, predict_images

pytestmark = pytest.mark.slow
CLASSES = ["normal", "pneumonia"]
PER_CLASS = 15


@pytest.fixture(scope="module", autouse=True)
def decode_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCARCE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def npz(data_dir) -> Path:
    return data_dir / "pneumonia_kaggle_64.npz"


@pytest.fixture(scope="module")
def run(npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "run"
    scarce.train(data=str(npz), n=40, epochs=1, tta=1, threads=1, size=64, seed=0, out=str(out), progress=False)
    return out


@pytest.fixture(scope="module")
def pngs(npz, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A folder per class of real PNGs: the first 15 test images of each class; and their test indices."""
    folder = tmp_path_factory.mktemp("pngs") / "xrays"
    with np.load(npz) as archive:
        images, labels = archive["test_images"], archive["test_labels"][:, 0]
    picked = np.concatenate([np.flatnonzero(labels == k)[:PER_CLASS] for k in range(2)])
    for i in picked:
        (folder / CLASSES[labels[i]]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / CLASSES[labels[i]] / f"test_{i:04d}.png")
    return folder, picked


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _test_split(npz: Path):
    return load_resized(str(npz), None, "{}", 64).splits["test"]


# ---------------------------------------------------------------- training stores thresholds and a card

def test_training_stores_thresholds_chosen_on_val_before_metrics(run, npz):
    stored = json.loads((run / "thresholds.json").read_text())
    assert stored["outputs"] == ["pneumonia"] and stored["rule"] == "positive when probability >= threshold"
    assert stored["chosen_on"] == {"split": "val", "n": 539, "tta_passes": {"clean": 1, "augmented": 1}, "seed": 0}
    # Recompute from the validation split with the run's TTA and seed: the same thresholds come out.
    model, _ = load_trained(run / "model.safetensors")
    val = load_resized(str(npz), None, "{}", 64).splits["val"]
    probs = predict(model, val.images, "binary", tta=1, seed=0)
    youden = stored["thresholds"]["youden"]["values"][0]
    assert youden == pytest.approx(youden_threshold(val.labels, probs), abs=1e-6)
    target = stored["thresholds"]["sensitivity90"]["values"][0]
    assert target == pytest.approx(sensitivity_threshold(val.labels, probs, 0.9), abs=1e-6)
    sensitivity = (probs[val.labels == 1] >= target).mean()
    assert sensitivity >= 0.9 and stored["thresholds"]["sensitivity90"]["sensitivity"][0] >= 0.9
    assert stored["thresholds"]["0.5"]["values"] == [0.5]
    # metrics.json is still the last file written: its presence marks a finished run.
    written = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert written["metrics.json"] == max(written.values())


def test_model_card_describes_data_metrics_thresholds_and_limits(run, tmp_path, capsys):
    card = (run / "MODEL_CARD.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text())
    youden = json.loads((run / "thresholds.json").read_text())["thresholds"]["youden"]["values"][0]
    low, high = metrics["test_auc_ci"]
    for expected in ("Research use only", "not a medical device", "domain shift",
                     f"AUC: {metrics['test_auc']:.4f} (95% bootstrap CI {low:.4f}–{high:.4f})",
                     "Training subset: 40 images (normal 20, pneumonia 20), seed 0",
                     record["data"]["fingerprint"], "| test | 327 | 964 |", "Recipe: small-data",
                     f"| youden | pneumonia | {youden:.4f} |", "| torch | 2.14.1 |",
                     f"selected epoch {metrics['best_epoch']} (highest validation AUC; validation loss"):
        assert expected in card
    # Regenerated from the folder's records alone, it is the same text.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("run.json", "metrics.json", "thresholds.json"):
        shutil.copy(run / name, copy / name)
    assert main(["model-card", "--model", str(copy)]) == 0
    assert (copy / "MODEL_CARD.md").read_text() == card
    # A weight soup (recipe option soup) names the epochs averaged into the kept model.
    (copy / "metrics.json").write_text(json.dumps({**metrics, "kept_epochs": [metrics["best_epoch"], 3, 1]}))
    assert main(["model-card", "--model", str(copy)]) == 0
    assert "averaged with epochs 3, 1 (greedy weight soup); validation loss" in (copy / "MODEL_CARD.md").read_text()
    (copy / "metrics.json").write_text(json.dumps(metrics))
    # A hostile class name and source cannot inject HTML or split the tables.
    record["data"]["classes"] = ["<script>alert(1)</script>", "a|b"]
    record["data"]["source"] = "x](javascript:alert(1)) <img src=y>"
    (copy / "run.json").write_text(json.dumps(record))
    assert main(["model-card", "--model", str(copy)]) == 0
    hostile = (copy / "MODEL_CARD.md").read_text()
    assert "<script>" not in hostile and "<img" not in hostile.replace("\\<img", "")
    assert "| split | \\<script\\>alert(1)\\</script\\> | a\\|b |" in hostile


# ---------------------------------------------------------------- predict

def test_predict_writes_probabilities_and_decisions_for_a_folder(run, pngs, tmp_path, capsys):
    folder, picked = pngs
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(run), "--data", str(folder), "--out", str(out), "--threads", "1"]) == 0
    assert "30 images, 1 clean + 1 augmented passes, decision: youden" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == ["id", "label", "prob_normal", "prob_pneumonia", "decision", "threshold"]
    assert len(rows) == 2 * PER_CLASS
    assert sorted(r["id"] for r in rows) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    assert all(r["label"] == r["id"].split("/")[0] for r in rows)
    youden = json.loads((run / "thresholds.json").read_text())["thresholds"]["youden"]["values"][0]
    for r in rows:
        p = float(r["prob_pneumonia"])
        assert float(r["prob_normal"]) + p == pytest.approx(1, abs=2e-6)
        assert r["threshold"] == "youden"
        if abs(p - youden) > 1e-5:  # the CSV keeps 6 significant digits
            assert r["decision"] == ("pneumonia" if p >= youden else "normal")
    # Another stored threshold changes the decisions where it should.
    other = tmp_path / "sens.csv"
    assert main(["predict", "--model", str(run), "--data", str(folder), "--out", str(other),
                 "--threshold", "sensitivity90", "--threads", "1"]) == 0
    target = json.loads((run / "thresholds.json").read_text())["thresholds"]["sensitivity90"]["values"][0]
    for r in _rows(other):
        if abs(float(r["prob_pneumonia"]) - target) > 1e-5:
            assert r["decision"] == ("pneumonia" if float(r["prob_pneumonia"]) >= target else "normal")
        assert r["threshold"] == "sensitivity90"


def test_predict_sees_the_same_pixels_and_probabilities_as_training(run, pngs, npz, tmp_path):
    folder, picked = pngs
    trained = load_model_folder(run)
    images = load_images(folder, trained.size)
    test = _test_split(npz)
    order = [int(Path(i).stem.split("_")[1]) for i in images.ids]  # test index from the file name
    assert sorted(order) == sorted(picked.tolist())
    assert torch.equal(images.images, test.images[order])  # decoded and made 3-channel exactly as in training
    out = tmp_path / "clean.csv"
    assert main(["predict", "--model", str(run), "--data", str(folder), "--out", str(out), "--tta", "0"]) == 0
    found = np.array([float(r["prob_pneumonia"]) for r in _rows(out)])
    expected = predict(trained.model, test.images[order], "binary", tta=0)
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_test_time_views_follow_the_recipes_geometry(npz, tmp_path):
    """A recipe trained without rotation, flip and shift is tested on the same geometry: its TTA
    views are the image itself, so two augmented passes give the clean prediction, in training's
    evaluation and in predict; the standard views (with flips) would not."""
    out = tmp_path / "still"
    options = {"rotation": 0.0, "flip": False, "shift": 0}
    scarce.train(data=str(npz), n=20, epochs=1, tta=2, threads=1, size=64, seed=0, out=str(out),
                 progress=False, recipe_options=options)
    trained = load_model_folder(out)
    assert (trained.tta_views.rotation, trained.tta_views.flip, trained.tta_views.shift) == (0.0, False, 0)
    images = _test_split(npz).images[:200]
    clean = predict(trained.model, images, "binary", tta=0)
    np.testing.assert_allclose(np.load(out / "test_probabilities.npy")[:200], clean, atol=1e-5)
    np.testing.assert_allclose(predict_images(trained, load_images(str(npz), 64)), np.load(out / "test_probabilities.npy"),
                               atol=1e-5)
    standard = predict(trained.model, images, "binary", tta=2)
    assert np.abs(standard - clean).max() > 1e-3


def test_a_run_without_thresholds_decides_at_half_and_says_so(run, pngs, tmp_path, capsys):
    folder, _ = pngs
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    (old / "thresholds.json").unlink()
    out = tmp_path / "old.csv"
    assert main(["predict", "--model", str(old), "--data", str(folder), "--out", str(out), "--tta", "0"]) == 0
    rows = _rows(out)
    assert {r["threshold"] for r in rows} == {"0.5"}
    assert all(r["decision"] == ("pneumonia" if float(r["prob_pneumonia"]) >= 0.5 else "normal")
               for r in rows if abs(float(r["prob_pneumonia"]) - 0.5) > 1e-5)
    capsys.readouterr()
    assert main(["predict", "--model", str(old), "--data", str(folder), "--threshold", "youden"]) == 2
    assert "only --threshold 0.5 applies" in capsys.readouterr().err


def test_predict_on_an_npz_reads_its_test_split_unless_told(run, npz, tmp_path):
    out = tmp_path / "npz.csv"
    assert main(["predict", "--model", str(run), "--data", str(npz), "--out", str(out), "--tta", "0",
                 "--threshold", "0.5"]) == 0
    rows = _rows(out)
    assert len(rows) == 1291 and rows[0]["id"] == "test/0" and rows[-1]["id"] == "test/1290"
    assert main(["predict", "--model", str(run), "--data", str(npz), "--out", str(out), "--tta", "0",
                 "--split", "val"]) == 0
    assert len(_rows(out)) == 539


def test_predict_reads_unlabelled_images(run, pngs, tmp_path):
    folder, _ = pngs
    out = tmp_path / "flat.csv"
    assert main(["predict", "--model", str(run), "--data", str(folder / "pneumonia"), "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == PER_CLASS and "label" not in rows[0] and rows[0]["id"].endswith(".png")
    single = next((folder / "normal").glob("*.png"))
    assert main(["predict", "--model", str(run), "--data", str(single), "--out", str(out)]) == 0
    assert [r["id"] for r in _rows(out)] == [single.name]


# ---------------------------------------------------------------- evaluate

def test_evaluate_on_the_test_split_reproduces_the_training_auc(run, npz, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(run), "--data", str(npz), "--out", str(out), "--threads", "1"]) == 0
    assert "internal test" in capsys.readouterr().out
    result = json.loads((out / "evaluation.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    # Same images, same TTA passes and seed, same bootstrap seed: the same numbers.
    assert result["auc"] == metrics["test_auc"] and result["auc_ci"] == metrics["test_auc_ci"]
    assert result["data"]["n"] == 1291 and result["data"]["counts"] == {"normal": 327, "pneumonia": 964}
    assert result["data"]["same_source_as_training"] is True
    assert result["tta_passes"] == {"clean": 1, "augmented": 1}
    calibration = result["calibration"]
    assert calibration["bins"] == 10 and sum(row["n"] for row in calibration["curve"]) == 1291
    trained_probs = np.load(run / "test_probabilities.npy")
    assert calibration["ece"] == pytest.approx(reliability(_test_split(npz).labels, trained_probs)["ece"], abs=1e-9)
    for name in ("youden", "0.5", "sensitivity90"):
        counts = result["decisions"][name]["pneumonia"]
        assert counts["tp"] + counts["fn"] == 964 and counts["tn"] + counts["fp"] == 327
    at_half = result["decisions"]["0.5"]["pneumonia"]
    assert at_half["sensitivity"] == pytest.approx(metrics["test_sensitivity"])
    page = (out / "evaluation.html").read_text()
    png = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert len(_rows(out / "predictions.csv")) == 1291


def test_evaluate_an_external_folder_escapes_its_names(run, pngs, tmp_path):
    folder, _ = pngs
    hostile = tmp_path / "<i>site b</i>"
    shutil.copytree(folder, hostile)
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", str(run), "--data", str(hostile), "--out", str(out), "--tta", "0"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["data"]["n"] == 30 and result["data"]["split"] == "all"
    assert result["data"]["counts"] == {"normal": 15, "pneumonia": 15}
    assert result["data"]["same_source_as_training"] is False and 0 <= result["auc"] <= 1
    page = (out / "evaluation.html").read_text()
    assert "&lt;i&gt;site b&lt;/i&gt;" in page and "<i>site" not in page


# ---------------------------------------------------------------- Grad-CAM

def test_explain_writes_one_heatmap_per_image_at_the_model_size(run, pngs, tmp_path):
    folder, _ = pngs
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(run), "--data", str(folder), "--out", str(out), "--explain"]) == 0
    rows = _rows(out)
    files = sorted((tmp_path / "preds_gradcam").iterdir())
    assert len(files) == len(rows) == 30 and sorted(tmp_path / r["heatmap"] for r in rows) == files
    for path in files:
        with Image.open(path) as picture:
            assert picture.size == (64, 64) and picture.mode == "RGB"
            pixels = np.asarray(picture)
        assert (pixels[..., 0] != pixels[..., 2]).any()  # coloured by the heatmap, unlike the gray X-ray


def _manual_grad_cam(model, images, sign: float) -> np.ndarray:
    """Grad-CAM by hand: hook the last feature map, weight it by the mean gradient, ReLU, upsample."""
    _, layer = target_layer(model)
    store = {}
    hook = layer.register_forward_hook(lambda module, inputs, output: store.update(features=output))
    with torch.enable_grad():
        score = model(normalize(to_float(images)))[:, 0] * sign
        gradients = torch.autograd.grad(score.sum(), store["features"])[0]
    hook.remove()
    cam = F.relu((gradients.mean(dim=(2, 3), keepdim=True) * store["features"]).sum(1, keepdim=True)).detach()
    cam = cam - cam.amin(dim=(2, 3), keepdim=True)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-7)
    return F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0].numpy()


def test_grad_cam_explains_the_predicted_class_at_the_last_feature_map(run, npz):
    trained = load_model_folder(run)
    images = _test_split(npz).images[:8]
    assert target_layer(trained.model)[0] == "bn2"  # conv_head's BatchNorm and activation
    probs = predict(trained.model, images, "binary")
    classes = explained_classes("binary", probs, [0.5])
    maps = grad_cam(trained.model, images, "binary", classes)
    assert maps.shape == (8, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    for k in range(len(images)):
        sign = 1.0 if classes[k] == 1 else -1.0
        predicted = _manual_grad_cam(trained.model, images[k:k + 1], sign)[0]
        other = _manual_grad_cam(trained.model, images[k:k + 1], -sign)[0]
        assert np.abs(maps[k] - predicted).max() < 1e-4
        if predicted.max() > 0 and other.max() > 0:
            assert np.abs(maps[k] - other).max() > 0.1  # the class matters: evidence for one is against the other


def test_an_epoch_ensemble_predicts_explains_and_describes_itself(npz, pngs, tmp_path):
    """A run that keeps its two epochs (ensemble_epochs = 2) on real data: one file with both
    networks, predictions that are their mean logits, Grad-CAM through the best epoch's network,
    and a model card that says so."""
    run = tmp_path / "ensemble"
    scarce.train(data=str(npz), n=40, epochs=2, tta=0, threads=1, size=64, seed=0, out=str(run),
                 progress=False, recipe_options={"ensemble_epochs": 2})
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch_ensemble"] is True and sorted(metrics["kept_epochs"]) == [1, 2]
    assert f"with epochs {metrics['kept_epochs'][1]} in an ensemble that averages their logits (2 networks)" \
        in (run / "MODEL_CARD.md").read_text()
    trained = load_model_folder(run)
    images = _test_split(npz).images[:8]
    with torch.no_grad():
        batch = normalize(to_float(images))
        mean_logits = (trained.model.members[0](batch) + trained.model.members[1](batch)) / 2
    np.testing.assert_allclose(predict(trained.model, images, "binary"), mean_logits[:, 0].sigmoid().numpy(), atol=1e-6)
    assert target_layer(trained.model)[0] == "bn2"
    maps = grad_cam(trained.model, images, "binary", explained_classes("binary", predict(trained.model, images, "binary"), [0.5]))
    assert maps.shape == (8, 64, 64) and maps.max() <= 1 and maps.max() > 0
    folder, _ = pngs
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(run), "--data", str(folder), "--out", str(out), "--explain"]) == 0
    assert len(_rows(out)) == 30 and len(list((tmp_path / "preds_gradcam").iterdir())) == 30


# ---------------------------------------------------------------- errors

def test_user_errors_are_one_sentence_and_exit_code_2(run, pngs, npz, data_dir, tmp_path, capsys):
    folder, _ = pngs
    empty = tmp_path / "empty"
    empty.mkdir()
    flat = folder / "normal"
    one_class = tmp_path / "one"
    shutil.copytree(flat, one_class / "normal")
    out = str(tmp_path / "x.csv")
    cases = [
        (["predict", "--model", str(tmp_path / "nope"), "--data", str(npz)], "does not exist"),
        (["predict", "--model", str(empty), "--data", str(npz)], "lacks model.safetensors and run.json"),
        (["predict", "--model", str(run), "--data", str(data_dir / "samples" / "knee_png"), "--out", out],
         "has 5 classes (KL0, KL1, KL2, KL3, KL4) but the model was trained on 2 (normal, pneumonia)"),
        (["predict", "--model", str(run), "--data", str(npz), "--threshold", "yoden"],
         "Unknown threshold 'yoden'; use one of youden, 0.5, sensitivity90."),
        (["predict", "--model", str(run), "--data", str(one_class), "--out", out], "a single class folder"),
        (["predict", "--model", str(run), "--data", str(npz), "--split", "holdout"], "Unknown split 'holdout'"),
        (["evaluate", "--model", str(run), "--data", str(flat), "--out", str(tmp_path / "e")],
         "holds unlabelled images"),
        (["export", "--model", str(run), "--format", "tflite"], "Unknown export format 'tflite'"),
        (["model-card", "--model", str(empty)], "lacks run.json"),
        (["predict", "--model", str(run), "--data", str(flat), "--out", str(run / "run.json")],
         "would replace the model's own run.json; choose another file name"),
        (["export", "--model", str(run), "--out", str(run / "model.safetensors")],
         "would replace the model's own model.safetensors"),
        (["predict", "--model", str(run), "--data", str(flat), "--out", str(tmp_path / "x.csv" / "p.csv")],
         "a part of the path is a file, not a folder"),
    ]
    Path(out).with_name("x.csv").write_text("a file in the way")
    model_files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for argv, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert message in error, (argv, error)
        assert error.startswith("scarce: error: ") and len(error.strip().splitlines()) == 1
    assert Path(out).read_text() == "a file in the way"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == model_files


def test_the_command_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scarce", "predict", "--model", str(tmp_path / "nope"),
                             "--data", "x.npz"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"scarce: error: Model folder {tmp_path / 'nope'} does not exist; "
                                      f"give the --out folder of a finished scarce train.")


# ---------------------------------------------------------------- multi-class and multi-label models



def test_multiclass_decides_by_argmax_and_multilabel_per_label(data_dir, tmp_path, capsys):
    knee = data_dir / "samples" / "knee_png"
    settings = dict(n=10, epochs=1, tta=0, threads=1, size=32, seed=0, progress=False)
    scarce.train(data=str(knee), out=str(tmp_path / "mc"), **settings)
    assert json.loads((tmp_path / "mc" / "thresholds.json").read_text())["decision"] == "argmax"
    out = tmp_path / "mc.csv"
    assert main(["predict", "--model", str(tmp_path / "mc"), "--data", str(knee), "--out", str(out)]) == 0
    rows = _rows(out)
    names = [f"prob_KL{k}" for k in range(5)]
    assert len(rows) == 100 and list(rows[0])[2:7] == names
    for r in rows:
        probs = [float(r[name]) for name in names]
        assert sum(probs) == pytest.approx(1, abs=1e-5) and r["threshold"] == "argmax"
        assert r["decision"] == f"KL{int(np.argmax(probs))}" or max(probs) - sorted(probs)[-2] < 1e-5
    assert main(["predict", "--model", str(tmp_path / "mc"), "--data", str(knee), "--threshold", "youden"]) == 2
    assert "drop --threshold youden" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "mc"), "--data", str(knee), "--out", str(tmp_path / "mce")]) == 0
    result = json.loads((tmp_path / "mce" / "evaluation.json").read_text())
    assert [sum(row) for row in result["decisions"]["argmax"]["matrix"]] == [20] * 5
    assert len(result["per_class_auc"]) == 5 and result["calibration"]["of"].startswith("top-class")

    table = knee_findings_table(knee, tmp_path / "findings.csv")
    options = ["--data-option", f"root={knee.parent.parent}", "--data-option", "label_column=finding",
               "--data-option", "label_separator=|"]
    assert main(["train", "--data", str(table), "--out", str(tmp_path / "ml"), "--n", "20", "--epochs", "1",
                 "--size", "32", "--tta", "0", "--threads", "1", "--no-progress", *options]) == 0
    stored = json.loads((tmp_path / "ml" / "thresholds.json").read_text())
    labels = ["any", "narrowing", "osteophyte"]
    assert stored["outputs"] == labels and len(stored["thresholds"]["youden"]["values"]) == 3
    out = tmp_path / "ml.csv"
    assert main(["predict", "--model", str(tmp_path / "ml"), "--data", str(table), "--out", str(out),
                 "--threshold", "sensitivity90", *options]) == 0
    values = stored["thresholds"]["sensitivity90"]["values"]
    for r in _rows(out):
        probs = [float(r[f"prob_{name}"]) for name in labels]
        if all(abs(p - t) > 1e-5 for p, t in zip(probs, values)):
            assert r["decision"] == "|".join(name for name, p, t in zip(labels, probs, values) if p >= t)
    assert main(["evaluate", "--model", str(tmp_path / "ml"), "--data", str(table), "--out", str(tmp_path / "mle"),
                 *options]) == 0
    result = json.loads((tmp_path / "mle" / "evaluation.json").read_text())
    assert len(result["per_label_auc"]) == 3 and set(result["decisions"]["youden"]) == set(labels)
    assert result["calibration"]["n"] == 300  # every label's probability, pooled


@pytest.mark.parametrize("name, content, message", [
    ("run.json", "[1, 2]", "run.json is not the JSON table scarce writes"),
    ("run.json", '{"config": 5}', "run.json has no table 'config' as scarce train writes it"),
    ("thresholds.json", "{}", "thresholds.json holds no threshold 'youden'")])
def test_a_model_folder_edited_into_another_layout_is_one_sentence(run, pngs, tmp_path, capsys, name, content,
                                                                   message):
    model = shutil.copytree(run, tmp_path / "model")
    (model / name).write_text(content)
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model), "--data", str(pngs[0]), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert not out.exists()
    if name == "run.json":
        assert main(["model-card", "--model", str(model)]) == 2
        card_message = {"[1, 2]": "run.json is not the JSON table scarce writes",
                        '{"config": 5}': "do not have the layout scarce train writes"}[content]
        assert card_message in capsys.readouterr().err
        assert (model / "MODEL_CARD.md").read_bytes() == (run / "MODEL_CARD.md").read_bytes()  # card untouched


def test_predict_on_a_flat_folder_says_in_one_line_which_files_it_skipped(run, pngs, tmp_path, capsys):
    flat = shutil.copytree(pngs[0] / "normal", tmp_path / "flat")
    (flat / "notes.txt").write_text("scanned on the old machine")
    assert main(["predict", "--model", str(run), "--data", str(flat), "--out", str(tmp_path / "p.csv"),
                 "--tta", "0"]) == 0
    error = capsys.readouterr().err
    assert error.startswith("scarce: warning: Skipped 1 non-image files in") and "notes.txt" in error, error
    assert len(error.strip().splitlines()) == 1
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 1 + PER_CLASS
