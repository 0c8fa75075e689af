"""The arithmetic behind the report's verdicts: prediction intervals and the best of k runs.

A published number is one run (or the best of a few), not an average, so the question "did it
replicate?" is: would one new run of ours (or the best of k new runs) plausibly land where the
published number does? The replicated seeds give a mean and a standard deviation; under a normal
model of run-to-run variation, one new run lies with 95% probability in the prediction interval

    mean +- t(0.975, n - 1) * sd * sqrt(1 + 1/n),

which is wider than the confidence interval of the mean (sd / sqrt(n)) because it also holds the
new run's own spread. It is the posterior predictive of that normal model under the standard
noninformative prior; for the best of k runs (chosen as the source chose: by the value itself, or
by validation, a second number modelled jointly) the same predictive is simulated
(best_of_k_predictive), since the best of k has no closed form. The mean, sd and the mean's
confidence interval come from the study tables (mnistbench.aggregate.summarize); this module adds
what the verdict needs on top of them:

- failed runs apart (judge_runs): a run that diverged or never learned a digit is a failure, a
  finding of its own with an exact (Clopper-Pearson) interval for the failure rate; the verdict
  is drawn over the runs that learned, under the source's selection rule (in a best of k, a
  failed run loses to any run that learned);
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

import numpy as np
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
    "uninformative": f"the 95% interval is wider than {MAX_WIDTH:g} points (it would hold almost "
                     "any accuracy) or reaches 0% or 100% (the normal model behind it puts runs "
                     "past the scale: too few runs for their spread), or it puts the number outside "
                     "while Shapiro-Wilk rejects its normal model and the rank check (no model) does "
                     "not: it supports no verdict",
    "not enough runs": f"fewer than {MIN_RUNS} runs that learned (or fewer than the k of a best "
                       f"of k, or than {MIN_RUNS + 1} for a best of k chosen by validation) at the "
                       "published learning rate; failed runs do not count: no verdict",
    "settings changed": "the study changed the recipe's epochs or training images, so its runs "
                        "cannot replicate the published number: no verdict",
    "pipeline check": "the study is a pipeline check (tiny data, few epochs): the numbers test "
                      "the software, not the published result; no verdict",
    "no published number": "the source printed no accuracy for this recipe",
}


def runs_needed(k: int = 1, deterministic: bool = False, two_numbers: bool = False) -> int:
    """Finished runs a verdict needs: one for a method without randomness (a baseline), else
    MIN_RUNS, or k for the best of k. An ensemble group is one run: its verdict needs three
    groups. two_numbers: the best of k chosen by another number than the one reported
    (validation). Its model of (validation, test) pairs leaves a new run n - 2 degrees of
    freedom, one fewer than a one-number model's n - 1 (best_of_k_predictive); with 3 runs that is
    one, a Cauchy tail with no variance, so it needs one run more than MIN_RUNS for the 2 a
    one-number verdict has at its least. `mnistbench progress` counts a published number as done
    by this same rule."""
    if deterministic:
        return 1
    return max(MIN_RUNS + (1 if two_numbers and k > 1 else 0), k)


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
               chosen_by_value: bool = True, failed: int = 0) -> tuple[float, float]:
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

    failed: runs of ours that failed to learn (values holds only the n that learned). Then some
    of the source's k runs may have failed too, and its published run is the best of the j of
    them that learned, j unknown in 1..k. Every p above is monotone in j, so each takes its
    worst case over j: the same j = k for all but p_below by value, which grows as j shrinks
    and so uses j = 1 (C(n, b) / C(n+1, b) = (n+1-b) / (n+1)).
    """
    n = len(values)
    a = sum(v < printed[0] for v in values)
    b = sum(v > printed[1] for v in values)
    p_above = 1 - _top_all_old(n, k, n - a + 1)
    p_below = _top_all_old(n, 1 if failed else k, b) if chosen_by_value \
        else 1 - _top_all_old(n, k, n - b + 1)
    return p_above, p_below


