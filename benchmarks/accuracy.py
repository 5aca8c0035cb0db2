"""Small-data accuracy benchmark: scarce's default recipe against the peers' recipes.

The protocol of ../shared/BENCHMARK.md: pneumonia_kaggle_64.npz with its own splits, class-
balanced training subsets of N drawn with the seed (identical for every arm), EfficientNet-Lite0
with ImageNet weights, batch 16, 10 epochs, the epoch with the lowest validation loss, ROC AUC on
the whole test split. It runs as a scarce study (resumable: run the same command again after an
interruption) and prints mean test AUC ± 95% t-interval per arm and N, and the paired difference
of the default recipe against the best peer at each N.

    python benchmarks/accuracy.py --workers 2 --out runs/bench-accuracy --json runs/bench-accuracy.json

With `--external FILE.json` (from benchmarks/fastai_peer.py: real fastai on the same subsets),
those arms join the table and count as peers in the paired comparison. With `--reuse FILE.json`
(an earlier run's `--json`, same data, epochs and TTA) the scarce peer arms' cells are taken from
it instead of being run again (reruns reproduce them exactly); only the default recipe runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scarce.study.analysis import paired_differences, summarize
from scarce.study.runner import open_study, run_study, study_results
from scarce.training.recipes import DEFAULT_RECIPE

PEERS = ["regular", "fastai-fine-tune"]


def write_spec(path: Path, args, arms: list[str]) -> None:
    lines = ['name = "small-data accuracy benchmark"', f'data = "{args.data}"', "size = 64",
             'backbone = "efficientnet_lite0"', 'pretrained = "imagenet"', f"n = {args.n}",
             f"seeds = {args.seeds}", f"epochs = {args.epochs}", "batch_size = 16", f"tta = {args.tta}"]
    for arm in arms:
        lines += ["", "[[recipes]]", f'recipe = "{arm}"']
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def reused_cells(args) -> list[dict]:
    """The peer arms' cells of an earlier run with the same data, epochs and TTA, for every N and seed asked."""
    earlier = json.loads(Path(args.reuse).read_text())
    for key in ("data", "epochs", "tta"):
        if earlier["settings"][key] != getattr(args, key):
            sys.exit(f"{args.reuse} was run with {key} = {earlier['settings'][key]}, not {getattr(args, key)}; "
                     f"run the peers anew (leave out --reuse).")
    cells = [c for c in earlier["cells"] if c["recipe"] in args.peers and c["n"] in args.n and c["seed"] in args.seeds]
    missing = [(p, n, s) for p in args.peers for n in args.n for s in args.seeds
               if not any((c["recipe"], c["n"], c["seed"]) == (p, n, s) for c in cells)]
    if missing:
        sys.exit(f"{args.reuse} lacks {len(missing)} peer cell(s), e.g. {missing[0]}; run the peers anew (leave out --reuse).")
    return cells


def table(results: list[dict], default: str, peers: list[str]) -> dict:
    summary = {(row["recipe"], row["n"]): row for row in summarize(results)}
    pairs = paired_differences(results)
    ns = sorted({row[1] for row in summary})
    comparison = []
    for n in ns:
        peer_means = {p: summary[(p, n)]["mean"] for p in peers if (p, n) in summary and summary[(p, n)]["mean"]}
        best = max(peer_means, key=peer_means.get) if peer_means else None
        pair = next((p for p in pairs if p["n"] == n and p["recipe_a"] == default and p["recipe_b"] == best), None)
        comparison.append({"n": n, "best_peer": best, "default_mean": summary.get((default, n), {}).get("mean"),
                           "best_peer_mean": peer_means.get(best), **({k: pair[k] for k in (
                               "mean_diff", "ci_low", "ci_high", "pairs", "distinguishable")} if pair else {})})
    return {"summary": list(summary.values()), "comparison": comparison}


def show(result: dict, arms: list[str]) -> None:
    rows = {(r["recipe"], r["n"]): r for r in result["summary"]}
    ns = sorted({n for _, n in rows})
    print(f"{'arm':22}" + "".join(f"{'N=' + str(n):>24}" for n in ns))
    for arm in arms:
        cells = []
        for n in ns:
            r = rows.get((arm, n))
            if not r or r["mean"] is None:
                cells.append(f"{'—':>24}")
            elif r["ci_low"] is None:
                cells.append(f"{r['mean']:>17.3f} ({r['seeds']})   ")
            else:
                cells.append(f"{r['mean']:>9.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        print(f"{arm:22}" + "".join(cells))
    print("\npaired difference, default − best peer (same subsets):")
    for c in result["comparison"]:
        if "mean_diff" in c:
            print(f"  N={c['n']:<5} vs {c['best_peer']:<18} {c['mean_diff']:+.3f} "
                  f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] over {c['pairs']} seeds"
                  f"{'  (distinguishable)' if c['distinguishable'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="pneumonia_kaggle_64.npz")
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--peers", nargs="+", default=PEERS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tta", type=int, default=4, help="test-time augmentation passes, every arm alike")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-accuracy")
    parser.add_argument("--json", help="write the table here")
    parser.add_argument("--external", nargs="+", default=[], metavar="JSON",
                        help="peer arms run outside scarce on the same subsets, as written by "
                             "benchmarks/fastai_peer.py (real fastai); they join the table and the comparison")
    parser.add_argument("--reuse", metavar="JSON",
                        help="take the peer arms' cells from this earlier --json (same settings) instead of running them")
    args = parser.parse_args()
    reused = reused_cells(args) if args.reuse else []
    out = Path(args.out)
    spec = out.parent / f"{out.name}.toml"
    write_spec(spec, args, [DEFAULT_RECIPE] if args.reuse else [DEFAULT_RECIPE, *args.peers])
    run_study(spec, out, workers=args.workers)
    store, study_spec = open_study(out)
    try:
        results = study_results(store, study_spec)
    finally:
        store.close()
    external = [{**cell, "recipe": cell["variant"]} for path in args.external
                for cell in json.loads(Path(path).read_text())["cells"]]
    outside = list(dict.fromkeys(cell["recipe"] for cell in external))
    results = results + reused + external
    result = table(results, DEFAULT_RECIPE, [*args.peers, *outside])
    result["settings"] = vars(args)
    result["cells"] = [{k: cell.get(k) for k in ("recipe", "n", "seed", "status", "test_auc")} for cell in results]
    show(result, [DEFAULT_RECIPE, *args.peers, *outside])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
