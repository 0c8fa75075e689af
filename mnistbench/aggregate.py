"""The study tables: one tidy row per run (runs.csv/.parquet), one per recipe x lr (summary.csv).

Both are built from the runs' metrics.json files alone (the source of truth), so they can be
rebuilt at any time with `mnistbench aggregate results/<study>`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats as scipy_stats

from .definitions import learn
from .recipes import all_recipes
from .stats import clip_percent, clopper_pearson
from .record import RecordError, find_records, parse_run_path, read_record

PIPELINE_CHECK_NOTE = "pipeline check (tiny training subset, few epochs): not a replication"

# A digit whose test recall stays below this (percent) was never learned by the run.
UNLEARNED_RECALL = 50.0

# runs.csv columns, in order. The report (mnistbench.report) relies on these names.
RUN_COLUMNS = [
    "study", "recipe", "published_id", "protocol", "kind", "seed", "group", "lr", "published_lr",
    "lr_factor", "status", "selected_accuracy", "selected_epoch", "selected_val_accuracy",
    "final_test_accuracy", "final_val_accuracy", "final_test_accuracy_eval_mode", "published_accuracy", "diff_pp", "epochs", "batch_size", "train_images",
    "train_subset", "weight_decay", "train_seconds", "eval_seconds", "wall_seconds",
    "images_per_second", "device", "device_name", "host", "git_commit", "mlflow_run_id",
    "mlflow_error", "members", "unlearned_digits", "failed", "note", "pipeline_check", "run_dir",
]

SUMMARY_COLUMNS = [
    "study", "recipe", "published_id", "protocol", "lr", "published_lr", "lr_factor", "runs",
    "finished", "diverged", "mean", "std", "ci95_low", "ci95_high", "min", "max",
    "published_accuracy", "diff_pp", "runs_with_unlearned_digit", "failed", "failure_ci95_low",
    "failure_ci95_high", "learned", "epochs", "train_images",
    "mean_train_seconds", "pipeline_check", "note",
]


find_run_files = find_records  # every metrics.json of a study folder


def _study_from_path(path: Path) -> str | None:
    """<study>/runs/<recipe>/lr=<lr>/seed=<seed>/metrics.json -> <study>."""
    where = parse_run_path(path.resolve())
    return where["study"] if where else None


def _published_lr(recipe_id: str) -> float | None:
    recipe = all_recipes().get(recipe_id)
    if recipe is None:
        return None
    if recipe.kind == "ensemble":
        recipe = all_recipes()[recipe.members]
    return recipe.lr


def unlearned_digits(metrics: dict) -> str | None:
    """The digits a run never learned (test recall < UNLEARNED_RECALL), as "9" or "0 3 8";
    "none" when it learned all ten; None when the run has no per-digit recall."""
    recall = metrics.get("test_recall_per_digit")
    if recall is None:
        return None
    digits = [str(digit) for digit, r in enumerate(recall) if r < UNLEARNED_RECALL]
    return " ".join(digits) or "none"


def missed_a_digit(unlearned: pd.Series) -> pd.Series:
    """Which runs of a runs.csv `unlearned_digits` column never learned some digit (a run
    without per-digit recall counts as not known to have missed one)."""
    return unlearned.notna() & (unlearned != "none")


def failed_run(status: str | None, unlearned: str | None) -> bool:
    """stats.FAILED_RULE: the run diverged, or never learned some digit. An ensemble vote, a
    baseline or a run without per-digit recall is not known to have failed."""
    return status == "diverged" or (isinstance(unlearned, str) and unlearned != "none")


def failed_column(runs: pd.DataFrame) -> pd.Series:
    """runs.csv's `failed`: failed_run per row, except that a pipeline check's runs (one epoch on
    a few hundred images) are not the recipe's, so missing a digit there fails nothing of it.
    Decided here, once; the summary and the report read the column."""
    return pd.Series([failed_run(s, u) and not bool(c) for s, u, c in
                      zip(runs["status"], runs["unlearned_digits"], runs["pipeline_check"])],
                     index=runs.index, dtype=bool)


def selected_val_accuracy(metrics: dict) -> float | None:
    """The validation accuracy at the run's selected epoch: what the book compared to choose the
    best of its three chapter-6 runs."""
    epoch = metrics.get("selected_epoch")
    entry = next((h for h in metrics.get("history") or [] if h.get("epoch") == epoch), {})
    return entry.get("val_accuracy")


def run_row(path: Path, metrics: dict, study: str | None = None) -> dict:
    config = metrics.get("config") or {}
    env = metrics.get("environment") or {}
    recipe = all_recipes().get(metrics["recipe"])
    kind = recipe.kind if recipe else None
    published_lr = _published_lr(metrics["recipe"])
    lr = metrics.get("lr")
    selected, published = metrics.get("selected_accuracy"), metrics.get("published_accuracy")
    return {
        "study": metrics.get("study") or study, "recipe": metrics["recipe"],
        "published_id": metrics.get("published_id"), "protocol": metrics.get("protocol"),
        "kind": kind, "seed": metrics.get("seed"), "group": metrics.get("group"), "lr": lr,
        "published_lr": published_lr,
        "lr_factor": lr / published_lr if lr and published_lr else None,
        "status": metrics.get("status"), "selected_accuracy": selected,
        "selected_epoch": metrics.get("selected_epoch"),
        "selected_val_accuracy": selected_val_accuracy(metrics),
        "final_test_accuracy": metrics.get("final_test_accuracy"),
        "final_val_accuracy": metrics.get("final_val_accuracy"),
        "final_test_accuracy_eval_mode": metrics.get("final_test_accuracy_eval_mode"),
        "published_accuracy": published,
        "diff_pp": selected - published if selected is not None and published is not None else None,
        "epochs": config.get("epochs"), "batch_size": config.get("batch_size"),
        "train_images": config.get("train_images"), "train_subset": config.get("train_subset"),
        "weight_decay": config.get("weight_decay"), "train_seconds": metrics.get("train_seconds"),
        "eval_seconds": metrics.get("eval_seconds"), "wall_seconds": metrics.get("wall_seconds"),
        "images_per_second": metrics.get("images_per_second"), "device": env.get("device"),
        "device_name": env.get("device_name"), "host": env.get("host"),
        "git_commit": env.get("git_commit"),
        "mlflow_run_id": (metrics.get("extra_state") or {}).get("mlflow_run_id"),
        "mlflow_error": metrics.get("mlflow_error"),
        "members": ",".join(str(m.get("seed")) for m in metrics["members"]) if "members" in metrics else None,
        "unlearned_digits": unlearned_digits(metrics),
        "failed": failed_run(metrics.get("status"), unlearned_digits(metrics)),
        "note": metrics.get("note"), "pipeline_check": bool(metrics.get("pipeline_check")),
        "run_dir": str(path.parent),
    }


class BrokenRunRecord(ValueError):
    """A metrics.json that cannot be read as a run: the message starts with its path."""


def _read_row(path: Path) -> dict:
    try:
        metrics = read_record(path)
        learn(metrics)  # a user-defined recipe, as its record carries it
        return run_row(path, metrics, _study_from_path(path))
    except RecordError as err:
        raise BrokenRunRecord(str(err)) from None
    except KeyError as err:
        raise BrokenRunRecord(f"{path}: no {err} key") from None
    except (OSError, ValueError, TypeError, AttributeError) as err:  # unreadable, not JSON, wrong types
        raise BrokenRunRecord(f"{path}: {err}") from None


def collect_runs(source, pipeline_check: bool = False) -> pd.DataFrame:
    """One row per metrics.json: `source` is a study folder (every run below its runs/) or a
    list of metrics.json paths. pipeline_check marks every row (the study is a smoke test)."""
    paths = find_run_files(Path(source)) if isinstance(source, (str, Path)) else map(Path, source)
    rows = [_read_row(p) for p in paths]
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs["pipeline_check"] = runs["pipeline_check"].astype(bool) | pipeline_check
    runs["failed"] = failed_column(runs)
    for column in ("seed", "group", "selected_epoch", "epochs", "batch_size", "train_images",
                   "train_subset"):
        runs[column] = runs[column].astype("Int64")
    order = {recipe_id: i for i, recipe_id in enumerate(all_recipes())}
    runs = runs.sort_values(["recipe", "lr", "seed", "group"], key=lambda c: c.map(order)
                            if c.name == "recipe" else c, na_position="first")
    return runs.reset_index(drop=True)


def ci95(values: pd.Series) -> tuple[float, float]:
    """95% confidence interval of the mean, t distribution with n - 1 degrees of freedom, cut
    to [0, 100]: no mean of accuracies lies outside."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    half = scipy_stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return clip_percent((values.mean() - half, values.mean() + half))


