"""Study analysed: what a table of (recipe, N, seed) test AUCs says, as pure functions.

A study trains every recipe at every training-set size N with several seeds; for one (N, seed)
all recipes saw the same training images, so recipes are compared *pairwise per seed*. This
module turns the finished cells into: a summary per (recipe, N) with a t-interval across seeds,
paired differences between recipes, an inverse-power-law learning curve per recipe, the N needed
to reach a target AUC (with a bootstrap interval and an extrapolation warning), and a
recommendation in plain English. No I/O: ``scarce.report`` writes the files.
See docs/study_analysis.md for the statistics.

A result is a dict with ``recipe``, ``n``, ``seed``, ``status`` and ``test_auc``; only
``status == "done"`` cells with a number count. An optional ``probs`` holds test probabilities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import optimize, stats

from ..evaluation.metrics import auc, macro_auc, percentile_bootstrap, scored_outputs
from ..randomness import numpy_generator

LEVEL = 0.95


# Above this many times the largest measured N a predicted sample size is a guess, not a forecast.
EXTRAPOLATION_WARNING_FACTOR = 2.0


def finished(results: Iterable[dict]) -> list[dict]:
    """Cells that count: status "done" with a finite test AUC."""
    return [cell for cell in results
            if cell.get("status") == "done" and _is_number(cell.get("test_auc"))]


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value))


def recipes_in_order(results: Iterable[dict]) -> list[str]:
    """Recipe names in order of first appearance (the order the study spec lists them)."""
    return list(dict.fromkeys(str(cell["recipe"]) for cell in results))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float | None, float | None]:
    """Student-t interval for the mean of ``values``; (None, None) with fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None, None
    mean = float(values.mean())
    half_width = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean - half_width, mean + half_width


def summarize(results: list[dict], level: float = LEVEL) -> list[dict]:
    """One row per (recipe, N): seeds, mean, std and t-interval of test AUC, and counts of bad cells.

    (recipe, N) pairs with no finished cell still get a row (mean None) so that an all-diverged
    size shows up in the report instead of vanishing. The interval is clipped to [0, 1].
    """
    rows = []
    for recipe in recipes_in_order(results):
        for n in sorted({int(c["n"]) for c in results if str(c["recipe"]) == recipe}):
            cells = [c for c in results if str(c["recipe"]) == recipe and int(c["n"]) == n]
            aucs = [float(c["test_auc"]) for c in finished(cells)]
            low, high = t_interval(aucs, level)
            if low is not None:  # an AUC lies in [0, 1]; with 2-3 seeds the t-interval can overshoot
                low, high = max(0.0, low), min(1.0, high)
            rows.append({
                "recipe": recipe, "n": n, "seeds": len(aucs),
                "mean": float(np.mean(aucs)) if aucs else None,
                "std": float(np.std(aucs, ddof=1)) if len(aucs) >= 2 else None,
                "ci_low": low, "ci_high": high,
                "diverged": sum(c.get("status") == "diverged" for c in cells),
                "failed": sum(c.get("status") == "failed" for c in cells),
                "undefined": sum(c.get("status") == "done" and not _is_number(c.get("test_auc")) for c in cells),
            })
    return rows


