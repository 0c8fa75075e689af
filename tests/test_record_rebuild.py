"""The tracked record checks itself: its tables rebuilt from its metrics.json, and the verdict
inputs recomputed here from the metrics.json files by the sources' rules (tests/protocol_oracle.py).

None of this depends on floating-point rounding on this CPU: it reads recorded numbers only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import protocol_oracle as oracle
import torch

from mnistbench.aggregate import collect_runs, summarize
from mnistbench.recipes import all_recipes, get_recipe
from mnistbench.train import planned_config, run_result, RunProgress

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "replication"


def records() -> list[tuple[Path, dict]]:
    paths = sorted((RECORD / "runs").rglob("metrics.json"))
    if not paths:
        pytest.skip("no tracked record in this checkout")
    return [(p, json.loads(p.read_text())) for p in paths]


def _same(a, b) -> bool:
    if pd.isna(a) and pd.isna(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return str(a) == str(b)


def compare_tables(rebuilt: pd.DataFrame, committed_csv: Path, key: list[str]) -> None:
    committed = pd.read_csv(committed_csv)
    # the rebuilt table as the committed one was written and read back: the same parsing
    rebuilt = pd.read_csv(pd.io.common.StringIO(rebuilt.to_csv(index=False)))
    assert list(rebuilt.columns) == list(committed.columns), f"{committed_csv.name}: columns differ"
    assert len(rebuilt) == len(committed), f"{committed_csv.name}: {len(rebuilt)} rows rebuilt, {len(committed)} committed"
    rebuilt, committed = rebuilt.reset_index(drop=True), committed.reset_index(drop=True)
    for column in committed.columns:
        for i in range(len(committed)):
            a, b = rebuilt.at[i, column], committed.at[i, column]
            if column == "run_dir":  # where this checkout is: compared relative to the repository
                a = str(Path(a).relative_to(ROOT))
            assert _same(a, b), (f"{committed_csv.name} row {i} ({', '.join(str(committed.at[i, k]) for k in key)}) "
                                 f"column {column}: rebuilt {a!r}, committed {b!r}")


def test_committed_tables_are_the_aggregation_of_the_committed_metrics():
    records()
    runs = collect_runs(RECORD)
    compare_tables(runs, RECORD / "runs.csv", ["recipe", "lr", "seed", "group"])
    compare_tables(summarize(runs), RECORD / "summary.csv", ["recipe", "lr"])


def never_learned_a_digit(record: dict, labels: np.ndarray) -> bool:
    """The failed rule (docs/report.md) from the run's 10,000 recorded test predictions and the
    raw test labels: some digit's recall below 50%. Where the record also states its per-digit
    recall, the two must agree."""
    predictions = np.frombuffer(record["test_predictions"].encode(), np.uint8) - ord("0")
    recall = [100 * float((predictions[labels == d] == d).mean()) for d in range(10)]  # percent
    if record.get("test_recall_per_digit") is not None:  # recorded to 2 decimals
        assert record["test_recall_per_digit"] == pytest.approx(recall, abs=0.006)
    return min(recall) < 50


def test_verdict_inputs_recomputed_from_the_metrics_files(data_dir):
    """Each run's selected accuracy by its source's rule on its recorded history; per recipe x lr
    the number of finished runs, and the mean and sd of those that learned every digit; all
    against the committed tables."""
    labels = oracle.raw_mnist(str(data_dir))["test_y"]
    runs = pd.read_csv(RECORD / "runs.csv")
    summary = pd.read_csv(RECORD / "summary.csv")
    groups, finished = defaultdict(list), defaultdict(int)
    for path, record in records():
        recipe = all_recipes()[record["recipe"]]
        row = runs[runs["run_dir"] == str(path.parent.relative_to(ROOT))]
        assert len(row) == 1, f"{path}: {len(row)} rows in runs.csv"
        row = row.iloc[0]
        if recipe.kind == "network" and record["status"] == "finished":
            protocol = oracle.expected_protocol(recipe.id)
            expected = oracle.select(record["history"], *protocol["selection"])
            assert (record["selected_accuracy"], record["selected_epoch"]) == expected, path
            assert (row["selected_accuracy"], row["selected_epoch"]) == expected, path
        else:
            assert _same(row["selected_accuracy"], record.get("selected_accuracy")), path
        if record["status"] == "finished" and record.get("selected_accuracy") is not None:
            key = (record["recipe"], float(record["lr"]) if record["lr"] is not None else None)
            finished[key] += 1
            # a failed run is counted, not averaged (ensemble votes and baselines have no recall)
            if record.get("test_recall_per_digit") is None or not never_learned_a_digit(record, labels):
                groups[key].append(record["selected_accuracy"])
    for _, line in summary.iterrows():
        lr = None if pd.isna(line["lr"]) else float(line["lr"])
        values = groups.get((line["recipe"], lr), [])
        assert line["finished"] == finished[(line["recipe"], lr)], (line["recipe"], lr)
        assert line["learned"] == len(values), (line["recipe"], lr)
        if values:
            assert line["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9), (line["recipe"], lr)
        if len(values) > 1:
            assert line["std"] == pytest.approx(statistics.stdev(values), abs=1e-9), (line["recipe"], lr)


def test_todays_recipes_select_each_recorded_history_as_their_source_did():
    """The selection each recipe's run makes today (recipe -> config -> run_result), applied to
    every recorded whole-run history: what the source's rule picks from it."""
    for path, record in records():
        recipe = all_recipes()[record["recipe"]]
        if recipe.kind != "network" or record["status"] != "finished":
            continue
        cfg = planned_config(recipe, record["seed"], "cpu")
        result = run_result(recipe, cfg, RunProgress(history=record["history"]), final_model=None,
                            environment={}, test_labels=torch.zeros(0, dtype=torch.long))
        protocol = oracle.expected_protocol(recipe.id)
        assert (result["selected_accuracy"], result["selected_epoch"]) == oracle.select(
            record["history"], *protocol["selection"]), f"{path}: selection differs from the source's rule"


