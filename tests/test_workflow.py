"""The real `snakemake` on a tiny study (2 recipes x 2 seeds x 1 learning rate, 1 epoch on 500
images) in a temporary folder: outputs, MLflow through its Python API and through the REST API
of a real `mlflow server`, the tables against the runs, reruns, and config validation."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from mnistbench.study import priorities

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["nielsen_ch6_fc100", "nielsen_ch1_fc100"]
SEEDS = [1, 2]
STUDY = "tiny"

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `mnistbench`
    return {**env, **extra}


def snakemake(workdir: Path, *args, check=True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
               "--cores", "2", *args]
    result = subprocess.run(command, cwd=workdir, env=_env(), capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def write_config(workdir: Path, data_dir: Path, **study_overrides) -> None:
    study = {"recipes": RECIPES, "seeds": SEEDS, "lr_factors": [1], "epochs": 1,
             "train_subset": 500, **study_overrides}
    config = {"study": STUDY, "data_dir": str(data_dir), "studies": {STUDY: study}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def metrics_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "results" / STUDY / "runs").rglob("metrics.json"))


def jobs_run(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table -> {rule: count}."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            in_table, counts = True, {}
        elif in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] == "total":
                    in_table = False
                else:
                    counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    """The tiny study, run once by the real snakemake with MLflow's default local store."""
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir, data_dir)
    result = snakemake(workdir)
    return workdir, result


def mlflow_runs(workdir: Path, study: str = STUDY) -> tuple:
    """MLflow's client for the store in workdir, and the study's runs (not its parent run)."""
    client, runs = all_mlflow_runs(workdir, study)
    return client, [r for r in runs if "mnistbench.run_key" in r.data.tags]


def all_mlflow_runs(workdir: Path, study: str = STUDY) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"mnistbench/{study}")
    assert experiment is not None, f"no MLflow experiment mnistbench/{study}"
    return client, client.search_runs([experiment.experiment_id])


def study_parent(workdir: Path, study: str = STUDY):
    """The study's one parent run, and its children: every other run of the experiment."""
    client, runs = all_mlflow_runs(workdir, study)
    parents = [r for r in runs if r.data.tags.get("mnistbench.study_key") == study]
    assert len(parents) == 1, [r.data.tags for r in parents]
    children = [r for r in runs if r.info.run_id != parents[0].info.run_id]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parents[0].info.run_id}
    return client, parents[0], children


def contexts(run) -> dict[str, dict]:
    """A run's dataset inputs by context (training, validation, testing): name, digest, profile."""
    return {next(t.value for t in i.tags if t.key == "mlflow.data.context"):
            {"name": i.dataset.name, "digest": i.dataset.digest, "profile": json.loads(i.dataset.profile)}
            for i in run.inputs.dataset_inputs}


def test_all_outputs_exist(study):
    workdir, result = study
    jobs = jobs_run(result.stderr)  # (other rule files, e.g. the report, may add jobs of their own)
    assert (jobs["train"], jobs["aggregate"], jobs.get("ensemble", 0)) == (4, 1, 0)
    for name in ("runs.csv", "runs.parquet", "summary.csv"):
        assert (workdir / "results" / STUDY / name).stat().st_size > 0
    runs = metrics_files(workdir)
    assert len(runs) == 4
    for path in runs:
        assert (path.parent / "model.pt").exists() and not (path.parent / "checkpoint.pt").exists()
        metrics = json.loads(path.read_text())
        assert metrics["status"] == "finished" and metrics["study"] == STUDY
        assert "mlflow_error" not in metrics
        lr, seed = path.parent.parent.name, path.parent.name
        log = workdir / "logs" / STUDY / metrics["recipe"] / lr / f"{seed}.log"
        assert "epoch 1/1" in log.read_text()
    # MLflow's own default store, in the folder snakemake ran in (no MLFLOW_TRACKING_URI set)
    assert (workdir / "mlflow.db").exists()
    # and the last line: a link that opens the study on MLflow's runs table, in `mlflow ui`
    assert re.search(rf"MLflow runs of study {STUDY}: http://127\.0\.0\.1:5000/#/experiments/\d+"
                     rf"\?workflowType=machine_learning", result.stdout + result.stderr), result.stdout[-2000:]


