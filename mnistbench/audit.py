"""Audit a recorded run: train it again from its record and compare, epoch by epoch.

On the same kind of CPU with the same torch, a run is bit-identical to its record (one seed
decides everything, through counters: docs/protocols.md). Elsewhere, floating-point kernels may
add in another order; the audit then prints the largest difference instead of a verdict of
"identical". An ensemble is audited by voting its members' recorded predictions again; a
baseline by running it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .record import RECORD_FILE, parse_run_path, read_record, run_dir

TIMING = {"train_seconds", "images_per_second"}  # per-epoch keys that measure the machine
# Quantities whose difference leaves a run's results as they were: a loss that adds in another
# order by 5e-7 while every accuracy, the selection and every test prediction match.
NUMERICAL = {"train_loss"}
# `mnistbench audit` exit statuses (2 is bad input, as for every command)
EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_NUMERICAL = 0, 1, 3


@dataclass
class Audit:
    path: str
    epochs: int  # epochs compared
    identical: bool
    differences: dict[str, float] = field(default_factory=dict)  # what differs: the largest |delta|
    config_changes: dict[str, tuple] = field(default_factory=dict)  # recorded vs the recipe today
    recorded_on: str = ""
    audited_on: str = ""
    compared: str = ""  # what was redone, when not epochs of training (an ensemble's vote)

    matched: list[str] = field(default_factory=list)  # what was compared and is the same

    @property
    def numerical_only(self) -> bool:
        """Different numbers, the same results: only a loss differs."""
        return bool(self.differences) and not self.config_changes and set(self.differences) <= NUMERICAL

    @property
    def exit_status(self) -> int:
        if self.identical:
            return EXIT_IDENTICAL
        return EXIT_NUMERICAL if self.numerical_only else EXIT_DIFFERENT

    def summary(self) -> str:
        where = f"recorded on {self.recorded_on}; audited on {self.audited_on}"
        scope = self.compared or f"over {self.epochs} epoch(s)"
        if self.config_changes:
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in
                                ((k, *v) for k, v in self.config_changes.items()))
            return f"{self.path}: STALE: the recipe resolves differently today ({changes})"
        if self.identical:
            return f"{self.path}: bit-identical {scope} ({where})"
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in self.differences.items())
        same = f"; the same {', '.join(self.matched)}" if self.matched else ""
        if self.numerical_only:
            return (f"{self.path}: NUMERICALLY DIFFERENT {scope}, same results: largest differences "
                    f"{diffs}{same} ({where})")
        return f"{self.path}: DIFFERS {scope}: largest differences {diffs}{same} ({where})"


def _machine(environment: dict) -> str:
    kind = f" ({environment['cpu_kind']})" if environment.get("cpu_kind") else ""
    return f"{environment.get('cpu_model') or environment.get('device_name')}{kind}, torch {environment.get('torch')}"


def compare(record: dict, again: dict, epochs: int) -> dict[str, float]:
    """The largest difference of each compared quantity between a record and its retraining."""
    differences: dict[str, float] = {}

    def note(key: str, a, b) -> None:
        if a != b:
            delta = abs(a - b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else float("inf")
            differences[key] = max(differences.get(key, 0.0), delta)

    old, new = record.get("history") or [], again.get("history") or []
    if len(new) < epochs or len(old) < epochs:
        differences["epochs"] = abs(len(old) - len(new))
    for a, b in zip(old[:epochs], new[:epochs]):
        for key in sorted((set(a) | set(b)) - TIMING):
            note(key, a.get(key), b.get(key))
    if epochs == len(old):  # the whole run: its final predictions and selection too
        for key in ("status", "selected_accuracy", "selected_epoch", "final_test_accuracy"):
            note(key, record.get(key), again.get(key))
        if record.get("test_predictions") != again.get("test_predictions"):
            flips = sum(x != y for x, y in zip(record.get("test_predictions") or "",
                                               again.get("test_predictions") or ""))
            differences["test_predictions"] = flips
    return differences


def matched(record: dict, again: dict, epochs: int, differences: dict) -> list[str]:
    """What an audit compared and found the same, in words (the differences say the rest)."""
    history = (record.get("history") or [])[:epochs]
    keys = sorted({k for h in history for k in h} - TIMING - {"epoch"})
    per_epoch = [k for k in keys if k not in differences]
    same = [f"{', '.join(per_epoch)} in every epoch"] if per_epoch else []
    if epochs and epochs == len(record.get("history") or []):
        same += [k for k in ("status", "selected_accuracy", "selected_epoch", "final_test_accuracy")
                 if k not in differences]
        if "test_predictions" not in differences and record.get("test_predictions"):
            same.append(f"{len(record['test_predictions']):,} test predictions")
    return same


def config_changes(record: dict, today: dict) -> dict[str, tuple]:
    """Keys of the resolved run configuration whose value today differs from the record's."""
    recorded = record.get("config") or {}
    skip = {"device", "published_id"}  # where it ran, and which row it is filed under
    return {k: (recorded.get(k), today.get(k)) for k in sorted(set(recorded) | set(today))
            if k not in skip and recorded.get(k) != today.get(k)}


