"""Does an ensemble of a run's best epochs beat its single best epoch? Judged on validation only.

For each N and seed, the default recipe trains once on the benchmark's class-balanced subset
(pneumonia_kaggle_64.npz, EfficientNet-Lite0, 10 epochs, 64 px, one thread) and the
validation probabilities of every epoch are kept (clean, or with ``--tta K`` the mean over a
clean and K augmented passes, as models are evaluated). The validation split is then cut in two
random halves (by the seed): the epochs are ranked by their AUC on one half and scored on the
other, both ways round, so the ranking never sees the images it is scored on. Printed per N and
k: the held-out AUC of the mean probability of the k best epochs (k = 1 is the single best
epoch, what `select_by = "val_auc"` keeps), its difference from k = 1 and in how many of the
2 x seeds halves it was higher. The test split is never read.

    python benchmarks/epoch_ensemble.py --n 50 100 200 500 --seeds 100 101 102 103 104 --tta 4 --workers 2 --json runs/epoch-ensemble.json
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KS = (1, 2, 3, 4, 5, 10)


def epoch_probabilities(n: int, seed: int, data: str, recipe_name: str, tta: int, epochs: int = 10,
                        train_seed: int | None = None) -> np.ndarray:
    """Validation probabilities after each epoch of one run (epochs x images), one clean pass plus
    ``tta`` augmented ones, as a trained model is evaluated. ``seed`` draws the training subset;
    ``train_seed`` (default: the same) the new head, the batches and the augmentation."""
    from scarce.config import make_config
    from scarce.evaluation.inference import predict
    from scarce.runs.common import prepare_data
    from scarce.runs.run import build_model
    from scarce.training.loop import fit, steps_per_epoch
    from scarce.training.recipes import get_recipe

    train_seed = seed if train_seed is None else train_seed
    config = make_config(data=data, n=n, seed=seed, size=64, epochs=epochs, batch_size=16, threads=1,
                         out="unused", progress=False)
    dataset, _, train = prepare_data(config)
    val = dataset.splits["val"]
    recipe = get_recipe(recipe_name, ensemble_epochs=0, soup=0, ema_decay=0.0)
    model = build_model(config.backbone, config.pretrained, dataset.num_outputs, recipe, train_seed, config.size)
    batch_size = recipe.batch_size_for(config.batch_size)
    per_epoch, probabilities = steps_per_epoch(len(train), batch_size, recipe.near_equal_batches), []

    def after_step(step, model, optimizer):
        if (step + 1) % per_epoch == 0:
            probabilities.append(predict(model, val.images, dataset.task, tta=tta, seed=train_seed,
                                         augmentation=recipe.tta_views()))

    fit(model, train, val, dataset.task, recipe, config.epochs, batch_size, train_seed, progress=False,
        on_step=after_step)
    return np.stack(probabilities)


def validation_labels(data: str, seeds: list[int]) -> np.ndarray:
    """The validation split's labels; exits if a seed is one of the accuracy benchmark's (0-4)."""
    if any(seed in range(5) for seed in seeds):
        sys.exit("Seeds 0-4 are the accuracy benchmark's; judge candidates on other seeds (e.g. 100-109).")
    from scarce.data.cache import load_resized

    return np.asarray(load_resized(data, None, "{}", 64).splits["val"].labels).ravel()


def validation_halves(size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two random halves of the validation split (by ``seed``), as (rank on, score on), both ways round."""
    order = np.random.default_rng(seed).permutation(size)
    halves = (order[:size // 2], order[size // 2:])
    return [halves, halves[::-1]]


def rank_epochs(probabilities: np.ndarray, labels: np.ndarray, rank_on: np.ndarray) -> np.ndarray:
    """Epoch indices, highest AUC on the ``rank_on`` images first (ties: the earlier epoch)."""
    from sklearn.metrics import roc_auc_score

    return np.argsort([-roc_auc_score(labels[rank_on], p[rank_on]) for p in probabilities], kind="stable")


def held_out_scores(probabilities: np.ndarray, labels: np.ndarray, seed: int) -> dict[int, list[float]]:
    """k -> AUC on one half of the mean of the k best epochs ranked on the other half (both ways)."""
    from sklearn.metrics import roc_auc_score

    scores: dict[int, list[float]] = {k: [] for k in KS}
    for rank_on, score_on in validation_halves(len(labels), seed):
        ranking = rank_epochs(probabilities, labels, rank_on)
        for k in KS:
            mean = probabilities[ranking[:k]].mean(axis=0)
            scores[k].append(float(roc_auc_score(labels[score_on], mean[score_on])))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    parser.add_argument("--data", default="pneumonia_kaggle_64.npz")
    parser.add_argument("--recipe", default="small-data")
    parser.add_argument("--tta", type=int, default=0, help="augmented passes per epoch's prediction (the benchmark uses 4)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    labels = validation_labels(args.data, args.seeds)
    cells = [(n, seed) for n in args.n for seed in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(epoch_probabilities, *zip(*[(n, s, args.data, args.recipe, args.tta) for n, s in cells])))
    rows, per_cell = [], []
    for n in args.n:
        scores = {k: [] for k in KS}
        for (cell_n, seed), probabilities in zip(cells, runs):
            if cell_n == n:
                for k, values in held_out_scores(probabilities, labels, seed).items():
                    scores[k] += values
                per_cell.append({"n": n, "seed": seed, "val_auc_per_epoch_full_split":
                                 [float(x) for x in _full_aucs(probabilities, labels)]})
        single = np.array(scores[1])
        for k in KS:
            values = np.array(scores[k])
            rows.append({"n": n, "k": k, "held_out_auc": float(values.mean()),
                         "delta_vs_best_epoch": float((values - single).mean()),
                         "wins": int((values > single).sum()), "halves": len(values)})
    print(f"{'N':>5} {'k best epochs':>14} {'held-out val AUC':>17} {'Δ vs best epoch':>16} {'wins':>7}")
    for row in rows:
        print(f"{row['n']:>5} {row['k']:>14} {row['held_out_auc']:>17.4f} {row['delta_vs_best_epoch']:>+16.4f} "
              f"{row['wins']:>3}/{row['halves']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows, "cells": per_cell}, indent=1))
        print(f"wrote {args.json}")


def _full_aucs(probabilities: np.ndarray, labels: np.ndarray) -> list[float]:
    from sklearn.metrics import roc_auc_score
    return [roc_auc_score(labels, p) for p in probabilities]


if __name__ == "__main__":
    main()
