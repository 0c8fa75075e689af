"""The verdict and interval arithmetic of the report, against values computed by hand.

Hand values: t(0.975, 2) = 4.302653, t(0.975, 4) = 2.776445, t(0.975, 9) = 2.262157 (tables);
t(0.975, 3) = 3.182446. The statistics of failed runs, the rank check, Holm and the ensemble's
subsets are in tests/test_verdict_statistics.py.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

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


def test_best_of_k_interval_by_hand():
    # centre: the subsets' mean, 98.275. Spread: k = 3 runs drawn with replacement from the 4,
    # winner by validation. Ranked by validation (96, 97, 98, 99: runs 3, 0, 1, 2) the winner has
    # rank r with probability (r/4)^3 - ((r-1)/4)^3: run 2 (98.2) 37/64, run 1 (98.5) 19/64,
    # run 0 (98.0) 7/64, run 3 (99.0) 1/64. Mean 98.2796875, variance 0.03474365, times
    # n/(n-1) = 4/3: 0.04632487, sd 0.215232; t(0.975, 3) = 3.182446; half width
    # 3.182446 * 0.215232 * sqrt(1 + 1/4) = 0.765815
    assert flat(stats.best_of_k_resampled(VAL, TEST, 3)) == pytest.approx(
        [98.0, 7 / 64, 98.5, 19 / 64, 98.2, 37 / 64, 99.0, 1 / 64])
    low, high, expected = stats.best_of_k_interval(VAL, TEST, 3)
    assert expected == pytest.approx(98.275)
    assert (low, high) == pytest.approx((98.275 - 0.765815, 98.275 + 0.765815), abs=1e-5)
    # k = n: one subset, but still a spread (the k-subsets alone gave a zero-width interval)
    low, high, expected = stats.best_of_k_interval(VAL, TEST, 4)
    assert expected == pytest.approx(98.2) and high - low > 0.5
    # runs tied on validation share their group's weight
    assert stats.best_of_k_resampled([98.0, 98.0], [97.0, 99.0], 2) == [(97.0, 0.5), (99.0, 0.5)]
    # k = 1 is exactly the one-run t prediction interval of the n runs
    values = [97.9, 98.0, 98.1, 98.2, 97.8]
    sd = pd.Series(values).std()
    assert stats.best_of_k_interval(values, values, 1)[:2] == pytest.approx(
        stats.prediction_interval(98.0, sd, 5))


def test_best_of_k_verdict_uses_the_chooser():
    # 99.2 is inside what the best of 3 test accuracies gives (centre 98.875, up to 100: so wide
    # that it is uninformative), but above the best of 3 chosen by validation ([97.509, 99.041])
    by_validation = stats.judge(99.2, 98.425, 0.4, 4, k=3, chooser=VAL, values=TEST)
    by_test = stats.judge(99.2, 98.425, 0.4, 4, k=3, chooser=TEST, values=TEST)
    assert (by_validation.verdict, by_test.verdict) == ("above", "uninformative")
    assert by_test.low < 99.2 < by_test.high
    assert by_validation.expected_best == pytest.approx(98.275)
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
