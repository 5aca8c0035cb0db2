"""Study analysis: intervals, paired differences, learning curves, sample sizes and the recommendation.

Expected numbers are computed by hand (with scipy's t quantile) from small tables written out here.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from scarce.study.analysis import (
    analyze,
    fit_learning_curve,
    n_for_auc,
    paired_differences,
    pooled_bootstrap,
    power_law,
    predict_curve,
    recommend,
    samples_needed,
    summarize,
    t_interval,
    task_auc,
)

T_975_DF2 = stats.t.ppf(0.975, 2)  # 4.3027: three seeds give two degrees of freedom


def cell(recipe, n, seed, auc, status="done", **extra):
    return {"recipe": recipe, "n": n, "seed": seed, "status": status,
            "test_auc": auc if status == "done" else None, **extra}


def power_law_cells(recipe, a=0.95, b=0.8, c=0.5, ns=(50, 100, 200, 500, 1000), seeds=(0, 1), noise=0.0, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    return [cell(recipe, n, s, float(power_law(n, a, b, c) + rng.normal(0, noise))) for n in ns for s in seeds]


# ---------------------------------------------------------------- t-interval and summary

def test_t_interval_of_three_values_matches_the_hand_computation():
    low, high = t_interval([0.8, 0.85, 0.9])
    half_width = T_975_DF2 * 0.05 / math.sqrt(3)  # std of (0.8, 0.85, 0.9) is exactly 0.05
    assert half_width == pytest.approx(0.124207, abs=1e-6)
    assert (low, high) == pytest.approx((0.85 - half_width, 0.85 + half_width))


def test_t_interval_needs_two_values():
    assert t_interval([0.8]) == (None, None)
    assert t_interval([]) == (None, None)


def test_summary_has_mean_std_interval_seeds_and_bad_cell_counts():
    results = [cell("gradual", 50, 0, 0.8), cell("gradual", 50, 1, 0.85), cell("gradual", 50, 2, 0.9),
               cell("gradual", 50, 3, None, "diverged"), cell("gradual", 50, 4, None, "failed"),
               cell("gradual", 50, 5, None, "pending"), cell("regular", 50, 0, 0.7)]
    gradual, regular = summarize(results)
    assert gradual["recipe"] == "gradual" and gradual["n"] == 50 and gradual["seeds"] == 3
    assert gradual["mean"] == pytest.approx(0.85)
    assert gradual["std"] == pytest.approx(0.05)
    assert gradual["ci_low"] == pytest.approx(0.85 - T_975_DF2 * 0.05 / math.sqrt(3))
    assert gradual["ci_high"] == pytest.approx(0.85 + T_975_DF2 * 0.05 / math.sqrt(3))
    assert gradual["diverged"] == 1 and gradual["failed"] == 1
    # One seed: a mean but no spread and no interval.
    assert regular["seeds"] == 1 and regular["mean"] == pytest.approx(0.7)
    assert regular["std"] is None and regular["ci_low"] is None and regular["ci_high"] is None


def test_summary_keeps_an_all_diverged_size_visible():
    rows = summarize([cell("r", 50, 0, None, "diverged"), cell("r", 50, 1, None, "diverged")])
    assert rows == [{"recipe": "r", "n": 50, "seeds": 0, "mean": None, "std": None, "ci_low": None,
                     "ci_high": None, "diverged": 2, "failed": 0, "undefined": 0}]


def test_summary_ignores_done_cells_without_a_number():
    rows = summarize([cell("r", 50, 0, 0.8), {"recipe": "r", "n": 50, "seed": 1, "status": "done",
                                              "test_auc": float("nan")}])
    assert rows[0]["seeds"] == 1


# ---------------------------------------------------------------- paired differences

PAIRED_TABLE = [
    # N = 50: A beats B by 0.02, 0.03, 0.04; A − C is +0.01, −0.01, −0.01.
    cell("A", 50, 0, 0.80), cell("A", 50, 1, 0.82), cell("A", 50, 2, 0.84),
    cell("B", 50, 0, 0.78), cell("B", 50, 1, 0.79), cell("B", 50, 2, 0.80),
    cell("C", 50, 0, 0.79), cell("C", 50, 1, 0.83), cell("C", 50, 2, 0.85),
    # N = 100: B shares only seed 0 with A (seed 1 diverged), so no A–B pair there.
    cell("A", 100, 0, 0.85), cell("A", 100, 1, 0.86),
    cell("B", 100, 0, 0.84), cell("B", 100, 1, None, "diverged"),
]


def find_pair(rows, n, a, b):
    return next((r for r in rows if (r["n"], r["recipe_a"], r["recipe_b"]) == (n, a, b)), None)


def test_paired_difference_with_an_interval_excluding_zero_is_distinguishable():
    rows = paired_differences(PAIRED_TABLE)
    a_b = find_pair(rows, 50, "A", "B")
    half_width = T_975_DF2 * 0.01 / math.sqrt(3)  # differences 0.02, 0.03, 0.04: std 0.01
    assert a_b["pairs"] == 3
    assert a_b["mean_diff"] == pytest.approx(0.03)
    assert (a_b["ci_low"], a_b["ci_high"]) == pytest.approx((0.03 - half_width, 0.03 + half_width))
    assert a_b["distinguishable"] is True
    assert a_b["statement"] == "at N=50, A is higher than B by 0.030 (95% CI 0.005 to 0.055, 3 paired seeds)"


def test_the_reverse_pair_says_lower_with_the_same_sizes():
    b_a = find_pair(paired_differences(PAIRED_TABLE), 50, "B", "A")
    assert b_a["mean_diff"] == pytest.approx(-0.03) and b_a["distinguishable"] is True
    assert b_a["statement"] == "at N=50, B is lower than A by 0.030 (95% CI 0.005 to 0.055, 3 paired seeds)"


def test_a_difference_whose_interval_holds_zero_cannot_be_distinguished():
    a_c = find_pair(paired_differences(PAIRED_TABLE), 50, "A", "C")
    assert a_c["mean_diff"] == pytest.approx(-0.01 / 3)
    assert a_c["distinguishable"] is False
    assert "A and C cannot be distinguished" in a_c["statement"]


def test_pairs_need_two_common_finished_seeds():
    rows = paired_differences(PAIRED_TABLE)
    assert find_pair(rows, 100, "A", "B") is None
    assert {(r["recipe_a"], r["recipe_b"]) for r in rows} == {("A", "B"), ("B", "A"), ("A", "C"), ("C", "A"),
                                                               ("B", "C"), ("C", "B")}
    assert all(r["n"] == 50 for r in rows)


# ---------------------------------------------------------------- learning curve

def test_power_law_fit_recovers_known_parameters_from_noisy_seed_points():
    results = power_law_cells("r", seeds=(0, 1, 2), noise=0.002, rng_seed=1)
    ns = [c["n"] for c in results]
    fit = fit_learning_curve(ns, [c["test_auc"] for c in results])
    assert fit["ok"] and fit["points"] == 15 and (fit["n_min"], fit["n_max"]) == (50, 1000)
    assert fit["a"] == pytest.approx(0.95, abs=0.015)
    assert fit["c"] == pytest.approx(0.5, abs=0.15)
    assert fit["rmse"] < 0.004
    grid = [50, 100, 200, 500, 1000]
    assert predict_curve(fit, grid) == pytest.approx(power_law(np.array(grid), 0.95, 0.8, 0.5), abs=0.004)


def test_power_law_fit_is_exact_on_noise_free_points():
    results = power_law_cells("r")
    fit = fit_learning_curve([c["n"] for c in results], [c["test_auc"] for c in results])
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((0.95, 0.8, 0.5), rel=1e-4)
    assert fit["rmse"] < 1e-6


def test_fit_refuses_fewer_than_three_distinct_sizes():
    fit = fit_learning_curve([50, 50, 100, 100], [0.7, 0.72, 0.8, 0.81])
    assert fit["ok"] is False and "3 distinct N" in fit["reason"]
    assert np.isnan(predict_curve(fit, [100])).all()
    assert fit_learning_curve([], [])["ok"] is False


def test_fit_respects_the_bounds_on_a_flat_or_falling_curve():
    fit = fit_learning_curve([50, 100, 200, 400], [0.9, 0.88, 0.86, 0.84])
    assert fit["ok"] and 0 < fit["a"] <= 1 and fit["b"] >= 0 and fit["c"] > 0


# ---------------------------------------------------------------- sample size needed

def test_samples_needed_solves_the_noise_free_curve_exactly():
    needed = samples_needed(power_law_cells("r"), target=0.92, resamples=50)
    expected = (0.8 / (0.95 - 0.92)) ** 2  # a − b·N^(−c) = target  ⇒  N = (b / (a − target))^(1/c) = 711.1
    assert needed["ok"] and needed["reachable"] and needed["recipe"] == "r"
    assert needed["n_needed"] == pytest.approx(expected, rel=1e-3)
    # Identical seeds at every N: every bootstrap refit sees the same points.
    assert needed["ci_low"] == pytest.approx(expected, rel=1e-3)
    assert needed["ci_high"] == pytest.approx(expected, rel=1e-3)
    assert needed["extrapolation_factor"] == pytest.approx(expected / 1000, rel=1e-3)
    assert needed["warning"] is None


def test_samples_needed_warns_when_extrapolating_more_than_twice_the_largest_size():
    needed = samples_needed(power_law_cells("r"), target=0.94, resamples=20)
    assert needed["n_needed"] == pytest.approx((0.8 / 0.01) ** 2, rel=1e-3)  # 6,400
    assert needed["extrapolation_factor"] == pytest.approx(6.4, rel=1e-3)
    assert "6.4× the largest measured N" in needed["warning"] and "far outside" in needed["warning"]


def test_samples_needed_warns_when_the_target_lies_below_the_smallest_size():
    needed = samples_needed(power_law_cells("r"), target=0.80, resamples=20)
    assert needed["n_needed"] == pytest.approx((0.8 / 0.15) ** 2, rel=1e-3)  # 28.4, below N = 50
    assert "below the smallest measured N (50)" in needed["warning"]
    text = analyze(power_law_cells("r"), target=0.80, extrapolation_resamples=20)["recommendation"]["text"]
    assert "already reached at about N=28 (below the measured sizes, so a rough guess)" in text


def test_a_target_above_the_asymptote_is_unreachable():
    needed = samples_needed(power_law_cells("r"), target=0.96, resamples=20)
    assert needed["ok"] and needed["reachable"] is False
    assert needed["n_needed"] is None and needed["extrapolation_factor"] is None
    assert "asymptote" in needed["warning"]
    assert n_for_auc({"a": 0.95, "b": 0.8, "c": 0.5}, 0.95) is None


def test_noisy_samples_needed_interval_brackets_the_estimate():
    needed = samples_needed(power_law_cells("r", seeds=(0, 1, 2), noise=0.003, rng_seed=2), target=0.9,
                            resamples=200)
    assert needed["ci_low"] <= needed["n_needed"] <= needed["ci_high"]


def test_samples_needed_without_a_fit_says_why():
    needed = samples_needed([cell("r", 50, 0, 0.7), cell("r", 100, 0, 0.8)], target=0.9)
    assert needed["ok"] is False and "3 distinct N" in needed["reason"] and needed["n_needed"] is None


# ---------------------------------------------------------------- pooled bootstrap over test images

def synthetic_probs(labels, separation, seed, classes=None):
    rng = np.random.default_rng(seed)
    if classes is None:
        return 1 / (1 + np.exp(-(separation * (labels - 0.5) + rng.normal(0, 1, len(labels)))))
    logits = separation * np.eye(classes)[labels] + rng.normal(0, 1, (len(labels), classes))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_pooled_bootstrap_brackets_the_mean_auc_of_the_seeds_binary():
    labels = np.arange(200) % 2
    probs_list = [synthetic_probs(labels, 1.5, seed) for seed in range(3)]
    mean_auc = np.mean([roc_auc_score(labels, p) for p in probs_list])
    low, high = pooled_bootstrap(labels, probs_list, resamples=300, seed=0)
    assert low < mean_auc < high
    assert 0.02 < high - low < 0.25
    assert pooled_bootstrap(labels, probs_list, resamples=300, seed=0) == (low, high)  # reproducible


def test_pooled_bootstrap_multiclass_uses_macro_one_vs_rest():
    labels = np.arange(150) % 3
    probs_list = [synthetic_probs(labels, 1.5, seed, classes=3) for seed in range(2)]
    assert task_auc(labels, probs_list[0]) == pytest.approx(
        roc_auc_score(labels, probs_list[0], multi_class="ovr", average="macro"))
    mean_auc = np.mean([task_auc(labels, p) for p in probs_list])
    low, high = pooled_bootstrap(labels, probs_list, resamples=200)
    assert low < mean_auc < high


def test_pooled_bootstrap_multilabel_averages_per_label_aucs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (120, 3))
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, labels.shape), 0, 1)
    expected = np.mean([roc_auc_score(labels[:, k], probs[:, k]) for k in range(3)])
    assert task_auc(labels, probs) == pytest.approx(expected)
    low, high = pooled_bootstrap(labels, [probs], resamples=100)
    assert low < expected < high


def test_pooled_bootstrap_with_one_class_only_has_no_interval():
    labels = np.zeros(20, dtype=int)
    assert pooled_bootstrap(labels, [np.linspace(0, 1, 20)], resamples=20) == (None, None)
    assert pooled_bootstrap(labels, [], resamples=20) == (None, None)


# ---------------------------------------------------------------- recommendation

def two_recipe_study():
    good = power_law_cells("gradual-unfreezing", a=0.95, seeds=(0, 1, 2), noise=0.002, rng_seed=3)
    weak = power_law_cells("regular", a=0.90, seeds=(0, 1, 2), noise=0.002, rng_seed=4)
    return good + weak


def test_recommendation_picks_the_best_mean_at_the_largest_size_by_default():
    results = two_recipe_study()
    summary, pairs = summarize(results), paired_differences(results)
    fits = {r: fit_learning_curve([c["n"] for c in results if c["recipe"] == r],
                                  [c["test_auc"] for c in results if c["recipe"] == r])
            for r in ("gradual-unfreezing", "regular")}
    advice = recommend(summary, pairs, fits=fits, target=0.94)
    assert advice["recipe"] == "gradual-unfreezing" and advice["n"] == 1000
    assert advice["indistinguishable"] == [] and advice["not_compared"] == []
    now, doubled = predict_curve(fits["gradual-unfreezing"], [1000, 2000])
    assert advice["gain_from_doubling"] == pytest.approx(doubled - now)
    assert advice["n_for_target"] == pytest.approx(n_for_auc(fits["gradual-unfreezing"], 0.94))
    text = advice["text"]
    assert text.startswith("At N=1000, use gradual-unfreezing")
    assert "distinguishably better than regular" in text and "doubling to N=2000" in text
    assert "target 0.940" in text
    assert 2 <= text.count(". ") + 1 <= 4


def test_recommendation_names_recipes_it_cannot_tell_apart_and_uses_the_nearest_size():
    advice = recommend(summarize(PAIRED_TABLE), paired_differences(PAIRED_TABLE), user_n=60)
    assert advice["n"] == 50 and advice["user_n"] == 60
    assert advice["recipe"] == "C"  # mean 0.823 against A's 0.820 and B's 0.790
    assert advice["indistinguishable"] == ["A", "B"]  # C − B: 0.01, 0.04, 0.05, an interval holding 0
    assert "nearest measured size N=50" in advice["text"]
    assert "A and B cannot be distinguished from it" in advice["text"]


def test_a_recipe_higher_on_the_common_seeds_is_never_called_beaten():
    """A's mean (0.80) counts a seed B failed on; on the two seeds both finished, B is higher."""
    results = [cell("A", 100, 0, 0.70), cell("A", 100, 1, 0.71), cell("A", 100, 2, 0.99),
               cell("B", 100, 0, 0.75), cell("B", 100, 1, 0.765), cell("B", 100, 2, None, "failed")]
    recommendation = analyze(results)["recommendation"]
    assert recommendation["recipe"] == "A" and recommendation["higher_on_common_seeds"] == ["B"]
    assert "distinguishably better than" not in recommendation["text"]
    assert ("B is distinguishably higher on the seeds both finished (A's mean includes seeds it lacks), so finish "
            "the missing cells before choosing") in recommendation["text"]