def test_mlflow_python_api_holds_the_four_runs(study):
    workdir, _ = study
    client, runs = mlflow_runs(workdir)
    assert len(runs) == 4
    by_key = {r.data.tags["mnistbench.run_key"]: r for r in runs}
    for path in metrics_files(workdir):
        metrics = json.loads(path.read_text())
        key = f"{STUDY}/{metrics['recipe']}/lr={metrics['lr']:g}/seed={metrics['seed']}"
        run = by_key[key]
        assert run.info.status == "FINISHED"
        assert run.info.run_id == metrics["extra_state"]["mlflow_run_id"]
        assert run.data.metrics["selected_accuracy"] == pytest.approx(metrics["selected_accuracy"])
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert [(m.step, m.value) for m in history] == [(1, pytest.approx(metrics["history"][0]["test_accuracy"]))]
        assert client.get_metric_history(run.info.run_id, "val_accuracy")[0].value == \
            pytest.approx(metrics["history"][0]["val_accuracy"])
        assert run.data.params["lr"] == str(metrics["lr"])
        assert run.data.params["train_images"] == "500"
        assert run.data.params["epochs"] == "1"
        tags = run.data.tags
        assert tags["recipe"] == metrics["recipe"] and tags["seed"] == str(metrics["seed"])
        assert tags["status"] == "finished" and tags["protocol"] == "nielsen"
        assert tags["host"] and tags["device"] == "cpu" and "git_commit" in tags
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"metrics.json", "model.pt"}
        # the runs table shows the run's totals; each epoch's time is its own series
        assert run.data.metrics["train_seconds"] == pytest.approx(metrics["train_seconds"])
        assert run.data.metrics["images_per_second"] == pytest.approx(metrics["images_per_second"])
        epochs = client.get_metric_history(run.info.run_id, "epoch_train_seconds")
        assert [(m.step, m.value) for m in epochs] == [(1, pytest.approx(metrics["history"][0]["train_seconds"]))]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_seconds")] == [0]
        assert metrics["recipe"] in tags["mlflow.note.content"]
        # the data it trained on (the UI's Dataset column), described, never uploaded
        data = contexts(run)
        assert set(data) == {"training", "validation", "testing"}  # the book's split validates
        train = data["training"]["profile"]
        assert (train["split"], train["scaling"]) == (metrics["config"]["split"], metrics["config"]["scaling"])
        assert train["images"] == metrics["config"]["train_images"] == 500 and train["rows"] == "0:500"
        assert data["training"]["name"] == f"mnist-nielsen-train-500-{train['scaling'].replace('/', '')}"
    experiment = client.get_experiment_by_name(f"mnistbench/{STUDY}")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    assert STUDY in experiment.tags["mlflow.note.content"]