def rank_floor(n: int, k: int, side: str, chosen_by_value: bool = True, failed: int = 0) -> float:
    """The smallest one-sided p rank_check can give with n runs, for a published number beyond
    all of them on this side ("above" or "below"). Above: k/(n+k). Below: 1/C(n+k, n) where the
    source chose by the value (1/(n+1) where some of our runs failed: rank_check), else k/(n+k).
    At 0.025 or more the check cannot reject at all."""
    if side == "below" and chosen_by_value:
        return 1 / math.comb(n + (1 if failed else k), n)
    return k / (n + k)


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


# Monte Carlo draws of a best of k: over 10 seeds on the record's best-of-k rows the interval's
# ends move by 0.001-0.037 point (docs/report.md, 2026-12-07), and no verdict changes.
PREDICTIVE_DRAWS = 100_000


def _normal_posterior_draws(x: np.ndarray, draws: int, rng: np.random.Generator):
    """(mu, cholesky(Sigma)) drawn from the posterior of a p-variate normal model of the n rows
    of x under the standard noninformative prior p(mu, Sigma) ~ |Sigma|^-(p+1)/2: Sigma ~
    InvWishart(n - 1, S) (S the sum of squares about the mean) and mu | Sigma ~ N(mean, Sigma/n).
    For p = 1, Sigma = S / chi2(n - 1), and one new run from this predictive is exactly the t
    prediction interval's mean +- t(n - 1) * sd * sqrt(1 + 1/n)."""
    n, p = x.shape
    mean = x.mean(axis=0)
    scatter = (x - mean).T @ (x - mean)
    if p == 1:
        sigma = scatter.reshape(1, 1, 1) / stats.chi2.rvs(n - 1, size=draws, random_state=rng).reshape(-1, 1, 1)
    else:
        sigma = stats.invwishart.rvs(df=n - 1, scale=scatter, size=draws, random_state=rng)
    if p == 1:
        root = np.sqrt(sigma)
    else:
        try:
            root = np.linalg.cholesky(sigma)
        except np.linalg.LinAlgError:  # at df = p (3 runs) a draw can be singular to rounding when
            # |r| is near 1; any square root of Sigma serves: the symmetric one, from eigh
            w, v = np.linalg.eigh(sigma)
            root = v * np.sqrt(np.clip(w, 0, None))[:, None, :]
    mu = mean + np.einsum("dij,dj->di", root, rng.standard_normal((draws, p))) / math.sqrt(n)
    return mu, root


def best_of_k_predictive(chooser: list[float], value: list[float], k: int, failed: int = 0,
                         draws: int = PREDICTIVE_DRAWS, seed: int = 0) -> np.ndarray:
    """Draws of "the value of the best of k new runs", the source's selection rule applied to k
    runs from the posterior predictive of a normal model of our n runs.

    Chosen by the value itself (chooser is value: chapter 1's peak test accuracy), the model is
    univariate and a draw is the maximum of k new values. Chosen by another number (chapter 6:
    validation), (chooser, value) pairs are bivariate normal, and a draw is the value of the new
    run with the best chooser: the test accuracy of the best-validation run depends on how
    validation and test accuracy go together across runs (their correlation), which the model
    estimates with everything else. The posterior carries the uncertainty of having only n runs
    (with n = k = 3 the tails are heavy, as they should be). Fixed seed: the same runs give the
    same draws. Degenerate runs: a constant chooser ties every run (the choice is one run at
    random); perfectly correlated (or anti-correlated) pairs choose by the value's maximum (or
    minimum).

    failed: runs of ours that failed to learn, beside the n that learned (chooser and value are
    the learned runs'). Each new run then fails with the failure rate (drawn from its posterior
    under Jeffreys' prior, Beta(failed + 1/2, n + 1/2)) and never wins while one of the k learned;
    the draws where all k failed are left out: the published number is a run that learned."""
    x_value = np.asarray(value, dtype=float)
    x_chooser = np.asarray(chooser, dtype=float)
    n = len(x_value)
    if n < 2 or len(x_chooser) != n or k < 1:
        raise ValueError(f"best of {k} needs at least 2 runs with a chooser each, got {n}")
    rng = np.random.default_rng(seed)
    sign, bivariate = 1.0, not np.array_equal(x_chooser, x_value)
    if bivariate and (np.ptp(x_value) == 0 or np.ptp(x_chooser) == 0):
        bivariate, k = False, (k if np.ptp(x_chooser) > 0 else 1)  # a constant value or chooser
    elif bivariate:
        r = np.corrcoef(x_chooser, x_value)[0, 1]
        if abs(r) > 1 - 1e-12:  # one number orders the runs as the other does (or the reverse)
            bivariate, sign = False, math.copysign(1.0, r)
    if not bivariate:
        mu, root = _normal_posterior_draws((sign * x_value)[:, None], draws, rng)
        scores = mu + root[:, 0, :] * rng.standard_normal((draws, k))
        values = sign * scores
    else:
        mu, root = _normal_posterior_draws(np.column_stack([x_chooser, x_value]), draws, rng)
        new = mu[:, None, :] + np.einsum("dij,dkj->dki", root, rng.standard_normal((draws, k, 2)))
        scores, values = new[:, :, 0], new[:, :, 1]
    if failed:
        rate = rng.beta(failed + 0.5, n + 0.5, size=(draws, 1))
        scores = np.where(rng.random((draws, k)) < rate, -np.inf, scores)
    chosen = values[np.arange(draws), scores.argmax(axis=1)]
    return chosen[np.isfinite(scores.max(axis=1))]


