"""One training run end to end: data in, model built, recipe trained, model evaluated, files out."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .. import artifacts
from ..config import TrainConfig, make_config
from ..data.dataset import file_fingerprint
from ..errors import ScarceError
from ..evaluation.inference import predict, validation_thresholds
from ..evaluation.metrics import task_metrics
from ..models.backbones import create_model, first_network, layer_groups, load_trained, resample_weight_distribution
from ..models.upstream import is_source_path, load_backbone, source_record
from ..randomness import integer_seed, torch_generator
from ..training.history import History
from ..training.loop import fit
from ..training.lr_find import lr_sweep, plot_sweep, suggest_lr
from ..training.recipes import Recipe, get_recipe
from .common import RunResult, _finite_or_none, data_provenance, prepare_data, result_metrics
from .model_card import render as render_model_card


def train(config: TrainConfig | None = None, /, **settings) -> RunResult:
    """Train and evaluate one model; write metrics, weights and provenance to ``config.out``.

    Call as ``train(TrainConfig(...))`` or ``train(data=..., n=200, out=...)``.
    """
    config = (config or make_config(**settings)).validate()
    recipe = get_recipe(config.recipe, **config.recipe_options)
    if recipe.model == "radiomics":  # no CNN: features and a logistic regression, same files out
        from .radiomics_run import train_radiomics
        return train_radiomics(config, recipe)
    artifacts.check_output(Path(config.out), config.overwrite)
    clock = time.perf_counter()
    dataset, subset, train_split = prepare_data(config)
    pretrained = recipe.pretrained or config.pretrained
    model = build_model(config.backbone, pretrained, dataset.num_outputs, recipe, config.seed, config.size)
    # Created only now, so that bad data or a bad model leaves no empty folder behind.
    out = artifacts.prepare_output(Path(config.out), config.overwrite)
    setup_seconds = time.perf_counter() - clock
    best_state, history = fit(model, train_split, dataset.splits["val"], dataset.task, recipe,
                              config.epochs, recipe.batch_size_for(config.batch_size), config.seed,
                              progress=config.progress)
    info = {"backbone": config.backbone, "num_outputs": dataset.num_outputs, "task": dataset.task,
            "classes": dataset.classes, "size": config.size, "recipe": recipe.name,
            "drop_rate": recipe.head_dropout}
    ensembled = recipe.ensemble_epochs > 1 and len(history.kept_epochs) > 1
    if ensembled:  # the file holds one network per kept epoch (scarce.models.EpochEnsemble)
        info["ensemble_members"] = len(history.kept_epochs)
    checkpoint = out / "model.safetensors"
    # With --overwrite, the earlier run stops counting as finished before its first file is
    # replaced: a folder never pairs an old metrics.json with new weights, even if this run dies.
    (out / "metrics.json").unlink(missing_ok=True)
    clock_saved = time.perf_counter()
    artifacts.save_weights(checkpoint, best_state, info)

    # Evaluate exactly the file just written: the recipe's own artefact, identified by its hash.
    started = time.perf_counter()
    model, _ = load_trained(checkpoint)
    test = dataset.splits["test"]
    probs = predict(model, test.images, dataset.task, tta=config.tta, seed=config.seed,
                    augmentation=recipe.tta_views())
    test_metrics = task_metrics(dataset.task, test.labels, probs, seed=config.seed)
    artifacts.write_npy(out / "test_probabilities.npy", probs)
    metrics = {
        **result_metrics(test_metrics, dataset, train_split, subset, config.seed, recipe.name),
        "pretrained": pretrained,
        "backbone": config.backbone,
        "epochs": config.epochs,
        "epochs_run": len(history.epochs),
        "best_epoch": history.best_epoch,
        "kept_epochs": history.kept_epochs,  # more than one: a weight soup or an ensemble of those epochs
        "epoch_ensemble": ensembled,
        "best_val_loss": history.kept_val["val_loss"],
        "best_val_auc": _finite_or_none(history.kept_val["val_auc"]),
        "tta_passes": {"clean": 1, "augmented": config.tta},
        "train_seconds": round(history.seconds, 2),
        "test_seconds": round(time.perf_counter() - started, 2),
        # where this run's time went (decode is in data_and_model: first run in a process only)
        "timings": {"data_and_model": round(setup_seconds, 3),
                    **{k: round(v, 3) for k, v in history.timings.items()},
                    "save_and_test": round(time.perf_counter() - clock_saved, 3)},
        "evaluated_checkpoint_sha256": file_fingerprint(checkpoint),
    }
    provenance = {
        "config": config.to_dict(),
        "recipe": recipe.to_dict(),
        "data": data_provenance(dataset, subset),
        "layer_groups": {name: len(names) for name, names in layer_groups(first_network(model)).as_dict().items()},
        "pretrained_source": source_record(pretrained),  # an upstream model's file, sha256 and manifest
        "versions": artifacts.versions(),
    }
    artifacts.write_json(out / "run.json", provenance)
    artifacts.write_text(out / "history.csv", _history_csv(history))
    thresholds = validation_thresholds(model, dataset.splits["val"], dataset.task, dataset.classes,
                                       config.tta, config.seed, recipe.tta_views())
    artifacts.write_json(out / "thresholds.json", thresholds)
    artifacts.write_text(out / "MODEL_CARD.md", render_model_card(provenance, metrics, thresholds))
    artifacts.write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
    return RunResult(metrics, model, history, out)


def find_lr(config: TrainConfig | None = None, /, **settings) -> dict:
    """Run the learning-rate finder for a run's settings; write ``lr_find.png`` and ``lr_find.json``."""
    config = (config or make_config(**settings)).validate()
    recipe = get_recipe(config.recipe, **config.recipe_options)
    if recipe.model != "cnn":
        raise ScarceError(f"Recipe '{recipe.name}' has no learning rate to find; choose a CNN recipe.")
    out = artifacts.prepare_output(Path(config.out), overwrite=True, marker="lr_find.json")
    dataset, _, train_split = prepare_data(config)
    model = build_model(config.backbone, recipe.pretrained or config.pretrained, dataset.num_outputs,
                        recipe, config.seed, config.size)
    sweep = lr_sweep(model, train_split, dataset.task, recipe, batch_size=recipe.batch_size_for(config.batch_size),
                     seed=config.seed)
    suggestion = suggest_lr(sweep["lrs"], sweep["smoothed"])
    plot_sweep(sweep, suggestion, out / "lr_find.png")
    result = {"suggested_lr": suggestion,
              "rule": "steepest descent of the smoothed loss before its minimum, over windows of a tenth of the sweep",
              "recipe": recipe.name, "n_train": len(train_split), "seed": config.seed, **sweep}
    artifacts.write_json(out / "lr_find.json", result)
    return result