def task_auc(labels: np.ndarray, probs: np.ndarray, outputs: list[int] | None = None) -> float | None:
    """AUC as ``scarce.evaluate`` reports it, or None when one of ``outputs`` is undefined here.

    Binary: probs (T,). Multi-class: labels (T,), probs (T, K), macro one-vs-rest. Multi-label:
    labels and probs (T, K), mean of per-label AUCs. ``outputs`` are the classes (labels) to
    average, by default those with both values in ``labels``; a resample missing one of the full
    set's classes is None, so that each resample's AUC is the same quantity as the full set's.
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    if probs.ndim == 1:
        return auc(labels, probs)
    task = "multilabel" if labels.ndim == 2 else "multiclass"
    if outputs is None:
        outputs = scored_outputs(task, labels, probs.shape[1])
    return macro_auc(task, labels, probs, outputs)


def pooled_bootstrap(labels: np.ndarray, probs_list: Sequence[np.ndarray], resamples: int = 1000,
                     seed: int = 0, level: float = LEVEL) -> tuple[float | None, float | None]:
    """Percentile interval of the mean-over-seeds AUC, resampling test images.

    Each resample of test images is applied to every seed's probabilities (the seeds were tested
    on the same images), so the interval covers test-set sampling of the seed-averaged AUC.
    Resamples missing a class of the full test set are skipped; (None, None) when none is usable.
    """
    labels = np.asarray(labels)
    probs_list = [np.asarray(p) for p in probs_list]
    if not probs_list or len(labels) == 0:
        return None, None
    outputs = None
    if probs_list[0].ndim == 2:
        outputs = scored_outputs("multilabel" if labels.ndim == 2 else "multiclass", labels, probs_list[0].shape[1])

    def mean_auc(pick):
        aucs = [task_auc(labels[pick], probs[pick], outputs) for probs in probs_list]
        return float(np.mean(aucs)) if all(a is not None for a in aucs) else None

    return percentile_bootstrap(len(labels), mean_auc, resamples, level, seed) or (None, None)


def paired_differences(results: list[dict], level: float = LEVEL) -> list[dict]:
    """For each N and ordered pair of recipes (A, B) with at least 2 common seeds: A − B per seed.

    The t-interval is of the per-seed differences (paired: same training subset per seed), and
    "distinguishable" means that interval excludes 0. No correction for many comparisons.
    """
    auc_by_cell = {(str(c["recipe"]), int(c["n"]), int(c["seed"])): float(c["test_auc"])
                   for c in finished(results)}
    recipes = recipes_in_order(results)
    rows = []
    for n in sorted({key[1] for key in auc_by_cell}):
        seeds_of = {r: {s for (rr, nn, s) in auc_by_cell if rr == r and nn == n} for r in recipes}
        for recipe_a in recipes:
            for recipe_b in recipes:
                common = sorted(seeds_of[recipe_a] & seeds_of[recipe_b])
                if recipe_a == recipe_b or len(common) < 2:
                    continue
                differences = [auc_by_cell[recipe_a, n, s] - auc_by_cell[recipe_b, n, s] for s in common]
                rows.append(_pair_row(n, recipe_a, recipe_b, differences, level))
    return rows


def _pair_row(n: int, recipe_a: str, recipe_b: str, differences: list[float], level: float) -> dict:
    mean_diff = float(np.mean(differences))
    low, high = t_interval(differences, level)
    distinguishable = low > 0 or high < 0
    return {"n": n, "recipe_a": recipe_a, "recipe_b": recipe_b, "pairs": len(differences),
            "mean_diff": mean_diff, "ci_low": low, "ci_high": high, "distinguishable": distinguishable,
            "statement": pair_statement(n, recipe_a, recipe_b, mean_diff, low, high, len(differences), level)}


def pair_statement(n: int, recipe_a: str, recipe_b: str, mean_diff: float, low: float, high: float,
                   pairs: int, level: float = LEVEL) -> str:
    """One plain-English sentence for a paired comparison."""
    percent = f"{level * 100:g}%"
    if low > 0 or high < 0:
        direction = "higher" if mean_diff > 0 else "lower"
        # State the size of the gap as a positive number, so the CI reads in the same direction.
        size_low, size_high = sorted((abs(low), abs(high)))
        return (f"at N={n}, {recipe_a} is {direction} than {recipe_b} by {abs(mean_diff):.3f} "
                f"({percent} CI {size_low:.3f} to {size_high:.3f}, {pairs} paired seeds)")
    return (f"at N={n}, {recipe_a} and {recipe_b} cannot be distinguished "
            f"(difference {mean_diff:+.3f}, {percent} CI {low:+.3f} to {high:+.3f}, {pairs} paired seeds)")


def power_law(n, a: float, b: float, c: float):
    """Inverse power law AUC(N) = a − b·N^(−c): rises with N towards the asymptote a."""
    return a - b * np.power(np.asarray(n, dtype=float), -c)


def fit_learning_curve(ns: Sequence[float], aucs: Sequence[float]) -> dict:
    """Least-squares fit of a − b·N^(−c) to seed-level points, 0 < a ≤ 1, b ≥ 0, c > 0.

    Returns a, b, c, rmse, points and the measured N range, with ``ok`` False and a ``reason``
    when there are fewer than 3 distinct N or no start converges.
    """
    ns, aucs = np.asarray(ns, dtype=float), np.asarray(aucs, dtype=float)
    base = {"ok": False, "reason": None, "a": None, "b": None, "c": None, "rmse": None,
            "points": int(len(ns)), "n_min": int(ns.min()) if len(ns) else None,
            "n_max": int(ns.max()) if len(ns) else None}
    if len(np.unique(ns)) < 3:
        return {**base, "reason": f"needs at least 3 distinct N, has {len(np.unique(ns))}"}
    best = None
    for c_start in (0.5, 0.2, 1.0):  # a few starts: the exponent is the poorly determined parameter
        params = _fit_from(ns, aucs, _starting_values(ns, aucs, c_start))
        if params is not None:
            rmse = _rmse(ns, aucs, params)
            if best is None or rmse < best[1]:
                best = (params, rmse)
    if best is None:
        return {**base, "reason": "the power-law fit did not converge"}
    (a, b, c), rmse = best
    return {**base, "ok": True, "a": a, "b": b, "c": c, "rmse": rmse}


def _starting_values(ns: np.ndarray, aucs: np.ndarray, c: float) -> tuple[float, float, float]:
    a = min(1.0, float(aucs.max()) + 0.02)
    # Pass through the smallest-N mean: a − b·n_min^(−c) = auc(n_min).
    at_smallest = float(aucs[ns == ns.min()].mean())
    b = max(1e-6, (a - at_smallest) * ns.min() ** c)
    return a, b, c


def _fit_from(ns: np.ndarray, aucs: np.ndarray, start: tuple[float, float, float]) -> tuple[float, float, float] | None:
    """curve_fit in the scaled variable N / N_max (better conditioned); b returned in N units."""
    scale = float(ns.max())
    a0, b0, c0 = start
    scaled_start = (a0, b0 * scale ** (-c0), c0)
    lower, upper = (1e-9, 0.0, 1e-6), (1.0, np.inf, 10.0)
    scaled_start = tuple(float(np.clip(v, lo, hi)) for v, lo, hi in zip(scaled_start, lower, upper))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning on exact fits with 3 points
            (a, b_scaled, c), _ = optimize.curve_fit(power_law, ns / scale, aucs, p0=scaled_start,
                                                     bounds=(lower, upper), maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    b = b_scaled * scale ** c
    if not all(math.isfinite(v) for v in (a, b, c)):
        return None
    return float(a), float(b), float(c)


def _rmse(ns: np.ndarray, aucs: np.ndarray, params: tuple[float, float, float]) -> float:
    return float(np.sqrt(np.mean((power_law(ns, *params) - aucs) ** 2)))


def predict_curve(fit: dict, ns: Sequence[float]) -> np.ndarray:
    """AUC predicted by a fit at each N (NaN everywhere when the fit is not ok)."""
    ns = np.asarray(ns, dtype=float)
    if not fit.get("ok"):
        return np.full(ns.shape, np.nan)
    return power_law(ns, fit["a"], fit["b"], fit["c"])


def n_for_auc(fit: dict, target: float) -> float | None:
    """Solve a − b·N^(−c) = target for N; None when the target is at or above the asymptote a."""
    a, b, c = fit["a"], fit["b"], fit["c"]
    if target >= a:
        return None
    if b <= 0:  # flat curve below the target's level already: any N reaches it
        return 1.0
    return float((b / (a - target)) ** (1 / c))


def recipe_points(results: list[dict], recipe: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seed-level (N, AUC) points of finished cells, optionally of one recipe."""
    cells = [c for c in finished(results) if recipe is None or str(c["recipe"]) == recipe]
    return (np.array([int(c["n"]) for c in cells], dtype=float),
            np.array([float(c["test_auc"]) for c in cells], dtype=float))


