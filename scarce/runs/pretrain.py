"""Upstream models: train a backbone on the user's own related images, then transfer from it.

The paper's source-dataset experiment (E5) pretrains on another body part, on the same body part,
or on the target's own dataset with the target label held out, and compares those sources with
ImageNet and with no transfer. Here an upstream model is an ordinary ``scarce train`` run with
upstream defaults (the whole train split, every layer trained, a few epochs, no test-time
augmentation), followed by two files in the same folder:

- ``backbone.safetensors``: the selected weights without the classifier (safetensors: tensors
  only, no code), with backbone name and image size in its metadata;
- ``manifest.json``: what the backbone learned from (source fingerprint, task, classes used,
  excluded labels), how (recipe, seed, epochs) and how well (validation and test metrics).
  Written last: a folder with ``manifest.json`` holds a finished upstream model.

A later run uses it with ``--pretrained DIR`` (or the ``.safetensors`` file): the backbone's
tensors are loaded into the same architecture and a new head is made for the target task.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import artifacts
from ..config import TrainConfig, make_config
from ..data.dataset import file_fingerprint
from ..errors import ScarceError
from ..models.backbones import layer_groups, load_trained
from ..models.upstream import BACKBONE_FILE, FORMAT, MANIFEST_FILE
from ..training.recipes import get_recipe

# Upstream defaults: the whole train split, everything trainable from the start (the upstream
# task has plenty of images, unlike the target), 3 epochs, no TTA (its test AUC is only a check).
PRETRAIN_DEFAULTS = {"recipe": "fine-tune-all", "epochs": 3, "tta": 0, "n": None}


def pretrain(config: TrainConfig | None = None, /, exclude_labels: list[str] | tuple = (), **settings) -> dict:
    """Train an upstream model and save its backbone and manifest in ``config.out``; return the manifest.

    Call as ``pretrain(data=..., out=...)`` (unset settings take ``PRETRAIN_DEFAULTS``, then
    TrainConfig's) or ``pretrain(TrainConfig(...))`` (used as given). ``exclude_labels`` holds
    labels out of the upstream task (see :func:`scarce.data.exclude_labels`).
    """
    from ..data.cache import load_resized
    from ..evaluation.inference import predict
    from ..evaluation.metrics import task_metrics
    from .run import train

    if config is None:
        config = make_config(**{**PRETRAIN_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}})
    config.validate()
    if exclude_labels:
        already = list(config.data_options.get("exclude_labels", []))
        config.data_options = {**config.data_options, "exclude_labels": already + list(exclude_labels)}
    recipe = get_recipe(config.recipe, **config.recipe_options)
    if recipe.model != "cnn":
        raise ScarceError(f"Recipe '{recipe.name}' trains no CNN, so it has no backbone to pretrain; "
                          f"use a CNN recipe such as fine-tune-all.")
    if recipe.ensemble_epochs > 1:
        raise ScarceError(f"Recipe '{recipe.name}' keeps an ensemble of epochs, but an upstream model is one "
                          f"backbone; set ensemble_epochs = 0 in its recipe options or use fine-tune-all.")
    out = Path(config.out)
    for marker in (MANIFEST_FILE, "metrics.json"):  # an upstream model, or a run of `scarce train`
        artifacts.check_output(out, config.overwrite, marker=marker)
    config.overwrite = True  # the folder is ours now: the manifest, not metrics.json, marks it finished

    result = train(config)  # bad input stops here, with an earlier upstream model still whole
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # never pair an old manifest with new weights
    model, info = load_trained(out / "model.safetensors")
    head = set(layer_groups(model).head)
    body = {name: tensor for name, tensor in model.state_dict().items() if name not in head}
    artifacts.save_weights(out / BACKBONE_FILE, body, {
        "kind": "backbone", "format": FORMAT, "backbone": info["backbone"], "size": info["size"],
        "upstream_task": info["task"], "upstream_classes": info["classes"]})

    dataset = load_resized(config.data, config.data_dir, json.dumps(config.data_options, sort_keys=True),
                           config.size)  # the same cached dataset the run trained on
    val = dataset.splits["val"]
    val_metrics = task_metrics(dataset.task, val.labels, predict(model, val.images, dataset.task), seed=config.seed)
    run = json.loads((out / "run.json").read_text())
    metrics = result.metrics
    manifest = {
        "format": FORMAT,
        "backbone": config.backbone,
        "size": config.size,
        "backbone_file": BACKBONE_FILE,
        "backbone_sha256": file_fingerprint(out / BACKBONE_FILE),
        "backbone_tensors": len(body),
        "initialised_from": metrics["pretrained"],
        "source": {
            "data": config.data, "name": run["data"]["name"], "fingerprint": run["data"]["fingerprint"],
            "task": dataset.task, "classes": list(dataset.classes),
            "excluded_labels": list(config.data_options.get("exclude_labels", [])),
            "data_options": config.data_options, "counts": run["data"]["counts"],
            "leakage": run["data"]["leakage"],
        },
        "training": {
            "recipe": recipe.name, "seed": config.seed, "epochs": config.epochs, "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics["best_epoch"], "n_train": metrics["n_train"], "batch_size": config.batch_size,
            "train_subset_sha256": run["data"]["train_subset_sha256"], "train_seconds": metrics["train_seconds"],
        },
        "val": {"loss": metrics["best_val_loss"], "auc": val_metrics["auc"], "accuracy": val_metrics["accuracy"]},
        "test": {"auc": metrics["test_auc"], "auc_ci": metrics["test_auc_ci"], "accuracy": metrics["test_accuracy"],
                 "tta_passes": metrics["tta_passes"]},
        "versions": artifacts.versions(),
    }
    artifacts.write_json(out / MANIFEST_FILE, manifest)  # last: its presence marks a finished upstream model
    return manifest