def best_of_k_interval(chooser: list[float], value: list[float], k: int, failed: int = 0,
                       level: float = LEVEL) -> tuple[float, float, float, np.ndarray]:
    """(low, high, expected, draws): a 95% prediction interval for the best of k new runs.

    The interval is the central 95% of best_of_k_predictive's draws (a normal model of the runs,
    no further approximation). `expected` is the mean of the exact k-subset distribution
    (best_of_k_distribution: no model, unbiased for the expected best of k of our runs; with
    failed runs, over the subsets of all our runs in which one learned, the best learned run's
    value). For k = 1 the interval is exactly prediction_interval(mean, sd, n), computed in
    closed form (a failed run is then no candidate at all)."""
    n = len(value)
    if n < 2:
        return math.nan, math.nan, math.nan, np.array([])
    if failed and k > 1:  # failed runs lose to every learned one; all-failed subsets are left out
        wins = best_of_k_distribution(list(chooser) + [-math.inf] * failed,
                                      list(value) + [math.nan] * failed, k)
        learned_wins = [(v, p) for v, p in wins if not math.isnan(v)]
        expected = sum(v * p for v, p in learned_wins) / sum(p for _, p in learned_wins)
    else:
        expected = sum(v * p for v, p in best_of_k_distribution(chooser, value, k))
    if k == 1:
        sd = statistics.stdev(value)
        return (*prediction_interval(statistics.fmean(value), sd, n, level), expected, np.array([]))
    draws = best_of_k_predictive(chooser, value, k, failed)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high), expected, draws