def test_the_study_parent_run_holds_every_run_the_tables_and_the_report(study, monkeypatch):
    """One parent run per study (found by the tag mnistbench.study_key), the four runs its
    children; the report step logged the summary and verdict tables, the report and figures."""
    workdir, _ = study
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")  # load_table reads it
    client, parent, children = study_parent(workdir)
    assert len(children) == 4 and parent.info.status == "FINISHED"
    runs = pd.read_csv(workdir / "results" / STUDY / "runs.csv")
    summary = pd.read_csv(workdir / "results" / STUDY / "summary.csv")
    assert parent.data.metrics["runs"] == 4 and parent.data.metrics["finished"] == 4
    assert parent.data.metrics["train_seconds"] == pytest.approx(runs["train_seconds"].sum())  # the total
    assert parent.data.params["recipes"] == str(RECIPES) and parent.data.params["epochs"] == "1"
    assert STUDY in parent.data.tags["mlflow.note.content"] and "4 runs" in parent.data.tags["mlflow.note.content"]

    table = client.load_table(parent.info.experiment_id, "summary.json", [parent.info.run_id])  # log_table's reader
    assert sorted(table["recipe"]) == sorted(summary["recipe"])
    assert table.set_index("recipe")["mean"].to_dict() == pytest.approx(summary.set_index("recipe")["mean"].to_dict(), nan_ok=True)
    verdicts = client.load_table(parent.info.experiment_id, "verdicts.json", [parent.info.run_id])
    assert list(verdicts.columns) == ["recipe", "published", "mean", "sd", "n", "verdict", "reason"]
    assert sorted(verdicts["recipe"]) == sorted(RECIPES)
    # the runs judged are those that learned every digit, as summary.csv counts them (one epoch on
    # 500 images often misses one; the study changed the recipe's settings, so no verdict)
    assert verdicts.set_index("recipe")["n"].to_dict() == summary.set_index("recipe")["learned"].to_dict()
    assert set(verdicts["verdict"]) == {"settings changed"}  # 1 epoch on 500 images: no verdict

    report = workdir / "reports" / STUDY
    logged = {a.path for folder in ("report", "report/figures", "report/learning_curves")
              for a in client.list_artifacts(parent.info.run_id, folder) if not a.is_dir}
    expected = {"report/index.html", "report/README.md"} | {
        f"report/{p.relative_to(report)}" for p in report.glob("*/*.png")}
    assert logged == expected and len(expected) > 3
    page = client.download_artifacts(parent.info.run_id, "report/index.html", str(workdir / "downloaded"))
    assert Path(page).read_bytes() == (report / "index.html").read_bytes()
    assert {d["name"] for d in contexts(parent).values()} == {contexts(children[0])["training"]["name"]}


