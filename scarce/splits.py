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
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from .errors import ScarceError

if TYPE_CHECKING:  # data.py imports this module, so only the type checker may import back
    from .data import ImageDataset

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
_SHOWN = 5  # offenders listed in reports and error messages


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


# --------------------------------------------------------------------------- leakage

def _shared(values: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Per split pair ("train-test"), the sorted values found in both."""
    return {f"{a}-{b}": sorted(set(values[a]) & set(values[b]))
            for a, b in combinations(values, 2)}


def check_leakage(dataset: "ImageDataset") -> dict:
    """Patients and identical images (uint8 bytes) that appear in two splits, plus in-split duplicates."""
    splits = dataset.splits
    hashes = {name: image_hashes(split.images) for name, split in splits.items()}
    images = _shared(hashes)
    report = {"checked": ["image content"], "shared_images": {k: len(v) for k, v in images.items()}}
    examples = []
    for pair, common in images.items():
        a, b = pair.split("-")
        for digest in common[:_SHOWN]:
            examples.append(f"{_name(splits[a], hashes[a], digest, a)} = {_name(splits[b], hashes[b], digest, b)}")
    report["image_examples"] = examples[:_SHOWN]
    report["duplicates_within"] = {name: int(len(h) - len(set(h))) for name, h in hashes.items()}
    known = all(split.patients is not None for split in splits.values())
    report["patients_known"] = known
    if known:
        patients = _shared({name: split.patients.astype(str) for name, split in splits.items()})
        report["checked"].append("patient id")
        report["shared_patients"] = {k: len(v) for k, v in patients.items()}
        report["patient_examples"] = sorted({p for v in patients.values() for p in v})[:_SHOWN]
    report["leak"] = bool(sum(report["shared_images"].values()) + sum(report.get("shared_patients", {}).values()))
    return report


def _name(split, hashes: np.ndarray, digest: str, split_name: str) -> str:
    """'test:path/to/file.png' (or 'test#17' without file names) for the first image with ``digest``."""
    index = int(np.flatnonzero(hashes == digest)[0])
    return f"{split_name}:{split.files[index]}" if split.files is not None else f"{split_name}#{index}"


def ensure_no_leakage(dataset: "ImageDataset", allow: bool = False) -> dict:
    """The leakage report; a leak is a ScarceError unless ``allow`` (then recorded as allowed)."""
    report = check_leakage(dataset)
    report["allowed"] = bool(allow)
    if report["leak"] and not allow:
        raise ScarceError(f"{dataset.name}: {leakage_text(report)}; fix the splits or allow leakage "
                          f"explicitly.")
    return report


def leakage_text(report: dict) -> str:
    """One line: what the check found."""
    if not report["leak"]:
        checked = " and ".join(report["checked"])
        return f"no leakage found ({checked} checked)"
    parts = []
    for kind, key, examples in (("patients", "shared_patients", "patient_examples"),
                                ("identical images", "shared_images", "image_examples")):
        counts = {pair: n for pair, n in report.get(key, {}).items() if n}
        if counts:
            listed = ", ".join(f"{n} {pair}" for pair, n in counts.items())
            parts.append(f"{kind} in two splits ({listed}; e.g. {', '.join(map(str, report[examples][:3]))})")
    return "leakage: " + "; ".join(parts)


# --------------------------------------------------------------------------- summary

def describe(dataset: "ImageDataset", leakage_report: dict | None = None) -> str:
    """A human summary: task, classes, counts per split, image size, patients and leakage."""
    lines = [f"{dataset.name}  ({dataset.source or 'in memory'})",
             f"task: {dataset.task}, {len(dataset.classes)} {'labels' if dataset.task == 'multilabel' else 'classes'}",
             f"fingerprint: {dataset.fingerprint[:16]}"]
    width = max([len(c) for c in dataset.classes] + [6])
    header = f"  {'split':<6} {'images':>7}  " + "  ".join(f"{c[:width]:>{min(width, 12)}}" for c in dataset.classes)
    lines += ["counts" + (" (images carrying each label)" if dataset.task == "multilabel" else "") + ":", header]
    for name, split in dataset.splits.items():
        counts = dataset.class_counts(name)
        lines.append(f"  {name:<6} {len(split):>7}  " +
                     "  ".join(f"{n:>{min(width, 12)}}" for n in counts))
    sizes = sorted({tuple(split.images.shape[1:]) for split in dataset.splits.values()})
    lines.append("image size: " + ", ".join(" x ".join(map(str, s)) for s in sizes) + " (C x H x W, uint8)")
    if all(split.patients is not None for split in dataset.splits.values()):
        per = {name: len(set(split.patients.astype(str))) for name, split in dataset.splits.items()}
        total = len(set().union(*(set(s.patients.astype(str)) for s in dataset.splits.values())))
        lines.append(f"patients: {total} (" + ", ".join(f"{k} {v}" for k, v in per.items()) + ")")
    else:
        lines.append("patients: unknown (no patient ids)")
    how = dataset.extra.get("split")
    if how:
        lines.append("splits: " + _split_text(how))
    if leakage_report is not None:
        lines.append(leakage_text(leakage_report) + (" (allowed)" if leakage_report.get("allowed")
                                                     and leakage_report["leak"] else ""))
        within = {k: v for k, v in leakage_report.get("duplicates_within", {}).items() if v}
        if within:
            lines.append("identical images within a split: " + ", ".join(f"{k} {v}" for k, v in within.items()))
    return "\n".join(lines)


def _split_text(how: dict) -> str:
    if how.get("origin") == "source" and not how.get("completed"):
        return "given by the source"
    shares = "/".join(f"{f * 100:g}" for f in how["fractions"])
    made = f"stratified by label, grouped by {how['grouped_by']}, {shares}, seed {how['seed']}"
    if how.get("origin") == "source":
        return f"given by the source; {', '.join(how['completed'])} carved from train ({made})"
    return f"assigned here ({made})"
