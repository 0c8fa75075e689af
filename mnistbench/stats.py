"""The arithmetic behind the report's verdicts: prediction intervals and the best of k runs.

A published number is one run (or the best of a few), not an average, so the question "did it
replicate?" is: would one new run of ours (or the best of k new runs) plausibly land where the
published number does? The replicated seeds give a mean and a standard deviation; under a normal
model of run-to-run variation, one new run lies with 95% probability in the prediction interval

    mean +- t(0.975, n - 1) * sd * sqrt(1 + 1/n),

which is wider than the confidence interval of the mean (sd / sqrt(n)) because it also holds the
new run's own spread. The mean, sd and the mean's confidence interval come from the study tables
(mnistbench.aggregate.summarize); this module adds what the verdict needs on top of them:

- failed runs apart (judge_runs): a run that diverged or never learned a digit is a failure, a
  finding of its own with an exact (Clopper-Pearson) interval for the failure rate; the verdict
  is drawn over the runs that learned, under the source's selection rule;
- no verdict on an interval that says nothing (wider than MAX_WIDTH points, or reaching 0 or
  100%): "uninformative";
- a distribution-free rank check beside the normal interval (rank_check), Shapiro-Wilk where
  n allows (normality_p), and Holm's adjustment over every verdict drawn (holm);
- the ensemble judged over the exact distribution of every five-net vote (judge_subset_votes).
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, replace

from scipy import stats

LEVEL = 0.95
MIN_RUNS = 3  # fewer learned runs give no verdict: the sd of two runs is too unreliable
# An interval wider than this (percentage points, a tenth of the accuracy scale) cannot tell a
# replication from a net that learned something else: the verdict is "uninformative".
MAX_WIDTH = 10.0
FAILED_RULE = ("a run failed if it diverged or if its final-epoch test recall of some digit is "
               "below 50% (it never learned that digit; a collapse to one answer misses nine)")

# The verdicts, and what each means in plain words (printed in the report's definitions).
VERDICTS = {
    "consistent": "the published number lies inside the 95% prediction interval: a run of ours "
                  "(or the best of k, where the source reported the best of k runs) could well have "
                  "printed it",
    "above": "the published number is above the 95% prediction interval: our runs fall short of it",
    "below": "the published number is below the 95% prediction interval: our runs do better",
    "uninformative": f"the 95% interval is wider than {MAX_WIDTH:g} points or reaches 0% or "
                     "100%: it would hold almost any accuracy, so it supports no verdict",
    "not enough runs": f"fewer than {MIN_RUNS} runs that learned (or fewer than the k of a best "
                       "of k) at the published learning rate; failed runs do not count: no verdict",
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


def clopper_pearson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate, in percent: successes of n trials."""
    if n == 0:
        return math.nan, math.nan
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="exact")
    return 100 * interval.low, 100 * interval.high


def normality_p(values: list[float]) -> float:
    """Shapiro-Wilk's p for the runs' accuracies (a small p: the normal model the interval
    assumes is rejected); nan below 3 runs or when all runs are equal."""
    if len(values) < 3 or len(set(values)) < 2:
        return math.nan
    return float(stats.shapiro(values).pvalue)


def _top_all_old(n: int, k: int, j: int) -> float:
    """P(the j highest of n old and k new exchangeable runs are all old runs)."""
    return math.comb(n, j) / math.comb(n + k, j) if 0 <= j <= n else 0.0


def rank_check(values: list[float], printed: tuple[float, float], k: int = 1,
               chosen_by_value: bool = True) -> tuple[float, float]:
    """(p_above, p_below): distribution-free one-sided p-values, assuming only that our runs and
    the source's are exchangeable (no normal model).

    The published number is the best of k new runs (k = 1: one run). If it exceeds a of our n
    runs, p_above is the chance that the best of k new runs exceeds at least a of the n old
    ones: 1 - C(n, n-a+1) / C(n+k, n-a+1); above all n it is k/(n+k), the smallest p that n runs
    can give. If b of our runs exceed it, p_below is the chance that at least b old runs exceed
    the best of k new: C(n, b) / C(n+k, b). Where the source chose its run by another number
    (validation), its run lies between the least and the best of the k: p_above uses the best
    and p_below the least (1 - C(n, n-b+1) / C(n+k, n-b+1)), both upper bounds of the true p.
    Ties with a printed value count against the verdict.
    """
    n = len(values)
    a = sum(v < printed[0] for v in values)
    b = sum(v > printed[1] for v in values)
    p_above = 1 - _top_all_old(n, k, n - a + 1)
    p_below = _top_all_old(n, k, b) if chosen_by_value else 1 - _top_all_old(n, k, n - b + 1)
    return p_above, p_below