def test_a_recipe_without_any_finished_seed_is_named_as_not_compared():
    results = [cell("A", 100, s, 0.8 + s / 100) for s in range(3)] + [cell("B", 100, s, None, "failed") for s in range(3)]
    recommendation = analyze(results)["recommendation"]
    assert recommendation["not_compared"] == ["B"]
    assert "B could not be compared (fewer than 2 common finished seeds)" in recommendation["text"]
    assert "only recipe" not in recommendation["text"]


def test_cells_left_out_of_the_means_are_counted_and_listed_with_why():
    results = [cell("A", 100, 0, 0.8), cell("A", 100, 1, 0.82), cell("A", 100, 2, None),
               cell("A", 100, 3, None, "pending"), cell("A", 100, 4, None, "failed", error="no memory")]
    analysis = analyze(results)
    row = analysis["summary"][0]
    assert (row["seeds"], row["undefined"], row["failed"]) == (2, 1, 1)
    listed = {(c["seed"], c["status"]) for c in analysis["problem_cells"]}
    assert listed == {(2, "done, AUC undefined"), (3, "pending"), (4, "failed")}


def test_recommendation_without_finished_cells_says_so():
    advice = recommend(summarize([cell("r", 50, 0, None, "diverged")]), [])
    assert advice["recipe"] is None and "nothing to recommend" in advice["text"]


