"""MLflow above and beside single runs, without training: the datasets a run logs (names and
digests that tell its data apart), the study's parent run (one, found again, holding every run
of the study, even runs logged before it or under a duplicate), and which records a replay
rewrites. Each test uses its own SQLite store in a temporary folder."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from mnistbench import data, tracking
from mnistbench.recipes import get_recipe
from mnistbench.train import planned_config

STUDY = "s"


def config(recipe: str, **overrides) -> dict:
    """A run's resolved config (as metrics.json holds it), made without data."""
    return asdict(planned_config(get_recipe(recipe).with_overrides(**overrides), 1, "cpu"))


def training(cfg: dict):
    return dict(tracking.datasets(cfg))["training"]


def test_datasets_name_and_digest_the_data_a_run_used():
    book = config("nielsen_ch1_fc30")  # the book's split, k/256
    contexts = [context for context, _ in tracking.datasets(book)]
    assert contexts == ["training", "validation", "testing"]
    assert [c for c, _ in tracking.datasets(config("tutorial_cnn_nll"))] == ["training", "testing"]

    train = training(book)._to_mlflow_entity()
    assert train.name == "mnist-nielsen-train-50000-k256" and len(train.digest) == 8
    assert train.source_type == "http" and json.loads(train.source)["url"].endswith("train-images-idx3-ubyte.gz")
    profile = json.loads(train.profile)
    assert profile["images"] == book["train_images"] == 50_000 and profile["rows"] == "0:50000"
    assert profile["md5"] == {f: m for f, m in data.MNIST_FILES.items() if f.startswith("train-")}
    assert "mlflow_tensorspec" in json.loads(train.schema)
    assert len(train.to_proto().SerializeToString()) < 3000  # a description, not 50,000 images

    expanded = config("nielsen_ch6_expanded", train_subset=1000)
    assert training(expanded).name == "mnist-nielsen-train-1000-x5shifted-k256"
    assert training(expanded).profile["images"] == expanded["train_images"] == 5000

    # Each of split, subset, expansion and scaling gives other data: another name and digest.
    variants = {"book": book, "subset": config("nielsen_ch1_fc30", train_subset=1000),
                "expanded": {**book, "expand": True}, "scaling": {**book, "scaling": "k/255"},
                "split": config("tutorial_cnn_nll")}
    names = {k: training(v).name for k, v in variants.items()}
    digests = {k: training(v).digest for k, v in variants.items()}
    assert len(set(names.values())) == len(set(digests.values())) == len(variants), (names, digests)
    assert training(dict(book)).digest == training(book).digest  # the same data: the same digest


def test_dataset_digest_changes_with_the_files_md5(monkeypatch):
    book = config("nielsen_ch1_fc30")
    before = {c: d.digest for c, d in tracking.datasets(book)}
    monkeypatch.setitem(data.MNIST_FILES, "t10k-images-idx3-ubyte.gz", "0" * 32)
    after = {c: d.digest for c, d in tracking.datasets(book)}
    assert after["testing"] != before["testing"]  # the test files changed ...
    assert after["training"] == before["training"]  # ... the training files did not


def test_no_datasets_for_a_config_without_data():
    assert tracking.datasets({}) == [] and tracking.datasets({"split": "nielsen"}) == []


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite store, and MLflow's client for it."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # where MLflow puts the artifacts of a SQLite store: ./mlruns
    client = MlflowClient()
    return client, tracking._experiment_id(client, STUDY)


def child(client, experiment_id: str, seed: int, parent: str | None = None) -> str:
    tags = {tracking.RUN_KEY_TAG: tracking.run_key(STUDY, "r", 0.1, seed=seed)}
    if parent:
        tags[tracking.PARENT_TAG] = parent
    return client.create_run(experiment_id, tags=tags).info.run_id


def parents(client, experiment_id: str) -> list[str]:
    return [r.info.run_id for r in tracking._study_parents(client, experiment_id, STUDY)]