@pytest.mark.parametrize("recipe_id", [r.id for r in all_recipes().values() if r.kind == "network"])
def test_each_recipe_selects_a_discriminating_history_by_its_sources_rule(recipe_id):
    """A history on which peak-on-test, peak-on-validation, best-validation and final all pick
    different epochs: each recipe's run picks the one its source's rule picks."""
    history = [
        {"epoch": 1, "val_accuracy": 90.0, "test_accuracy": 91.0},
        {"epoch": 2, "val_accuracy": 95.0, "test_accuracy": 92.0},  # first validation peak
        {"epoch": 3, "val_accuracy": 93.0, "test_accuracy": 97.0},  # test peak
        {"epoch": 4, "val_accuracy": 95.0, "test_accuracy": 94.0},  # ties the validation peak
        {"epoch": 5, "val_accuracy": 92.0, "test_accuracy": 93.0},
    ]
    recipe = get_recipe(recipe_id)
    if recipe.protocol.split != "nielsen":
        history = [{k: v for k, v in h.items() if k != "val_accuracy"} for h in history]
    cfg = planned_config(recipe, 1, "cpu")
    result = run_result(recipe, cfg, RunProgress(history=history), final_model=None, environment={},
                        test_labels=torch.zeros(0, dtype=torch.long))
    protocol = oracle.expected_protocol(recipe_id)
    expected = oracle.select(history, *protocol["selection"])
    assert (result["selected_accuracy"], result["selected_epoch"]) == expected, (
        f"{recipe_id}: selected epoch {result['selected_epoch']}, but the source's rule "
        f"{protocol['selection'][0]} on the {protocol['selection'][1]} split picks epoch {expected[1]}")


def test_recorded_votes_are_the_plurality_of_their_members_predictions(data_dir):
    """Each recorded ensemble: the plurality of its five members' recorded final-epoch test
    predictions, ties broken as the book's Counter.most_common(1) broke them under CPython 2.7
    (the winners CPython 2.7.18 printed for every five-digit vote, tests/data), scored here on
    the raw test labels, is its number; and the package's vote over the same member records
    gives the same record."""
    import gzip

    from mnistbench.ensemble import vote

    from mnistbench.ensemble import vote_table

    table = ROOT / "tests" / "data" / "python27_counter_votes.txt.gz"  # CPython 2.7's, where made
    python27 = gzip.decompress(table.read_bytes()) if table.exists() else (vote_table("book") + ord("0")).tobytes()

    labels = oracle.raw_mnist(str(data_dir))["test_y"]
    ensembles = [(p, r) for p, r in records() if all_recipes()[r["recipe"]].kind == "ensemble"]
    assert ensembles, "the record has no ensemble vote"
    for path, record in ensembles:
        members = [(m["metrics"], json.loads((ROOT / m["metrics"]).read_text())) for m in record["members"]]
        usable = sorted((m for m in members if m[1]["status"] == "finished"), key=lambda m: m[1]["seed"])[:5]
        if record["status"] != "finished":
            assert len(usable) < 5, path
            continue
        votes = [chr(python27[int("".join(digits))])  # the five digits, in seed order
                 for digits in zip(*(m["test_predictions"] for _, m in usable))]
        expected = round(100 * sum(int(v) == y for v, y in zip(votes, labels)) / len(labels), 4)
        assert record["selected_accuracy"] == expected and record["test_predictions"] == "".join(votes), path
        again = vote(all_recipes()[record["recipe"]], members, record["group"], torch.from_numpy(labels.astype("int64")))
        assert (again["selected_accuracy"], again["test_predictions"]) == (expected, "".join(votes)), path


def test_every_recorded_run_resolves_as_its_recipe_does_today():
    """The CPU-independent half of `mnistbench audit`, over the whole record without training:
    each recorded run's configuration (split, pixels, order, drop-last, init, loss, L2 form and
    value, selection, masks, test mode, ...) is what its recipe resolves to today; and each
    records the protocol the published table's prose states."""
    from dataclasses import asdict

    from mnistbench.audit import config_changes

    for path, record in records():
        recipe = all_recipes()[record["recipe"]]
        if recipe.kind != "network":
            continue
        cfg = record["config"]
        today = planned_config(recipe.with_overrides(lr=cfg["lr"], epochs=cfg["epochs"],
                                                     train_subset=cfg.get("train_subset")), record["seed"], "cpu")
        assert config_changes(record, asdict(today)) == {}, f"{path}: recorded under another protocol"
        protocol = oracle.expected_protocol(recipe.id)
        assert (cfg["split"], cfg["scaling"], cfg["shuffle"], cfg["drop_last"], cfg["expand"],
                cfg["selection"], cfg["selection_split"], cfg["test_mode"], cfg["dropout_masks"]) == (
            protocol["split"], protocol["pixels"], protocol["order"] == "reshuffled", protocol["drop_last"],
            protocol["expanded"], *protocol["selection"], protocol["test_mode"], protocol["masks"]), path
        coefficient, on_biases = oracle.l2_step_terms(protocol["l2"], cfg["train_images"], cfg["batch_size"])
        assert cfg["weight_decay"] == pytest.approx(coefficient, rel=1e-12), path
