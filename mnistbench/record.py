"""The run record: one folder per run, and its metrics.json, the source of truth of every table,
report, MLflow view and audit.

    <results>/<study>/runs/<recipe>/lr=<lr>/seed=<seed>/metrics.json     a training run or baseline
    <results>/<study>/runs/<recipe>/lr=<lr>/group=<k>/metrics.json        an ensemble vote

`lr` is the learning rate as `{:g}` writes it ("none" for the baselines, which have none). The
replication study's records are tracked in git (results/replication, docs/replication.md).

This module owns the record: the keys of a network run's, a baseline's and an ensemble's
metrics.json (network_record, baseline_record, ensemble_record), writing a run folder
atomically (write_run), the folder layout and run key, and reading records back. It imports
the standard library only, so the torch-only core, the workflow and the tables can all use it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

RESULTS_DIR = "results"
RECORD_FILE = "metrics.json"
MODEL_FILE = "model.pt"  # the final weights, next to the record
CHECKPOINT_FILE = "checkpoint.pt"  # while a run trains; deleted once its record is written
SCHEMA = 1


class RecordError(Exception):
    """A run record that cannot be read: the message names the file."""


def experiment_name(study: str) -> str:
    """The MLflow experiment of a study's runs (tracking.py logs them; the report links it)."""
    return f"mnistbench/{study}"


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


def parse_run_path(path: str | Path) -> dict | None:
    """The inverse of run_dir: a record's path -> its study_dir, study, recipe,
    lr label and seed or group (as strings); None for a path not under <study>/runs/."""
    folder = Path(path).parent
    parents = [folder, *folder.parents]
    if len(parents) < 5 or parents[3].name != "runs":
        return None
    last, value = folder.name.split("=", 1) if "=" in folder.name else (None, None)
    return {"study_dir": parents[4], "study": parents[4].name, "recipe": parents[2].name,
            "lr": parents[1].name.split("=", 1)[-1], "seed": value if last == "seed" else None,
            "group": value if last == "group" else None}


def find_records(study_dir: str | Path) -> list[Path]:
    """Every metrics.json of a study folder."""
    return sorted(Path(study_dir, "runs").rglob(RECORD_FILE))


def read_record(path: str | Path) -> dict:
    """A metrics.json as a dict; a missing, truncated or foreign file is a RecordError naming it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: not a readable run record ({err})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: a JSON {type(record).__name__}, not an object")
    if "recipe" not in record:
        raise RecordError(f"{path}: not a run record (no 'recipe' key)")
    return record


def is_finished(record: dict) -> bool:
    return record.get("status") == "finished" and record.get("selected_accuracy") is not None


def run_threads(record: dict) -> int:
    """The torch threads a run trained with (1 for records that do not say)."""
    return (record.get("environment") or {}).get("threads") or 1


def core_seconds(record: dict) -> float:
    """CPU-core seconds a run cost: its training and evaluation time times its torch threads."""
    seconds = (record.get("train_seconds") or 0.0) + (record.get("eval_seconds") or 0.0)
    return seconds * run_threads(record)


# A stretch: one process that trained a run, from its start or resumption to its end (or, for a
# process that was killed, its last checkpoint). Its keys: first_epoch, last_epoch, started_at,
# ended_at (UTC, ISO 8601), wall_seconds, and train.STRETCH_KEYS (git_commit, git_dirty, host,
# cpu_model, cpu_kind, threads, torch, device). A run's wall_seconds is the sum of its stretches'.
WALL_ALL_STRETCHES = "all stretches"
WALL_LAST_STRETCH = "last stretch only"  # records made before 2026-12-06 (no "stretches" key)


def wall_provenance(record: dict) -> str:
    """What a record's wall_seconds covers. Records made before stretches were recorded give the
    wall time of the process that finished them only: for a run resumed from a checkpoint that
    is its last stretch, which can be shorter than its training time. Derived when reading; the
    old records' numbers are not rewritten. A baseline and a vote run in one process, unresumed.
    A run resumed from a checkpoint made before then has an earlier stretch of unknown wall time."""
    one_process = record.get("group") is not None or (record.get("config") or {}).get("kind") == "baseline"
    if "stretches" in record:
        known = all(s.get("wall_seconds") is not None for s in record["stretches"])
        return WALL_ALL_STRETCHES if known else WALL_LAST_STRETCH
    return WALL_ALL_STRETCHES if one_process else WALL_LAST_STRETCH


def total_wall_seconds(stretches: list[dict], this_stretch: float) -> float:
    """A run's wall time: its earlier stretches' (as their checkpoints saved them) plus this one's."""
    return round(sum(s.get("wall_seconds") or 0.0 for s in stretches[:-1]) + this_stretch, 3)


