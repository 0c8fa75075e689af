"""The arithmetic behind the report's verdicts: prediction intervals and the best of k runs.

A published number is one run (or the best of a few), not an average, so the question "did it
replicate?" is: would one new run of ours (or the best of k new runs) plausibly land where the
published number does? The replicated seeds give a mean and a standard deviation; under a normal
model of run-to-run variation, one new run lies with 95% probability in the prediction interval

    mean +- t(0.975, n - 1) * sd * sqrt(1 + 1/n),

which is wider than the confidence interval of the mean (sd / sqrt(n)) because it also holds the
new run's own spread. The mean, sd and the mean's confidence interval come from the study tables
(mnistbench.aggregate.summarize); this module adds what the verdict needs on top of them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95
MIN_RUNS = 3  # fewer finished runs give no verdict: the sd of two runs is too unreliable

# The verdicts, and what each means in plain words (printed in the report's definitions).
VERDICTS = {
    "consistent": "the published number lies inside the 95% prediction interval: a run of ours "
                  "(or the best of k, where the source reported the best of k runs) could well have "
                  "printed it",
    "above": "the published number is above the 95% prediction interval: our runs fall short of it",
    "below": "the published number is below the 95% prediction interval: our runs do better",
    "not enough runs": f"fewer than {MIN_RUNS} finished runs at the published learning rate "
                       "(diverged runs do not count): no verdict",
    "settings changed": "the study changed the recipe's epochs or training images, so its runs "
                        "cannot replicate the published number: no verdict",
    "pipeline check": "the study is a pipeline check (tiny data, few epochs): the numbers test "
                      "the software, not the published result; no verdict",
    "no published number": "the source printed no accuracy for this recipe",
}


def runs_needed(k: int = 1, deterministic: bool = False) -> int:
    """Finished runs a verdict needs: one for a method without randomness (a baseline), else
    MIN_RUNS, or k for the best of k. An ensemble group is one run: its verdict needs three
    groups. `mnistbench progress` counts a published number as done by this same rule."""
    return 1 if deterministic else max(MIN_RUNS, k)


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided t quantile for n runs (n - 1 degrees of freedom)."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def prediction_interval(mean: float, sd: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Where one new run lies with probability `level`, from n runs with this mean and sd."""
    if n < 2:
        return math.nan, math.nan
    half = t_quantile(n, level) * sd * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def clip_percent(interval: tuple[float, float]) -> tuple[float, float]:
    """An accuracy interval cut to [0, 100]: no run lies outside, so coverage is unchanged."""
    low, high = interval
    return (max(low, 0.0), min(high, 100.0)) if not math.isnan(low) else interval


def best_of_k_distribution(chooser: list[float], value: list[float], k: int) -> list[tuple[float, float]]:
    """The exact distribution of "the value of the best of k runs" over all k-subsets of n runs.

    The book chose among its k runs by `chooser` (chapter 6: the validation accuracy at each
    run's selected epoch) and reported that run's `value` (its test accuracy); where the runs were
    chosen by the reported number itself, chooser is value. Each of the C(n, k) subsets is equally
    likely; within a subset, runs tied on chooser share its weight. Returns (value, probability)
    pairs, one per run that can win, in the runs' order.
    """
    n = len(value)
    if not 1 <= k <= n or len(chooser) != n:
        raise ValueError(f"best of {k} needs at least {k} runs with a chooser each, got {n}")
    weight = [0.0] * n
    subsets = math.comb(n, k)
    for subset in itertools.combinations(range(n), k):
        best = max(chooser[i] for i in subset)
        winners = [i for i in subset if chooser[i] == best]
        for i in winners:
            weight[i] += 1 / (subsets * len(winners))
    return [(value[i], w) for i, w in enumerate(weight) if w > 0]


def best_of_k_resampled(chooser: list[float], value: list[float], k: int) -> list[tuple[float, float]]:
    """The same statistic for k runs drawn with replacement from the n runs (the exact bootstrap
    distribution, without enumerating n^k draws): the draw's winner is the run with the best
    chooser, so P(winner has rank r of n) = (r/n)^k - ((r - g)/n)^k for a tie group of g runs
    ending at rank r, shared equally. Unlike the k-subsets it has a spread even when n = k."""
    n = len(value)
    if k < 1 or len(chooser) != n or n < 1:
        raise ValueError(f"best of {k} needs runs with a chooser each, got {n}")
    weight = [0.0] * n
    for c in set(chooser):
        group = [i for i in range(n) if chooser[i] == c]
        top = sum(1 for x in chooser if x <= c)
        share = ((top / n) ** k - ((top - len(group)) / n) ** k) / len(group)
        for i in group:
            weight[i] = share
    return [(value[i], w) for i, w in enumerate(weight) if w > 0]