def samples_needed(results_for_recipe: list[dict], target: float, resamples: int = 500, seed: int = 0,
                   level: float = LEVEL) -> dict:
    """N at which the recipe's fitted curve reaches ``target``, with a bootstrap percentile interval.

    The interval refits the curve on resamples of the seeds within each N (each N keeps its
    number of points). Resamples whose curve never reaches the target count as "infinitely many
    images", so the upper end is None when more than the upper tail of them are unreachable.
    """
    ns, aucs = recipe_points(results_for_recipe)
    recipes = recipes_in_order(results_for_recipe)
    fit = fit_learning_curve(ns, aucs)
    row = {"recipe": recipes[0] if len(recipes) == 1 else None, "target": float(target), "ok": False,
           "reachable": None, "n_needed": None, "ci_low": None, "ci_high": None,
           "unreachable_fraction": None, "extrapolation_factor": None,
           "max_measured_n": int(ns.max()) if len(ns) else None, "warning": None, "reason": None,
           "fit": fit}
    if not fit["ok"]:
        return {**row, "reason": fit["reason"]}
    n_needed = n_for_auc(fit, target)
    draws = _bootstrap_n_needed(ns, aucs, fit, target, resamples, seed)
    low, high, unreachable_fraction = _interval_with_infinity(draws, level)
    row.update(ok=True, reachable=n_needed is not None, n_needed=n_needed, ci_low=low, ci_high=high,
               unreachable_fraction=unreachable_fraction)
    notes = []
    if n_needed is None:
        notes.append(f"target AUC {target:.3f} is at or above the fitted asymptote {fit['a']:.3f}: "
                     f"the curve predicts no amount of data reaches it with this recipe")
    else:
        factor = n_needed / float(ns.max())
        row["extrapolation_factor"] = factor
        if factor > EXTRAPOLATION_WARNING_FACTOR:
            notes.append(f"N={n_needed:,.0f} is {factor:.1f}× the largest measured N ({int(ns.max())}): "
                         f"far outside the measured range, treat it as a rough guess")
        elif n_needed < ns.min():
            notes.append(f"N={n_needed:,.0f} is below the smallest measured N ({int(ns.min())}): the curve is "
                         f"extrapolated downwards, so treat it as a rough guess")
    if n_needed is not None and high is None:
        notes.append(f"in {unreachable_fraction:.0%} of bootstrap refits the target was unreachable, "
                     f"so the interval has no upper end")
    if all(np.sum(ns == n) < 2 for n in np.unique(ns)):
        notes.append("one seed per N: the interval shows no seed-to-seed variation")
    row["warning"] = "; ".join(notes) or None
    return row