def _summary_row(group: pd.DataFrame) -> dict:
    finished = group.loc[group["status"] == "finished", "selected_accuracy"].dropna().astype(float)
    first = group.iloc[0]
    judged = group[group["status"].isin(["finished", "diverged"])]
    failed = judged["failed"].astype(bool)
    # the statistics describe the runs that learned: a failed run is counted (failed, with its
    # rate's interval), never averaged in, as the verdicts do (docs/report.md)
    learned = judged.loc[~failed & (judged["status"] == "finished"), "selected_accuracy"].dropna().astype(float)
    low, high = ci95(learned)
    failure_low, failure_high = clopper_pearson(int(failed.sum()), len(judged))
    mean = learned.mean() if len(learned) else math.nan
    published = first["published_accuracy"]
    notes = []
    if group["pipeline_check"].any():
        notes.append(PIPELINE_CHECK_NOTE)
    recipe = all_recipes().get(first["recipe"])
    if recipe is not None and recipe.user_defined:  # a recipe of the study's config, not the package's
        notes.append(f"user-defined in the study's config (base {recipe.base})")
    if (group["status"] == "not_enough_runs").any():
        notes += list(group.loc[group["status"] == "not_enough_runs", "note"].dropna().unique())
    elif len(finished) == 0:
        notes.append("no finished run")
    elif len(learned) == 0:
        notes.append("no run learned every digit: nothing averaged")
    return {
        "study": first["study"], "recipe": first["recipe"], "published_id": first["published_id"],
        "protocol": first["protocol"], "lr": first["lr"], "published_lr": first["published_lr"],
        "lr_factor": first["lr_factor"], "runs": len(group), "finished": len(finished),
        "diverged": int((group["status"] == "diverged").sum()), "mean": mean,
        "std": learned.std(ddof=1) if len(learned) > 1 else math.nan,
        "ci95_low": low, "ci95_high": high,
        "min": learned.min() if len(learned) else math.nan,
        "max": learned.max() if len(learned) else math.nan,
        "published_accuracy": published,
        "diff_pp": mean - published if pd.notna(published) else math.nan,
        "runs_with_unlearned_digit": int(missed_a_digit(group["unlearned_digits"]).sum()),
        "failed": int(failed.sum()), "failure_ci95_low": failure_low, "failure_ci95_high": failure_high,
        "learned": len(learned),
        "epochs": first["epochs"], "train_images": first["train_images"],
        "mean_train_seconds": group["train_seconds"].mean(),
        "pipeline_check": bool(group["pipeline_check"].any()), "note": "; ".join(notes) or None,
    }


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per recipe x learning rate: counts, and the statistics of the selected accuracies of the
    runs that learned (failed runs, diverged or missing a digit, are counted, not averaged),
    beside the published number."""
    rows = [_summary_row(group) for _, group in runs.groupby(["recipe", "lr"], dropna=False, sort=False)]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for column in ("epochs", "train_images"):
        summary[column] = summary[column].astype("Int64")
    return summary


def write_tables(runs: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """runs.csv, runs.parquet and summary.csv in out_dir; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    runs.to_csv(out_dir / "runs.csv", index=False)
    runs.to_parquet(out_dir / "runs.parquet", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    return summary