def build_model(backbone: str, pretrained: str, num_outputs: int, recipe: Recipe, seed: int,
                size: int | None = None) -> nn.Module:
    """The recipe's starting model; ``seed`` decides the new head (and any re-sampled weights).

    ``pretrained`` is imagenet, scratch, or an upstream model from ``scarce pretrain`` (a folder
    or its .safetensors file), whose image size must equal ``size``.
    """
    torch.manual_seed(integer_seed(seed, "init"))
    if is_source_path(pretrained):
        model = load_backbone(create_model(backbone, "scratch", num_outputs, recipe.head_dropout, recipe.drop_path),
                              pretrained, backbone, size)
    else:
        model = create_model(backbone, pretrained, num_outputs, recipe.head_dropout, recipe.drop_path)
    if recipe.initialization == "weight-distribution":
        resample_weight_distribution(model, torch_generator(seed, "init", 1))
    elif recipe.initialization != "pretrained":
        raise ScarceError(f"Unknown initialization '{recipe.initialization}'; use pretrained or weight-distribution.")
    return model


def _history_csv(history: History) -> str:
    keys = list(history.epochs[0])
    rows = [",".join(keys)] + [",".join(f"{e[k]:.6g}" if isinstance(e[k], float) else str(e[k]) for k in keys)
                               for e in history.epochs]
    return "\n".join(rows) + "\n"
