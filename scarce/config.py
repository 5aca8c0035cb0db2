"""Settings of a training run: one dataclass with every default, loadable from TOML."""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ScarceError
from .training.recipes import DEFAULT_RECIPE, get_recipe

MAX_SIZE = 1024  # images are resized once and held in memory: a larger side is almost surely a typo


# What each annotation of TrainConfig accepts, and how to say it.
_KINDS = {"str": ((str, os.PathLike), "text"), "str | None": ((str, os.PathLike, type(None)), "text"),
          "dict": ((dict,), "a table"),
          "bool": ((bool,), "true or false"), "int": ((int,), "a whole number"),
          "int | None": ((int, type(None)), "a whole number")}


@dataclass
class TrainConfig:
    data: str = ""  # .npz, MedMNIST name, folder per class or CSV/TSV; also looked up in data_dir
    out: str = "runs/train"  # output folder
    data_dir: str | None = None  # default: $SCARCE_DATA_DIR
    data_options: dict = field(default_factory=dict)  # options of the data source (docs/data.md)
    allow_leakage: bool = False  # train even if a patient or an identical image is in two splits
    n: int | None = None  # training images (class-balanced subset); None = the whole train split
    seed: int = 0  # decides the subset, the head's initialisation, shuffling and augmentation
    replace: bool = False  # sample the subset with replacement when a class has too few images
    size: int = 64  # images are resized to size x size
    epochs: int = 10
    batch_size: int = 16
    backbone: str = "efficientnet_lite0"  # any timm model name
    pretrained: str = "imagenet"  # "imagenet" or "scratch"
    recipe: str = DEFAULT_RECIPE
    recipe_options: dict = field(default_factory=dict)  # overrides of the recipe's fields
    tta: int = 4  # augmented test-time passes added to the clean pass (0 = none)
    threads: int | None = None  # torch CPU threads; None = torch's default
    overwrite: bool = False  # replace a finished run in `out`
    progress: bool = True  # progress bar on stderr

    def validate(self) -> "TrainConfig":
        for setting in fields(self):
            value = getattr(self, setting.name)
            accepted, words = _KINDS[setting.type]
            if not isinstance(value, accepted) or (bool not in accepted and isinstance(value, bool)):
                raise ScarceError(f"{setting.name} must be {words}, not {value!r}.")
        if not self.data:
            raise ScarceError("No data given; pass --data PATH or set data in the config file.")
        if self.seed < 0:
            raise ScarceError(f"seed must be 0 or a positive whole number, not {self.seed}.")
        if self.size > MAX_SIZE:
            raise ScarceError(f"size must be at most {MAX_SIZE} pixels (every image is resized to it and held "
                              f"in memory), not {self.size}.")
        positive = {"size": self.size, "epochs": self.epochs, "batch_size": self.batch_size}
        if self.n is not None:
            positive["n"] = self.n
        if self.threads is not None:
            positive["threads"] = self.threads
        for name, value in positive.items():  # their kind is checked above
            if value <= 0:
                raise ScarceError(f"{name} must be a positive whole number, not {value!r}.")
        if self.tta < 0:
            raise ScarceError(f"tta must be 0 or a positive whole number, not {self.tta!r}.")
        recipe = get_recipe(self.recipe, **self.recipe_options)
        if recipe.model == "cnn" and recipe.head_only_epochs >= self.epochs:
            raise ScarceError(f"Recipe setting head_only_epochs ({recipe.head_only_epochs}) must be fewer than "
                              f"epochs ({self.epochs}), or the recipe's own schedule never runs.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def read_toml(path: str | Path, what: str = "Config file") -> dict:
    """A TOML file as a dict (data only: nothing in it is executed)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ScarceError(f"{what} {path} does not exist.") from None
    except tomllib.TOMLDecodeError as error:
        raise ScarceError(f"{what} {path} is not valid TOML ({error}); fix the line it names.") from None
    except UnicodeDecodeError:
        raise ScarceError(f"{what} {path} is not UTF-8 text; save it as UTF-8 (TOML requires it).") from None
    except OSError as error:
        raise ScarceError(f"{what} {path} cannot be read ({error.strerror}); give a TOML file.") from None


def check_fields(values: dict, known: set[str], where: str) -> None:
    """Refuse unknown keys, suggesting the closest known one."""
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise ScarceError(f"{where}: unknown field '{key}'." + (f" Did you mean '{close[0]}'?" if close else ""))


def load_config(path: str | Path) -> dict:
    """Fields from a TOML config file, checked against TrainConfig."""
    path = Path(path)
    values = read_toml(path)
    check_fields(values, {f.name for f in fields(TrainConfig)}, f"Config file {path}")
    if isinstance(values.get("data"), str) and values["data"] and not Path(values["data"]).is_absolute():
        relative = path.parent / values["data"]
        if relative.exists():
            values["data"] = str(relative)
    return values


def make_config(config_file: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults, then the config file, then explicit overrides (``None`` means not given)."""
    values = load_config(config_file) if config_file else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return TrainConfig(**values).validate()
    except TypeError as error:
        raise ScarceError(f"Invalid setting: {error}.") from None