def audit(path: str | Path, *, epochs: int | None = None, data_dir=None,
          log=None) -> Audit:
    """Retrain the run recorded at `path` (its first `epochs` epochs, default all) and compare."""
    from dataclasses import asdict

    import torch

    from .definitions import learn
    from .recipes import get_recipe
    from .train import environment, planned_config, train

    record = read_record(path)
    learn(record)  # a recipe of a study's config: its record carries it, no config needed
    recipe = get_recipe(record["recipe"])
    # the thread count decides how some kernels split their sums: train as the run trained
    torch.set_num_threads((record.get("environment") or {}).get("threads") or torch.get_num_threads())
    here = _machine(environment(torch.device("cpu")))
    recorded_on = _machine(record.get("environment") or {})
    if recipe.kind == "ensemble":
        return _audit_ensemble(path, record, recipe, data_dir, recorded_on, here)
    if recipe.kind == "baseline":
        from .baselines import run_baseline

        again = run_baseline(recipe, record.get("seed"), data_dir)
        differences = {} if again["test_predictions"] == record.get("test_predictions") else {
            "selected_accuracy": abs(again["selected_accuracy"] - record["selected_accuracy"])}
        return Audit(str(path), 0, not differences, differences, {}, recorded_on, here,
                     compared="when the baseline runs again")
    cfg = record["config"]
    recipe = recipe.with_overrides(lr=cfg["lr"], epochs=cfg["epochs"], train_subset=cfg.get("train_subset"))
    changes = config_changes(record, asdict(planned_config(recipe, record["seed"], cfg.get("device", "cpu"))))
    recorded_epochs = len(record.get("history") or [])
    epochs = min(epochs or recorded_epochs, recorded_epochs)
    if changes:
        return Audit(str(path), epochs, False, {}, changes, recorded_on, here)
    again = train(recipe.with_overrides(epochs=epochs), record["seed"], device="cpu",
                  data_dir=data_dir, log=log)
    if epochs < recorded_epochs:  # a prefix: the history of the shorter run, nothing final
        again["history"] = again["history"][:epochs]
    differences = compare(record, again, epochs)
    return Audit(str(path), epochs, not differences, differences, {}, recorded_on, here,
                 matched=matched(record, again, epochs, differences))


def _audit_ensemble(path, record, recipe, data_dir, recorded_on, here) -> Audit:
    """Vote the members' recorded predictions again and compare with the recorded vote."""
    from .data import load_mnist
    from .ensemble import vote

    members = [(m["metrics"], read_record(_member_path(path, m["metrics"]))) for m in record["members"]]
    test_labels = load_mnist(None if data_dir is None else str(data_dir))[3]
    again = vote(recipe, members, record.get("group") or 1, test_labels)
    differences = {}
    for key in ("selected_accuracy", "test_predictions", "status"):
        if again.get(key) != record.get(key):
            differences[key] = float("inf") if key != "selected_accuracy" else abs(
                (again.get(key) or 0) - (record.get(key) or 0))
    return Audit(str(path), 0, not differences, differences, {}, recorded_on, here,
                 compared=f"vote of its {len(members)} members' recorded predictions")


def _member_path(ensemble_path, member: str) -> Path:
    """A member's metrics.json as the ensemble recorded it (relative to the checkout), or next to
    the ensemble's folder when the record moved (a clone elsewhere)."""
    if Path(member).exists():
        return Path(member)
    ensemble, run = parse_run_path(ensemble_path), parse_run_path(member)
    if ensemble is None or run is None:
        return Path(member)  # not in a study's layout: read_record names the missing file
    return run_dir(ensemble["study"], run["recipe"], run["lr"], run["seed"],
                   results=ensemble["study_dir"].parent) / RECORD_FILE
