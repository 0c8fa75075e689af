"""The run record: one folder per run, and its metrics.json, the source of truth of every table,
report, MLflow view and audit.

    <results>/<study>/runs/<recipe>/lr=<lr>/seed=<seed>/metrics.json     a training run or baseline
    <results>/<study>/runs/<recipe>/lr=<lr>/group=<k>/metrics.json        an ensemble vote

`lr` is the learning rate as `{:g}` writes it ("none" for the baselines, which have none). The
replication study's records are tracked in git (results/replication, docs/replication.md).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

RESULTS_DIR = "results"
RECORD_FILE = "metrics.json"


class RecordError(Exception):
    """A run record that cannot be read: the message names the file."""


def lr_label(lr: float | str | None) -> str:
    """The learning rate as the run folder and the workflow's lr wildcard spell it (a label
    passes through unchanged)."""
    if isinstance(lr, str):
        return lr
    return "none" if lr is None else f"{lr:g}"


def run_key(study: str, recipe: str, lr: float | str | None, seed: int | None = None,
            group: int | None = None) -> str:
    """<study>/<recipe>/lr=<lr>/seed=<seed> (or group=<k>): a run's name, in paths and MLflow."""
    last = f"group={group}" if group is not None else f"seed={seed}"
    return f"{study}/{recipe}/lr={lr_label(lr)}/{last}"


def run_dir(study: str, recipe: str, lr: float | str | None, seed: int | None = None,
            group: int | None = None, results: str | Path = RESULTS_DIR) -> Path:
    study_name, rest = run_key(study, recipe, lr, seed, group).split("/", 1)
    return Path(results, study_name, "runs", rest)


def find_records(study_dir: str | Path) -> list[Path]:
    """Every metrics.json of a study folder."""
    return sorted(Path(study_dir, "runs").rglob(RECORD_FILE))


def read_record(path: str | Path) -> dict:
    """A metrics.json as a dict; a missing, truncated or foreign file is a RecordError naming it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: not a readable run record ({err})") from None
    if not isinstance(record, dict) or "recipe" not in record:
        raise RecordError(f"{path}: not a run record (no 'recipe' key)")
    return record


def is_finished(record: dict) -> bool:
    return record.get("status") == "finished" and record.get("selected_accuracy") is not None


def core_seconds(record: dict) -> float:
    """CPU-core seconds a run cost: its training and evaluation time times its torch threads."""
    seconds = (record.get("train_seconds") or 0.0) + (record.get("eval_seconds") or 0.0)
    return seconds * ((record.get("environment") or {}).get("threads") or 1)


def git(*args: str) -> str | None:
    """What `git ARGS` prints about the checkout the package runs from (None outside one): the
    commit a run or a report was made with, and whether the code had uncommitted changes."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
