"""Training subsets of N: class-balanced, seeded and nested."""

import numpy as np
import pytest

from scarce.data.subsets import balanced_subset
from scarce.errors import ScarceError


def test_balanced_subset_has_n_over_2_per_class_on_the_real_train_split(data_dir):
    labels = np.load(data_dir / "pneumonia_kaggle_64.npz")["train_labels"][:, 0]
    for n in (50, 100, 200, 500):
        subset = balanced_subset(labels, n, seed=0)
        assert len(subset) == len(set(subset)) == n
        assert np.bincount(labels[subset]).tolist() == [n // 2, n // 2]


def test_subsets_depend_on_the_seed_and_are_nested_across_n():
    labels = np.repeat([0, 1, 2], [40, 60, 80])
    a50, a100 = balanced_subset(labels, 50, seed=1), balanced_subset(labels, 100, seed=1)
    assert set(a50) <= set(a100)
    assert np.bincount(labels[a50]).tolist() == [17, 17, 16]
    assert not np.array_equal(a50, balanced_subset(labels, 50, seed=2))
    assert np.array_equal(a50, balanced_subset(labels, 50, seed=1))


def test_impossible_subsets_are_refused_with_the_class_named():
    labels = np.repeat([0, 1], [10, 100])
    with pytest.raises(ScarceError, match="needs 25 training images of class 'rare' but only 10 exist"):
        balanced_subset(labels, 50, seed=0, classes=["rare", "common"])
    with pytest.raises(ScarceError, match="positive"):
        balanced_subset(labels, 0, seed=0)
    with pytest.raises(ScarceError, match="smaller than the number of classes"):
        balanced_subset(labels, 1, seed=0)
