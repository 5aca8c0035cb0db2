"""load_dataset on every shared .npz, task detection, resize, and subsets with or without replacement."""

import json

import numpy as np
import pytest

from scarce.data.dataset import LOAD_OPTIONS, load_dataset, resize
from scarce.data.subsets import balanced_subset, count_duplicates
from scarce.errors import ScarceError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCARCE_CACHE_DIR", str(tmp_path / "cache"))


def test_every_shared_npz_loads_with_the_documented_counts(data_dir):
    index = json.loads((data_dir / "index.json").read_text())
    for npz in sorted(data_dir.glob("*.npz")):
        dataset = load_dataset(npz)
        assert dataset.task == ("binary" if len(dataset.classes) == 2 else "multiclass")
        for split in dataset.splits.values():
            assert split.images.dtype.itemsize == 1 and split.images.ndim == 4 and split.images.shape[1] == 1
            assert split.labels.dtype == np.int64 and len(split.labels) == len(split.images)
        if npz.stem in index:
            assert dataset.classes == index[npz.stem]["classes"]
            assert {s: dataset.class_counts(s) for s in dataset.splits} == index[npz.stem]["counts"]


def test_bare_names_resolve_in_the_data_directory(data_dir, monkeypatch):
    assert load_dataset("pneumonia_kaggle_64", data_dir).name == "pneumonia_kaggle_64"
    monkeypatch.setenv("SCARCE_DATA_DIR", str(data_dir))
    assert load_dataset("pneumoniamnist").fingerprint == load_dataset(data_dir / "pneumoniamnist.npz").fingerprint


def test_task_can_be_set_explicitly(data_dir):
    knee = data_dir / "samples" / "knee_png"
    as_multilabel = load_dataset(knee, task="multilabel", size=32)
    labels = as_multilabel.splits["train"].labels
    assert as_multilabel.task == "multilabel" and labels.shape[1] == 5 and (labels.sum(axis=1) == 1).all()
    assert load_dataset(data_dir / "pneumoniamnist.npz", task="multiclass").num_outputs == 2
    with pytest.raises(ScarceError, match=r"task='regression' is not one of binary, multiclass, multilabel"):
        load_dataset(knee, task="regression")


def test_loaded_folders_resize_like_npz(data_dir):
    dataset = resize(load_dataset(data_dir / "samples" / "knee_png", size=64), 48)
    assert dataset.splits["val"].images.shape[1:] == (3, 48, 48)


def test_unsupported_source_and_option_list(tmp_path):
    (tmp_path / "scan.nii").write_bytes(b"\0" * 10)
    with pytest.raises(ScarceError, match=r"unsupported data source; give a folder per class, a .csv/.tsv"):
        load_dataset(tmp_path / "scan.nii")
    assert {"size", "task", "label_separator", "patient_column", "split_column", "download"} <= set(LOAD_OPTIONS)


# --------------------------------------------------------------------------- subsets

def test_replacement_only_when_asked_and_duplicates_are_counted():
    labels = np.repeat([0, 1], [10, 100])
    with pytest.raises(ScarceError, match=r"class 'rare' but only 10 exist; choose a smaller n or sample with replacement"):
        balanced_subset(labels, 50, seed=0, classes=["rare", "common"])
    drawn = balanced_subset(labels, 50, seed=0, classes=["rare", "common"], replace=True)
    assert len(drawn) == 50 and np.bincount(labels[drawn]).tolist() == [25, 25]
    assert count_duplicates(drawn) == 15  # all 10 rare images, then 15 repeats
    assert set(np.flatnonzero(labels == 0)) <= set(drawn)
    assert count_duplicates(balanced_subset(labels, 20, seed=0, replace=True)) == 0  # enough: no repeats


def test_subsets_with_replacement_are_nested_too():
    labels = np.repeat([0, 1, 2], [5, 30, 40])
    small, large = (balanced_subset(labels, n, seed=7, replace=True) for n in (30, 60))
    small_counts, large_counts = np.bincount(small, minlength=75), np.bincount(large, minlength=75)
    assert (small_counts <= large_counts).all()  # a multiset inside a multiset


def test_multilabel_subsets_are_nested_and_bounded():
    labels = np.random.default_rng(0).integers(0, 2, (40, 3))
    subsets = [set(balanced_subset(labels, n, seed=2)) for n in (5, 10, 20, 40)]
    assert all(a <= b for a, b in zip(subsets, subsets[1:])) and len(subsets[-1]) == 40
    with pytest.raises(ScarceError, match=r"n=41 asks for more training images than the 40 available"):
        balanced_subset(labels, 41, seed=2)
    more = balanced_subset(labels, 50, seed=2, replace=True)
    assert len(more) == 50 and count_duplicates(more) == 10 and set(more) == set(range(40))


def test_a_declared_class_without_training_images_is_refused():
    with pytest.raises(ScarceError, match=r"Class 'c' has no training images"):
        balanced_subset(np.repeat([0, 1], 10), 6, seed=0, classes=["a", "b", "c"], replace=True)
