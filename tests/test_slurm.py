"""The workflow on a real Slurm cluster: a single node on localhost, through the Slurm profile.

tests/slurm/start_local_slurm.sh starts munge, slurmctld and slurmd (Debian's slurm-wlm) and
writes /etc/slurm/slurm.conf; it needs root. Where Slurm cannot start the test is skipped with
the script's reason, unless MNISTBENCH_REQUIRE_SLURM=1 (CI sets it): then that is a failure.

The executor polls job states with squeue (this cluster has no accounting database for sacct)
at least 5 s apart, so the test study is kept to four jobs: two training runs, the tables
and the report. It takes one to three minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import slurm_env

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "tests" / "slurm"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
STUDY = "slurm_tiny"
RECIPES = ["nielsen_ch1_fc30", "tutorial_cnn_nll"]


def _slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, env=slurm_env()).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node cluster; stopped afterwards if this fixture started it."""
    already_up = _slurm_answers()
    result = subprocess.run(["bash", str(SLURM / "start_local_slurm.sh")], capture_output=True,
                            text=True, timeout=300, env=slurm_env())
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["start_local_slurm.sh failed"])[-1]
        if os.environ.get("MNISTBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"Slurm is required here (MNISTBENCH_REQUIRE_SLURM=1) but did not start: {reason}")
        pytest.skip(f"no local Slurm cluster: {reason}")
    yield result.stdout.strip()
    if not already_up:
        subprocess.run(["bash", str(SLURM / "stop_local_slurm.sh")], timeout=60, env=slurm_env())


def test_tiny_study_through_the_slurm_profile(slurm_cluster, data_dir, tmp_path):
    config = {
        "study": STUDY, "data_dir": str(data_dir), "device": "cpu", "mlflow": True,
        "studies": {STUDY: {"pipeline_check": True, "recipes": RECIPES, "seeds": [1],
                            "epochs": 1, "train_subset": 300}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    store = tmp_path / "mlflow.db"
    env = {**slurm_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
           # jobs run `mnistbench` and Snakemake from this environment (sbatch exports it)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm_env()['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(tmp_path), "--configfile", str(tmp_path / "study.yaml"),
               "--profile", str(PROFILE),
               # this cluster has no accounting: status from squeue, no account to guess
               "--slurm-status-command", "squeue", "--slurm-no-account",
               "--slurm-init-seconds-before-status-checks", "5", "--retries", "0"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]

    # Each training run really was a task of one Slurm job array (the profile's slurm-array-jobs):
    # the executor keeps each task's log as logs/slurm/rule_train/<array job>_<task>.log.
    submitted = sorted((tmp_path / "logs" / "slurm" / "rule_train").rglob("*.log"))
    assert len(submitted) == len(RECIPES), submitted
    assert "Submitted array job" in log and "The individual task IDs are 1-2" in log, log[-3000:]

    runs = pd.read_csv(tmp_path / "results" / STUDY / "runs.csv")
    assert sorted(runs["recipe"]) == sorted(RECIPES)  # every run, once
    assert set(runs["status"]) == {"finished"}
    for recipe in RECIPES:
        metrics_path = next((tmp_path / "results" / STUDY / "runs" / recipe).glob("lr=*/seed=1/metrics.json"))
        metrics = json.loads(metrics_path.read_text())
        assert metrics["status"] == "finished" and metrics["selected_accuracy"] is not None
        assert not (metrics_path.parent / "checkpoint.pt").exists()

    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(f"mnistbench/{STUDY}")
    assert experiment is not None
    logged = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    trained = [r for r in logged if r.data.tags.get("recipe") in RECIPES]
    assert sorted(r.data.tags["recipe"] for r in trained) == sorted(RECIPES)
    for run in trained:
        assert run.info.status == "FINISHED"
        assert "selected_accuracy" in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert [m.step for m in history] == [1]
