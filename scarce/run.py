"""One training run end to end: data in, model built, recipe trained, model evaluated, files out."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import artifacts
from .config import TrainConfig, make_config
from .data import ImageDataset, balanced_subset, load_dataset, resize
from .evaluate import predict, task_metrics
from .models import create_model, layer_groups
from .recipes import get_recipe
from .train import History, fit


@dataclass
class RunResult:
    metrics: dict
    model: nn.Module
    history: History
    out: Path


def train(config: TrainConfig | None = None, /, **settings) -> RunResult:
    """Train and evaluate one model; write metrics, weights and provenance to ``config.out``.

    Call as ``train(TrainConfig(...))`` or ``train(data=..., n=200, out=...)``.
    """
    config = (config or make_config(**settings)).validate()
    recipe = get_recipe(config.recipe, **config.recipe_options)
    out = artifacts.prepare_output(Path(config.out), config.overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset = resize(load_dataset(config.data, config.data_dir), config.size)
    subset = training_subset(dataset, config.n, config.seed)
    train_split = dataset.splits["train"].take(subset)

    torch.manual_seed(config.seed)  # the new head's initialisation
    pretrained = recipe.pretrained or config.pretrained
    model = create_model(config.backbone, pretrained, dataset.num_outputs)
    best_state, history = fit(model, train_split, dataset.splits["val"], dataset.task, recipe,
                              config.epochs, config.batch_size, config.seed, progress=config.progress)
    model.load_state_dict(best_state)

    started = time.perf_counter()
    test = dataset.splits["test"]
    probs = predict(model, test.images, dataset.task, tta=config.tta, seed=config.seed)
    test_metrics = task_metrics(dataset.task, test.labels, probs, seed=config.seed)
    metrics = {
        "test_auc": test_metrics["auc"],
        "test_auc_ci": test_metrics["auc_ci"],
        "test_accuracy": test_metrics["accuracy"],
        **{f"test_{k}": v for k, v in test_metrics.items() if k not in ("auc", "auc_ci", "accuracy")},
        "n_train": len(train_split),
        "train_class_counts": _counts(dataset, train_split.labels),
        "seed": config.seed,
        "recipe": recipe.name,
        "pretrained": pretrained,
        "backbone": config.backbone,
        "epochs": config.epochs,
        "epochs_run": len(history.epochs),
        "best_epoch": history.best_epoch,
        "best_val_loss": min(e["val_loss"] for e in history.epochs),
        "tta_passes": {"clean": 1, "augmented": config.tta},
        "train_seconds": round(history.seconds, 2),
        "test_seconds": round(time.perf_counter() - started, 2),
    }
    info = {"backbone": config.backbone, "num_outputs": dataset.num_outputs, "task": dataset.task,
            "classes": dataset.classes, "size": config.size, "recipe": recipe.name}
    provenance = {
        "config": config.to_dict(),
        "recipe": recipe.to_dict(),
        "data": {**dataset.summary(), "source": dataset.source,
                 "train_subset_sha256": hashlib.sha256(np.asarray(subset).tobytes()).hexdigest(),
                 "train_subset_indices": subset},
        "layer_groups": {name: len(names) for name, names in layer_groups(model).as_dict().items()},
        "versions": artifacts.versions(),
    }
    artifacts.save_weights(out / "model.safetensors", model.state_dict(), info)
    artifacts.write_json(out / "run.json", provenance)
    artifacts.write_text(out / "history.csv", _history_csv(history))
    artifacts.write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(metrics, model, history, out)


def training_subset(dataset: ImageDataset, n: int | None, seed: int) -> np.ndarray:
    labels = dataset.splits["train"].labels
    if n is None:
        return np.arange(len(labels))
    return balanced_subset(labels, n, seed, dataset.classes)


def _counts(dataset: ImageDataset, labels: np.ndarray) -> dict[str, int]:
    counts = labels.sum(axis=0) if labels.ndim > 1 else np.bincount(labels, minlength=len(dataset.classes))
    return {name: int(c) for name, c in zip(dataset.classes, counts)}


def _history_csv(history: History) -> str:
    keys = list(history.epochs[0])
    rows = [",".join(keys)] + [",".join(f"{e[k]:.6g}" if isinstance(e[k], float) else str(e[k]) for k in keys)
                               for e in history.epochs]
    return "\n".join(rows) + "\n"