def best_of_k_interval(chooser: list[float], value: list[float], k: int,
                       level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, expected): a 95% prediction interval for the best of k new runs.

    Its centre is the mean of the exact k-subset distribution above (unbiased for the expected
    best of k). Its spread is the sd of the resampled distribution (best_of_k_resampled),
    corrected by n/(n-1) as a sample sd is: the k-subsets cannot give one when n = k (a single
    subset, zero spread, a zero-width interval). Its width is the t prediction interval's,
    t(0.975, n-1) * sd * sqrt(1 + 1/n), which allows for having only n runs. For k = 1 both
    distributions are the n runs themselves, so this is exactly prediction_interval(mean, sd, n).
    """
    n = len(value)
    if n < 2:
        return math.nan, math.nan, math.nan
    mean = sum(v * p for v, p in best_of_k_distribution(chooser, value, k))
    resampled = best_of_k_resampled(chooser, value, k)
    centre = sum(v * p for v, p in resampled)
    var = sum(p * (v - centre) ** 2 for v, p in resampled) * n / (n - 1)
    low, high = prediction_interval(mean, math.sqrt(var), n, level)
    return low, high, mean


def printed_range(published_text: str, printed_as: str = "rounded") -> tuple[float, float]:
    """The values a published number stands for. Rounded: +- half its last digit ('87.1' ->
    87.05-87.15, '99' -> 98.5-99.5). Truncated (printed with %d): '99' -> 99.00-99.99..."""
    text = str(published_text).strip()
    decimals = len(text.split(".")[1]) if "." in text else 0
    value, step = float(text), 10.0 ** -decimals
    if printed_as == "truncated":
        return value, value + step
    if printed_as != "rounded":
        raise ValueError(f"unknown printing {printed_as!r}")
    return value - step / 2, value + step / 2


@dataclass(frozen=True)
class Judgement:
    verdict: str
    low: float = math.nan  # the interval the published number was compared with
    high: float = math.nan
    k: int = 1  # best of k runs
    expected_best: float = math.nan  # expected best of k (only for k > 1)
    reason: str = ""


def judge(published: float | None, mean: float, sd: float, n: int, *, k: int = 1,
          chooser: list[float] | None = None, values: list[float] | None = None,
          printed: tuple[float, float] | None = None, pipeline_check: bool = False,
          settings_changed: str = "", deterministic: bool = False) -> Judgement:
    """The verdict for one published number, from the n finished runs at its learning rate.

    published: the printed value (percent); printed: the range of values it stands for (its
    rounding; consistent if any of them is inside the interval). k > 1: the source reported the
    best of k runs, chosen by `chooser` (one value per run; `values` are the runs' reported
    accuracies): see best_of_k_interval. deterministic: a method without randomness (the
    baselines): one run is the whole distribution, compared directly.
    """
    if published is None or (isinstance(published, float) and math.isnan(published)):
        return Judgement("no published number")
    if pipeline_check:
        return Judgement("pipeline check", reason="pipeline check, not a replication")
    if settings_changed:
        return Judgement("settings changed", reason=settings_changed)
    need = runs_needed(k, deterministic)
    if n < need:
        needs = f"the best of {k} needs {k}" if k > MIN_RUNS else f"a verdict needs {need}"
        return Judgement("not enough runs", k=k,
                         reason=f"{n} finished run{'s' if n != 1 else ''}; {needs}")
    if deterministic:
        low = high = mean
    elif k == 1:
        low, high = clip_percent(prediction_interval(mean, sd, n))
    else:
        low, high, expected = best_of_k_interval(chooser, values, k)
        low, high = clip_percent((low, high))
    if k == 1 or deterministic:
        expected = math.nan
    printed_low, printed_high = printed or (published, published)
    if printed_low > high:
        verdict = "above"
    elif printed_high < low:
        verdict = "below"
    else:
        verdict = "consistent"
    return Judgement(verdict, low, high, k, expected)
