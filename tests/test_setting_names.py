"""Names a user can misspell or still use in their old form get one sentence with the fix."""

import pytest

from scarce.data.dataset import load_dataset
from scarce.errors import ScarceError


def test_the_old_data_option_seed_names_its_new_name(tmp_path):
    with pytest.raises(ScarceError, match=r"^Data option seed is now called split_seed \(it chooses the val/test "
                                          r"split, not the run's seed\)\.$"):
        load_dataset(tmp_path / "missing.npz", seed=1)


def test_a_misspelt_data_option_suggests_the_close_one(tmp_path):
    with pytest.raises(ScarceError, match=r"Unknown data option 'split_sed'.*Did you mean 'split_seed'\?$"):
        load_dataset(tmp_path / "missing.npz", split_sed=1)


def test_split_seed_of_the_wrong_kind_is_refused(tmp_path):
    with pytest.raises(ScarceError, match=r"Data option split_seed must be a whole number 0 or more, not -1\."):
        load_dataset(tmp_path / "missing.npz", split_seed=-1)
