"""Splits and leakage: assign train/val/test by patient, and check that no patient or image is in two.

A source's own splits are kept. Otherwise images are split with scikit-learn's
``StratifiedGroupKFold``: stratified by label, and grouped by patient id (or, without patient ids,
by identical image content) so that every group lands in exactly one split. Hold-out sizes come from
whole folds, so 70/15/15 is realised as about 71/14/14.

:func:`check_leakage` looks for the same patient id or the same image bytes in two splits;
:func:`ensure_no_leakage` turns a finding into an error unless it is explicitly allowed;
:func:`describe` renders the human summary of a dataset for ``scarce data inspect``.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import ScarceError

SPLITS = ("train", "val", "test")


DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def image_hashes(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """A content hash per image (blake2b of its uint8 bytes): equal images, equal hashes."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.array([hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()
                     for image in array], dtype=str)


def _strata(labels: np.ndarray) -> np.ndarray:
    """One stratum per class, or per label combination for multi-label rows."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    return np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)


def _hold_out(strata: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
              split: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions kept and held out: one fold of ``round(1 / fraction)`` stratified group folds."""
    folds = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise ScarceError(f"Only {n_groups} patients (or distinct images) to split; a {split} share of "
                          f"{fraction:.0%} needs at least {folds}; add data or give a split column.")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # rare classes get fewer members than folds; that is expected
        warnings.simplefilter("ignore", UserWarning)
        keep, held = next(splitter.split(np.zeros(len(strata)), strata, groups))
    return keep, held


def check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Three positive shares for train/val/test that add up to 1."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ScarceError(f"fractions={fractions} must be three positive train/val/test shares "
                          f"that add up to 1, such as (0.7, 0.15, 0.15).")
    return fractions


def split_indices(labels: np.ndarray, groups: np.ndarray | None = None,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted indices per split: seeded, stratified, and no group in two splits."""
    _, val_share, test_share = check_fractions(fractions)
    everything = np.arange(len(labels))
    groups = everything if groups is None else np.asarray(groups)
    strata = _strata(labels)
    rest, test = _hold_out(strata, groups, test_share, seed, "test")
    keep, val = _hold_out(strata[rest], groups[rest], val_share / (1 - test_share), seed, "val")
    return {"train": np.sort(rest[keep]), "val": np.sort(rest[val]), "test": np.sort(test)}


def make_splits(labels: np.ndarray, groups: np.ndarray | None, given: np.ndarray | None,
                fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0,
                grouped_by: str = "patient") -> tuple[dict[str, np.ndarray], dict]:
    """Indices per split and how they were made: the source's own splits, completed if partial.

    A source that names only some splits keeps them; a missing val or test split is carved out of
    train by patient, as :func:`split_indices` would.
    """
    fractions = check_fractions(fractions)
    how = {"seed": seed, "fractions": list(fractions),
           "grouped_by": grouped_by if groups is not None else "image"}
    if given is None:
        return split_indices(labels, groups, fractions, seed), {"origin": "assigned", **how}
    given = np.asarray(given)
    parts = {name: np.flatnonzero(given == name) for name in SPLITS}
    if len(parts["train"]) == 0:
        raise ScarceError("The source's split column or folders give no train images; "
                          "mark some images as train.")
    missing = [name for name in ("val", "test") if len(parts[name]) == 0]
    if not missing:
        return parts, {"origin": "source"}
    train = parts["train"]
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    strata = _strata(labels)
    share = {"val": fractions[1], "test": fractions[2]}
    for name in missing:
        keep, held = _hold_out(strata[train], groups[train], share[name] / (fractions[0] + share[name]),
                               seed, name)
        parts[name], train = np.sort(train[held]), np.sort(train[keep])
    parts["train"] = train
    return parts, {"origin": "source", "completed": missing, **how}