def predictive_p(printed: tuple[float, float], draws: np.ndarray) -> float:
    """The two-sided p of the published number under best_of_k_predictive's draws: twice the
    share of draws on its far side (at or beyond the printed range), at most 1; below 0.05
    exactly when the range lies outside the draws' central 95%."""
    reach = float(np.mean(draws >= printed[0]))
    under = float(np.mean(draws <= printed[1]))
    return min(1.0, 2 * min(reach, under))


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
    p_value: float = math.nan  # two-sided, under the interval's model (prediction_p, predictive_p)
    rank_p: float = math.nan  # the distribution-free check's one-sided p, on the side it points to
    rank_verdict: str = ""  # what the rank check alone says: consistent, above or below
    rank_floor: float = math.nan  # the smallest p it can give on the interval's side (rank_floor)
    normality_p: float = math.nan  # Shapiro-Wilk over the runs judged
    # the verdict was taken without the normal model, which Shapiro-Wilk rejects (the reason says so)
    without_normal_model: bool = False
    # the predictive share below the published number (the middle of its printed range): uniform
    # over rows where the sources' runs are exchangeable with ours (sign_test)
    position: float = math.nan
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
          settings_changed: str = "", deterministic: bool = False, failed: int = 0) -> Judgement:
    """The verdict for one published number, from the n runs judged at its learning rate.

    published: the printed value (percent); printed: the range of values it stands for (its
    rounding; consistent if any of them is inside the interval). k > 1: the source reported the
    best of k runs, chosen by `chooser` (one value per run; `values` are the runs' reported
    accuracies): see best_of_k_interval. deterministic: a method without randomness (the
    baselines): one run is the whole distribution, compared directly. With `values`, the rank
    check and Shapiro-Wilk are computed beside the interval. failed: runs that failed to learn
    beside these n; they lose every best of k in which one run learned (best_of_k_interval,
    rank_check).
    """
    if published is None or (isinstance(published, float) and math.isnan(published)):
        return Judgement("no published number")
    if pipeline_check:
        return Judgement("pipeline check", reason="pipeline check, not a replication")
    if settings_changed:
        return Judgement("settings changed", reason=settings_changed)
    by_value = chooser is None or chooser == values
    need = runs_needed(k, deterministic, two_numbers=not by_value)
    if n < need:
        needs = (f"the best of {k} needs {k}" if k >= need
                 else f"a best of {k} chosen by validation needs {need}, one run more for how "
                      "validation and test accuracy go together" if not by_value and k > 1
                 else f"a verdict needs {need}")
        return Judgement("not enough runs", k=k,
                         reason=f"{n} run{'s' if n != 1 else ''} to judge: {needs}")
    printed = printed or (published, published)
    chooser = values if chooser is None else chooser
    if deterministic:
        return Judgement(_side(printed, mean, mean), mean, mean, k)
    expected, centre, middle = math.nan, mean, sum(printed) / 2
    if k == 1:
        raw = prediction_interval(mean, sd, n)
        p_value = prediction_p(printed, mean, sd, n)
        position = float(stats.t.cdf((middle - mean) / (sd * math.sqrt(1 + 1 / n)), n - 1)) \
            if sd > 0 else math.nan
    else:
        raw_low, raw_high, expected, draws = best_of_k_interval(chooser, values, k, failed)
        raw, centre, p_value = (raw_low, raw_high), expected, predictive_p(printed, draws)
        position = share_below(draws, middle)
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
        p_above, p_below = rank_check(values, printed, k, by_value, failed)
        rank_verdict = "above" if p_above < (1 - LEVEL) / 2 else "below" if p_below < (1 - LEVEL) / 2 \
            else "consistent"
        side = verdict if verdict in ("above", "below") else rank_verdict if rank_verdict != "consistent" \
            else "above" if printed[0] > centre else "below"
        extra = {"rank_p": p_above if printed[0] > centre else p_below, "rank_verdict": rank_verdict,
                 "rank_floor": rank_floor(len(values), k, side, by_value, failed),
                 "normality_p": normality_p(values)}
        if extra["normality_p"] < 1 - LEVEL and rank_verdict != verdict:
            without = _without_normal_model(verdict, extra, (p_above, p_below), len(values))
            if without:
                verdict, reason, p_value = without
                extra["without_normal_model"] = True
    return Judgement(verdict, low, high, k, expected, reason, p_value=p_value, position=position, **extra)


def _without_normal_model(verdict: str, extra: dict, rank_p: tuple[float, float],
                          n: int) -> tuple[str, str, float] | None:
    """(verdict, reason, p) where Shapiro-Wilk rejects the normal model behind the interval and
    the rank check, which assumes none, disagrees with it. Where the rank check finds the
    published number outside our runs, its verdict is the row's, and its one-sided p on that
    side, doubled, the row's p (rank_check takes failed runs into account). Otherwise the
    interval is no evidence either way: "uninformative", with no p (the model that gave it is
    rejected), so Holm's count leaves it out. None: the interval already left the row
    uninformative, and it keeps that reason."""
    rejected = f"Shapiro-Wilk rejects the normal model of the {n} runs (p = {extra['normality_p']:.4f})"
    rank = extra["rank_verdict"]
    if rank != "consistent":
        side_p = rank_p[0] if rank == "above" else rank_p[1]
        return rank, (f"{rejected}: the verdict is the rank check's (no normal model; one-sided p "
                      f"{side_p:.3f}), not the interval's ({verdict})"), min(1.0, 2 * side_p)
    if verdict == "uninformative":
        return None
    if extra["rank_floor"] >= (1 - LEVEL) / 2:
        without = (f"the rank check, which needs none, cannot decide with {n} runs (its smallest "
                   f"one-sided p is {extra['rank_floor']:.3f})")
    else:
        without = f"the rank check, which needs none, finds it consistent (one-sided p {extra['rank_p']:.3f})"
    return "uninformative", f"the interval says {verdict}, but {rejected}, and {without}", math.nan


