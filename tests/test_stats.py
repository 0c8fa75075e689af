"""The verdict and interval arithmetic of the report, against values computed by hand.

Hand values: t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445, t(0.975, 9) = 2.262157 (tables);
E[max of 2 standard normals] = 1/sqrt(pi), of 3 = 3/(2 sqrt(pi)).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy.stats import norm

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


def test_expected_best_of_k():
    assert stats.expected_max_normal(1) == 0.0
    assert stats.expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
    assert stats.expected_max_normal(3) == pytest.approx(3 / (2 * math.sqrt(math.pi)), abs=1e-9)
    assert stats.expected_best_of(98.0, 0.1, 3) == pytest.approx(98.0846284, abs=1e-7)


def test_best_of_k_interval():
    # k = 1 is exactly the t prediction interval
    assert stats.best_of_interval(98.0, 0.1, 5, 1) == stats.prediction_interval(98.0, 0.1, 5)
    # with (almost) no parameter uncertainty the best of 3 has P(max <= q) = Phi((q - mu)/sigma)^3,
    # so its quantiles are mu + sigma * Phi^-1(p^(1/3)): 98 + 0.1 * (-0.5465, 2.3909)
    expected = [98.0 + 0.1 * norm.ppf(p ** (1 / 3)) for p in (0.025, 0.975)]
    assert stats.best_of_interval(98.0, 0.1, 10**7, 3) == pytest.approx(expected, abs=2e-3)
    # few seeds: wider, because the mean and sd are uncertain
    low, high = stats.best_of_interval(98.0, 0.1, 5, 3)
    assert low < expected[0] and high > expected[1]
    # a fixed seed: the same inputs always give the same interval
    assert stats.best_of_interval(98.0, 0.1, 5, 3) == (low, high)


def test_reading_the_published_table():
    assert stats.best_of_k("peak epoch; best of 3 runs") == (3, "")
    assert stats.best_of_k("test at best-validation epoch; best of 3 runs") == (3, "")
    k, note = stats.best_of_k("final epoch; best of several runs")
    assert k == 3 and "several" in note
    assert stats.best_of_k("final epoch; single run") == (1, "")
    assert stats.rounding_half_width("99") == 0.5
    assert stats.rounding_half_width("87.1") == pytest.approx(0.05)
    assert stats.rounding_half_width("95.42") == pytest.approx(0.005)


def test_verdicts_against_the_prediction_interval():
    # n = 5, mean 98, sd 0.1: the interval is [97.695856, 98.304144]
    judge = lambda published, half=0.005: stats.judge(published, 98.0, 0.1, 5, half_width=half).verdict
    assert judge(98.30) == "consistent"
    assert judge(98.31) == "above"  # 98.305 .. 98.315 lies wholly above 98.304144
    assert judge(98.3, half=0.05) == "consistent"  # printed with one decimal: 98.25 .. 98.35
    assert judge(97.70) == "consistent"
    assert judge(97.69) == "below"
    judgement = stats.judge(98.0, 98.0, 0.1, 5)
    assert (judgement.low, judgement.high) == pytest.approx((97.695856, 98.304144), abs=1e-6)
    # no accuracy exceeds 100%: 99.8 +- 3.04 * 0.1 is reported as [99.495856, 100]
    assert stats.judge(99.9, 99.8, 0.1, 5).high == 100.0
    assert stats.judge(99.9, 99.8, 0.1, 5).low == pytest.approx(99.495856, abs=1e-6)


def test_best_of_3_is_judged_against_the_best_of_3():
    # n = 10, mean 98, sd 0.1: one run lies in [97.762743, 98.237257] (t(0.975, 9) = 2.262157);
    # the best of 3 lies higher. 98.27 is luckier than one run but fine for the best of 3;
    # 97.85 is a fine single run but low for the best of 3.
    one = lambda published: stats.judge(published, 98.0, 0.1, 10, half_width=0.005).verdict
    three = lambda published: stats.judge(published, 98.0, 0.1, 10, k=3, half_width=0.005).verdict
    assert (one(98.27), three(98.27)) == ("above", "consistent")
    assert (one(97.85), three(97.85)) == ("consistent", "below")
    assert stats.judge(98.27, 98.0, 0.1, 10, k=3).expected_best == pytest.approx(98.0846284, abs=1e-7)


def test_verdicts_without_a_replication_verdict():
    assert stats.judge(None, 98.0, 0.1, 5).verdict == "no published number"
    assert stats.judge(99.0, 98.0, 0.1, 2).verdict == "not enough runs"
    assert stats.judge(99.0, math.nan, math.nan, 0).verdict == "not enough runs"
    # a pipeline check never gets a replication verdict, whatever its numbers
    assert stats.judge(98.0, 98.0, 0.1, 5, pipeline_check=True).verdict == "pipeline check"
    changed = stats.judge(98.0, 98.0, 0.1, 5, settings_changed="epochs 1 instead of 30")
    assert (changed.verdict, changed.reason) == ("settings changed", "epochs 1 instead of 30")
    assert set(stats.VERDICTS) == {"consistent", "above", "below", "not enough runs",
                                   "settings changed", "pipeline check", "no published number"}


def test_deterministic_baselines_are_compared_directly():
    # one run is the whole distribution: equal to the printed digits or not
    def judge(published, replicated):
        return stats.judge(published, replicated, math.nan, 1, half_width=0.005, deterministic=True).verdict

    assert judge(22.25, 22.25) == "consistent"
    assert judge(22.30, 22.25) == "above"
    assert judge(94.35, 94.61) == "below"
