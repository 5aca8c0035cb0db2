"""What every run family shares: the prepared data, the result record, provenance."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.cache import load_resized
from ..data.dataset import ImageDataset
from ..data.leakage import ensure_no_leakage
from ..data.subsets import count_duplicates, training_subset
from ..training.history import History


@dataclass
class RunResult:
    metrics: dict
    model: nn.Module
    history: History
    out: Path


def prepare_data(config: TrainConfig):
    """The resized dataset, the training-subset indices and the training split they select."""
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset = load_resized(config.data, config.data_dir, json.dumps(config.data_options, sort_keys=True),
                           config.size)
    dataset.extra["leakage"] = ensure_no_leakage(dataset, config.allow_leakage)
    subset = training_subset(dataset, config.n, config.seed, config.replace)
    return dataset, subset, dataset.splits["train"].take(subset)


def data_provenance(dataset: ImageDataset, subset: np.ndarray) -> dict:
    """What run.json records of the data: counts, fingerprint, split, leakage report, training subset."""
    return {**dataset.summary(), "source": dataset.source, "split": dataset.extra.get("split"),
            "leakage": dataset.extra["leakage"],
            "train_subset_sha256": hashlib.sha256(np.asarray(subset).tobytes()).hexdigest(),
            "train_subset_indices": subset}


def result_metrics(test_metrics: dict, dataset: ImageDataset, train_split, subset: np.ndarray, seed: int,
                   recipe_name: str) -> dict:
    """The first keys of every run's metrics.json, CNN or radiomics: test metrics, training subset, seed, recipe."""
    return {
        "test_auc": test_metrics["auc"],
        "test_auc_ci": test_metrics["auc_ci"],
        "test_accuracy": test_metrics["accuracy"],
        **{f"test_{k}": v for k, v in test_metrics.items() if k not in ("auc", "auc_ci", "accuracy")},
        "n_train": len(train_split),
        "train_duplicates": count_duplicates(subset),
        "train_class_counts": _counts(dataset, train_split.labels),
        "seed": seed,
        "recipe": recipe_name,
    }


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _counts(dataset: ImageDataset, labels: np.ndarray) -> dict[str, int]:
    counts = labels.sum(axis=0) if labels.ndim > 1 else np.bincount(labels, minlength=len(dataset.classes))
    return {name: int(c) for name, c in zip(dataset.classes, counts)}