def prediction_p(printed: tuple[float, float], centre: float, spread: float, n: int) -> float:
    """The two-sided p of the published number under the t prediction model the interval uses
    (centre +- t * spread * sqrt(1 + 1/n)): below 0.05 exactly when it lies outside the 95%
    interval. 1 when the printed range holds the centre."""
    if n < 2 or not spread > 0:
        return math.nan
    gap = max(printed[0] - centre, centre - printed[1], 0.0)
    return float(2 * stats.t.sf(gap / (spread * math.sqrt(1 + 1 / n)), n - 1))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (nan: no test, left out of m): the k-th
    smallest becomes max over j <= k of min(1, (m - j + 1) p_(j)). A verdict survives at 5%
    when its adjusted p is below 0.05."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, adjusted, running = len(tested), [math.nan] * len(p_values), 0.0
    for j, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - j) * p))
        adjusted[i] = running
    return adjusted


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
    p_value: float = math.nan  # two-sided, under the interval's t model (prediction_p)
    rank_p: float = math.nan  # the distribution-free check's one-sided p, on the side it points to
    rank_verdict: str = ""  # what the rank check alone says: consistent, above or below
    normality_p: float = math.nan  # Shapiro-Wilk over the runs judged
    # judge_runs: the runs at the published lr, those that failed, and its exact 95% interval
    runs: int = 0
    failed: int = 0
    failure_low: float = math.nan
    failure_high: float = math.nan
    n: int = 0  # the runs judged (that learned)
    mean: float = math.nan
    sd: float = math.nan


def _side(printed: tuple[float, float], low: float, high: float) -> str:
    if printed[0] > high:
        return "above"
    if printed[1] < low:
        return "below"
    return "consistent"