# ---------------------------------------------------------------- everything at once, including degenerate studies

@pytest.mark.parametrize("results", [
    [],
    [cell("r", 50, 0, 0.8)],                                                       # one cell
    [cell("r", 50, s, 0.8 + s / 100) for s in range(3)],                          # one N
    [cell("r", n, 0, 0.7 + n / 10000) for n in (50, 100, 200)],                   # one seed per N
    [cell("r", n, s, None, "diverged") for n in (50, 100) for s in (0, 1)],       # all diverged
    [cell("r", 50, 0, None, "pending"), cell("r", 50, 1, None, "running"), cell("s", 50, 0, None, "failed")],
])
def test_analyze_never_crashes_and_stays_json_serialisable(results):
    analysis = analyze(results, target=0.9, user_n=100, extrapolation_resamples=20)
    json.dumps(analysis, allow_nan=False)
    assert set(analysis) >= {"summary", "pairs", "fits", "samples_needed", "recommendation", "pooled_bootstrap",
                             "counts", "problem_cells", "target", "user_n"}
    assert isinstance(analysis["recommendation"]["text"], str)


def test_analyze_bundles_pooled_intervals_when_probabilities_are_present():
    labels = np.arange(100) % 2
    results = [cell(r, n, s, None, probs=synthetic_probs(labels, 1.0 + n / 100, 10 * s + n))
               for r in ("a", "b") for n in (50, 100, 200) for s in (0, 1)]
    for c in results:
        c["test_auc"] = float(roc_auc_score(labels, c["probs"]))
    results.append(cell("a", 200, 2, None, "diverged", error="loss became NaN at epoch 3"))
    analysis = analyze(results, labels=labels, target=0.9, bootstrap_resamples=50, extrapolation_resamples=20)
    json.dumps(analysis, allow_nan=False)
    assert [(row["recipe"], row["n"], row["seeds"]) for row in analysis["pooled_bootstrap"]] == [
        (r, n, 2) for r in ("a", "b") for n in (50, 100, 200)]
    assert all(row["low"] < row["high"] for row in analysis["pooled_bootstrap"])
    assert analysis["counts"] == {"done": 12, "diverged": 1}
    assert analysis["problem_cells"] == [{"recipe": "a", "n": 200, "seed": 2, "status": "diverged",
                                          "test_auc": None, "error": "loss became NaN at epoch 3"}]
    assert set(analysis["samples_needed"]) == {"a", "b"} and set(analysis["fits"]) == {"a", "b"}


