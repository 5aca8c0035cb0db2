"""A study spec: arms × N × seeds, read from TOML and checked; a cell's identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..config import TrainConfig, check_fields, read_toml
from ..errors import ScarceError
from ..training.recipes import get_recipe, is_number


@dataclass(frozen=True)
class Arm:
    """One recipe of the study, with its own name and overrides."""

    name: str
    recipe: str
    options: dict = field(default_factory=dict)
    pretrained: str | None = None


@dataclass
class StudySpec:
    data: str
    arms: list[Arm]
    n: list[int] = field(default_factory=lambda: [50, 100, 200, 500, 1000])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    name: str = "study"
    data_dir: str | None = None
    data_options: dict = field(default_factory=dict)
    allow_leakage: bool = False
    size: int = 64
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    epochs: int = 10
    batch_size: int = 16
    tta: int = 4
    metric: str = "test_auc"
    target_auc: float | None = None  # the AUC the user needs: the study estimates the N for it
    user_n: int | None = None  # the user's own N: the recommendation is for it
    threads_per_cell: int = 1

    def cells(self) -> list[tuple[str, int, int]]:
        return [(arm.name, n, seed) for arm in self.arms for n in self.n for seed in self.seeds]

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def cell_config(self, arm_name: str, n: int, seed: int, out: Path) -> TrainConfig:
        arm = self.arm(arm_name)
        return TrainConfig(
            data=self.data, out=str(cell_dir(out, arm_name, n, seed)), data_dir=self.data_dir,
            data_options=dict(self.data_options), allow_leakage=self.allow_leakage, n=n, seed=seed,
            size=self.size, epochs=self.epochs, batch_size=self.batch_size, backbone=self.backbone,
            pretrained=arm.pretrained or self.pretrained, recipe=arm.recipe, recipe_options=dict(arm.options),
            tta=self.tta, threads=self.threads_per_cell, overwrite=True, progress=False)

    def to_dict(self) -> dict:
        return asdict(self)


SPEC_FIELDS = {name for name in StudySpec.__dataclass_fields__} - {"arms"} | {"recipes"}


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study spec (TOML, data only); a relative data path is looked up next to
    the spec first, as for ``scarce train --config``."""
    raw = read_toml(path, "Study spec")
    data = raw.get("data")
    if isinstance(data, str) and data and not Path(data).is_absolute() and (Path(path).parent / data).exists():
        raw["data"] = str(Path(path).parent / data)
    return parse_spec(raw, str(path))


