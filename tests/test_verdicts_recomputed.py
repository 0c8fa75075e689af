"""The record's verdicts recomputed in the test, from the metrics.json files and the published
table alone, with scipy in place of mnistbench.stats, and compared with the verdicts the report
draws from the committed tables (verdicts.judge_recipes).

Covered here: every published row judged from single runs (best of 1), which is most of the
record, and the failure counts and Clopper-Pearson intervals of every row. The best-of-k rows,
whose interval comes from the distribution of the best of k, and the ensemble's 3,003 subset
votes are recomputed in tests/test_verdict_statistics.py and tests/test_ensemble_votes.py.
"""

import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "replication"
MAX_WIDTH = 10.0  # docs/report.md: a wider interval is "uninformative"


def published_rows() -> dict[str, dict]:
    with open(ROOT / "mnistbench" / "published_results.csv", newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def records_at_published_lr(recipe_id: str, lr: float) -> list[dict]:
    out = []
    for path in sorted((RECORD / "runs" / recipe_id).glob("lr=*/seed=*/metrics.json")):
        record = json.loads(path.read_text())
        if record.get("lr") is not None and math.isclose(float(record["lr"]), lr, rel_tol=1e-3):
            out.append(record)
    return out


def failed(record: dict) -> bool:
    """docs/report.md's rule: diverged, or a digit whose final-epoch test recall is below 50%."""
    return record["status"] == "diverged" or min(record.get("test_recall_per_digit") or [100.0]) < 50.0


def printed_range(text: str) -> tuple[float, float]:
    """A rounded printed number stands for everything that rounds to it."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    half = 0.5 * 10 ** -decimals
    return float(text) - half, float(text) + half


def expected_verdict(values: list[float], printed: tuple[float, float]) -> str:
    n = len(values)
    if n < 3:
        return "not enough runs"
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * sd * math.sqrt(1 + 1 / n)
    low, high = mean - half, mean + half
    if high - low > MAX_WIDTH or low <= 0 or high >= 100:
        return "uninformative"
    if printed[1] < low:
        return "below"
    if printed[0] > high:
        return "above"
    return "consistent"


@pytest.fixture(scope="module")
def report_rows() -> dict[str, dict]:
    from mnistbench.verdicts import judge_recipes, load_metrics, load_tables

    runs, summary = load_tables(RECORD)
    return {r["recipe"]: r for r in judge_recipes(runs, summary, load_metrics(runs, RECORD), pipeline_check=False)}


SINGLE_RUN_ROWS = [rid for rid, row in published_rows().items()
                   if row["best_of"] == "1" and row["printed_as"] == "rounded"
                   and row["published_accuracy_pct"] not in ("", "-")
                   and "darkness" not in rid and "svm" not in rid and "ensemble" not in rid]


def test_the_single_run_rows_are_most_of_the_record():
    assert len(SINGLE_RUN_ROWS) >= 12, SINGLE_RUN_ROWS


@pytest.mark.parametrize("recipe_id", SINGLE_RUN_ROWS)
def test_single_run_verdict_recomputed_from_the_metrics_files(recipe_id, report_rows):
    if recipe_id not in report_rows:
        pytest.skip(f"{recipe_id}: no run recorded yet")
    row = published_rows()[recipe_id]
    records = records_at_published_lr(recipe_id, float(row["lr"]))
    learned = [r["selected_accuracy"] for r in records if r["status"] == "finished" and not failed(r)]
    expected = expected_verdict(learned, printed_range(row["published_accuracy_pct"]))
    assert report_rows[recipe_id]["verdict"] == expected, (
        f"{recipe_id}: the report says {report_rows[recipe_id]['verdict']!r}, the record's "
        f"{len(learned)} learned runs ({len(records) - len(learned)} failed) give {expected!r}")


BEST_BY_VALIDATION_ROWS = [rid for rid, row in published_rows().items()
                           if row["best_of"] not in ("", "1") and row["best_chosen_by"] == "validation"]


@pytest.mark.parametrize("recipe_id", BEST_BY_VALIDATION_ROWS)
def test_best_of_k_by_validation_judges_the_records_pairs(recipe_id, report_rows):
    """The book chose the best of k runs by validation accuracy: the verdict must be drawn from
    each run's (validation, test) pair at its selected epoch, at the published learning rate,
    with the failed runs counted apart. The pairs are read from the metrics files here and
    judged by mnistbench.stats directly (whose statistics tests/test_verdict_statistics.py
    checks by hand); the report's row must be that judgement."""
    from mnistbench import stats

    if recipe_id not in report_rows:
        pytest.skip(f"{recipe_id}: no run recorded yet")
    row = published_rows()[recipe_id]
    records = [r for r in records_at_published_lr(recipe_id, float(row["lr"]))
               if r["status"] == "diverged" or r.get("selected_accuracy") is not None]
    test = [r["selected_accuracy"] if r["status"] == "finished" else math.nan for r in records]
    validation = [next((h.get("val_accuracy") for h in r.get("history") or []
                        if h.get("epoch") == r.get("selected_epoch")), math.nan) for r in records]
    judgement = stats.judge_runs(float(row["published_accuracy_pct"]), test, [failed(r) for r in records],
                                 chooser=validation, k=int(row["best_of"]),
                                 printed=printed_range(row["published_accuracy_pct"]))
    report = report_rows[recipe_id]
    assert report["verdict"] == judgement.verdict, (recipe_id, report["reason"], judgement.reason)
    if judgement.verdict != "not enough runs":
        assert (report["pi_low"], report["pi_high"]) == pytest.approx((judgement.low, judgement.high), abs=1e-6)
        assert report["expected_best"] == pytest.approx(judgement.expected_best, abs=1e-6)


def test_failure_counts_and_clopper_pearson_intervals_recomputed():
    """summary.csv's failed-run counts and their exact 95% intervals, at every learning rate."""
    with open(RECORD / "summary.csv", newline="") as f:
        summary = [row for row in csv.DictReader(f) if row["failed"] not in ("", None) and row["lr"]]
    checked = 0
    for line in summary:
        records = [r for r in records_at_published_lr(line["recipe"], float(line["lr"]))
                   if r["status"] in ("finished", "diverged") and r.get("seed") is not None]
        if not records:
            continue
        k, n = sum(failed(r) for r in records), len(records)
        assert int(float(line["failed"])) == k, f"{line['recipe']} lr {line['lr']}: {line['failed']} failed, record says {k}"
        low = 0.0 if k == 0 else scipy_stats.beta.ppf(0.025, k, n - k + 1)
        high = 1.0 if k == n else scipy_stats.beta.ppf(0.975, k + 1, n - k)
        assert float(line["failure_ci95_low"]) == pytest.approx(100 * low, abs=0.06), line["recipe"]
        assert float(line["failure_ci95_high"]) == pytest.approx(100 * high, abs=0.06), line["recipe"]
        checked += 1
    assert checked >= 40


def test_every_verdict_counts_the_failed_runs_apart(report_rows):
    """Each row's verdict is drawn from the runs that learned at the published learning rate; the
    failed ones are counted apart (docs/report.md). Counted here from the metrics files."""
    rows = published_rows()
    checked = 0
    for recipe_id, report in report_rows.items():
        if recipe_id not in rows or not rows[recipe_id]["lr"] or "ensemble" in recipe_id:
            continue
        records = [r for r in records_at_published_lr(recipe_id, float(rows[recipe_id]["lr"]))
                   if r["status"] == "diverged" or r.get("selected_accuracy") is not None]
        failures = sum(failed(r) for r in records)
        assert (report["failed"], report["n"]) == (failures, len(records) - failures), recipe_id
        checked += failures > 0
    assert checked >= 2  # rows with failed runs at their published lr: nielsen_ch1_fc100, seed_relu_wd01


@pytest.mark.parametrize("recipe_id", SINGLE_RUN_ROWS)
def test_single_run_position_recomputed_from_the_metrics_files(recipe_id, report_rows):
    """Where the published number lies in the one-run predictive distribution (the t model of
    the runs that learned), from the metrics files and scipy: what the pooled sign test counts."""
    if recipe_id not in report_rows:
        pytest.skip(f"{recipe_id}: no run recorded yet")
    row = published_rows()[recipe_id]
    records = records_at_published_lr(recipe_id, float(row["lr"]))
    learned = [r["selected_accuracy"] for r in records if r["status"] == "finished" and not failed(r)]
    if len(learned) < 3:
        pytest.skip(f"{recipe_id}: {len(learned)} learned runs")
    n, middle = len(learned), sum(printed_range(row["published_accuracy_pct"])) / 2
    mean = sum(learned) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in learned) / (n - 1))
    expected = scipy_stats.t.cdf((middle - mean) / (sd * math.sqrt(1 + 1 / n)), n - 1)
    assert report_rows[recipe_id]["position"] == pytest.approx(expected, abs=1e-9)


def test_pooled_sign_test_recomputed_over_the_report_rows(report_rows):
    """The rows taken together: the published numbers above the middle of their predictive
    distribution, counted here over the rows that qualify (judged from an interval with its
    model; no variant, no baseline, no ensemble, whose nets are another row's), and the exact
    two-sided binomial p summed by hand."""
    from mnistbench.verdicts import pooled

    positions = [r["position"] for r in report_rows.values()
                 if r["verdict"] in ("consistent", "above", "below") and not r["variant"]
                 and not r["deterministic"] and not r["without_normal_model"]
                 and "ensemble" not in r["recipe"]]
    assert all(not math.isnan(p) for p in positions) and len(positions) >= 6
    n, high = len(positions), sum(p > 0.5 for p in positions)
    tail = min(high, n - high)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(tail + 1)) / 2 ** n)
    together = pooled(list(report_rows.values()))
    assert (together["high"], together["n"]) == (high, n)
    assert together["p"] == pytest.approx(p, abs=1e-12)
