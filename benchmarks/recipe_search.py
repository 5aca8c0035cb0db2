"""Print the default-recipe search: validation AUC of the kept epoch (the criterion), of the last
epoch (free of the optimism of picking a maximum) and test AUC (for information)
per candidate, mean over seeds, with the paired difference of each candidate against `regular`.

    scarce study run benchmarks/recipe_search/round_01.toml --out runs/recipe-search --workers 2
    python benchmarks/recipe_search.py runs/recipe-search [more study folders] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def collect(studies: list[Path]) -> dict[str, dict[tuple[int, int], dict]]:
    """arm -> (n, seed) -> metrics of every finished cell, over one or more study folders."""
    arms: dict[str, dict] = defaultdict(dict)
    for path in sorted(p for study in studies for p in study.glob("cells/*/n*-s*/metrics.json")):
        metrics = json.loads(path.read_text())
        history = path.with_name("history.csv")
        if history.exists():  # the last epoch's validation AUC: no selection, so no max-of-noise bias
            with history.open() as handle:
                metrics["last_val_auc"] = float(list(csv.DictReader(handle))[-1]["val_auc"])
        arm = path.parts[-3]
        arms[arm][(metrics["n_train"], metrics["seed"])] = metrics
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, nargs="+", help="study folder(s)")
    parser.add_argument("--reference", default="regular")
    parser.add_argument("--json")
    args = parser.parse_args()
    arms = collect(args.study)
    reference = arms.get(args.reference, {})
    rows = []
    for arm, cells in arms.items():
        for n in sorted({n for n, _ in cells}):
            keys = sorted(k for k in cells if k[0] == n)
            val = [cells[k]["best_val_auc"] for k in keys]
            test = [cells[k]["test_auc"] for k in keys]
            last = [cells[k].get("last_val_auc", np.nan) for k in keys]
            paired = [cells[k]["best_val_auc"] - reference[k]["best_val_auc"] for k in keys if k in reference]
            rows.append({"arm": arm, "n": n, "seeds": len(keys), "val_auc": float(np.mean(val)),
                         "val_auc_min": float(np.min(val)), "last_val_auc": float(np.mean(last)), "test_auc": float(np.mean(test)),
                         "val_diff_vs_reference": float(np.mean(paired)) if paired else None,
                         "val_wins_vs_reference": int(sum(d > 0 for d in paired))})
    rows.sort(key=lambda r: (r["n"], -r["val_auc"]))
    print(f"{'arm':24}{'N':>6}{'seeds':>7}{'val AUC':>9}{'min':>7}{'Δ vs ' + args.reference:>24}{'wins':>6}"
          f"{'last-epoch val':>16}{'test AUC':>10}")
    for r in rows:
        diff = f"{r['val_diff_vs_reference']:+.3f}" if r["val_diff_vs_reference"] is not None else "—"
        print(f"{r['arm']:24}{r['n']:>6}{r['seeds']:>7}{r['val_auc']:>9.3f}{r['val_auc_min']:>7.3f}{diff:>24}"
              f"{r['val_wins_vs_reference']:>6}{r['last_val_auc']:>16.3f}{r['test_auc']:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
