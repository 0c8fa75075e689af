"""Interrupted, crowded and misconfigured studies: every result intact, nothing counted twice.

- A workflow killed with SIGKILL mid-study and restarted with --rerun-incomplete finishes with
  every run exactly once in runs.csv and in MLflow; killed runs resume from their checkpoints
  and continue their MLflow runs.
- Eight training jobs logging at once to MLflow's default local store (SQLite) all end up
  there, with their metrics, none failed on locking, under one study parent run.
- `mlflow_server: true` starts a local tracking server for the workflow's duration; its
  lock-free jobs still end up under one parent run.
- A bad config stops `snakemake -n` with one clear line before any job runs.

Everything runs real processes (snakemake, mnistbench train) on tiny subsets of the real MNIST.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_workflow import study_parent

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def clean_env(**extra) -> dict:
    """This venv first on PATH (jobs call `mnistbench`), and MLflow's default store (no URI)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def write_study(workdir: Path, data_dir: Path, name: str, study: dict, **top) -> Path:
    config = {"study": name, "data_dir": str(data_dir), "device": "cpu", "mlflow": True,
              "studies": {name: {"pipeline_check": True, **study}}, **top}
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(configfile), *args]


def mlflow_runs(store: Path, study: str) -> list:
    """The live (not deleted) MLflow runs of a study's training jobs."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(f"mnistbench/{study}")
    assert experiment is not None, f"no MLflow experiment mnistbench/{study} in {store}"
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    return [r for r in runs if "seed" in r.data.tags and "ensemble_group" not in r.data.tags]


def metric_steps(store: Path, run_id: str, metric: str = "test_accuracy") -> dict[int, set[float]]:
    from mlflow import MlflowClient

    steps: dict[int, set[float]] = {}
    for m in MlflowClient(tracking_uri=f"sqlite:///{store}").get_metric_history(run_id, metric):
        steps.setdefault(m.step, set()).add(m.value)
    return steps


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (orphans of a killed workflow)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a study killed with SIGKILL, then restarted ---------------------------------------------

def test_study_killed_mid_run_then_rerun_incomplete_counts_every_run_once(data_dir, tmp_path):
    study, epochs = "killed", 3
    recipes, seeds = ["nielsen_ch1_fc30", "tutorial_cnn_nll"], [1, 2]
    configfile = write_study(tmp_path, data_dir, study, {
        "recipes": recipes, "seeds": seeds, "epochs": epochs, "train_subset": 500})
    runs_dir = tmp_path / "results" / study / "runs"
    env = clean_env()

    # Kill at a random point: after 0, 1 or 2 of the 4 runs finished, while another is mid-run.
    finished_before_kill = random.choice([0, 1, 2])
    workflow = subprocess.Popen(snakemake(tmp_path, configfile, "--cores", "2"), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert workflow.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no run got far enough within 10 minutes"
            done = len(list(runs_dir.glob("*/*/*/metrics.json")))
            if done >= finished_before_kill and list(runs_dir.glob("*/*/*/checkpoint.pt")):
                break
            time.sleep(0.05)
        os.killpg(workflow.pid, signal.SIGKILL)
        workflow.wait()
        time.sleep(1)
        orphans = processes_mentioning(str(tmp_path))
        assert not orphans, f"jobs outlived the killed workflow: {orphans}"
    finally:
        if workflow.poll() is None:
            os.killpg(workflow.pid, signal.SIGKILL)
            workflow.wait()
        for pid in processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
    checkpoints = {p.parent for p in runs_dir.glob("*/*/*/checkpoint.pt")}
    resumed_ids = {run: json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists()
                   else None for run in checkpoints}
    assert not any(resumed_ids.values()), "a run with a checkpoint must not look finished"
    mlflow_ids_at_kill = {run: torch.load(run / "checkpoint.pt", weights_only=True)["extra_state"]
                          .get("mlflow_run_id") for run in checkpoints}

    # The documented restart: drop the dead process's lock, then rerun what is incomplete.
    unlock = subprocess.run(snakemake(tmp_path, configfile, "--unlock"), cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = subprocess.run(snakemake(tmp_path, configfile, "--cores", "2", "--rerun-incomplete"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-5000:]

    table = pd.read_csv(tmp_path / "results" / study / "runs.csv")
    assert sorted(zip(table["recipe"], table["seed"])) == sorted((r, s) for r in recipes for s in seeds)
    assert set(table["status"]) == {"finished"}
    assert not list(runs_dir.glob("*/*/*/checkpoint.pt"))
    metrics = {p.parent: json.loads(p.read_text()) for p in runs_dir.glob("*/*/*/metrics.json")}
    for m in metrics.values():
        assert [h["epoch"] for h in m["history"]] == list(range(1, epochs + 1))
        assert "mlflow_error" not in m

    runs = mlflow_runs(tmp_path / "mlflow.db", study)
    keys = [r.data.tags["mnistbench.run_key"] for r in runs]
    assert len(keys) == len(set(keys)) == len(recipes) * len(seeds), keys
    by_id = {r.info.run_id: r for r in runs}
    for folder, m in metrics.items():
        run = by_id[m["extra_state"]["mlflow_run_id"]]  # metrics.json points at the live run
        assert run.info.status == "FINISHED"
        steps = metric_steps(tmp_path / "mlflow.db", run.info.run_id)
        assert sorted(steps) == list(range(1, epochs + 1))
        assert all(len(values) == 1 for values in steps.values())  # a re-logged epoch agrees
        if mlflow_ids_at_kill.get(folder):  # resumed from a checkpoint: the same MLflow run
            assert run.info.run_id == mlflow_ids_at_kill[folder]


# --- crowded: many jobs logging at once ------------------------------------------------------

def test_eight_concurrent_runs_log_to_the_default_local_store(data_dir, tmp_path):
    study, seeds = "crowded", range(1, 9)
    env = clean_env(MNISTBENCH_DATA_DIR=str(data_dir))
    jobs = {seed: subprocess.Popen(
        [sys.executable, "-m", "mnistbench", "train", "--recipe", "nielsen_ch1_fc30", "--seed", str(seed),
         "--epochs", "2", "--train-subset", "300", "--device", "cpu", "--threads", "1", "--quiet",
         "--study", study, "--mlflow", "--out", str(tmp_path / f"seed={seed}")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in seeds}
    outcomes = {seed: job.communicate(timeout=900) for seed, job in jobs.items()}
    for seed, job in jobs.items():
        assert job.returncode == 0, outcomes[seed][1]
        assert "warning" not in outcomes[seed][1].lower(), outcomes[seed][1]  # no MLflow failure

    store = tmp_path / "mlflow.db"  # MLflow's default: ./mlflow.db where the jobs run
    assert store.exists()
    runs = {r.info.run_id: r for r in mlflow_runs(store, study)}
    assert sorted(int(r.data.tags["seed"]) for r in runs.values()) == list(seeds)
    for seed in seeds:
        metrics = json.loads((tmp_path / f"seed={seed}" / "metrics.json").read_text())
        assert "mlflow_error" not in metrics
        run = runs[metrics["extra_state"]["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["selected_accuracy"] == metrics["selected_accuracy"]
        assert metric_steps(store, run.info.run_id) == {
            h["epoch"]: {h["test_accuracy"]} for h in metrics["history"]}
    # The first job created the study's parent run, under the store's lock: one, over all eight.
    _, parent, children = study_parent(tmp_path, study)
    assert sorted(r.info.run_id for r in children) == sorted(runs)


# --- a resumed run continues its MLflow run --------------------------------------------------

def test_resumed_run_continues_its_mlflow_run(data_dir, tmp_path):
    out, study = tmp_path / "run", "resumed"
    command = [sys.executable, "-m", "mnistbench", "train", "--recipe", "tutorial_cnn_nll", "--seed", "3",
               "--epochs", "4", "--train-subset", "3000", "--device", "cpu", "--threads", "1",
               "--study", study, "--mlflow", "--out", str(out)]
    env = clean_env(MNISTBENCH_DATA_DIR=str(data_dir))
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not (out / "checkpoint.pt").exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.0))
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    first_id = state["extra_state"]["mlflow_run_id"]
    assert first_id

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {len(state['history'])}" in resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    runs = mlflow_runs(tmp_path / "mlflow.db", study)
    assert [r.info.run_id for r in runs] == [first_id] == [metrics["extra_state"]["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert metric_steps(tmp_path / "mlflow.db", first_id) == {
        h["epoch"]: {h["test_accuracy"]} for h in metrics["history"]}


# --- the workflow's own tracking server ------------------------------------------------------

def test_workflow_starts_and_stops_a_local_mlflow_server(data_dir, tmp_path):
    study, port = "served", free_port()
    configfile = write_study(tmp_path, data_dir, study, {
        "recipes": ["nielsen_ch1_fc30"], "seeds": [1, 2], "epochs": 1, "train_subset": 300},
        mlflow_server=True, mlflow_server_port=port)
    result = subprocess.run(snakemake(tmp_path, configfile, "--cores", "2"), cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    assert f"mlflow server at http://127.0.0.1:{port}" in result.stderr

    server_log = (tmp_path / "logs" / "mlflow-server.log").read_text()
    assert "/api/2.0/mlflow/runs/log-batch" in server_log  # the jobs logged through the server
    runs = mlflow_runs(tmp_path / "mlflow.db", study)  # ... into the usual local store
    assert sorted(int(r.data.tags["seed"]) for r in runs) == [1, 2]
    assert all(r.info.status == "FINISHED" for r in runs)
    # Jobs logging to a server take no lock; still one parent over both runs, with the report.
    _, parent, children = study_parent(tmp_path, study)
    assert len(children) == 2 and parent.info.status == "FINISHED"
    # the report step logged the tables through the server, which keeps them in ./mlartifacts
    assert {"path": "verdicts.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert list((tmp_path / "mlartifacts").glob(f"*/{parent.info.run_id}/artifacts/verdicts.json"))
    with socket.socket() as s:  # and the server is gone with the workflow
        assert s.connect_ex(("127.0.0.1", port)) != 0


# --- bad configs: one clear line from `snakemake -n`, before any job ------------------------

GOOD_STUDY = {"recipes": ["nielsen_ch1_fc30"], "seeds": [1]}
BAD_CONFIGS = {
    "unknown study": ({"study": "nope", "studies": {"tiny": GOOD_STUDY}}, ["nope", "tiny"]),
    "unknown recipe": ({"studies": {"tiny": {**GOOD_STUDY, "recipes": ["nielsen_ch1_fc31"]}}},
                       ["nielsen_ch1_fc31", "nielsen_ch1_fc30"]),
    "zero learning rate": ({"studies": {"tiny": {**GOOD_STUDY, "learning_rates": [0.1, 0]}}},
                           ["learning_rates"]),
    "negative lr factor": ({"studies": {"tiny": {**GOOD_STUDY, "lr_factors": [-1]}}}, ["lr_factors"]),
    "fractional seed": ({"studies": {"tiny": {**GOOD_STUDY, "seeds": [1, 2.5]}}}, ["seeds", "2.5"]),
    "text seed": ({"studies": {"tiny": {**GOOD_STUDY, "seeds": ["one"]}}}, ["seeds", "one"]),
    "no recipes": ({"studies": {"tiny": {**GOOD_STUDY, "recipes": []}}}, ["recipes"]),
    "no seeds": ({"studies": {"tiny": {**GOOD_STUDY, "seeds": []}}}, ["seeds"]),
    "no studies": ({"studies": {}}, ["studies"]),
    "unknown top-level key": ({"studies": {"tiny": GOOD_STUDY}, "learning_rate": 0.1}, ["learning_rate"]),
    "unknown study key": ({"studies": {"tiny": {**GOOD_STUDY, "epoch": 3}}}, ["epoch"]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_stops_before_any_job(case, data_dir, tmp_path):
    config, fragments = BAD_CONFIGS[case]
    config = {"study": "tiny", "data_dir": str(data_dir), **config}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(snakemake(tmp_path, tmp_path / "bad.yaml", "-n"), cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("config: ")]
    assert len(errors) == 1, output  # one line says what is wrong ...
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Failed validating" not in output and "Traceback" not in output  # ... and no dump
    assert not (tmp_path / "results").exists()