def git(*args: str) -> str | None:
    """What `git ARGS` prints about the checkout the package runs from (None outside one): the
    commit a run or a report was made with, and whether the code had uncommitted changes."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# --- building a record -------------------------------------------------------------------------

def predictions_text(predictions) -> str | None:
    """Test predictions (a tensor or a list of digits) as the record stores them: "7210414..."."""
    if predictions is None:
        return None
    return "".join(map(str, predictions.tolist() if hasattr(predictions, "tolist") else predictions))


def network_record(recipe, config: dict, *, status: str, history: list[dict], selected: float | None,
                   selected_epoch: int | None, train_seconds: float, eval_seconds: float,
                   trained_images: int, test_predictions, test_recall_per_digit: list[float] | None,
                   final_model: dict | None, extra_state: dict, environment: dict,
                   user_recipe: dict | None = None, stretches: list[dict] | None = None) -> dict:
    """A trained network run's record (plus "final_model", which write_run saves as model.pt).
    config: the resolved run configuration (train.RunConfig as a dict). user_recipe: a recipe
    defined in a study's config, as recipes.recipe_record gives it (shipped recipes: None, and
    their record has no such key). stretches: one entry per process that trained it (see
    WALL_ALL_STRETCHES)."""
    finite = [h for h in history if h.get("test_accuracy") is not None]
    return {
        "schema": SCHEMA,
        "recipe": config["recipe"], "published_id": config["published_id"], "protocol": config["protocol"],
        "seed": config["seed"], "lr": config["lr"], "status": status,
        "published_accuracy": recipe.published_accuracy,
        "selected_accuracy": selected, "selected_epoch": selected_epoch,
        "final_test_accuracy": finite[-1]["test_accuracy"] if finite else None,
        "final_val_accuracy": finite[-1].get("val_accuracy") if finite else None,
        "final_test_accuracy_eval_mode": finite[-1].get("test_accuracy_eval_mode") if finite else None,
        "config": config, "history": history,
        "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
        "images_per_second": round(trained_images / train_seconds, 1) if train_seconds else None,
        "test_predictions": predictions_text(test_predictions),
        "test_recall_per_digit": test_recall_per_digit,
        "final_model": final_model,
        "extra_state": extra_state,
        "environment": environment,
        "stretches": stretches or [],
        "command": " ".join(sys.argv),
        **({"user_recipe": user_recipe} if user_recipe else {}),
    }


def baseline_record(recipe, seed: int, *, accuracy: float, train_images: int, seconds: float,
                    test_predictions, environment: dict) -> dict:
    """A chapter-1 baseline's record (baselines.py): no learning rate, no epochs."""
    return {"schema": SCHEMA, "recipe": recipe.id, "published_id": recipe.published_id, "protocol": "nielsen",
            "seed": seed, "lr": None, "status": "finished",
            "published_accuracy": recipe.published_accuracy, "selected_accuracy": accuracy,
            "selected_epoch": None, "final_test_accuracy": accuracy, "final_val_accuracy": None,
            "config": {"recipe": recipe.id, "kind": "baseline", "seed": seed, "split": "nielsen",
                       "scaling": recipe.scaling, "train_images": train_images},
            "history": [], "train_seconds": round(seconds, 3), "eval_seconds": 0.0,
            "images_per_second": None,
            "test_predictions": predictions_text(test_predictions),
            "environment": environment}


