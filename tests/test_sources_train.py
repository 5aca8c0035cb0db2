"""`scarce train` and `scarce data inspect` work unchanged on every kind of source, on real files."""

import json

import pytest
from conftest import knee_findings_table

from scarce.cli import main

pytestmark = pytest.mark.slow


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--size", "32",
                 "--tta", "1", "--no-progress", *extra])


def test_train_on_a_real_folder_per_class_and_its_csv(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    knee = data_dir / "samples" / "knee_png"
    assert _train(knee, tmp_path / "folder", "--n", "10") == 0
    metrics = json.loads((tmp_path / "folder" / "metrics.json").read_text())
    assert metrics["n_train"] == 10 and len(metrics["test_per_class_auc"]) == 5
    assert _train(knee / "labels.csv", tmp_path / "table", "--n", "10") == 0
    run = json.loads((tmp_path / "table" / "run.json").read_text())
    assert run["data"]["split"]["grouped_by"] == "patient"
    assert run["data"]["leakage"]["leak"] is False
    assert run["data"]["image_size"] == [3, 32, 32]


def test_train_on_a_multilabel_csv_built_from_real_images(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    knee = data_dir / "samples" / "knee_png"
    table = knee_findings_table(knee, tmp_path / "findings.csv")
    code = _train(table, tmp_path / "out", "--data-option", f"root={knee.parent.parent}",
                  "--data-option", "label_column=finding", "--data-option", "label_separator=|")
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["test_per_label_auc"]) == 3


def test_train_on_real_dicom_files(tmp_path, monkeypatch):
    from pydicom.data import get_testdata_file

    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "dicom"
    sources = [get_testdata_file(name) for name in ("CT_small.dcm", "MR_small.dcm")]
    # Ten files per class copied from the two real images, each with its own small mark so that
    # no two files are identical (identical images would be grouped into one split).
    import pydicom

    for label, source in zip(("ct", "mr"), sources):
        (root / label).mkdir(parents=True)
        for i in range(10):
            ds = pydicom.dcmread(source)
            pixels = ds.pixel_array.copy()
            pixels[i, : i + 1] = pixels.max()  # a different mark per file
            ds.PixelData = pixels.tobytes()
            ds.save_as(root / label / f"{label}{i}.dcm")
    assert _train(root, tmp_path / "out", "--n", "6", "--pretrained", "scratch") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_train"] == 6 and metrics["train_class_counts"] == {"ct": 3, "mr": 3}


def test_subsets_with_replacement_report_their_duplicates(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))
    knee = data_dir / "samples" / "knee_png"
    # The train split holds 14 or 15 images per grade: 40 per class needs repeats.
    assert _train(knee / "labels.csv", tmp_path / "refused", "--n", "200") == 2
    assert _train(knee / "labels.csv", tmp_path / "out", "--n", "200", "--replace") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_train"] == 200
    assert metrics["train_duplicates"] == 200 - 71


def test_data_inspect_prints_counts_patients_and_leakage(data_dir, capsys):
    assert main(["data", "inspect", str(data_dir / "samples" / "knee_png" / "labels.csv")]) == 0
    text = capsys.readouterr().out
    assert "task: multiclass, 5 classes" in text and "patients: 64" in text
    assert "no leakage found" in text
    assert main(["data", "inspect", "cxr_covid_64", "--data-dir", str(data_dir)]) == 0
    assert "identical images in two splits" in capsys.readouterr().out
    assert main(["data", "inspect", str(data_dir / "missing_folder")]) == 2