def test_a_fresh_clone_of_the_record_fills_mlflow_without_training(study, tmp_path):
    """Only the runs' metrics.json, as git tracks a record trained elsewhere: the workflow
    trains nothing, and its report step replays the runs into a new MLflow store, under their
    study's parent run, without touching the records."""
    workdir, _ = study
    for path in metrics_files(workdir):
        copy = tmp_path / path.relative_to(workdir)
        copy.parent.mkdir(parents=True)
        shutil.copy(path, copy)
    shutil.copy(workdir / "config.yaml", tmp_path / "config.yaml")
    records = {p: p.read_bytes() for p in metrics_files(tmp_path)}
    result = snakemake(tmp_path)
    jobs = jobs_run(result.stderr)
    assert "train" not in jobs and (jobs["aggregate"], jobs["report"]) == (1, 1), jobs
    assert {p: p.read_bytes() for p in metrics_files(tmp_path)} == records

    client, parent, children = study_parent(tmp_path)
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert all(set(contexts(run)) == {"training", "validation", "testing"} for run in children)
    by_key = {r.data.tags["mnistbench.run_key"]: r for r in children}
    for path in records:
        metrics = json.loads(records[path])
        run = by_key[f"{STUDY}/{metrics['recipe']}/lr={metrics['lr']:g}/seed={metrics['seed']}"]
        assert run.data.metrics["selected_accuracy"] == pytest.approx(metrics["selected_accuracy"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.json", "verdicts.json", "report"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def mlflow_server(study, tmp_path):
    """A real `mlflow server` on 127.0.0.1, serving the study's SQLite store."""
    workdir, _ = study
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}"],
        cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_mlflow_rest_api_holds_the_four_finished_runs(study, mlflow_server):
    workdir, _ = study
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name"
                                f"?experiment_name=mnistbench/{STUDY}", timeout=30) as response:
        experiment_id = json.load(response)["experiment"]["experiment_id"]
    found = _post(f"{mlflow_server}/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    [parent] = [r["info"]["run_id"] for r, t in zip(found, tags) if t.get("mnistbench.study_key") == STUDY]
    found = [r for r, t in zip(found, tags) if r["info"]["run_id"] != parent]
    assert len(found) == 4 and all(t.get("mlflow.parentRunId") == parent for t in tags if t.get("mnistbench.run_key"))
    assert {r["info"]["status"] for r in found} == {"FINISHED"}
    assert all(r["inputs"]["dataset_inputs"] for r in found)  # what the UI's Dataset column shows
    expected = {json.loads(p.read_text())["extra_state"]["mlflow_run_id"]: json.loads(p.read_text())
                for p in metrics_files(workdir)}
    for run in found:
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        result = expected[run["info"]["run_id"]]
        assert metrics["selected_accuracy"] == pytest.approx(result["selected_accuracy"])
        assert metrics["test_accuracy"] == pytest.approx(result["final_test_accuracy"])
        assert {"train_loss", "val_accuracy", "wall_seconds"} <= set(metrics)


def test_mlflow_sync_replays_into_a_server_and_a_fresh_store_without_duplicates(study, mlflow_server, tmp_path):
    workdir, _ = study
    for folder in ("results", "reports"):  # a copy, run from its root as `mnistbench mlflow-sync` is
        shutil.copytree(workdir / folder, tmp_path / folder)
    records = {p: p.read_bytes() for p in (tmp_path / "results").rglob("metrics.json")}
    sync = [sys.executable, "-m", "mnistbench", "mlflow-sync", "results"]

    # The live-logged runs and the parent the report step logged are recognised: nothing to replay.
    out = subprocess.run(sync, env=_env(MLFLOW_TRACKING_URI=mlflow_server), capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 up to date, 0 replayed, 0 failed" in out.stderr
    assert f"study {STUDY}: MLflow parent run" in out.stderr and "up to date" in out.stderr.split("parent run")[1]

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = subprocess.run(sync, env=_env(MLFLOW_TRACKING_URI=fresh), capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "0 up to date, 4 replayed, 0 failed" in out.stderr, out.stderr
    out = subprocess.run(sync, env=_env(MLFLOW_TRACKING_URI=fresh), capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "4 up to date, 0 replayed, 0 failed" in out.stderr, out.stderr
    # The records name the runs that logged them live (another store): a replay leaves them alone.
    assert {p: p.read_bytes() for p in records} == records

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=fresh)
    runs = client.search_runs([client.get_experiment_by_name(f"mnistbench/{STUDY}").experiment_id])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}  # 4 runs and their parent
    by_key = {r.data.tags.get("mnistbench.run_key"): r for r in runs}
    for path in records:
        metrics = json.loads(path.read_text())
        run = by_key[f"{STUDY}/{metrics['recipe']}/lr={metrics['lr']:g}/seed={metrics['seed']}"]
        assert run.data.metrics["selected_accuracy"] == pytest.approx(metrics["selected_accuracy"])
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(metrics["history"])
        assert run.data.tags["mlflow.parentRunId"] == by_key[None].info.run_id


def test_tables_match_the_runs(study):
    workdir, _ = study
    runs = pd.read_csv(workdir / "results" / STUDY / "runs.csv")
    assert pd.read_parquet(workdir / "results" / STUDY / "runs.parquet").shape == runs.shape
    summary = pd.read_csv(workdir / "results" / STUDY / "summary.csv")
    results = [json.loads(p.read_text()) for p in metrics_files(workdir)]
    assert len(runs) == 4 and len(summary) == 2
    assert sorted(runs["selected_accuracy"]) == sorted(r["selected_accuracy"] for r in results)
    for _, row in summary.iterrows():
        mine = [r for r in results if r["recipe"] == row["recipe"]]
        published = mine[0]["published_accuracy"]
        assert (row["runs"], row["finished"], row["diverged"]) == (2, 2, 0)
        # a run that never learned some digit (recall < 50%) is counted, not averaged: one epoch
        # on 1,000 images often misses one
        accuracies = [r["selected_accuracy"] for r in mine if min(r["test_recall_per_digit"]) >= 50]
        assert row["learned"] == len(accuracies) and row["failed"] == 2 - len(accuracies)
        if not accuracies:
            assert math.isnan(row["mean"]) and math.isnan(row["diff_pp"]) and math.isnan(row["ci95_low"])
            continue
        n, mean = len(accuracies), sum(accuracies) / len(accuracies)
        assert row["mean"] == pytest.approx(mean) and row["diff_pp"] == pytest.approx(mean - published)
        assert (row["min"], row["max"]) == (min(accuracies), max(accuracies))
        assert row["published_accuracy"] == published
        if n < 2:
            continue
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
        assert row["std"] == pytest.approx(std)
        # the confidence interval of the mean, cut to what an accuracy can be (two runs of one
        # epoch on 1,000 images spread widely: the unclipped interval can pass 0%)
        expected = (max(0.0, mean - half), min(100.0, mean + half))
        assert (row["ci95_low"], row["ci95_high"]) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
        assert 0.0 <= row["ci95_low"] <= row["ci95_high"] <= 100.0


def test_second_invocation_runs_nothing(study):
    workdir, _ = study
    result = snakemake(workdir)
    assert "Nothing to be done" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("switch", [["batch_runs=true"], ["device=cuda"], ["batch_runs=auto", "device=cpu"]])
def test_how_runs_are_grouped_into_jobs_never_makes_finished_runs_stale(study, switch):
    """Runs trained one job each stay up to date when they would now be batched (batch_runs,
    or auto with device=cuda, whatever GPU the machine running snakemake has or lacks)."""
    workdir, _ = study
    result = snakemake(workdir, "--dry-run", "--config", *switch)
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_removing_one_metrics_json_reruns_exactly_that_run(study):
    workdir, _ = study
    victim = metrics_files(workdir)[0]
    others = {p: p.stat().st_mtime_ns for p in metrics_files(workdir) if p != victim}
    victim.unlink()
    result = snakemake(workdir)
    jobs = jobs_run(result.stderr)
    assert (jobs["train"], jobs["aggregate"], jobs.get("ensemble", 0)) == (1, 1, 0)
    assert victim.exists()
    assert {p: p.stat().st_mtime_ns for p in others} == others
    _, runs = mlflow_runs(workdir)  # the rerun replaced its MLflow run instead of adding one
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    _, parent, children = study_parent(workdir)  # still one parent (the new report's), over all four
    assert len(children) == 4 and parent.data.metrics["runs"] == 4


@pytest.mark.parametrize("change, message", [
    ({"bogus_key": 1}, "Additional properties are not allowed ('bogus_key' was unexpected)"),
    ({"studies": {STUDY: {"recipes": ["nielsen_ch6_fc100"], "seeds": ["one"]}}}, "'one' is not of type 'integer'"),
    ({"studies": {STUDY: {"recipes": ["nielsen_ch6_fc100"], "seeds": []}}}, "should be non-empty"),
    ({"studies": {STUDY: {"recipes": ["nielsen_ch6_fc100"], "seeds": [1], "lr_factors": [-1]}}},
     "-1 is less than or equal to the minimum of 0"),
    ({"studies": {STUDY: {"recipes": ["no_such_net"], "seeds": [1]}}},
     "unknown recipe(s) no_such_net; valid recipes (see 'mnistbench recipes'): nielsen_ch1_fc30"),
    ({"study": "missing"}, "study 'missing' is not defined"),
])
def test_a_bad_config_stops_before_any_job_with_a_clear_message(tmp_path, data_dir, change, message):
    config = {"study": STUDY, "data_dir": str(data_dir),
              "studies": {STUDY: {"recipes": RECIPES, "seeds": SEEDS}}}
    for key, value in change.items():
        config[key] = value
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_batched_jobs_write_one_folder_and_one_mlflow_run_per_run(tmp_path, data_dir):
    """batch_runs: true -> one train_batch_<recipe> job per recipe (seeds x lrs together), and
    the same run folders, tables and MLflow runs as one job per run."""
    write_config(tmp_path, data_dir, lr_factors=[1, 3])
    result = snakemake(tmp_path, "--config", "batch_runs=true")
    jobs = jobs_run(result.stderr)
    jobs.pop("download", None)  # only where data_dir has no unpacked MNIST yet
    assert jobs == {**{f"train_batch_{r}": 1 for r in RECIPES}, "aggregate": 1, "report": 1, "all": 1}
    assert len(metrics_files(tmp_path)) == len(RECIPES) * len(SEEDS) * 2
    runs = pd.read_csv(tmp_path / "results" / STUDY / "runs.csv")
    assert (runs["status"] == "finished").all() and runs["mlflow_run_id"].nunique() == len(runs)
    client, mlflow = mlflow_runs(tmp_path)
    assert sorted(r.info.run_id for r in mlflow) == sorted(runs["mlflow_run_id"])
    assert {r.info.status for r in mlflow} == {"FINISHED"}
    assert all(len(client.get_metric_history(r.info.run_id, "test_accuracy")) == 1 for r in mlflow)
    assert len(study_parent(tmp_path)[2]) == len(runs)  # one parent over every batched run
    assert "Nothing to be done" in snakemake(tmp_path, "--config", "batch_runs=true").stderr
    # and the same runs, now one job each, are just as finished
    assert "Nothing to be done" in snakemake(tmp_path, "--config", "batch_runs=false").stderr


def test_training_jobs_carry_the_study_priorities(tmp_path, data_dir):
    """Each train job's Snakemake priority is the study's campaign order (mnistbench.study), so a
    long study trains the runs a verdict needs first."""
    write_config(tmp_path, data_dir, lr_factors=[1, 3])
    out = snakemake(tmp_path, "--dry-run").stdout
    spec = yaml.safe_load((tmp_path / "config.yaml").read_text())["studies"][STUDY]
    expected = {str(run.path(STUDY, "results")): value
                for run, value in priorities(spec, STUDY, tmp_path / "results").items()}
    blocks = [b for b in out.split("\nrule ") if b.startswith("train:")]
    found = {re.search(r"output: (\S+)", b).group(1): int(re.search(r"priority: (\d+)", b).group(1))
             for b in blocks}
    assert found == expected and len(set(found.values())) == len(found), out


def test_command_line_booleans_are_booleans(tmp_path, data_dir):
    """`--config mlflow=false` reaches Snakemake as the string "false"; the workflow reads it as
    the boolean it means (and a word that is not one still fails the schema)."""
    write_config(tmp_path, data_dir)
    for value, logged in [("true", True), ("false", False)]:
        out = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--config", f"mlflow={value}").stdout
        commands = [line for line in out.splitlines() if " -m mnistbench train " in line]
        assert commands and all((" --mlflow " in c) == logged for c in commands), out
    bad = snakemake(tmp_path, "--dry-run", "--config", "mlflow=no", check=False)
    assert bad.returncode != 0 and "config: mlflow: 'no' is not of type 'boolean'" in bad.stdout + bad.stderr, bad


@pytest.mark.parametrize("batch_runs", ["false", "true"])
def test_a_recipes_threads_setting_gives_its_jobs_that_many_threads(tmp_path, data_dir, batch_runs):
    """per_recipe threads: that recipe's training jobs claim that many Snakemake threads (Slurm's
    cpus_per_task) and train with as many torch threads; the other recipes keep threads_per_job."""
    write_config(tmp_path, data_dir, per_recipe={RECIPES[0]: {"threads": 2}})
    out = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--config", f"batch_runs={batch_runs}").stdout
    blocks = [b for b in out.split("\nrule ") if b.startswith(("train:", "train_batch_"))]
    assert len(blocks) == (len(RECIPES) if batch_runs == "true" else len(RECIPES) * len(SEEDS)), out
    for block in blocks:
        threads = 2 if f"--recipe {RECIPES[0]} " in block else 1
        assert f"--threads {threads} " in block and ((f"threads: {threads}" in block) == (threads > 1)), block


@pytest.mark.parametrize("device, batch_runs, gpus", [("cuda", "true", 1), ("cuda", "false", 1), ("cpu", "true", 0)])
def test_training_jobs_ask_for_one_gpu_when_they_train_on_one(tmp_path, data_dir, device, batch_runs, gpus):
    """gpus_per_job: auto. With --resources gpu=N Snakemake then runs N GPU jobs at a time."""
    write_config(tmp_path, data_dir)
    out = snakemake(tmp_path, "--dry-run", "--config", f"device={device}", f"batch_runs={batch_runs}").stdout
    blocks = [b for b in out.split("\nrule ") if b.startswith(("train:", "train_batch_"))]
    # a CPU job asks for no GPU at all (the resource is left out), a GPU job for exactly one
    assert blocks and all((f" gpu={gpus}," in b) if gpus else (" gpu=" not in b) for b in blocks), out
