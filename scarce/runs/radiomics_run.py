"""A radiomics-lr run end to end: features, logistic regression, the same files as a CNN run."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from .. import artifacts
from ..config import TrainConfig
from ..data.dataset import file_fingerprint
from ..evaluation.inference import probabilities, task_loss
from ..evaluation.metrics import task_metrics
from ..models.radiomics import (
    C_GRID,
    FEATURE_NAMES,
    FEATURE_VERSION,
    GLCM_ANGLES,
    GLCM_DISTANCES,
    GLCM_PROPERTIES,
    GRAY_LEVELS,
    cross_validation_folds,
    decision,
    fit_logistic,
    model_tensors,
    split_features,
)
from ..training.recipes import Recipe


def train_radiomics(config: TrainConfig, recipe: Recipe):
    """A ``radiomics-lr`` run: the same subsets, metrics and files as a CNN run, where they apply
    (no history.csv: no epochs; no MODEL_CARD.md: it describes CNN models)."""
    from ..evaluation.decisions import choose_thresholds
    from ..training.history import History
    from .common import RunResult, data_provenance, prepare_data, result_metrics

    artifacts.check_output(Path(config.out), config.overwrite)
    dataset, subset, train_split = prepare_data(config)
    out = artifacts.prepare_output(Path(config.out), config.overwrite)  # now: bad data leaves no empty folder
    started = time.perf_counter()
    x = split_features(dataset)
    feature_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with threadpool_limits(config.threads):  # --threads bounds BLAS too, as it bounds torch
        pipeline = fit_logistic(x["train"][subset], train_split.labels, dataset.task, config.seed)
    train_seconds = time.perf_counter() - started
    checkpoint = out / "model.safetensors"
    (out / "metrics.json").unlink(missing_ok=True)  # as in run.train: never an old metrics.json with new weights
    artifacts.save_weights(checkpoint, model_tensors(pipeline, dataset.task), {
        "model": recipe.name, "task": dataset.task, "classes": dataset.classes, "size": config.size,
        "features": FEATURE_NAMES, "feature_version": FEATURE_VERSION})

    # Evaluate exactly the file just written, as CNN runs do.
    started = time.perf_counter()
    tensors, _ = artifacts.load_weights(checkpoint)
    val, test = dataset.splits["val"], dataset.splits["test"]
    val_logits = decision(tensors, x["val"])
    val_probs = probabilities(dataset.task, val_logits).numpy()
    probs = probabilities(dataset.task, decision(tensors, x["test"])).numpy()
    test_metrics = task_metrics(dataset.task, test.labels, probs, seed=config.seed)
    val_metrics = task_metrics(dataset.task, val.labels, val_probs, seed=config.seed)
    artifacts.write_npy(out / "test_probabilities.npy", probs)
    chosen = tensors["C"].tolist()
    metrics = {
        **result_metrics(test_metrics, dataset, train_split, subset, config.seed, recipe.name),
        "pretrained": None,
        "backbone": None,
        "epochs": None,
        "epochs_run": 0,
        "best_epoch": None,
        "best_val_loss": task_loss(dataset.task, val_logits, torch.as_tensor(val.labels)).item(),
        "best_val_auc": val_metrics["auc"],
        "regularisation_C": chosen[0] if len(chosen) == 1 else chosen,
        "cv_folds": cross_validation_folds(train_split.labels, dataset.task),
        "tta_passes": {"clean": 1, "augmented": 0},
        "feature_seconds": round(feature_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "test_seconds": round(time.perf_counter() - started, 2),
        "evaluated_checkpoint_sha256": file_fingerprint(checkpoint),
    }
    provenance = {
        "config": config.to_dict(),
        "recipe": recipe.to_dict(),
        "data": data_provenance(dataset, subset),
        "radiomics": {"features": FEATURE_NAMES, "feature_version": FEATURE_VERSION, "gray_levels": GRAY_LEVELS,
                      "glcm": {"distances": GLCM_DISTANCES, "angles_radians": GLCM_ANGLES, "symmetric": True,
                               "normed": True, "properties": GLCM_PROPERTIES},
                      "classifier": "StandardScaler + LogisticRegressionCV (L2, lbfgs, log-loss, stratified folds)"
                                    + (", one-vs-rest per label" if dataset.task == "multilabel" else ""),
                      "Cs": C_GRID, "cv_folds": metrics["cv_folds"],
                      "ignored_settings": ["backbone", "pretrained", "epochs", "batch_size", "tta", "recipe_options"]},
        "versions": artifacts.versions(),
    }
    artifacts.write_json(out / "run.json", provenance)
    artifacts.write_json(out / "thresholds.json", choose_thresholds(
        dataset.task, val.labels, val_probs, dataset.classes,
        chosen_on={"split": "val", "n": len(val), "tta_passes": {"clean": 1, "augmented": 0}, "seed": config.seed}))
    artifacts.write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(metrics, pipeline, History(seconds=train_seconds), out)