def test_one_parent_holds_every_run_of_the_study(store, tmp_path):
    client, experiment_id = store
    orphan = child(client, experiment_id, 1)  # logged before any parent existed
    # Two jobs logging to a server (no lock) created a parent each at the same moment:
    first = client.create_run(experiment_id, tags={tracking.STUDY_KEY_TAG: STUDY}, start_time=1000).info.run_id
    second = client.create_run(experiment_id, tags={tracking.STUDY_KEY_TAG: STUDY}, start_time=2000).info.run_id
    under_second = child(client, experiment_id, 2, second)
    assert tracking._study_parent(client, experiment_id, STUDY) == first  # every later job agrees
    under_first = child(client, experiment_id, 3, tracking._study_parent(client, experiment_id, STUDY))

    report = tmp_path / "reports" / STUDY
    report.mkdir(parents=True)
    (report / "README.md").write_text("# the report\n")
    study_dir = tmp_path / "results" / STUDY
    parent = tracking.log_study(study_dir, report, {"seeds": [1, 2, 3]}, log=lambda _: None)
    assert parent == first and parents(client, experiment_id) == [first]
    assert client.get_run(second).info.lifecycle_stage == "deleted"
    for run_id in (orphan, under_second, under_first):
        assert client.get_run(run_id).data.tags[tracking.PARENT_TAG] == parent
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.params["seeds"] == "[1, 2, 3]"
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/README.md"]

    # Found again, not logged again: the same parent, no new run.
    count = len(client.search_runs([experiment_id]))
    assert tracking.log_study(study_dir, report, {"seeds": [1, 2, 3]}, log=lambda _: None) == parent
    assert len(client.search_runs([experiment_id])) == count

    # A new report: a fresh parent (params are immutable, log_table appends); the runs move to it.
    (report / "README.md").write_text("# the report, rebuilt\n")
    newer = tracking.log_study(study_dir, report, {"seeds": [1, 2, 3, 4]}, log=lambda _: None)
    assert newer != parent and parents(client, experiment_id) == [newer]
    assert {client.get_run(r).data.tags[tracking.PARENT_TAG] for r in (orphan, under_second, under_first)} == {newer}
    assert client.get_run(newer).data.params["seeds"] == "[1, 2, 3, 4]"


def record(folder: Path, seed: int, **extra) -> Path:
    """A finished run's metrics.json in <study>/runs/<recipe>/lr=<lr>/seed=<seed>/."""
    path = folder / "results" / STUDY / "runs" / "nielsen_ch1_fc30" / "lr=3" / f"seed={seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    metrics = {"study": STUDY, "recipe": "nielsen_ch1_fc30", "seed": seed, "lr": 3.0, "status": "finished",
               "selected_accuracy": 90.0 + seed, "history": [{"epoch": 1, "test_accuracy": 90.0 + seed}],
               "config": config("nielsen_ch1_fc30"), **extra}
    path.write_text(json.dumps(metrics))
    return path