def _bootstrap_n_needed(ns: np.ndarray, aucs: np.ndarray, fit: dict, target: float,
                        resamples: int, seed: int) -> list[float]:
    """N needed on each refit to seeds resampled within each N; inf where unreachable, skipped where the fit fails."""
    rng = numpy_generator(seed, "bootstrap", 1)  # seeds resampled within each N
    groups = [np.flatnonzero(ns == n) for n in np.unique(ns)]
    start = (fit["a"], fit["b"], fit["c"])
    draws = []
    for _ in range(resamples):
        pick = np.concatenate([rng.choice(group, size=len(group), replace=True) for group in groups])
        params = _fit_from(ns[pick], aucs[pick], start)  # start at the point estimate: fast and stable
        if params is None:
            continue
        needed = n_for_auc(dict(zip("abc", params)), target)
        draws.append(math.inf if needed is None else needed)
    return draws


def _interval_with_infinity(draws: list[float], level: float) -> tuple[float | None, float | None, float | None]:
    """Percentile interval that tolerates inf draws (order statistics, no interpolation); inf → None."""
    if not draws:
        return None, None, None
    values = np.sort(np.asarray(draws, dtype=float))
    tail = (1 - level) / 2
    low = float(np.quantile(values, tail, method="lower"))
    high = float(np.quantile(values, 1 - tail, method="higher"))
    unreachable = float(np.mean(np.isinf(values)))
    return (None if math.isinf(low) else low), (None if math.isinf(high) else high), unreachable