def share_below(samples: np.ndarray, middle: float) -> float:
    """Judgement.position from samples of the predictive distribution (best-of-k draws, the
    ensemble's stretched votes): the share below the middle, half of any tie."""
    return float(np.mean(samples < middle) + np.mean(samples == middle) / 2)


def sign_test(positions: list[float]) -> tuple[int, int, float]:
    """(high, n, p): over rows judged apart, how many published numbers lie above the middle of
    their predictive distribution (Judgement.position > 1/2; a position of exactly 1/2 is left
    out), of how many, and the two-sided binomial p of that count at 1/2. If every source's runs
    were exchangeable with ours and every row's model held, the positions would be independent
    and uniform, and each row a coin flip: a small p says the published numbers lean to one side
    of our runs as a whole (a shared offset), which no row judged alone can see."""
    kept = [p for p in positions if not math.isnan(p) and p != 0.5]
    high = int(sum(p > 0.5 for p in kept))
    return high, len(kept), float(stats.binomtest(high, len(kept), 0.5).pvalue) if kept else math.nan


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
    selection rule: a failed run never wins a best of k while one of the k learned, so the best
    of k is the best of however many of the k learned (at least one: the published number is a
    run that learned). options: as judge's.
    """
    learned = [i for i, f in enumerate(failed) if not f]
    kept = [values[i] for i in learned]
    n = len(kept)
    mean = sum(kept) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else math.nan
    judgement = judge(published, mean, sd, n, values=kept,
                      chooser=[chooser[i] for i in learned] if chooser is not None else None,
                      failed=sum(failed), **options)
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


def subset_stretch(nets: int, k: int) -> float:
    """How much farther than the votes of every k-subset of N recorded nets the vote of k new
    nets lies from their mean: sqrt((N + k)/(N - k)), sqrt(2) for 5 of 15.

    Taken as a mean of k values, exactly for any N values: the mean of a k-subset varies over
    the C(N, k) subsets by S^2/k * (N - k)/N, S^2 the N values' variance with divisor N - 1
    (the finite-population correction, written for that divisor), and S^2 estimates the spread
    of new nets without bias. A new ensemble varies by sigma^2/k about the true centre, and
    about the mean of the N nets by sigma^2/k * (1 + k/N), as sqrt(1 + 1/n) widens one run's
    interval. The ratio of the two is (N + k)/(N - k). tests/test_verdict_statistics.py checks
    it against the subsets enumerated.
    """
    return math.sqrt((nets + k) / (nets - k))


def judge_subset_votes(votes, printed: tuple[float, float], nets: int, k: int) -> Judgement:
    """An ensemble of k nets against the exact distribution of the votes of every k-subset of
    the `nets` recorded nets (ensemble.subset_votes; C(15, 5) = 3,003).

    The subsets share their nets, so their votes spread less than the votes of k new nets
    would; the interval is the subset votes' central 95% (their 2.5% and 97.5% quantiles), its
    distance from their mean stretched by subset_stretch(N, k): the shape is the record's, no
    normal model. rank_p: the share of the stretched votes that reach the printed number (or
    stay at or below it, for a number below the mean); p_value: twice that.
    """
    ordered = sorted(votes)
    mean = sum(ordered) / len(ordered)
    stretched = mean + (np.asarray(ordered) - mean) * subset_stretch(nets, k)  # still sorted
    low, high = (quantile(stretched, q) for q in ((1 - LEVEL) / 2, (1 + LEVEL) / 2))
    reach, under = float(np.mean(stretched >= printed[0])), float(np.mean(stretched <= printed[1]))
    verdict = _side(printed, low, high)
    return Judgement(verdict, *clip_percent((low, high)), 1, p_value=min(1.0, 2 * min(reach, under)),
                     position=share_below(stretched, sum(printed) / 2),
                     rank_p=reach if printed[0] > mean else under, rank_verdict=verdict,
                     n=len(ordered), mean=mean, sd=statistics.pstdev(ordered))
