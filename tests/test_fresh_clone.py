"""A fresh clone that holds a study's run records (results/<study>/runs/**/metrics.json, as
git tracks them for the replication): no .snakemake metadata, no data/ folder with MNIST.

- The README's command, `.venv/bin/snakemake --cores 2 all --config study=<study>`, run with a
  PATH that does not contain the environment, would train nothing (its dry run plans the
  tables and the report only).
- Deleting one run's metrics.json retrains exactly that run (the job fetches MNIST itself,
  with no `download` job), then the tables and the report; the other record is not touched.

The record is made by two 1-epoch runs on 200 images; the whole test takes about 40 seconds
on a busy 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from test_workflow import jobs_run

ROOT = Path(__file__).resolve().parents[1]
STUDY = "fresh"
RECIPE, LR, SEEDS = "nielsen_ch1_fc30", "3", [1, 2]  # lr 3: the recipe's published one
# No environment on PATH: what a new user's shell has before activating anything.
BARE_PATH = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())


def fresh_env(mirror: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MNISTBENCH_"))}
    env.update(PATH=BARE_PATH, MNISTBENCH_MNIST_MIRROR=str(mirror))
    return env


def readme_snakemake(clone: Path, mirror: Path, *extra: str) -> subprocess.CompletedProcess:
    """The README's command line, run from the clone's root: <env>/bin/snakemake, not on PATH."""
    command = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", *extra, "all",
               "--config", f"study={STUDY}"]
    result = subprocess.run(command, cwd=clone, env=fresh_env(mirror), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_fresh_clone_trains_nothing_and_a_deleted_record_retrains_exactly_that_run(tmp_path, data_dir):
    clone = tmp_path / "clone"
    for folder in ("workflow", "config"):  # what the workflow needs of a checkout
        shutil.copytree(ROOT / folder, clone / folder)
    config = yaml.safe_load((clone / "config" / "config.yaml").read_text())
    config["mlflow"] = False
    config["studies"][STUDY] = {"recipes": [RECIPE], "seeds": SEEDS, "epochs": 1, "train_subset": 200}
    (clone / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    # The record, as the workflow's jobs write it (here trained side by side, outside Snakemake).
    runs = clone / "results" / STUDY / "runs" / RECIPE / f"lr={LR}"
    jobs = [subprocess.Popen([sys.executable, "-m", "mnistbench", "train", "--recipe", RECIPE,
                              "--seed", str(seed), "--lr", LR, "--epochs", "1", "--train-subset", "200",
                              "--study", STUDY, "--threads", "1", "--data-dir", str(data_dir),
                              "--quiet", "--out", str(runs / f"seed={seed}")]) for seed in SEEDS]
    assert [job.wait(timeout=300) for job in jobs] == [0, 0]
    records = sorted(runs.glob("seed=*/metrics.json"))
    assert len(records) == 2
    for path in runs.glob("seed=*/*"):  # git tracks metrics.json only
        if path.name != "metrics.json":
            path.unlink()
    mirror = data_dir / "MNIST" / "raw"

    plan = readme_snakemake(clone, mirror, "--dry-run")  # what it would run, in seconds
    jobs = jobs_run(plan.stdout + plan.stderr)
    assert "train" not in jobs and "download" not in jobs, jobs
    assert jobs["aggregate"] == 1 and jobs["report"] == 1

    deleted, kept = records
    kept_stamp = kept.stat().st_mtime_ns
    deleted.unlink()
    result = readme_snakemake(clone, mirror)
    assert jobs_run(result.stderr)["train"] == 1
    assert "download" not in jobs_run(result.stderr)
    assert deleted.exists() and kept.stat().st_mtime_ns == kept_stamp
    assert (clone / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()  # fetched by the job
    assert (clone / "reports" / STUDY / "index.html").exists()


def test_make_clean_keeps_the_tracked_record(tmp_path):
    """`make clean` removes what studies generate, never the tracked replication record."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    kept = ["results/replication/runs/r/lr=1/seed=1/metrics.json", "results/replication/summary.csv",
            "reports/replication/README.md", "reports/replication/figures/a.png"]
    gone = ["results/quick/summary.csv", "reports/quick/index.html", "logs/quick/a.log", ".snakemake/x"]
    for name in kept + gone:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert [n for n in kept if not (tmp_path / n).exists()] == []
    assert [n for n in gone if (tmp_path / n).exists()] == []
