"""The tables (mnistbench.aggregate) and the ensemble vote, on real runs trained here."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from mnistbench.aggregate import (
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    collect_runs,
    missed_a_digit,
    summarize,
    unlearned_digits,
)
from mnistbench.cli import main
from mnistbench.data import load_mnist
from mnistbench.ensemble import plurality_vote, vote
from mnistbench.recipes import get_recipe

STUDY = "unit"
RECORD = Path(__file__).resolve().parents[1] / "results" / "replication"
FC_SEEDS = [1, 2, 3, 4, 5]


def train_run(study_dir: Path, recipe: str, seed: int, lr: str, *extra) -> Path:
    out = study_dir / "runs" / recipe / f"lr={lr}" / f"seed={seed}"
    assert main(["train", "--recipe", recipe, "--seed", str(seed), "--lr", lr, "--epochs", "1",
                 "--study", STUDY, "--quiet", "--no-checkpoint", "--out", str(out), *extra]) == 0
    return out / "metrics.json"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, data_dir):
    """Five finished runs of one recipe, and two runs of another that diverge (lr 1e6)."""
    root = tmp_path_factory.mktemp("results") / STUDY
    for seed in FC_SEEDS:
        train_run(root, "nielsen_ch1_fc100", seed, "3", "--train-subset", "300", "--data-dir", str(data_dir))
    for seed in (1, 2):
        train_run(root, "nielsen_ch6_dbl_conv_relu", seed, "1e+06", "--train-subset", "100",
                  "--data-dir", str(data_dir))
    return root


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def as_learned(runs: pd.DataFrame) -> pd.DataFrame:
    """The toy runs (300 images, one epoch) never learn some digit, so all of them count as
    failed and summary.csv averages none of them; the statistics are tested as if they had
    learned (the failed rule itself: test_verdict_statistics)."""
    return runs.assign(failed=False)


def test_collect_runs_has_one_row_per_metrics_json_with_its_values(study_dir):
    runs = collect_runs(study_dir)
    assert list(runs.columns) == RUN_COLUMNS
    assert len(runs) == 7
    for path in sorted(study_dir.rglob("metrics.json")):
        metrics = load(path)
        row = runs[runs["run_dir"] == str(path.parent)].iloc[0]
        assert row["study"] == STUDY and row["recipe"] == metrics["recipe"]
        assert row["seed"] == metrics["seed"] and row["lr"] == metrics["lr"]
        assert row["status"] == metrics["status"]
        assert row["published_lr"] == get_recipe(metrics["recipe"]).lr
        assert row["epochs"] == 1 and row["train_images"] == metrics["config"]["train_images"]
        if metrics["status"] == "finished":
            assert row["selected_accuracy"] == metrics["selected_accuracy"]
            assert row["diff_pp"] == pytest.approx(metrics["selected_accuracy"] - metrics["published_accuracy"])
        else:
            assert pd.isna(row["selected_accuracy"])
    assert not runs["pipeline_check"].any()
    assert collect_runs(study_dir, pipeline_check=True)["pipeline_check"].all()


def test_summary_statistics_per_recipe_and_learning_rate(study_dir):
    runs = collect_runs(study_dir)
    assert list(summarize(runs).columns) == SUMMARY_COLUMNS
    # as recorded, every toy run failed: counted, never averaged
    failed = summarize(runs).set_index("recipe").loc["nielsen_ch1_fc100"]
    assert (failed["finished"], failed["failed"], failed["learned"]) == (5, 5, 0)
    assert math.isnan(failed["mean"]) and math.isnan(failed["ci95_low"]) and math.isnan(failed["diff_pp"])
    assert failed["note"] == "no run learned every digit: nothing averaged"
    summary = summarize(as_learned(runs)).set_index("recipe")
    fc = summary.loc["nielsen_ch1_fc100"]
    accuracies = [load(p)["selected_accuracy"] for p in (study_dir / "runs" / "nielsen_ch1_fc100").rglob("metrics.json")]
    assert len(set(accuracies)) > 1  # seeds differ, so the spread is a real test
    mean = statistics.mean(accuracies)
    low, high = stats.t.interval(0.95, len(accuracies) - 1, loc=mean, scale=stats.sem(accuracies))
    assert (fc["runs"], fc["finished"], fc["diverged"]) == (5, 5, 0)
    assert fc["mean"] == pytest.approx(mean) and fc["std"] == pytest.approx(statistics.stdev(accuracies))
    assert (fc["ci95_low"], fc["ci95_high"]) == (pytest.approx(low), pytest.approx(high))
    assert (fc["min"], fc["max"]) == (min(accuracies), max(accuracies))
    assert fc["published_accuracy"] == 96.59 and fc["diff_pp"] == pytest.approx(mean - 96.59)
    assert fc["lr"] == 3 and fc["lr_factor"] == pytest.approx(1.0)

    diverged = summary.loc["nielsen_ch6_dbl_conv_relu"]
    assert (diverged["runs"], diverged["finished"], diverged["diverged"]) == (2, 0, 2)
    assert math.isnan(diverged["mean"]) and math.isnan(diverged["ci95_low"])
    assert diverged["note"] == "no finished run"


def test_diverged_runs_are_counted_not_averaged(study_dir):
    runs = as_learned(collect_runs(study_dir))
    finished = runs[runs["recipe"] == "nielsen_ch1_fc100"]
    # a group in which two of seven runs diverged: move the diverged rows into the fc100 group
    mixed = pd.concat([finished, runs[runs["status"] == "diverged"].assign(
        recipe="nielsen_ch1_fc100", lr=3.0)])
    row = summarize(mixed).iloc[0]
    assert (row["runs"], row["finished"], row["diverged"]) == (7, 5, 2)
    assert row["mean"] == pytest.approx(finished["selected_accuracy"].mean())


def test_one_run_has_no_confidence_interval(study_dir):
    runs = as_learned(collect_runs(study_dir))
    row = summarize(runs[(runs["recipe"] == "nielsen_ch1_fc100") & (runs["seed"] == 1)]).iloc[0]
    assert row["runs"] == 1 and row["mean"] == row["min"] == row["max"]
    assert math.isnan(row["std"]) and math.isnan(row["ci95_low"]) and math.isnan(row["ci95_high"])


def test_a_pipeline_checks_runs_fail_nothing(study_dir):
    """One epoch on 300 images misses digits, which fails nothing of a recipe: in a pipeline check
    no run is `failed` (runs.csv, which summary.csv and the report read), so every finished run
    is averaged; the digits it missed are still named."""
    plain, check = collect_runs(study_dir), collect_runs(study_dir, pipeline_check=True)
    fc = plain["recipe"] == "nielsen_ch1_fc100"
    assert plain.loc[fc, "failed"].any()  # the rule itself, outside a pipeline check
    assert not check["failed"].any()
    assert check["unlearned_digits"].equals(plain["unlearned_digits"])
    row = summarize(check[check["recipe"] == "nielsen_ch1_fc100"]).iloc[0]
    assert (row["learned"], row["failed"]) == (len(FC_SEEDS), 0)
    assert row["runs_with_unlearned_digit"] == missed_a_digit(check.loc[fc, "unlearned_digits"]).sum()
    assert row["mean"] == pytest.approx(check.loc[fc, "selected_accuracy"].mean())


def test_aggregate_command_writes_the_three_tables(study_dir, capsys):
    assert main(["aggregate", str(study_dir), "--pipeline-check"]) == 0
    runs = pd.read_csv(study_dir / "runs.csv")
    assert len(runs) == 7 and runs["pipeline_check"].all()
    parquet = pd.read_parquet(study_dir / "runs.parquet")
    assert list(parquet.columns) == list(runs.columns) and len(parquet) == 7
    summary = pd.read_csv(study_dir / "summary.csv")
    assert summary["note"].str.contains("pipeline check").all()
    assert "nielsen_ch1_fc100" in capsys.readouterr().out


def test_aggregate_of_a_folder_without_runs_fails_clearly(tmp_path, capsys):
    assert main(["aggregate", str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert not (tmp_path / "runs.csv").exists()


def majority_by_counting(predictions: list[str]) -> list[int]:
    """The vote, computed a second, independent way: count, then the lowest of the tied digits."""
    winners = []
    for digits in zip(*predictions):
        counts = Counter(int(d) for d in digits)
        best = max(counts.values())
        winners.append(min(d for d, c in counts.items() if c == best))
    return winners


def test_plurality_vote_ties_as_the_book_and_as_the_lowest_digit():
    assert plurality_vote(["3", "5", "5", "3", "9"]).tolist() == [3]
    assert plurality_vote(["7", "2", "2", "7", "7"]).tolist() == [7]
    assert plurality_vote(["1", "2", "3", "4", "0"]).tolist() == [0]
    # an 8 takes the free slot 0 of Python 2.7's dict and comes first (tests/test_ensemble_votes.py)
    assert plurality_vote(["3", "8", "8", "3", "5"]).tolist() == [8]
    assert plurality_vote(["3", "8", "8", "3", "5"], "lowest").tolist() == [3]


def test_vote_of_five_real_runs(study_dir, data_dir):
    paths = sorted((study_dir / "runs" / "nielsen_ch1_fc100").rglob("metrics.json"))
    members = [(str(p), load(p)) for p in paths]
    labels = load_mnist(str(data_dir))[3]
    result = vote(get_recipe("nielsen_ch6_ensemble"), members, 1, labels)
    predictions = [m["test_predictions"] for _, m in members]
    expected = majority_by_counting(predictions)  # ties to the lowest digit
    assert plurality_vote(predictions, "lowest").tolist() == expected
    # the record's vote is the book's: where it differs, a tie that Python 2.7 broke otherwise
    book = [int(d) for d in result["test_predictions"]]
    for image in (i for i, (b, low) in enumerate(zip(book, expected)) if b != low):
        counts = Counter(p[image] for p in predictions)
        assert counts[str(book[image])] == counts[str(expected[image])] == max(counts.values())
    expected = book
    assert result["config"]["selection"] == "final" and "Python 2.7" in result["config"]["vote"]
    correct = sum(int(p == y) for p, y in zip(expected, labels.tolist()))
    assert result["status"] == "finished" and result["selected_accuracy"] == pytest.approx(correct / 100)
    assert [m["seed"] for m in result["members"]] == FC_SEEDS


def test_per_digit_recall_and_unlearned_digits_come_from_the_predictions(study_dir, data_dir):
    labels = load_mnist(str(data_dir))[3].tolist()
    runs = collect_runs(study_dir).set_index("run_dir")
    seen = Counter()
    for path in sorted((study_dir / "runs" / "nielsen_ch1_fc100").rglob("metrics.json")):
        metrics = load(path)
        hits, totals = Counter(), Counter(labels)
        for p, y in zip(metrics["test_predictions"], labels):
            hits[y] += int(p) == y
        recall = [round(100 * hits[d] / totals[d], 2) for d in range(10)]
        assert metrics["test_recall_per_digit"] == recall
        expected = " ".join(str(d) for d in range(10) if recall[d] < 50) or "none"
        assert runs.loc[str(path.parent), "unlearned_digits"] == expected
        seen[expected != "none"] += 1
    row = summarize(collect_runs(study_dir)).set_index("recipe").loc["nielsen_ch1_fc100"]
    assert row["runs_with_unlearned_digit"] == seen[True]
    # the diverged runs have no predictions, hence no verdict on their digits
    assert unlearned_digits({"test_recall_per_digit": None}) is None
    assert unlearned_digits({"test_recall_per_digit": [99.0] * 9 + [49.9]}) == "9"
    assert unlearned_digits({"test_recall_per_digit": [0.0, 60, 0.0] + [90.0] * 7}) == "0 2"
    assert unlearned_digits({"test_recall_per_digit": [50.0] * 10}) == "none"
    # the summary counts runs that missed a digit: not those that learned all ten, nor the unknown
    column = pd.Series(["9", "none", None, "0 3"], dtype="string")
    assert missed_a_digit(column).tolist() == [True, False, False, True]


def test_ensemble_with_fewer_than_five_runs_reports_not_enough_runs(tmp_path, data_dir, capsys):
    member = train_run(tmp_path / STUDY, "nielsen_ch6_dropout", 1, "0.03", "--train-subset", "50",
                       "--data-dir", str(data_dir))
    out = tmp_path / STUDY / "runs" / "nielsen_ch6_ensemble" / "lr=0.03" / "group=1"
    assert main(["ensemble", str(member), "--study", STUDY, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    result = load(out / "metrics.json")
    assert result["status"] == "not_enough_runs" and result["selected_accuracy"] is None
    assert result["note"].startswith("not enough runs: 1 of 5")
    row = summarize(collect_runs(tmp_path / STUDY)).set_index("recipe").loc["nielsen_ch6_ensemble"]
    assert row["finished"] == 0 and math.isnan(row["mean"]) and "not enough runs" in row["note"]


def test_ensemble_refuses_the_same_run_twice(data_dir, tmp_path, capsys):
    member = str(RECORD / "runs" / "nielsen_ch6_dropout" / "lr=0.03" / "seed=1" / "metrics.json")
    assert main(["ensemble", member, member, "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 2
    assert "must be distinct runs (seeds [1, 1])" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_ensemble_refuses_runs_of_another_recipe(study_dir, data_dir, tmp_path, capsys):
    member = next((study_dir / "runs" / "nielsen_ch1_fc100").rglob("metrics.json"))
    assert main(["ensemble", str(member), "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 2
    assert "votes nielsen_ch6_dropout runs" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()
