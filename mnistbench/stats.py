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

import math
import re
from dataclasses import dataclass

import numpy as np
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


def expected_max_normal(k: int) -> float:
    """E[max of k independent standard normals]: 0 for k=1, 1/sqrt(pi) for 2, 3/(2 sqrt(pi)) for 3."""
    if k == 1:
        return 0.0
    # E[max] = integral of x * k * pdf(x) * cdf(x)^(k-1) dx
    from scipy import integrate

    value, _ = integrate.quad(lambda x: x * k * stats.norm.pdf(x) * stats.norm.cdf(x) ** (k - 1),
                              -math.inf, math.inf)
    return value


def expected_best_of(mean: float, sd: float, k: int) -> float:
    """The expected best of k runs, if runs are normal with this mean and sd (plug-in estimate)."""
    return mean + expected_max_normal(k) * sd


def best_of_interval(mean: float, sd: float, n: int, k: int, level: float = LEVEL,
                     draws: int = 400_000, seed: int = 0) -> tuple[float, float]:
    """Where the best of k new runs lies with probability `level`, from n runs (mean, sd).

    The posterior predictive of the normal model under the usual reference prior, by simulation
    with a fixed seed: draw the true sd (sigma^2 = (n-1) sd^2 / chi2(n-1)) and mean
    (N(mean, sigma^2/n)), then k runs from N(true mean, sigma^2), and keep their maximum. For
    k = 1 this is exactly the t prediction interval above; for k > 1 it allows for the
    uncertainty of mean and sd the same way.
    """
    if n < 2:
        return math.nan, math.nan
    if k == 1:
        return prediction_interval(mean, sd, n, level)
    rng = np.random.default_rng(seed)
    sigma = sd * np.sqrt((n - 1) / rng.chisquare(n - 1, draws))
    mu = mean + sigma / math.sqrt(n) * rng.standard_normal(draws)
    best = mu + sigma * rng.standard_normal((k, draws)).max(axis=0)
    low, high = np.quantile(best, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def best_of_k(selection: str) -> tuple[int, str]:
    """How many runs a published number is the best of, from the table's selection text.

    "peak epoch; best of 3 runs" -> (3, ""). "best of several runs" names no number: taken as 3,
    and the note says so. Anything else is a single run.
    """
    match = re.search(r"best of (\w+) runs", selection or "")
    if not match:
        return 1, ""
    word = match.group(1)
    if word.isdigit():
        return int(word), ""
    return 3, f"'best of {word} runs' names no number: judged as the best of 3"


def rounding_half_width(published_text: str) -> float:
    """Half the last printed digit of a published number: '99' -> 0.5, '87.1' -> 0.05,
    '95.42' -> 0.005. The true value lies within +- this of the printed one."""
    text = str(published_text).strip()
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0 ** -decimals


@dataclass(frozen=True)
class Judgement:
    verdict: str
    low: float = math.nan  # the interval the published number was compared with
    high: float = math.nan
    k: int = 1  # best of k runs
    expected_best: float = math.nan  # expected best of k (only for k > 1)
    reason: str = ""


def judge(published: float | None, mean: float, sd: float, n: int, *, k: int = 1,
          half_width: float = 0.0, pipeline_check: bool = False, settings_changed: str = "",
          deterministic: bool = False) -> Judgement:
    """The verdict for one published number, from the n finished runs at its learning rate.

    published: the printed value (percent); half_width: its rounding (the published value counts
    as consistent if any value that rounds to it is inside the interval). deterministic: a method
    without randomness (the baselines): one run is the whole distribution, compared directly.
    """
    if published is None or (isinstance(published, float) and math.isnan(published)):
        return Judgement("no published number")
    if pipeline_check:
        return Judgement("pipeline check", reason="pipeline check, not a replication")
    if settings_changed:
        return Judgement("settings changed", reason=settings_changed)
    if deterministic and n >= 1:
        low = high = mean
    elif n < MIN_RUNS:
        return Judgement("not enough runs", k=k,
                         reason=f"{n} finished run{'s' if n != 1 else ''}; a verdict needs {MIN_RUNS}")
    else:
        low, high = clip_percent(best_of_interval(mean, sd, n, k))
    expected = expected_best_of(mean, sd, k) if k > 1 and not deterministic else math.nan
    if published - half_width > high:
        verdict = "above"
    elif published + half_width < low:
        verdict = "below"
    else:
        verdict = "consistent"
    return Judgement(verdict, low, high, k, expected)
