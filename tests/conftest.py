"""Shared fixtures: the real data directory and tiny synthetic datasets for fast unit tests."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scarce.data.dataset import ImageDataset, Split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data: $SCARCE_DATA_DIR, else ../shared/data beside the repository."""
    path = Path(os.environ.get("SCARCE_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "pneumonia_kaggle_64.npz").exists():
        pytest.skip(f"real data not found in {path}; set SCARCE_DATA_DIR")
    return path


def synthetic_split(n: int, size: int = 32, seed: int = 0, classes: int = 2) -> Split:
    """Images whose brightness depends on the class, so a model can learn them quickly."""
    generator = torch.Generator().manual_seed(seed)
    labels = np.arange(n) % classes
    step = 150 / max(1, classes - 1)  # brightness 30..180 plus noise: never saturates, so images differ
    base = torch.as_tensor(labels, dtype=torch.float32).view(-1, 1, 1, 1) * step + 30
    noise = torch.randint(0, 60, (n, 3, size, size), generator=generator).float()
    return Split((base + noise).clamp(0, 255).to(torch.uint8), labels.astype(np.int64))


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    splits = {"train": synthetic_split(32, seed=0), "val": synthetic_split(16, seed=1),
              "test": synthetic_split(16, seed=2)}
    return ImageDataset("tiny", "binary", ["a", "b"], splits, "0" * 64)


def write_npz(path: Path, task: str = "binary", classes: int = 2, sizes=(24, 16, 16), size: int = 32) -> Path:
    """A small MedMNIST-layout file of synthetic images (class-dependent brightness)."""
    arrays = {}
    for split, n, seed in zip(("train", "val", "test"), sizes, (0, 1, 2)):
        data = synthetic_split(n, size=size, seed=seed, classes=classes)
        arrays[f"{split}_images"] = data.images[:, 0].numpy()
        labels = data.labels
        if task == "multilabel":  # label k is on when the class index is >= k (so every label varies)
            labels = np.stack([(labels >= k) for k in range(1, classes)] + [labels % 2 == 0], axis=1)
        arrays[f"{split}_labels"] = labels.reshape(n, -1).astype(np.int64)
    np.savez(path, **arrays)
    return path


def knee_findings_table(knee: Path, path: Path) -> Path:
    """The real knee PNGs as a multi-label table: osteophyte (KL >= 2), narrowing (KL >= 3), any (KL >= 1)."""
    with open(knee / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "finding", "patient_id"])
        for row in rows:
            grade = int(row["label"][-1])
            findings = [name for name, on in (("osteophyte", grade >= 2), ("narrowing", grade >= 3),
                                              ("any", grade >= 1)) if on]
            writer.writerow([str(knee / row["path"]), "|".join(findings) or "No Finding", row["patient_id"]])
    return path
