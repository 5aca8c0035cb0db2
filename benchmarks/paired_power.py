"""How often a paired comparison on a few seeds shows a real difference: the power of the protocol.

Reads the cells of one or more accuracy-benchmark JSON files (benchmarks/accuracy.py --json),
takes the per-seed paired test-AUC differences of one arm against another at one N, and reports
their mean and standard deviation, the share of all k-seed subsets of those seeds whose paired 95 %
t-interval lies above 0 (the protocol's test with k = 5), the same for normal draws with the
measured mean and SD, and the mean difference that k seeds would detect 80 % of the time.

    python benchmarks/paired_power.py benchmarks/results/bench-accuracy-full.json \
        benchmarks/results/bench-accuracy-n50-seeds5-14.json --n 50 --arm small-data --peer regular \
        --json benchmarks/results/paired-power-n50.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, stats


def paired_differences(files: list[Path], n: int, arm: str, peer: str) -> dict[int, float]:
    """seed -> test AUC of ``arm`` minus that of ``peer`` at ``n``, for seeds where both finished."""
    auc: dict[tuple[str, int], float] = {}
    for file in files:
        for cell in json.loads(file.read_text())["cells"]:
            if cell["n"] == n and cell.get("status", "done") == "done" and cell.get("test_auc") is not None:
                auc[(cell["recipe"], cell["seed"])] = cell["test_auc"]
    seeds = sorted(s for (recipe, s) in auc if recipe == arm and (peer, s) in auc)
    return {s: auc[(arm, s)] - auc[(peer, s)] for s in seeds}


def lower_bounds(differences: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Lower end of the paired t-interval of each row of ``differences`` (rows = repetitions)."""
    k = differences.shape[-1]
    t = stats.t.ppf(0.5 + level / 2, k - 1)
    return differences.mean(axis=-1) - t * differences.std(axis=-1, ddof=1) / np.sqrt(k)


def power(effect: float, sd: float, k: int, level: float = 0.95) -> float:
    """Probability that k paired differences ~ N(effect, sd) give a t-interval above 0."""
    t = stats.t.ppf(0.5 + level / 2, k - 1)
    return float(stats.nct.sf(t, k - 1, effect / sd * np.sqrt(k)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--arm", default="small-data")
    parser.add_argument("--peer", default="regular")
    parser.add_argument("--k", type=int, default=5, help="seeds per comparison (the protocol's 5)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    by_seed = paired_differences(args.files, args.n, args.arm, args.peer)
    if len(by_seed) <= args.k:
        print(f"Only {len(by_seed)} seeds have both {args.arm} and {args.peer} at N = {args.n}; "
              f"need more than --k {args.k}.", file=sys.stderr)
        return 2
    d = np.array(list(by_seed.values()))
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    subsets = np.array(list(itertools.combinations(d, args.k)))
    share = float((lower_bounds(subsets) > 0).mean())
    model_power = power(mean, sd, args.k)
    needed = float(optimize.brentq(lambda e: power(e, sd, args.k) - 0.8, 1e-6, 10 * sd))
    result = {"n": args.n, "arm": args.arm, "peer": args.peer, "k": args.k,
              "differences": {str(s): v for s, v in by_seed.items()}, "mean": mean, "sd": sd,
              "subsets": len(subsets), "share_of_subsets_above_0": share, "power_at_measured_effect": model_power,
              "effect_for_80_percent_power": needed}
    print(f"{args.arm} - {args.peer}, N = {args.n}, {len(d)} seeds: mean {mean:+.4f}, SD {sd:.4f}")
    print(f"  {args.k}-seed subsets whose paired 95 % CI is above 0: {share:.0%} of {len(subsets)}")
    print(f"  power of {args.k} seeds at the measured mean and SD (normal model): {model_power:.0%}")
    print(f"  mean difference {args.k} seeds detect 80 % of the time at this SD: {needed:+.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
