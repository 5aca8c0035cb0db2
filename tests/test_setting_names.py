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


def test_a_misspelt_recipe_setting_and_recipe_name_suggest_the_close_one():
    from scarce.training.recipes import get_recipe

    with pytest.raises(ScarceError, match=r"^Unknown recipe setting\(s\) lrr\. Did you mean 'lr'\?$"):
        get_recipe("regular", lrr=1e-3)
    with pytest.raises(ScarceError, match=r"^Unknown recipe 'regulr'\. Did you mean 'regular'\?$"):
        get_recipe("regulr")


def test_a_recipe_value_out_of_range_is_one_sentence():
    from scarce.training.recipes import get_recipe

    with pytest.raises(ScarceError, match=r"^Recipe setting lr must be a number above 0, not -1\.$"):
        get_recipe("regular", lr=-1)


def test_a_misspelt_config_field_suggests_the_close_one(tmp_path):
    from scarce.config import make_config

    config = tmp_path / "run.toml"
    config.write_text('data = "x.npz"\nepoch = 3\n')
    with pytest.raises(ScarceError, match=r"unknown field 'epoch'. Did you mean 'epochs'\?"):
        make_config(str(config))