def _benchmark_module(name):
    import importlib.util
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_power_matches_a_simulation_and_reads_the_benchmark_cells(tmp_path):
    power = _benchmark_module("paired_power")
    rng = np.random.default_rng(0)
    draws = rng.normal(0.02, 0.016, (100_000, 5))
    simulated = float((power.lower_bounds(draws) > 0).mean())
    assert abs(power.power(0.02, 0.016, 5) - simulated) < 0.01
    assert power.power(0.0, 0.016, 5) < 0.03 and power.power(0.1, 0.016, 5) > 0.99
    cells = [{"recipe": r, "n": 50, "seed": s, "status": "done", "test_auc": auc}
             for s in range(7) for r, auc in (("a", 0.9 + 0.01 * s), ("b", 0.9))]
    cells.append({"recipe": "a", "n": 50, "seed": 9, "status": "done", "test_auc": 0.95})  # no pair: left out
    file = tmp_path / "bench.json"
    file.write_text(json.dumps({"cells": cells}))
    differences = power.paired_differences([file], 50, "a", "b")
    assert sorted(differences) == list(range(7))
    assert differences[3] == pytest.approx(0.03)
    out = tmp_path / "power.json"
    assert power.main([str(file), "--n", "50", "--arm", "a", "--peer", "b", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["subsets"] == 21 and result["mean"] == pytest.approx(0.03)


@pytest.mark.parametrize("counts", [(95, 3, 2), (60, 40, 0)])  # a rare class; a class absent from the test set
def test_the_per_run_and_the_pooled_interval_follow_one_rule_for_missing_classes(counts):
    """Both bootstraps average the classes the full test set has, and skip resamples that miss one of
    them: on one seed, with the same draws, they give the same interval (before, the per-run one
    averaged whichever classes a resample held, and a class absent from the test set left the pooled
    one without any interval)."""
    from scarce.evaluation.metrics import multiclass_metrics
    labels = np.repeat(np.arange(3), counts)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), len(labels))
    per_run = multiclass_metrics(labels, probs, resamples=300, seed=0)
    assert per_run["auc"] == pytest.approx(task_auc(labels, probs))
    assert per_run["auc_ci"] == pytest.approx(pooled_bootstrap(labels, [probs], resamples=300, seed=0))
    assert per_run["auc_ci"][0] < per_run["auc"] < per_run["auc_ci"][1]