def judge(published: float | None, mean: float, sd: float, n: int, *, k: int = 1,
          chooser: list[float] | None = None, values: list[float] | None = None,
          printed: tuple[float, float] | None = None, pipeline_check: bool = False,
          settings_changed: str = "", deterministic: bool = False) -> Judgement:
    """The verdict for one published number, from the n runs judged at its learning rate.

    published: the printed value (percent); printed: the range of values it stands for (its
    rounding; consistent if any of them is inside the interval). k > 1: the source reported the
    best of k runs, chosen by `chooser` (one value per run; `values` are the runs' reported
    accuracies): see best_of_k_interval. deterministic: a method without randomness (the
    baselines): one run is the whole distribution, compared directly. With `values`, the rank
    check and Shapiro-Wilk are computed beside the interval.
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
                         reason=f"{n} run{'s' if n != 1 else ''} to judge; {needs}")
    printed = printed or (published, published)
    by_value = chooser is None or chooser == values
    chooser = values if chooser is None else chooser
    if deterministic:
        return Judgement(_side(printed, mean, mean), mean, mean, k)
    expected, centre, spread = math.nan, mean, sd
    if k == 1:
        raw = prediction_interval(mean, sd, n)
    else:
        raw_low, raw_high, expected = best_of_k_interval(chooser, values, k)
        raw, centre = (raw_low, raw_high), expected
        spread = (raw_high - raw_low) / (2 * t_quantile(n) * math.sqrt(1 + 1 / n))
    low, high = clip_percent(raw)
    verdict = _side(printed, low, high)
    reason = ""
    if raw[1] - raw[0] > MAX_WIDTH or raw[0] <= 0 or raw[1] >= 100:
        verdict = "uninformative"
        # The report prints the interval clipped to the scale; where the normal model's interval
        # runs past it, give both, so that the two upper (or lower) ends shown do not disagree.
        clipped = f" ({low:.2f}-{high:.2f} clipped to the scale)" if (low, high) != tuple(raw) else ""
        reason = (f"the 95% interval {raw[0]:.2f}-{raw[1]:.2f} "
                  + (f"is {raw[1] - raw[0]:.1f} points wide" if raw[1] - raw[0] > MAX_WIDTH
                     else "reaches " + ("0%" if raw[0] <= 0 else "100%")) + clipped)
    extra = {}
    if values:
        p_above, p_below = rank_check(values, printed, k, by_value)
        rank_verdict = "above" if p_above < (1 - LEVEL) / 2 else "below" if p_below < (1 - LEVEL) / 2 \
            else "consistent"
        extra = {"rank_p": p_above if printed[0] > centre else p_below, "rank_verdict": rank_verdict,
                 "normality_p": normality_p(values)}
    return Judgement(verdict, low, high, k, expected, reason,
                     p_value=prediction_p(printed, centre, spread, n), **extra)


def failed_runs_text(failed: int, runs: int, low: float, high: float) -> str:
    """'3 of 5 runs failed (60%, 95% CI 14.7-94.7%)'."""
    return (f"{failed} of {runs} run{'s' if runs != 1 else ''} failed ({100 * failed / runs:.0f}%, "
            f"95% CI {low:.1f}-{high:.1f}%)")


def judge_runs(published: float | None, values: list[float], failed: list[bool], *,
               chooser: list[float] | None = None, **options) -> Judgement:
    """judge() over the runs that learned, with the failed runs counted apart.

    values: every finished or diverged run's reported accuracy at the published learning rate
    (nan for a diverged run); failed: FAILED_RULE, per run. The failure rate gets its exact 95%
    interval; the mean, sd and interval come from the learned runs only, under the source's
    selection rule (the best of k among learned runs: a failed run never wins a best of k
    unless all k failed, which happens with probability rate^k). options: as judge's.
    """
    learned = [i for i, f in enumerate(failed) if not f]
    kept = [values[i] for i in learned]
    n = len(kept)
    mean = sum(kept) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else math.nan
    judgement = judge(published, mean, sd, n, values=kept,
                      chooser=[chooser[i] for i in learned] if chooser is not None else None,
                      **options)
    low, high = clopper_pearson(sum(failed), len(failed))
    if judgement.verdict == "not enough runs" and any(failed):
        judgement = replace(judgement, reason=f"{judgement.reason}; "
                            + failed_runs_text(sum(failed), len(failed), low, high))
    return replace(judgement, runs=len(failed), failed=sum(failed), failure_low=low,
                   failure_high=high, n=n, mean=mean, sd=sd)


def quantile(sorted_values, q: float) -> float:
    """The smallest value whose share of the distribution at or below it reaches q (values are
    equally likely)."""
    return float(sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)])


def judge_subset_votes(votes, printed: tuple[float, float], nets: int, k: int) -> Judgement:
    """An ensemble of k nets against the exact distribution of the votes of every k-subset of
    the `nets` recorded nets (ensemble.subset_votes; C(15, 5) = 3,003).

    The subsets share their nets, so their votes spread less than the votes of k new nets
    would: for a mean of k values drawn from N without replacement the variance is (N - k)/N
    of a fresh draw's, and predicting a new vote also carries the uncertainty of the centre
    estimated from N nets, a factor (1 + k/N), as sqrt(1 + 1/n) does for one run. The interval
    is therefore the subset votes' central 95% (their 2.5% and 97.5% quantiles), its distance
    from their mean stretched by sqrt((N + k)/(N - k)) (sqrt(2) for 5 of 15): the shape is the
    record's, no normal model. rank_p: the share of the stretched votes that reach the printed
    number (or stay at or below it, for a number below the mean); p_value: twice that.
    """
    ordered = sorted(votes)
    mean = sum(ordered) / len(ordered)
    stretch = math.sqrt((nets + k) / (nets - k))
    low, high = (mean + (quantile(ordered, q) - mean) * stretch for q in ((1 - LEVEL) / 2, (1 + LEVEL) / 2))
    reach = sum(mean + (v - mean) * stretch >= printed[0] for v in ordered) / len(ordered)
    under = sum(mean + (v - mean) * stretch <= printed[1] for v in ordered) / len(ordered)
    verdict = _side(printed, low, high)
    return Judgement(verdict, *clip_percent((low, high)), 1, p_value=min(1.0, 2 * min(reach, under)),
                     rank_p=reach if printed[0] > mean else under, rank_verdict=verdict,
                     n=len(ordered), mean=mean, sd=statistics.pstdev(ordered))
