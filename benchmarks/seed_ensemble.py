"""Would independently trained runs beat the default's epoch ensemble? Judged on validation only.

The protocol allows at most 10 epochs of training, so an ensemble of independent runs must share
them. For each seed (which draws the N-image training subset), the default recipe trains:
one 10-epoch run (the default), two 5-epoch runs with other training seeds (an ensemble within
the budget), and a second 10-epoch run (an ensemble at twice the budget, for information). As in
benchmarks/epoch_ensemble.py, the validation split is cut into two random halves; each run's
epochs are ranked on one half and the mean probability is scored on the other, both ways round.
The test split is never read.

    python benchmarks/seed_ensemble.py --n 50 --seeds 100 101 102 103 104 105 106 107 108 109 \
        --workers 2 --json benchmarks/results/seed-ensemble-n50.json
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from epoch_ensemble import epoch_probabilities, rank_epochs, validation_halves, validation_labels  # noqa: E402

# (run name, extra training seed, epochs); the training seed is the subset seed + the offset.
RUNS = (("10 epochs", 0, 10), ("5 epochs a", 1000, 5), ("5 epochs b", 2000, 5), ("10 epochs b", 1000, 10))


def top_k_mean(probabilities: np.ndarray, labels: np.ndarray, rank_on: np.ndarray, k: int) -> np.ndarray:
    """Mean probability of the k epochs with the highest AUC on the ``rank_on`` images."""
    return probabilities[rank_epochs(probabilities, labels, rank_on)[:k]].mean(axis=0)


def arms(runs: dict[str, np.ndarray], labels: np.ndarray, rank_on: np.ndarray) -> dict[str, np.ndarray]:
    """Every compared model's validation probabilities, its epochs chosen on ``rank_on``."""
    top = lambda name, k: top_k_mean(runs[name], labels, rank_on, k)  # noqa: E731
    return {
        "default: 10 epochs, 5 best epochs": top("10 epochs", 5),
        "10 epochs, best epoch": top("10 epochs", 1),
        "one 5-epoch run, best epoch": top("5 epochs a", 1),
        "two 5-epoch runs, best epoch of each": (top("5 epochs a", 1) + top("5 epochs b", 1)) / 2,
        "two 5-epoch runs, 3 best epochs of each": (top("5 epochs a", 3) + top("5 epochs b", 3)) / 2,
        "two 10-epoch runs, 5 best of each (2x budget)": (top("10 epochs", 5) + top("10 epochs b", 5)) / 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    parser.add_argument("--data", default="pneumonia_kaggle_64.npz")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    labels = validation_labels(args.data, args.seeds)

    from sklearn.metrics import roc_auc_score

    jobs = [(seed, name, offset, epochs) for seed in args.seeds for name, offset, epochs in RUNS]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(epoch_probabilities, [args.n] * len(jobs), [j[0] for j in jobs],
                                [args.data] * len(jobs), ["small-data"] * len(jobs), [0] * len(jobs),
                                [j[3] for j in jobs], [j[0] + j[2] for j in jobs]))
    scores: dict[str, list[float]] = {}
    for seed in args.seeds:
        runs = {name: probs for (s, name, _, _), probs in zip(jobs, results) if s == seed}
        for rank_on, score_on in validation_halves(len(labels), seed):
            for arm, probs in arms(runs, labels, rank_on).items():
                scores.setdefault(arm, []).append(float(roc_auc_score(labels[score_on], probs[score_on])))
    reference = np.array(scores["default: 10 epochs, 5 best epochs"])
    rows = [{"arm": arm, "held_out_auc": float(np.mean(v)), "delta_vs_default": float(np.mean(np.array(v) - reference)),
             "wins": int((np.array(v) > reference).sum()), "halves": len(v)} for arm, v in scores.items()]
    print(f"N = {args.n}, seeds {args.seeds[0]}-{args.seeds[-1]}, clean predictions, held-out halves of val")
    print(f"{'model':48s} {'val AUC':>8} {'Δ vs default':>13} {'wins':>7}")
    for row in rows:
        print(f"{row['arm']:48s} {row['held_out_auc']:>8.4f} {row['delta_vs_default']:>+13.4f} "
              f"{row['wins']:>3}/{row['halves']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
