"""The verdict and interval arithmetic of the report, against values computed by hand.

Hand values: t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445, t(0.975, 9) = 2.262157 (tables);
t(0.975, 3) = 3.182446. The statistics of failed runs, the rank check, Holm and the ensemble's
subsets are in tests/test_verdict_statistics.py. The best of k's predictive draws are checked
against what the normal model gives without simulation: the order statistics of k normals
(P(max <= x) = Phi(x)^k) and, for one run, the closed-form t interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize as scipy_optimize
from scipy import stats as scipy_stats

from mnistbench import stats
from mnistbench.aggregate import RUN_COLUMNS, summarize


def test_t_quantiles_match_the_table():
    assert stats.t_quantile(3) == pytest.approx(4.302653, abs=1e-6)
    assert stats.t_quantile(5) == pytest.approx(2.776445, abs=1e-6)
    assert stats.t_quantile(10) == pytest.approx(2.262157, abs=1e-6)


def test_prediction_interval_of_one_run():
    # 98 +- 2.776445 * 0.1 * sqrt(1 + 1/5) = 98 +- 0.304144
    low, high = stats.prediction_interval(98.0, 0.1, 5)
    assert (low, high) == pytest.approx((97.695856, 98.304144), abs=1e-6)
    # runs 97.0, 97.2, 97.4: mean 97.2, sd 0.2; 97.2 +- 4.302653 * 0.2 * sqrt(4/3) = 97.2 +- 0.993655
    assert stats.prediction_interval(97.2, 0.2, 3) == pytest.approx((96.206345, 98.193655), abs=1e-6)
    assert all(math.isnan(v) for v in stats.prediction_interval(97.2, math.nan, 1))


def _runs(accuracies, statuses=None):
    """A runs table as mnistbench.aggregate.collect_runs makes it, for one recipe at one lr."""
    statuses = statuses or ["finished"] * len(accuracies)
    rows = [{**dict.fromkeys(RUN_COLUMNS), "study": "t", "recipe": "nielsen_ch1_fc30", "lr": 3.0,
             "published_lr": 3.0, "lr_factor": 1.0, "seed": i, "status": status,
             "selected_accuracy": acc, "published_accuracy": 95.42, "pipeline_check": False,
             "train_seconds": 1.0} for i, (acc, status) in enumerate(zip(accuracies, statuses), 1)]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def test_summary_mean_sd_and_confidence_interval_the_report_uses():
    # mean 97.2, sd 0.2, 97.2 +- 4.302653 * 0.2 / sqrt(3) = 97.2 +- 0.496827; the diverged run
    # is counted, not averaged
    row = summarize(_runs([97.0, 97.2, 97.4, None], ["finished"] * 3 + ["diverged"])).iloc[0]
    assert (row["runs"], row["finished"], row["diverged"]) == (4, 3, 1)
    assert row["mean"] == pytest.approx(97.2)
    assert row["std"] == pytest.approx(0.2)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((96.703173, 97.696827), abs=1e-6)
    assert row["diff_pp"] == pytest.approx(97.2 - 95.42)


# Four runs as (validation, test) accuracy at their selected epochs. The best of 3, chosen as the
# book chose (by validation), over the 4 subsets of 3 runs:
#   {0,1,2} -> run 2 (val 99.0): 98.2    {0,1,3} -> run 1 (val 98.0): 98.5
#   {0,2,3} -> run 2: 98.2               {1,2,3} -> run 2: 98.2
# so 98.2 with probability 3/4 and 98.5 with 1/4: mean 98.275. Run 3 has the best test accuracy
# but the worst validation accuracy, and is never chosen; the maximum of 3 test accuracies would
# have been 98.5, 99.0, 99.0, 99.0 (mean 98.875): biased upward.
VAL = [97.0, 98.0, 99.0, 96.0]
TEST = [98.0, 98.5, 98.2, 99.0]


def flat(distribution):
    return [x for pair in distribution for x in pair]


def test_best_of_k_chosen_by_validation_over_all_subsets():
    assert flat(stats.best_of_k_distribution(VAL, TEST, 3)) == pytest.approx([98.5, 0.25, 98.2, 0.75])
    # chosen by the test accuracy itself (chapter 1): the maximum of the three
    by_test = stats.best_of_k_distribution(TEST, TEST, 3)
    assert flat(by_test) == pytest.approx([98.5, 0.25, 99.0, 0.75])
    # k = n: one subset; k = 1: every run once
    assert stats.best_of_k_distribution(VAL, TEST, 4) == [(98.2, 1.0)]
    assert flat(stats.best_of_k_distribution(VAL, TEST, 1)) == pytest.approx(flat((t, 0.25) for t in TEST))
    # runs tied on validation share the subset's weight
    assert stats.best_of_k_distribution([98.0, 98.0], [97.0, 99.0], 2) == [(97.0, 0.5), (99.0, 0.5)]
    with pytest.raises(ValueError):
        stats.best_of_k_distribution(VAL, TEST, 5)


# 2,000 runs spaced at the normal distribution's quantiles: mean 0, sd 1 (to 0.1%), so the
# posterior predictive is close to the normal model itself, whose best of k has known quantiles.
NORMAL_RUNS = [float(x) for x in scipy_stats.norm.ppf((np.arange(2000) + 0.5) / 2000)]


def test_best_of_k_predictive_against_order_statistics():
    # chosen by the value itself: the maximum of 3 standard normals, P(max <= x) = Phi(x)^3,
    # so its q-quantile is Phi^-1(q^(1/3)): -0.5464 and 2.3909
    draws = stats.best_of_k_predictive(NORMAL_RUNS, NORMAL_RUNS, 3)
    expect = scipy_stats.norm.ppf(np.array([0.025, 0.975]) ** (1 / 3))
    assert np.quantile(draws, [0.025, 0.975]) == pytest.approx(expect, abs=0.03)
    # chosen by a number that orders the runs in reverse (correlation -1): the minimum of 3
    reverse = stats.best_of_k_predictive([-v for v in NORMAL_RUNS], NORMAL_RUNS, 3)
    assert np.quantile(reverse, [0.025, 0.975]) == pytest.approx(-expect[::-1], abs=0.03)
    # chosen by a number unrelated to the value (a shuffle, correlation -0.01): the chosen run's
    # value is one run's, N(0, 1): -1.96 and 1.96
    shuffled = list(np.random.default_rng(1).permutation(NORMAL_RUNS))
    unrelated = stats.best_of_k_predictive(shuffled, NORMAL_RUNS, 3)
    assert np.quantile(unrelated, [0.025, 0.975]) == pytest.approx([-1.96, 1.96], abs=0.05)
    # the same runs give the same draws
    assert np.array_equal(unrelated, stats.best_of_k_predictive(shuffled, NORMAL_RUNS, 3))


def test_best_of_k_predictive_with_failed_runs():
    # as many runs failed as learned (2,000 each): a new run fails with rate 1/2, and the best of
    # 3 is the best of the m that learned, m ~ Binomial(3, 1/2) given m >= 1: P(m = 1, 2, 3) =
    # 3/7, 3/7, 1/7, so P(best <= x) = (3 Phi(x) + 3 Phi(x)^2 + Phi(x)^3) / 7
    draws = stats.best_of_k_predictive(NORMAL_RUNS, NORMAL_RUNS, 3, failed=2000)
    def cdf(x):
        phi = scipy_stats.norm.cdf(x)
        return (3 * phi + 3 * phi ** 2 + phi ** 3) / 7
    expect = [scipy_optimize.brentq(lambda x: cdf(x) - q, -6, 6) for q in (0.025, 0.975)]
    assert np.quantile(draws, [0.025, 0.975]) == pytest.approx(expect, abs=0.03)
    # the 1/8 of draws where all three failed are left out
    assert len(draws) == pytest.approx(stats.PREDICTIVE_DRAWS * 7 / 8, rel=0.02)


def test_best_of_one_predictive_is_the_t_interval():
    # one new run from the posterior predictive is t(n - 1) around the mean, scale
    # sd * sqrt(1 + 1/n): the closed-form prediction interval, to Monte Carlo error
    values = [97.9, 98.0, 98.1, 98.2, 97.8]
    closed = stats.prediction_interval(98.0, pd.Series(values).std(), 5)
    draws = stats.best_of_k_predictive(values, values, 1)
    assert np.quantile(draws, [0.025, 0.975]) == pytest.approx(closed, abs=0.01)
    # a chooser that ties every run: the choice is one run at random, the same interval
    tied = stats.best_of_k_predictive([98.0] * 5, values, 3)
    assert np.quantile(tied, [0.025, 0.975]) == pytest.approx(closed, abs=0.01)
    # and best_of_k_interval gives k = 1 in closed form
    assert stats.best_of_k_interval(values, values, 1)[:2] == pytest.approx(closed)


def test_best_of_k_draws_survive_a_covariance_draw_singular_to_rounding():
    # 3 runs whose validation and test accuracy go almost exactly opposite ways (r = -0.997):
    # one of seed 2's 100,000 inverse-Wishart draws at df = 2 is singular to rounding, and its
    # Cholesky factor failed (LinAlgError, found in review). Any square root of the draw serves:
    # seed 2 now gives the distribution the other seeds give, within Monte Carlo noise.
    chooser, value = [99.50, 99.55, 99.405], [99.45, 99.40, 99.52]
    assert np.corrcoef(chooser, value)[0, 1] == pytest.approx(-0.9967, abs=1e-4)
    quantiles = {}
    for seed in (0, 2):
        draws = stats.best_of_k_predictive(chooser, value, 3, seed=seed)
        assert len(draws) == stats.PREDICTIVE_DRAWS and np.isfinite(draws).all()
        quantiles[seed] = np.quantile(draws, [0.025, 0.5, 0.975])
    assert quantiles[2] == pytest.approx(quantiles[0], abs=0.1)


def test_best_of_k_interval_centre_and_heavy_tails():
    low, high, expected, draws = stats.best_of_k_interval(VAL, TEST, 3)
    assert expected == pytest.approx(98.275)  # the k-subsets' exact mean, no model
    assert low < expected < high and len(draws) == stats.PREDICTIVE_DRAWS
    # n = k = 3 runs (nielsen_ch6_double_fc100's): one subset, the observed best of 3 as the
    # centre, and with 2 degrees of freedom the predictive runs far past 100%
    low, high, expected, _ = stats.best_of_k_interval([99.49, 99.31, 99.54], [99.31, 99.27, 99.51], 3)
    assert expected == pytest.approx(99.51) and low < 99.0 and high > 100


def test_best_of_3_by_validation_interval_covers_at_n_3():
    """The interval is a 95% claim: simulated, it must hold the best-of-3-by-validation run of 3
    new (validation, test) pairs at least about 95% of the time from 3 runs, the record's case.
    300 draws of 3 runs (correlation 0.6), fixed seeds: 0.98 measured; a prior that narrows it
    (|Sigma|^-2, tried and reverted on 2026-12-07) gives 0.90 here (docs/report.md)."""
    rng = np.random.default_rng(7)
    cov = np.array([[1.0, 0.6], [0.6, 1.0]])
    hits, reps = 0, 300
    for rep in range(reps):
        runs = rng.multivariate_normal([0, 0], cov, size=3)
        new = rng.multivariate_normal([0, 0], cov, size=3)
        draws = stats.best_of_k_predictive(list(runs[:, 0]), list(runs[:, 1]), 3, draws=4000, seed=rep)
        low, high = np.quantile(draws, [0.025, 0.975])
        hits += low <= new[new[:, 0].argmax(), 1] <= high
    assert hits / reps >= 0.94


# Ten runs whose validation accuracy orders them nearly in reverse of their test accuracy
# (correlation -0.95): the best of 3 by validation is a low test accuracy.
TEN_TEST = [98.0, 98.1, 98.2, 98.3, 98.4, 98.5, 98.6, 98.7, 98.8, 98.9]
TEN_VAL = [99.0, 98.8, 98.9, 98.6, 98.7, 98.4, 98.5, 98.2, 98.3, 98.1]


def test_best_of_k_verdict_uses_the_chooser():
    # 98.9 is inside what the best of 3 test accuracies gives (about 98.23-99.37), but above the
    # test accuracy of the best of 3 chosen by validation (about 97.45-98.72)
    sd = pd.Series(TEN_TEST).std()
    by_validation = stats.judge(98.9, 98.45, sd, 10, k=3, chooser=TEN_VAL, values=TEN_TEST)
    by_test = stats.judge(98.9, 98.45, sd, 10, k=3, chooser=TEN_TEST, values=TEN_TEST)
    assert (by_validation.verdict, by_test.verdict) == ("above", "consistent")
    assert by_validation.high < 98.85 < 98.95 < by_test.high
    assert by_validation.p_value < 0.05 < by_test.p_value
    # the p-value and the interval agree: a printed number at the interval's end has p 0.05
    at_end = stats.judge(99.0, 98.45, sd, 10, k=3, chooser=TEN_VAL, values=TEN_TEST,
                         printed=(by_validation.high, by_validation.high))
    assert at_end.p_value == pytest.approx(0.05, abs=0.002)
    # fewer runs than k: no verdict
    short = stats.judge(98.0, 98.0, 0.1, 4, k=5, chooser=VAL, values=TEST)
    assert short.verdict == "not enough runs" and "best of 5 needs 5" in short.reason


def test_printed_ranges():
    assert stats.printed_range("99") == (98.5, 99.5)
    assert stats.printed_range("87.1") == pytest.approx((87.05, 87.15))
    assert stats.printed_range("95.42") == pytest.approx((95.415, 95.425))
    # printed with %d (the wide tutorial): 99 stands for 99.00 to 99.99...
    assert stats.printed_range("99", "truncated") == (99.0, 100.0)


def test_selection_in_words():
    from mnistbench.recipes import get_recipe, published_selection_text

    assert published_selection_text(get_recipe("nielsen_ch6_dbl_conv")) == (
        "the best-validation epoch of the run with the best validation accuracy among 3 runs")
    assert published_selection_text(get_recipe("seed_relu")) == "the final epoch of a single run"


def test_verdicts_against_the_prediction_interval():
    # n = 5, mean 98, sd 0.1: the interval is [97.695856, 98.304144]
    judge = lambda published, half=0.005: stats.judge(
        published, 98.0, 0.1, 5, printed=(published - half, published + half)).verdict
    assert judge(98.30) == "consistent"
    assert judge(98.31) == "above"  # 98.305 .. 98.315 lies wholly above 98.304144
    assert judge(98.3, half=0.05) == "consistent"  # printed with one decimal: 98.25 .. 98.35
    # a printed value above the interval whose rounding range reaches into it: consistent
    assert judge(98.31, half=0.01) == "consistent"  # 98.30 .. 98.32 overlaps 98.304144
    assert judge(97.70) == "consistent"
    assert judge(97.69) == "below"
    judgement = stats.judge(98.0, 98.0, 0.1, 5)
    assert (judgement.low, judgement.high) == pytest.approx((97.695856, 98.304144), abs=1e-6)
    # no accuracy exceeds 100%: 99.8 +- 3.04 * 0.1 is reported as [99.495856, 100], and an
    # interval that reaches 100% supports no verdict
    reaching = stats.judge(99.9, 99.8, 0.1, 5)
    assert (reaching.low, reaching.high) == pytest.approx((99.495856, 100.0), abs=1e-6)
    assert reaching.verdict == "uninformative" and "reaches 100%" in reaching.reason
    # the reason names the interval before and after clipping, so the page's two ends agree
    assert "99.50-100.10" in reaching.reason and "99.50-100.00 clipped" in reaching.reason


def test_verdicts_without_a_replication_verdict():
    assert stats.judge(None, 98.0, 0.1, 5).verdict == "no published number"
    assert stats.judge(99.0, 98.0, 0.1, 2).verdict == "not enough runs"
    assert stats.judge(99.0, math.nan, math.nan, 0).verdict == "not enough runs"
    # a pipeline check never gets a replication verdict, whatever its numbers
    assert stats.judge(98.0, 98.0, 0.1, 5, pipeline_check=True).verdict == "pipeline check"
    changed = stats.judge(98.0, 98.0, 0.1, 5, settings_changed="epochs 1 instead of 30")
    assert (changed.verdict, changed.reason) == ("settings changed", "epochs 1 instead of 30")
    assert set(stats.VERDICTS) == {"consistent", "above", "below", "uninformative", "not enough runs",
                                   "settings changed", "pipeline check", "no published number"}


def test_deterministic_baselines_are_compared_directly():
    # one run is the whole distribution: equal to the printed digits or not
    def judge(published, replicated):
        printed = (published - 0.005, published + 0.005)  # printed with two decimals
        return stats.judge(published, replicated, math.nan, 1, printed=printed, deterministic=True).verdict

    assert judge(22.25, 22.25) == "consistent"
    assert judge(22.30, 22.25) == "above"
    assert judge(94.35, 94.61) == "below"
