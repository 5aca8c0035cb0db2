"""Splits by patient, the leakage check on real data, and the human summary."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from scarce.data.dataset import ImageDataset, Split, load_dataset
from scarce.data.leakage import check_leakage, describe, ensure_no_leakage
from scarce.data.splits import image_hashes, split_indices
from scarce.errors import ScarceError

# What check_leakage finds on the shared real files (documented in docs/data.md):
# (images shared by two splits per pair, identical images within each split)
SHARED_NPZ_LEAKAGE = {
    "pneumonia_kaggle_64": ({"train-val": 0, "train-test": 0, "val-test": 0}, {"train": 7, "val": 2, "test": 7}),
    "pneumonia_kaggle_128": ({"train-val": 0, "train-test": 0, "val-test": 0}, {"train": 7, "val": 2, "test": 7}),
    "knee_oa_64": ({"train-val": 0, "train-test": 0, "val-test": 0}, {"train": 0, "val": 0, "test": 0}),
    "cxr_covid_64": ({"train-val": 4, "train-test": 8, "val-test": 2}, {"train": 38, "val": 0, "test": 1}),
    "pneumoniamnist": ({"train-val": 8, "train-test": 0, "val-test": 0}, {"train": 17, "val": 0, "test": 3}),
}


def test_split_indices_are_seeded_stratified_and_group_disjoint():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), 2)  # two images per patient
    labels = np.repeat(rng.integers(0, 3, 300), 2)
    parts = split_indices(labels, groups, seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(600))
    sets = {name: set(groups[idx]) for name, idx in parts.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert 0.65 < len(parts["train"]) / 600 < 0.76 and 0.12 < len(parts["test"]) / 600 < 0.17
    for idx in parts.values():  # class shares within 5 points of the whole
        assert np.allclose(np.bincount(labels[idx], minlength=3) / len(idx), np.bincount(labels) / 600, atol=0.05)
    assert all(np.array_equal(a, b) for a, b in zip(parts.values(), split_indices(labels, groups, seed=3).values()))
    assert not np.array_equal(parts["test"], split_indices(labels, groups, seed=4)["test"])


def test_multilabel_rows_split_too():
    labels = np.random.default_rng(1).integers(0, 2, (200, 4))
    parts = split_indices(labels, None, (0.6, 0.2, 0.2), seed=0)
    assert sum(len(p) for p in parts.values()) == 200
    assert 34 <= len(parts["val"]) <= 46 and 34 <= len(parts["test"]) <= 46


def test_bad_fractions_are_refused():
    with pytest.raises(ScarceError, match=r"must be three positive train/val/test shares that add up to 1"):
        split_indices(np.zeros(10), fractions=(0.8, 0.3, 0.1))


@pytest.mark.parametrize("name", sorted(SHARED_NPZ_LEAKAGE))
def test_leakage_on_the_shared_npz_files(data_dir, name):
    dataset = load_dataset(data_dir / f"{name}.npz")
    report = check_leakage(dataset)
    shared, within = SHARED_NPZ_LEAKAGE[name]
    assert report["shared_images"] == shared and report["duplicates_within"] == within
    if report["patients_known"]:
        assert set(report["shared_patients"].values()) == {0}  # the official patient-disjoint splits
    if any(shared.values()):
        with pytest.raises(ScarceError, match=rf"{name}: leakage: identical images in two splits"):
            ensure_no_leakage(dataset)
        assert ensure_no_leakage(dataset, allow=True)["allowed"] is True
    else:
        assert ensure_no_leakage(dataset)["leak"] is False


def knee_dataset(data_dir) -> ImageDataset:
    path = data_dir / "samples" / "knee_png" / "labels.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return load_dataset(path, size=32)


def test_planted_patient_and_image_leaks_are_named(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path))
    dataset = knee_dataset(data_dir)
    assert ensure_no_leakage(dataset)["leak"] is False
    train, test = dataset.splits["train"], dataset.splits["test"]
    # copy the first test image (and its patient) into train
    leaky_train = Split(torch.cat([train.images, test.images[:1]]), np.concatenate([train.labels, test.labels[:1]]),
                        np.concatenate([train.patients, test.patients[:1]]),
                        np.concatenate([train.files, ["copy.png"]]))
    leaky = replace(dataset, splits={**dataset.splits, "train": leaky_train})
    report = check_leakage(leaky)
    assert report["shared_images"]["train-test"] == 1 and report["shared_patients"]["train-test"] == 1
    assert report["image_examples"] == [f"train:copy.png = test:{test.files[0]}"]
    with pytest.raises(ScarceError, match=rf"patients in two splits \(1 train-test; e.g. {test.patients[0]}\); "
                                          r"identical images in two splits \(1 train-test; e.g. train:copy.png"):
        ensure_no_leakage(leaky)
    text = describe(leaky, ensure_no_leakage(leaky, allow=True))
    assert "leakage: patients in two splits" in text and text.rstrip().endswith("(allowed)")


def test_image_hashes_see_bytes_only():
    images = torch.zeros((3, 1, 4, 4), dtype=torch.uint8)
    images[2, 0, 0, 0] = 1
    hashes = image_hashes(images)
    assert hashes[0] == hashes[1] != hashes[2]


def test_describe_reports_task_counts_sizes_patients_and_leakage(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path))
    dataset = knee_dataset(data_dir)
    text = describe(dataset, check_leakage(dataset))
    assert "task: multiclass, 5 classes" in text
    assert "image size: 1 x 32 x 32 (C x H x W, uint8)" in text
    assert "patients: 64 (train " in text
    assert "splits: assigned here (stratified by label, grouped by patient, 70/15/15, seed 0)" in text
    assert "no leakage found (image content and patient id checked)" in text
    for name, split in dataset.splits.items():
        counts = "  ".join(str(c) for c in dataset.class_counts(name))
        assert any(line.split()[:2] == [name, str(len(split))] for line in text.splitlines())
        assert counts.split()[0] in text
    npz = describe(load_dataset(data_dir / "pneumoniamnist.npz"))
    assert "patients: unknown (no patient ids)" in npz and "leakage" not in npz
