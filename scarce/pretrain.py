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

import functools
import json
from pathlib import Path

import torch
from torch import nn

from . import artifacts
from .config import TrainConfig, make_config
from .data import file_fingerprint
from .errors import ScarceError
from .models import PRETRAINED_SOURCES, layer_groups, load_trained
from .recipes import get_recipe

BACKBONE_FILE = "backbone.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "scarce-backbone-v1"
# Upstream defaults: the whole train split, everything trainable from the start (the upstream
# task has plenty of images, unlike the target), 3 epochs, no TTA (its test AUC is only a check).
PRETRAIN_DEFAULTS = {"recipe": "fine-tune-all", "epochs": 3, "tta": 0, "n": None}


def pretrain(config: TrainConfig | None = None, /, exclude_labels: list[str] | tuple = (), **settings) -> dict:
    """Train an upstream model and save its backbone and manifest in ``config.out``; return the manifest.

    Call as ``pretrain(data=..., out=...)`` (unset settings take ``PRETRAIN_DEFAULTS``, then
    TrainConfig's) or ``pretrain(TrainConfig(...))`` (used as given). ``exclude_labels`` holds
    labels out of the upstream task (see :func:`scarce.data.exclude_labels`).
    """
    from .evaluate import predict
    from .metrics import task_metrics
    from .run import load_resized, train

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


# ----------------------------------------------------------------------------- using an upstream model

def is_source_path(pretrained: str) -> bool:
    """True when ``pretrained`` names an upstream model rather than imagenet or scratch."""
    return pretrained not in PRETRAINED_SOURCES


def absolute_source(pretrained: str | None, base: Path | None = None) -> str | None:
    """``pretrained`` with a relative path made absolute against ``base`` (default: the current folder)."""
    if pretrained is None or not is_source_path(pretrained):
        return pretrained
    path = Path(pretrained).expanduser()
    return str(path if path.is_absolute() else (base or Path.cwd()) / path)


def backbone_file(pretrained: str) -> Path:
    """The safetensors file of an upstream source: ``DIR/backbone.safetensors`` or the file itself."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / BACKBONE_FILE).is_file():
            raise ScarceError(f"Pretrained source {path} holds no {BACKBONE_FILE}; give a folder written by "
                              f"`scarce pretrain` (it may not have finished) or its .safetensors file.")
        return path / BACKBONE_FILE
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ScarceError(f"Pretrained source {path} is not a .safetensors file; scarce loads weights "
                              f"only from safetensors files.")
        return path
    raise ScarceError(f"Pretrained source '{pretrained}' is neither imagenet, scratch, nor an existing folder "
                      f"or .safetensors file from `scarce pretrain`.")


def read_source(pretrained: str, backbone: str, size: int | None) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """The backbone file, its tensors and metadata, checked against the run's backbone and image size."""
    path = backbone_file(pretrained)
    read_manifest(path)  # a damaged manifest stops the run now, not after training
    state, info = artifacts.load_weights(path)
    if "backbone" not in info or "size" not in info:
        raise ScarceError(f"Pretrained source {path} lacks scarce's metadata (backbone, size); give a "
                          f"{BACKBONE_FILE} written by `scarce pretrain`.")
    if info["backbone"] != backbone:
        raise ScarceError(f"Pretrained source {path} holds the backbone {info['backbone']} but this run builds "
                          f"{backbone}; pass --backbone {info['backbone']} or pretrain again with "
                          f"--backbone {backbone}.")
    if size is not None and info["size"] != size:
        raise ScarceError(f"Pretrained source {path} was trained on {info['size']} px images but this run uses "
                          f"{size} px; pass --size {info['size']} or pretrain again with --size {size}.")
    return path, state, info


def check_source(pretrained: str, backbone: str, size: int | None) -> None:
    """Fail now, in one sentence, if an upstream source cannot serve a run (studies check before any cell)."""
    if is_source_path(pretrained):
        read_source(pretrained, backbone, size)


def load_backbone(model: nn.Module, pretrained: str, backbone: str, size: int | None) -> nn.Module:
    """Copy an upstream backbone into ``model`` (built for the target task); its head stays new.

    A full ``model.safetensors`` of a scarce run is accepted too: its classifier is dropped.
    Every body tensor must be present with the right shape, else the source belongs to another
    architecture and the run stops.
    """
    path, state, _ = read_source(pretrained, backbone, size)
    head = set(layer_groups(model).head)
    body = {name: tensor for name, tensor in state.items() if name not in head}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError:
        missing, unexpected = ["(tensor shapes differ)"], []
    if unexpected or set(missing) != head:
        raise ScarceError(f"Pretrained source {path} does not fit {backbone}: its tensors belong to another "
                          f"architecture; pretrain again with --backbone {backbone}.")
    return model


def source_record(pretrained: str) -> dict | None:
    """What run.json records of an upstream source: its file, sha256 and manifest (None for imagenet/scratch)."""
    if not is_source_path(pretrained):
        return None
    path = backbone_file(pretrained)
    return {"given": pretrained, "file": str(path.resolve()), "sha256": file_fingerprint(path),
            "manifest": read_manifest(path)}


def read_manifest(backbone: Path) -> dict | None:
    """The manifest beside an upstream backbone file (None if there is none), or one sentence if damaged."""
    path = Path(backbone).parent / MANIFEST_FILE
    return artifacts.read_json(path) if path.is_file() else None


def source_identity(pretrained: str) -> str:
    """What decides a run's numbers about its source: the keyword, or the backbone file's sha256.

    Used in a study's configuration hash, so retraining an upstream model in place changes the
    cells that use it, while moving its folder does not.
    """
    if not is_source_path(pretrained):
        return pretrained
    path = backbone_file(pretrained).resolve()
    stat = path.stat()
    return f"sha256:{_sha256(str(path), stat.st_size, stat.st_mtime_ns)}"


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, computed once per version of the file (a study hashes every cell's config)."""
    return file_fingerprint(Path(path))
