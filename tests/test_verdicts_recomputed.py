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