def recommend(summary: list[dict], pairs: list[dict], user_n: int | None = None, target: float | None = None,
              fits: dict[str, dict] | None = None) -> dict:
    """Which recipe to use at the user's N, whether that choice is clear, and whether more data pays.

    The recipe is the one with the best mean test AUC at the measured N closest (on a log scale)
    to ``user_n`` (default: the largest measured N). Recipes whose paired difference from it is
    not distinguishable are listed as equally good choices. The value of more data is the gain
    the best recipe's fitted curve predicts from doubling N, and the N it needs for ``target``.
    """
    measured = sorted({row["n"] for row in summary if row["mean"] is not None})
    empty = {"recipe": None, "n": None, "user_n": user_n, "mean": None, "indistinguishable": [],
             "not_compared": [], "gain_from_doubling": None, "n_for_target": None, "target": target}
    if not measured:
        return {**empty, "text": "No cell has finished yet, so there is nothing to recommend."}
    wanted = measured[-1] if user_n is None else user_n
    n = min(measured, key=lambda m: abs(math.log(m) - math.log(max(wanted, 1))))
    rows = sorted((r for r in summary if r["n"] == n and r["mean"] is not None), key=lambda r: -r["mean"])
    best = rows[0]
    against_best = {p["recipe_b"]: p for p in pairs if p["n"] == n and p["recipe_a"] == best["recipe"]}
    indistinguishable = [r["recipe"] for r in rows[1:]
                         if r["recipe"] in against_best and not against_best[r["recipe"]]["distinguishable"]]
    # The best mean may count seeds another recipe lacks; on the seeds both finished, that recipe
    # can still be distinguishably higher. Say so rather than call it beaten.
    higher = [r["recipe"] for r in rows[1:]
              if r["recipe"] in against_best and against_best[r["recipe"]]["distinguishable"]
              and against_best[r["recipe"]]["mean_diff"] < 0]
    not_compared = [r["recipe"] for r in rows[1:] if r["recipe"] not in against_best] + \
                   [r["recipe"] for r in summary if r["n"] == n and r["mean"] is None]  # no finished seed

    where = f"N={n}" if wanted == n else f"N={wanted} (nearest measured size N={n})"
    sentences = [f"At {where}, use {best['recipe']}: its mean test AUC is {best['mean']:.3f} "
                 f"over {best['seeds']} seed{'s' if best['seeds'] != 1 else ''}."]
    sentences.append(_clarity_sentence(best["recipe"], rows, indistinguishable, higher, not_compared))

    fit = (fits or {}).get(best["recipe"])
    gain = n_target = None
    if fit and fit.get("ok"):
        now, doubled = predict_curve(fit, [wanted, 2 * wanted])
        gain = float(doubled - now)
        sentence = (f"Its learning curve (asymptote {fit['a']:.3f}) predicts that doubling to N={2 * wanted} "
                    f"would change AUC by {gain:+.3f}")
        if target is not None:
            n_target = n_for_auc(fit, target)
            if n_target is None:
                sentence += f", and it never reaches the target {target:.3f}"
            elif n_target <= wanted:
                below = " (below the measured sizes, so a rough guess)" if n_target < measured[0] else ""
                sentence += f"; the target {target:.3f} is already reached at about N={n_target:,.0f}{below}"
            else:
                far = " (far beyond the measured sizes, so a rough guess)" \
                    if n_target > EXTRAPOLATION_WARNING_FACTOR * measured[-1] else ""
                sentence += f"; reaching the target {target:.3f} needs about N={n_target:,.0f}{far}"
        sentences.append(sentence + ".")
    elif fit:
        sentences.append(f"No learning curve could be fitted for it ({fit.get('reason')}), "
                         f"so the value of more data is not estimated.")
    return {**empty, "recipe": best["recipe"], "n": n, "mean": best["mean"], "indistinguishable": indistinguishable,
            "higher_on_common_seeds": higher, "not_compared": not_compared, "gain_from_doubling": gain, "n_for_target": n_target,
            "text": " ".join(sentences)}


