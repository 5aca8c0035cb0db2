"""Leakage: the same patient or the same image in two splits, and the `data inspect` summary."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from ..errors import ScarceError
from .dataset import ImageDataset
from .splits import image_hashes

_SHOWN = 5  # offenders listed in reports and error messages


def _shared(values: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Per split pair ("train-test"), the sorted values found in both."""
    return {f"{a}-{b}": sorted(set(values[a]) & set(values[b]))
            for a, b in combinations(values, 2)}


def check_leakage(dataset: ImageDataset) -> dict:
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


def ensure_no_leakage(dataset: ImageDataset, allow: bool = False) -> dict:
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


def describe(dataset: ImageDataset, leakage_report: dict | None = None) -> str:
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
