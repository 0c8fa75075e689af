"""The statistics behind a verdict a reviewer would sign, against hand-worked values: failed runs
counted apart (with an exact interval of the failure rate), no verdict on an uninformative
interval, the rank check, Shapiro-Wilk, Holm's adjustment and the ensemble's subset interval.

Hand values: t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445; ln 0.025 = -3.688879,
ln 0.975 = -0.025318.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from mnistbench import stats
from mnistbench.aggregate import RUN_COLUMNS, failed_run, summarize


def test_clopper_pearson_by_hand():
    # 0 of 15: [0, 1 - 0.025^(1/15)] = [0, 1 - exp(-3.688879 / 15)] = [0, 21.802%]
    assert stats.clopper_pearson(0, 15) == pytest.approx((0.0, 21.8019), abs=1e-3)
    # 5 of 5: [0.025^(1/5), 1] = [exp(-3.688879 / 5), 1] = [47.818%, 100%]
    assert stats.clopper_pearson(5, 5) == pytest.approx((47.8176, 100.0), abs=1e-3)
    # 1 of 5: the lower end is 1 - 0.975^(1/5) = 1 - exp(-0.025318 / 5) = 0.50508%
    assert stats.clopper_pearson(1, 5)[0] == pytest.approx(0.50508, abs=1e-4)
    # 3 of 5 is 2 of 5 mirrored: [14.66%, 94.73%] (tables: 0.1466, 0.9473)
    low, high = stats.clopper_pearson(3, 5)
    assert (low, high) == pytest.approx((14.663, 94.726), abs=1e-2)
    assert stats.clopper_pearson(2, 5) == pytest.approx((100 - high, 100 - low))
    assert all(math.isnan(v) for v in stats.clopper_pearson(0, 0))


# Three runs that learned (mean 96.5, sd 0.1) and two that failed (a lost digit, a collapse).
VALUES = [96.5, 96.4, 87.0, 96.6, 11.35]
FAILED = [False, False, True, False, True]


def test_learned_run_verdict_leaves_the_failed_runs_out():
    judgement = stats.judge_runs(96.5, VALUES, FAILED, printed=(96.495, 96.505))
    # 96.5 +- 4.302653 * 0.1 * sqrt(4/3) = 96.5 +- 0.496827, over the three learned runs only;
    # counting the failed runs (mean 77.57, sd 37.4) would give an interval past 0 and 100%
    assert (judgement.low, judgement.high) == pytest.approx((96.003173, 96.996827), abs=1e-6)
    assert (judgement.verdict, judgement.n, judgement.mean, judgement.sd) == pytest.approx(
        ("consistent", 3, 96.5, 0.1))
    assert (judgement.runs, judgement.failed) == (5, 2)
    assert (judgement.failure_low, judgement.failure_high) == pytest.approx(stats.clopper_pearson(2, 5))


def test_best_of_k_over_the_learned_runs():
    # best of 3 chosen by the value itself, over all C(5, 3) = 10 subsets of the five runs, each
    # won by its best run that learned (a failed run never wins while one learned): 6 hold 96.6,
    # 3 hold 96.5 but not 96.6, 1 ({96.4, 87.0, 11.35}) holds only 96.4:
    # (6 * 96.6 + 3 * 96.5 + 96.4) / 10 = 96.55. Over the learned runs alone it would be 96.6.
    judgement = stats.judge_runs(96.6, VALUES, FAILED, k=3, printed=(96.595, 96.605))
    assert judgement.expected_best == pytest.approx(96.55)
    # the spread and the mean come from the three that learned
    assert (judgement.n, judgement.failed) == (3, 2)


def test_fewer_than_three_learned_runs_are_not_enough():
    judgement = stats.judge_runs(96.5, [96.5, 96.4, 87.0, 75.9], [False, False, True, True])
    assert judgement.verdict == "not enough runs"
    assert judgement.reason.startswith("2 runs to judge: a verdict needs 3; 2 of 4 runs failed (50%")


def test_failed_runs_in_the_tables():
    assert failed_run("diverged", None) and failed_run("finished", "6") and failed_run("finished", "1 3 8")
    assert not failed_run("finished", "none") and not failed_run("finished", None)
    rows = [{**dict.fromkeys(RUN_COLUMNS), "study": "t", "recipe": "nielsen_ch1_fc100", "lr": 3.0,
             "published_lr": 3.0, "seed": i, "status": "finished", "selected_accuracy": value,
             "published_accuracy": 96.59, "pipeline_check": False, "train_seconds": 1.0,
             "unlearned_digits": "6" if failed else "none", "failed": failed}
            for i, (value, failed) in enumerate(zip(VALUES, FAILED), 1)]
    row = summarize(pd.DataFrame(rows, columns=RUN_COLUMNS)).iloc[0]
    assert (row["finished"], row["failed"], row["learned"]) == (5, 2, 3)
    assert (row["failure_ci95_low"], row["failure_ci95_high"]) == pytest.approx(stats.clopper_pearson(2, 5))
    # the statistics are those of the three that learned (96.4, 96.5, 96.6), failed runs never
    # averaged in: 96.5 +- t(0.975, 2) * 0.1 / sqrt(3) = 96.5 +- 0.2484
    assert (row["mean"], row["std"], row["min"], row["max"]) == pytest.approx((96.5, 0.1, 96.4, 96.6))
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((96.2516, 96.7484), abs=1e-4)
    assert row["diff_pp"] == pytest.approx(96.5 - 96.59)


def test_uninformative_intervals():
    # mean 85, sd 4: 85 +- 2.776445 * 4 * sqrt(1.2) = 85 +- 12.17: wider than 10 points
    wide = stats.judge(86.0, 85.0, 4.0, 5)
    assert wide.verdict == "uninformative" and "24.3 points wide" in wide.reason
    # seed_relu_wd01's record: one collapsed run makes the interval span 0-100%
    record = [90.71, 11.35, 90.93, 88.24, 88.43]
    mean, sd = sum(record) / 5, pd.Series(record).std()
    assert stats.judge(85.31, mean, sd, 5).verdict == "uninformative"
    assert stats.judge(85.31, mean, sd, 5).low == 0.0


def test_rank_check_by_hand():
    runs = [1.0, 2.0, 3.0, 4.0, 5.0]
    # above all 5: one new run beats them all with probability 1/6; the best of 3 with 3/8
    assert stats.rank_check(runs, (6, 6))[0] == pytest.approx(1 / 6)
    assert stats.rank_check(runs, (6, 6), k=3)[0] == pytest.approx(3 / 8)
    # above 4 of 5: a new run ranks 5th or 6th of 6 with probability 2/6 = 1 - C(5,2)/C(6,2)
    assert stats.rank_check(runs, (4.5, 4.5))[0] == pytest.approx(1 / 3)
    # below all 5: 1/6 for one run; the least of 3 runs chosen by validation is below them all
    # with probability 3/8 (the bound for a run chosen by another number)
    assert stats.rank_check(runs, (0, 0))[1] == pytest.approx(1 / 6)
    assert stats.rank_check(runs, (0, 0), k=3, chosen_by_value=False)[1] == pytest.approx(3 / 8)
    # the best of 3 by value below all 5: all three new runs under the 5 old, C(5,5)/C(8,5)
    assert stats.rank_check(runs, (0, 0), k=3)[1] == pytest.approx(1 / 56)
    # a printed value equal to a run counts against the verdict
    assert stats.rank_check(runs, (5, 5))[0] == pytest.approx(1 / 3)


def test_rank_check_counts_failed_runs():
    # 5 learned runs of ours, a published best of 3 (by value) below all of them: 1/C(8, 5) = 1/56
    # if every source run learned. With failed runs of ours, the source's best may be of fewer:
    # worst case one learned run, 1/C(6, 5) = 1/6, and the check can no longer say "below"
    runs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert stats.rank_check(runs, (0, 0), k=3, failed=2)[1] == pytest.approx(1 / 6)
    assert stats.rank_floor(5, 3, "below", failed=2) == pytest.approx(1 / 6)
    # below 3 of them (b = 3): C(5, 3)/C(6, 3) = 10/20
    assert stats.rank_check(runs, (2.5, 2.5), k=3, failed=1)[1] == pytest.approx(1 / 2)
    # the other sides keep their worst case j = k: the best of 3 above all, the least of 3 below
    assert stats.rank_check(runs, (6, 6), k=3, failed=2)[0] == pytest.approx(3 / 8)
    assert stats.rank_check(runs, (0, 0), k=3, chosen_by_value=False, failed=2)[1] == pytest.approx(3 / 8)
    assert stats.rank_floor(5, 3, "above", failed=2) == pytest.approx(3 / 8)
    # 30 learned runs and 10 failed, best of 3 by value, the published number below all 30:
    # 1/C(33, 30) would say "below"; 1/31 (one source run learned) cannot
    many = [99.0 + 0.01 * i for i in range(30)]
    assert stats.rank_check(many, (98.0, 98.0), k=3)[1] == pytest.approx(1 / 5456)
    mean, sd = sum(many) / 30, pd.Series(many).std()
    judged = stats.judge(98.0, mean, sd, 30, k=3, values=many, printed=(97.995, 98.005), failed=10)
    assert judged.rank_p == pytest.approx(1 / 31) and judged.rank_verdict == "consistent"
    assert judged.rank_floor == pytest.approx(1 / 31)


def test_rank_check_beside_the_interval():
    # n = 5, mean 98, sd 0.1: 98.31 is above the normal interval, but 5 runs cannot give a rank
    # p below 1/6: the two disagree and the judgement says what each found
    judgement = stats.judge(98.31, 98.0, 0.1, 5, printed=(98.305, 98.315),
                            values=[97.9, 97.95, 98.0, 98.05, 98.1])
    assert (judgement.verdict, judgement.rank_verdict) == ("above", "consistent")
    assert judgement.rank_p == pytest.approx(1 / 6)
    # and it could not have said otherwise: 1/6 is its least p, so the row says it cannot decide
    assert judgement.rank_floor == pytest.approx(1 / 6)


def test_rank_floor_is_the_least_p_the_check_can_give():
    # the hand values of test_rank_check_by_hand, for a published number beyond all 5 runs
    assert stats.rank_floor(5, 1, "above") == pytest.approx(1 / 6)
    assert stats.rank_floor(5, 3, "above") == pytest.approx(3 / 8)
    assert stats.rank_floor(5, 3, "below") == pytest.approx(1 / 56)  # best of 3 by value
    assert stats.rank_floor(5, 3, "below", chosen_by_value=False) == pytest.approx(3 / 8)
    # the dropout net's 15 runs and a best of 5: 1/4, never below 0.025
    assert stats.rank_floor(15, 5, "above") == pytest.approx(0.25)


def test_prediction_p_matches_the_interval():
    low, high = stats.prediction_interval(98.0, 0.1, 5)
    assert stats.prediction_p((high, high), 98.0, 0.1, 5) == pytest.approx(0.05)
    assert stats.prediction_p((low, low), 98.0, 0.1, 5) == pytest.approx(0.05)
    assert stats.prediction_p((97.9, 98.1), 98.0, 0.1, 5) == 1.0


def test_shapiro_wilk():
    # the seed_relu_wd01 runs: one collapse, the normal model rejected
    assert stats.normality_p([90.71, 11.35, 90.93, 88.24, 88.43]) == pytest.approx(0.0004, abs=2e-4)
    assert stats.normality_p([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # evenly spaced: perfectly normal
    assert math.isnan(stats.normality_p([1.0, 2.0])) and math.isnan(stats.normality_p([1.0] * 4))


def test_a_rejected_normal_model_leaves_the_verdict_to_the_rank_check():
    # seed_relu_wd01_normalized's 5 runs: four at 92.6-92.8, one at 89.76. The normal interval
    # (92.09 +- 2.776445 * 1.3056 * sqrt(1.2) = 88.12-96.06) puts 85.31 below it, but
    # Shapiro-Wilk rejects that model, and 5 runs cannot give the rank check a p under 1/6
    runs = [92.67, 92.65, 92.59, 92.79, 89.76]
    mean, sd = sum(runs) / 5, pd.Series(runs).std()
    assert stats.normality_p(runs) < 0.001
    judgement = stats.judge(85.31, mean, sd, 5, printed=(85.305, 85.315), values=runs)
    assert (judgement.low, judgement.high) == pytest.approx((88.12, 96.06), abs=0.01)
    assert (judgement.verdict, judgement.rank_verdict) == ("uninformative", "consistent")
    assert judgement.rank_p == pytest.approx(1 / 6) and "interval says below" in judgement.reason
    assert math.isnan(judgement.p_value)  # no p from a rejected model: Holm's count leaves it out
    assert judgement.without_normal_model  # the report reads this, not the reason's words
    # the same runs without the odd one are normal enough: the interval's verdict stands
    normal = stats.judge(85.31, 92.675, 0.0835, 4, printed=(85.305, 85.315), values=runs[:4])
    assert normal.verdict == "below" and not normal.without_normal_model

    # 40 runs, one far below the rest: the model is rejected, and 40 runs can decide without it.
    # 99.5 is above every run: rank p = k / (n + k) = 1/41 = 0.0244 < 0.025, so "above", although
    # the normal interval, widened by the odd run, holds it
    runs = [99.0 + 0.0025 * i for i in range(39)] + [97.0]
    mean, sd = sum(runs) / 40, pd.Series(runs).std()
    judgement = stats.judge(99.5, mean, sd, 40, printed=(99.495, 99.505), values=runs)
    assert judgement.high > 99.505 and stats.normality_p(runs) < 0.05
    assert (judgement.verdict, judgement.rank_verdict) == ("above", "above")
    assert judgement.rank_p == pytest.approx(1 / 41) and judgement.p_value == pytest.approx(2 / 41)
    assert "rank check's" in judgement.reason and judgement.without_normal_model
    # a failed run of ours beside them changes nothing here: the published run is one that
    # learned (k = 1), and the 40 learned runs are exchangeable with it
    failed = stats.judge(99.5, mean, sd, 40, printed=(99.495, 99.505), values=runs, failed=1)
    assert failed.verdict == "above" and failed.p_value == pytest.approx(2 / 41)
    # an interval too wide to judge stays uninformative for its own reason, rejected model or not
    runs = [50.0, 50.1, 50.2, 50.3, 20.0]
    wide = stats.judge(45.0, sum(runs) / 5, pd.Series(runs).std(), 5, printed=(44.95, 45.05), values=runs)
    assert stats.normality_p(runs) < 0.05 and wide.rank_verdict == "consistent"
    assert wide.verdict == "uninformative" and "points wide" in wide.reason and not wide.without_normal_model


def test_holm_by_hand():
    # sorted: 0.01, 0.03, 0.04, 0.5 (m = 4): 4 * 0.01 = 0.04; 3 * 0.03 = 0.09; 2 * 0.04 = 0.08,
    # kept at 0.09 (monotone); 1 * 0.5 = 0.5. nan is no test and does not count in m.
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan, 0.5])
    assert adjusted[:3] == pytest.approx([0.04, 0.09, 0.09]) and adjusted[4] == pytest.approx(0.5)
    assert math.isnan(adjusted[3])
    assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])


def test_ensemble_subset_interval_by_hand():
    # four votes 99.0-99.3 (mean 99.15), central 95%: 99.0 and 99.3; 4 of 6 nets:
    # stretched by sqrt((6 + 2) / (6 - 2)) = sqrt(2): 99.15 -+ 0.15 * sqrt(2) = 98.937868, 99.362132
    judgement = stats.judge_subset_votes([99.2, 99.0, 99.3, 99.1], (99.35, 99.35), nets=6, k=2)
    assert (judgement.low, judgement.high) == pytest.approx((98.937868, 99.362132), abs=1e-6)
    assert judgement.verdict == "consistent"
    # stretched votes 98.94, 99.08, 99.22, 99.36: one of four reaches 99.35
    assert (judgement.rank_p, judgement.p_value) == pytest.approx((0.25, 0.5))
    assert stats.judge_subset_votes([99.2, 99.0, 99.3, 99.1], (99.37, 99.37), 6, 2).verdict == "above"


def test_ensemble_stretch_against_the_subsets_enumerated():
    # oracle: the k-subsets of N values enumerated, and the textbook variances. A subset mean
    # varies over the C(N, k) subsets by exactly S^2/k * (N - k)/N, S^2 with divisor N - 1 (its
    # unbiased estimate of sigma^2); a new k-net mean lies about the N nets' mean with variance
    # sigma^2/k + sigma^2/N = sigma^2/k * (1 + k/N). The stretch must turn the first into the second.
    nets, k = 15, 5
    values = np.random.default_rng(7).normal(99.6, 0.05, nets)
    subset_means = [statistics.fmean(c) for c in itertools.combinations(values, k)]
    assert len(subset_means) == 3003
    spread, s2 = statistics.pvariance(subset_means), statistics.variance(values)
    assert spread == pytest.approx(s2 / k * (nets - k) / nets, rel=1e-9)
    assert stats.subset_stretch(nets, k) ** 2 * spread == pytest.approx(s2 / k * (1 + k / nets), rel=1e-9)
    assert stats.subset_stretch(15, 5) == pytest.approx(math.sqrt(2))


def test_a_best_of_k_by_validation_needs_a_run_more():
    # (validation, test) pairs: the bivariate model leaves a new run n - 2 degrees of freedom, a
    # Cauchy tail at n = 3 (nielsen_ch6_double_fc300's three runs gave 97.18-99.68, 4.5 times
    # its one-run interval): no verdict until a fourth run
    val, test = [99.50, 99.42, 99.47, 99.44], [99.39, 99.51, 99.45, 99.48]
    three = stats.judge(99.48, 99.45, 0.06, 3, k=3, chooser=val[:3], values=test[:3], printed=(99.475, 99.485))
    assert three.verdict == "not enough runs" and "needs 4" in three.reason
    four = stats.judge(99.48, 99.4575, 0.05, 4, k=3, chooser=val, values=test, printed=(99.475, 99.485))
    assert four.verdict != "not enough runs"
    # chosen by the value itself, one number per run: 3 runs judge a best of 3
    by_value = stats.judge(99.48, 99.45, 0.06, 3, k=3, values=test[:3], printed=(99.475, 99.485))
    assert by_value.verdict != "not enough runs"
    assert stats.runs_needed(3, two_numbers=True) == 4 and stats.runs_needed(5, two_numbers=True) == 5
    assert stats.runs_needed(1, two_numbers=True) == 3 and stats.runs_needed(3, deterministic=True) == 1


def test_position_and_the_sign_test_by_hand():
    # one run's t predictive: mean 99.0, sd 0.1, n = 5, published 99.1 (middle of 99.05-99.15):
    # t = 0.1 / (0.1 * sqrt(1.2)) = 0.912871 on 4 df, whose CDF is 0.793523
    judgement = stats.judge(99.1, 99.0, 0.1, 5, printed=(99.05, 99.15))
    assert judgement.position == pytest.approx(0.793523, abs=1e-6)
    # best of 3 by value: the share of predictive draws below the middle
    runs = [99.0, 99.1, 99.2, 99.05, 99.15]
    best = stats.judge(99.1, 99.1, 0.079, 5, k=3, values=runs, printed=(99.05, 99.15))
    draws = stats.best_of_k_predictive(runs, runs, 3)
    assert best.position == pytest.approx(float((draws < 99.1).mean()), abs=1e-12)
    # 6 rows all above their middle: two-sided p = 2 / 2^6; a row at exactly 1/2 or nan is no flip
    assert stats.sign_test([0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.5, math.nan]) == (6, 6, pytest.approx(2 / 64))
    # 16 of 21 (the record on 2026-12-07): 2 * sum_{i<=5} C(21, i) / 2^21 = 0.026604
    assert stats.sign_test([0.9] * 16 + [0.1] * 5)[2] == pytest.approx(0.026604, abs=1e-6)