def _clarity_sentence(best: str, rows: list[dict], indistinguishable: list[str], higher: list[str],
                      not_compared: list[str]) -> str:
    if len(rows) == 1 and not not_compared:
        return "It is the only recipe with finished cells at this size."
    parts = []  # the sentence never starts with a recipe name, so names keep their own case
    beaten = [r["recipe"] for r in rows[1:] if r["recipe"] not in indistinguishable + higher + not_compared]
    if beaten:
        parts.append(f"it is distinguishably better than {_join(beaten)}")
    if indistinguishable:
        parts.append(f"{_join(indistinguishable)} cannot be distinguished from it, "
                     f"so {'it is' if len(indistinguishable) == 1 else 'they are'} as good a choice")
    if higher:
        parts.append(f"{_join(higher)} {'is' if len(higher) == 1 else 'are'} distinguishably higher on the seeds "
                     f"both finished ({best}'s mean includes seeds {'it lacks' if len(higher) == 1 else 'they lack'}), "
                     f"so finish the missing cells before choosing")
    if not_compared:
        parts.append(f"{_join(not_compared)} could not be compared (fewer than 2 common finished seeds)")
    return "Paired by seed, " + "; ".join(parts) + "."


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def analyze(results: list[dict], labels: np.ndarray | None = None, target: float | None = None,
            user_n: int | None = None, bootstrap_resamples: int = 1000, extrapolation_resamples: int = 500) -> dict:
    """Summary, paired differences, curve fits, samples needed, pooled intervals and the recommendation.

    Every value is JSON-serialisable (floats, ints, strings, None, lists, dicts).
    """
    summary = summarize(results)
    pairs = paired_differences(results)
    recipes = recipes_in_order(results)
    fits = {recipe: fit_learning_curve(*recipe_points(results, recipe)) for recipe in recipes}
    needed = {}
    if target is not None:
        for recipe in recipes:
            row = samples_needed([c for c in results if str(c["recipe"]) == recipe], target,
                                 resamples=extrapolation_resamples)
            needed[recipe] = {**row, "recipe": recipe}
    pooled = pooled_intervals(results, labels, bootstrap_resamples) if labels is not None else []
    statuses = [str(c.get("status")) for c in results]
    return _plain({
        "target": target, "user_n": user_n, "level": LEVEL,
        "counts": {status: statuses.count(status) for status in dict.fromkeys(statuses)},
        "summary": summary, "pairs": pairs, "fits": fits, "samples_needed": needed,
        "pooled_bootstrap": pooled,
        "recommendation": recommend(summary, pairs, user_n, target, fits),
        # Every cell that is not in the means: diverged, failed, done with an undefined AUC, not run yet.
        "problem_cells": [{**{key: value for key, value in c.items() if key != "probs"},
                           **({"status": "done, AUC undefined"} if c.get("status") == "done" else {})}
                          for c in results if c.get("status") != "done" or not _is_number(c.get("test_auc"))],
    })


def pooled_intervals(results: list[dict], labels: np.ndarray, resamples: int = 1000) -> list[dict]:
    """Pooled bootstrap interval per (recipe, N) over the finished cells that carry ``probs``."""
    rows = []
    for recipe in recipes_in_order(results):
        for n in sorted({int(c["n"]) for c in results if str(c["recipe"]) == recipe}):
            probs_list = [c["probs"] for c in finished(results)
                          if str(c["recipe"]) == recipe and int(c["n"]) == n and c.get("probs") is not None]
            if probs_list:
                low, high = pooled_bootstrap(labels, probs_list, resamples=resamples)
                rows.append({"recipe": recipe, "n": n, "seeds": len(probs_list), "low": low, "high": high})
    return rows


def _plain(value):
    """numpy scalars → Python numbers, NaN/inf → None, tuples → lists, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