def parse_spec(raw: dict, where: str = "the study spec") -> StudySpec:
    check_fields(raw, SPEC_FIELDS, where)
    if "data" not in raw:
        raise ScarceError(f"{where}: no 'data'; name the dataset (file, folder or table) to study.")
    if not raw.get("recipes"):
        raise ScarceError(f"{where}: no [[recipes]]; list at least one recipe to compare.")
    arms = []
    if not isinstance(raw["recipes"], list):
        raise ScarceError(f"{where}: 'recipes' must be a list of [[recipes]] tables, not {raw['recipes']!r}.")
    for index, entry in enumerate(raw.pop("recipes")):
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict):
            raise ScarceError(f"{where}: recipes[{index}] must be a table or a recipe name, not {entry!r}.")
        if not isinstance(entry.get("options", {}), dict):
            raise ScarceError(f"{where}: recipes[{index}].options must be a table such as {{ lr = 3e-4 }}, "
                              f"not {entry['options']!r}.")
        unknown = set(entry) - {"name", "recipe", "options", "pretrained"}
        if unknown:
            raise ScarceError(f"{where}: recipes[{index}] has unknown field(s) {', '.join(sorted(unknown))}; "
                              f"use name, recipe, options, pretrained.")
        recipe = entry.get("recipe") or entry.get("name")
        if not recipe:
            raise ScarceError(f"{where}: recipes[{index}] needs 'recipe' (a recipe name).")
        get_recipe(recipe, **entry.get("options", {}))  # unknown names or options fail here
        pretrained = entry.get("pretrained")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ScarceError(f"{where}: recipes[{index}].pretrained must be imagenet, scratch or a path, "
                              f"not {pretrained!r}.")
        # An upstream model's relative path means the folder `scarce study run` is started from.
        arms.append(Arm(entry.get("name", recipe), recipe, dict(entry.get("options", {})),
                        _absolute_source(pretrained)))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise ScarceError(f"{where}: two recipes are both named '{_first_repeat(names)}'; give each a distinct name.")
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ScarceError(f"{where}: recipe name '{name}' cannot be a folder name; choose another.")
    spec = StudySpec(arms=arms, **raw)
    if not isinstance(spec.data_options, dict):
        raise ScarceError(f"{where}: 'data_options' must be a table such as {{ task = \"binary\" }}, "
                          f"not {spec.data_options!r}.")
    if not isinstance(spec.pretrained, str):
        raise ScarceError(f"{where}: 'pretrained' must be imagenet, scratch or a path, not {spec.pretrained!r}.")
    spec.pretrained = _absolute_source(spec.pretrained)
    for key in ("n", "seeds"):
        values = getattr(spec, key)
        if not isinstance(values, list) or not values or not all(isinstance(v, int) for v in values):
            raise ScarceError(f"{where}: '{key}' must be a non-empty list of whole numbers, not {values!r}.")
        if len(set(values)) != len(values):
            raise ScarceError(f"{where}: '{key}' lists {_first_repeat(values)} twice.")
    if any(n <= 0 for n in spec.n):
        raise ScarceError(f"{where}: every n must be positive; got {spec.n}.")
    for key in ("size", "epochs", "batch_size", "threads_per_cell"):
        value = getattr(spec, key)
        if not isinstance(value, int) or value <= 0:
            raise ScarceError(f"{where}: '{key}' must be a positive whole number, not {value!r}.")
    if spec.metric != "test_auc":
        raise ScarceError(f"{where}: metric '{spec.metric}' is not supported yet; studies compare test_auc.")
    if spec.target_auc is not None and not (is_number(spec.target_auc) and 0.5 < spec.target_auc < 1):
        raise ScarceError(f"{where}: target_auc must lie between 0.5 and 1, not {spec.target_auc!r}.")
    if spec.user_n is not None and not (is_number(spec.user_n) and spec.user_n == int(spec.user_n) > 0):
        raise ScarceError(f"{where}: user_n must be a positive whole number (your training-set size), "
                          f"not {spec.user_n!r}.")
    # Every setting a cell gets is checked now, as `scarce train` checks it, not when the cell runs.
    try:
        for arm in spec.arms:
            for seed in spec.seeds:
                spec.cell_config(arm.name, spec.n[0], seed, Path(".")).validate()
    except ScarceError as error:
        raise ScarceError(f"{where}: {error}") from None
    spec.n, spec.seeds = sorted(spec.n), sorted(spec.seeds)
    return spec


def _absolute_source(pretrained):
    """``absolute_source``, importing torch only for an upstream model's path: reading a spec with
    the keywords imagenet or scratch (``study status``) stays light."""
    if pretrained is None or pretrained in ("imagenet", "scratch"):
        return pretrained
    from ..models.upstream import absolute_source

    return absolute_source(pretrained)


def _first_repeat(values):
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)


def cell_dir(out: Path, arm: str, n: int, seed: int) -> Path:
    return Path(out) / "cells" / arm / f"n{n}-s{seed}"


def config_hash(config: TrainConfig) -> str:
    """What decides a cell's numbers: every setting except where it is written and how it reports.

    Settings at their default value are left out (of the run's settings and of the resolved
    recipe), so a later scarce that adds an option, at a default that changes nothing, still
    recognises the finished cells; a recipe's description is text and is left out too.
    """
    from ..models.upstream import source_identity

    settings = {k: v for k, v in _changed_fields(config).items()
                if k not in ("out", "overwrite", "progress", "recipe_options")}  # options: in the recipe below
    recipe = get_recipe(config.recipe, **config.recipe_options)
    settings["recipe_resolved"] = {k: v for k, v in _changed_fields(recipe).items() if k != "description"}
    settings["pretrained"] = source_identity(config.pretrained)  # an upstream model by content, not path
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _changed_fields(instance) -> dict:
    """A dataclass instance's fields that differ from the field's default (fields without one: all)."""
    changed = {}
    for spec_field in fields(instance):
        default = (spec_field.default_factory() if spec_field.default_factory is not MISSING
                   else spec_field.default)
        value = getattr(instance, spec_field.name)
        if default is MISSING or value != default:
            changed[spec_field.name] = value
    return changed