def test_sync_replays_records_under_the_parent_and_rewrites_only_its_own(store, tmp_path):
    client, experiment_id = store
    logged_elsewhere = record(tmp_path, 1, extra_state={"mlflow_run_id": "0" * 32})  # another store's run
    failed_here = record(tmp_path, 2, mlflow_error="starting the run failed: OperationalError")
    never_logged = record(tmp_path, 3)  # trained with MLflow off
    before = {p: p.read_text() for p in (logged_elsewhere, never_logged)}
    written = []

    def write_json(path, metrics):
        written.append(path)
        path.write_text(json.dumps(metrics))

    paths = [logged_elsewhere, failed_here, never_logged]
    counts = tracking.sync(paths, write_json, log=lambda _: None, reports=tmp_path / "reports")
    assert counts == {"up to date": 0, "replayed": 3, "failed": 0}
    assert written == [failed_here]  # the failed live logging is repaired; the others stay as they are
    assert {p: p.read_text() for p in before} == before
    repaired = json.loads(failed_here.read_text())
    assert "mlflow_error" not in repaired

    [parent] = parents(client, experiment_id)
    runs = [r for r in client.search_runs([experiment_id]) if tracking.RUN_KEY_TAG in r.data.tags]
    assert len(runs) == 3 and repaired["extra_state"]["mlflow_run_id"] in {r.info.run_id for r in runs}
    for run in runs:  # under the parent, with the data it trained on (the UI's Dataset column)
        assert run.data.tags[tracking.PARENT_TAG] == parent
        inputs = {(i.dataset.name, next(t.value for t in i.tags if t.key == "mlflow.data.context"))
                  for i in run.inputs.dataset_inputs}
        assert inputs == {("mnist-nielsen-train-50000-k256", "training"),
                          ("mnist-nielsen-validation-10000-k256", "validation"),
                          ("mnist-nielsen-test-10000-k256", "testing")}
    assert [i.dataset.name for i in client.get_run(parent).inputs.dataset_inputs] == ["mnist-nielsen-train-50000-k256"]

    assert tracking.sync(paths, write_json, log=lambda _: None) == {"up to date": 3, "replayed": 0, "failed": 0}
    assert written == [failed_here] and parents(client, experiment_id) == [parent]


def test_a_replayed_run_keeps_when_it_trained_and_a_name_that_tells_it_apart(store, tmp_path):
    """mlflow-sync gives each run its recorded start and end, not the replay's; its epochs fall in
    between; its name starts with what differs from its neighbours in the runs table."""
    client, experiment_id = store
    stretches = [{"started_at": "2026-11-24T10:00:00Z", "ended_at": "2026-11-24T11:00:00Z", "wall_seconds": 3600.0},
                 {"started_at": "2026-11-25T08:00:00Z", "ended_at": "2026-11-25T08:30:00Z", "wall_seconds": 1800.0}]
    history = [{"epoch": e, "test_accuracy": 90.0, "train_seconds": 1000.0} for e in (1, 2)]
    resumed = record(tmp_path, 1, stretches=stretches, history=history)
    # made before stretches were recorded: finished at 12:00, 44 s of wall but 5,270 s of training
    old = record(tmp_path, 2, environment={"finished_at": "2026-11-26T12:00:00Z"}, wall_seconds=44.0,
                 train_seconds=5270.0, eval_seconds=30.0)
    assert tracking.sync([resumed, old], log=lambda _: None, reports=None)["replayed"] == 2
    runs = {r.data.tags["seed"]: r for r in client.search_runs([experiment_id])
            if tracking.RUN_KEY_TAG in r.data.tags}
    ms = lambda iso: tracking._ms(iso)  # noqa: E731
    assert (runs["1"].info.start_time, runs["1"].info.end_time) == (ms("2026-11-24T10:00:00Z"),
                                                                    ms("2026-11-25T08:30:00Z"))
    steps = client.get_metric_history(runs["1"].info.run_id, "test_accuracy")
    assert ms("2026-11-24T10:00:00Z") < steps[0].timestamp < steps[1].timestamp == ms("2026-11-25T08:30:00Z")
    assert runs["2"].info.end_time == ms("2026-11-26T12:00:00Z")
    assert runs["2"].info.end_time - runs["2"].info.start_time == 5_300_000  # at least its training
    assert runs["1"].info.run_name == "s1 ch1_fc30 lr=3"
    # the study's parent spans its runs as they happened, not the minutes of the replay
    [parent] = tracking._study_parents(client, experiment_id, STUDY)
    assert (parent.info.start_time, parent.info.end_time) == (ms("2026-11-24T10:00:00Z"), ms("2026-11-26T12:00:00Z"))
    assert {r.data.tags[tracking.PARENT_TAG] for r in runs.values()} == {parent.info.run_id}
    assert tracking.run_name("replication/nielsen_ch6_ensemble/lr=0.03/group=2") == "g2 ch6_ensemble lr=0.03"
