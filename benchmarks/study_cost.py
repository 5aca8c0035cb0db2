"""What a study costs: its wall time and where the time goes.

Runs (or resumes) a study with the local executor, then sums the per-run timings that every cell
records in metrics.json: data loading and model building, batch assembly and augmentation,
forward/backward/optimizer step, validation after each epoch, and saving plus the test pass with
TTA. Whatever else a cell's wall time holds (writing run.json, starting the process, the study's
own bookkeeping) is shown as "other". Prints a table and writes JSON.

    python benchmarks/study_cost.py examples/e4-quick.toml --out runs/cost-e4-quick --workers 2 \
        --json benchmarks/results/study-cost-e4-quick.json

A resumed study only times the cells it ran now; the wall time is of this invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scarce.study.runner import open_study, run_study

PHASES = ["data_and_model", "augment", "forward_backward", "validate", "save_and_test"]


def cost(out: Path, started_at: float) -> dict:
    """Per-phase seconds summed over the cells finished since ``started_at``, by N and in total."""
    store, spec = open_study(out)
    try:
        rows = [r for r in store.rows() if r["status"] == "done"]
    finally:
        store.close()
    totals, by_n, cells = defaultdict(float), defaultdict(lambda: defaultdict(float)), 0
    for row in rows:
        path = out / row["artefact_dir"] / "metrics.json"
        if not path.exists() or path.stat().st_mtime < started_at:
            continue  # finished by an earlier invocation
        metrics = json.loads(path.read_text())
        timings = metrics.get("timings", {})
        cells += 1
        seconds = float(row["seconds"] or 0.0)
        other = max(0.0, seconds - sum(timings.get(p, 0.0) for p in PHASES))
        for phase in PHASES:
            totals[phase] += timings.get(phase, 0.0)
            by_n[row["n"]][phase] += timings.get(phase, 0.0)
        totals["other"] += other
        by_n[row["n"]]["other"] += other
        by_n[row["n"]]["cells"] += 1
        by_n[row["n"]]["cell_seconds"] += seconds
    return {"spec": spec.name, "cells_timed": cells, "phase_seconds": dict(totals),
            "by_n": {n: dict(v) for n, v in sorted(by_n.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    started_at = time.time()
    clock = time.perf_counter()
    run_study(args.spec, args.out, workers=args.workers, progress=False)
    wall = time.perf_counter() - clock
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "workers": args.workers},
              "wall_seconds": wall, **cost(Path(args.out), started_at)}
    phases = result["phase_seconds"]
    busy = sum(phases.values())
    print(f"{result['spec']}: {result['cells_timed']} cells in {wall / 60:.1f} min wall "
          f"({args.workers} workers, {busy / 60:.1f} cell-minutes)")
    print(f"{'phase':20}{'minutes':>9}{'share':>8}")
    for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"{phase:20}{seconds / 60:>9.1f}{100 * seconds / max(busy, 1e-9):>7.0f}%")
    print(f"\n{'N':>6}{'cells':>7}{'s/cell':>8}" + "".join(f"{p[:12]:>14}" for p in PHASES + ['other']))
    for n, row in result["by_n"].items():
        print(f"{n:>6}{int(row['cells']):>7}{row['cell_seconds'] / row['cells']:>8.1f}"
              + "".join(f"{row.get(p, 0.0) / row['cells']:>14.1f}" for p in PHASES + ["other"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