def member_summary(metrics: dict, path: str) -> dict:
    """An ensemble member as the ensemble's record lists it."""
    return {"seed": metrics.get("seed"), "status": metrics.get("status"),
            "final_test_accuracy": metrics.get("final_test_accuracy"), "metrics": str(path),
            "mlflow_run_id": (metrics.get("extra_state") or {}).get("mlflow_run_id")}


def ensemble_record(recipe, group: int, members: list[tuple[str, dict]], *, finished: int,
                    accuracy: float | None, test_predictions, note: str, vote: dict,
                    environment: dict) -> dict:
    """An ensemble vote's record (ensemble.py), with the same keys as a run so the tables treat
    it like any other row. members: (path, record) of every member, sorted by seed; finished:
    how many could vote; accuracy None: not enough of them (status "not_enough_runs"). vote:
    what the config adds to the first member's (ensemble size and rule)."""
    first = members[0][1] if members else {}
    config = {**(first.get("config") or {}), "recipe": recipe.id, "published_id": recipe.id,
              "members_recipe": recipe.members, "group": group, **vote}
    config.pop("seed", None)
    return {
        "schema": SCHEMA, "recipe": recipe.id, "published_id": recipe.id,
        "protocol": first.get("protocol"), "seed": None, "group": group, "lr": first.get("lr"),
        "published_accuracy": recipe.published_accuracy,
        "members": [member_summary(m, p) for p, m in members],
        "members_finished": finished,
        "config": config, "history": [], "selected_epoch": None, "final_val_accuracy": None,
        "train_seconds": None, "eval_seconds": None, "images_per_second": None,  # see the members
        "status": "finished" if accuracy is not None else "not_enough_runs",
        "selected_accuracy": accuracy, "final_test_accuracy": accuracy,
        "test_predictions": predictions_text(test_predictions), "note": note,
        "environment": environment, "command": " ".join(sys.argv),
    }


def label_record(record: dict, study: str | None = None, pipeline_check: bool = False,
                 mlflow_run_id: str | None = None) -> dict:
    """The study a run belongs to, whether it is only a pipeline check, and its MLflow run."""
    if mlflow_run_id:
        record["extra_state"] = {**(record.get("extra_state") or {}), "mlflow_run_id": mlflow_run_id}
    if study:
        record["study"] = study
    if pipeline_check:
        record["pipeline_check"] = True
    return record


# --- writing a run folder ----------------------------------------------------------------------

def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file. The
    file gets the permissions a plain open() would give it (0644 under the usual umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it, so set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finite(value):
    """JSON has no NaN or inf: store them as null (the run's status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_record(path: str | Path, record: dict) -> None:
    """metrics.json, atomically, with non-finite numbers as null."""
    text = json.dumps(_finite(record), indent=1, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def write_run(out: str | Path, record: dict, save_weights: Callable[[Path, dict], None] | None = None) -> Path:
    """A finished run's folder: model.pt (the record's "final_model", saved by save_weights:
    train.save_state, passed in so that this module needs no torch), then metrics.json, then
    the checkpoint goes. metrics.json comes last: its presence means the run is complete
    (Snakemake's output). Returns its path."""
    out = Path(out)
    weights = record.pop("final_model", None)
    if weights is not None:
        if save_weights is None:
            raise ValueError("write_run: a record with final_model needs save_weights (train.save_state)")
        save_weights(out / MODEL_FILE, weights)
    write_record(out / RECORD_FILE, record)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return out / RECORD_FILE


def check_writable(folder: str | Path) -> None:
    """Fail before any work if a run folder cannot be written: a ValueError naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to output folder {folder}: {err.strerror or err}") from None
