"""Studies: a grid of recipes x learning rates x seeds (config/config.yaml), the runs it plans,
and how far its record has come (`mnistbench progress`).

The workflow (workflow/rules/common.smk) expands a study into jobs with these functions, so the
runs Snakemake trains and the runs `progress` counts are one list.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .recipes import ENSEMBLE_SIZE, SPLIT_SIZE, all_recipes, planned_train_images
from .record import (CHECKPOINT_FILE, RecordError, core_seconds, find_records, is_finished, lr_label,
                     read_record, run_dir, run_threads)
from .train import cpu_kind
from . import stats

# Training images per second of one single-thread `mnistbench train` job, two side by side on
# this project's 2-core CPU, for networks without a finished run to measure from (progress
# otherwise uses the median rate of every finished run of the same network at the same batch
# size, whichever recipe it belongs to). Measured (docs/performance.md): the double conv's runs
# in the record (median 1,764 img/s), the basic conv, the dense nets, the tutorial nets; the
# networks without runs are the double conv's rate times their cost relative to it, measured in
# CPU time by benchmarks/step_cost.py (fc300 / double fc100 / double fc300: 0.79-0.95; one fc1000
# layer: 0.63; two fc1000 layers, with or without dropout: 0.38-0.43).
NOMINAL_RATES = {
    "dense": 15_000,  # fully connected nets
    "conv20": 2_900,  # one conv layer
    "conv20-40": 1_500,  # two conv layers, fc100..fc300 (0.87 x 1,764)
    "conv20-40-fc1000": 1_100,  # 0.63 x 1,764
    "conv20-40-fc1000x2": 700,  # the dropout nets and double fc1000 (0.40 x 1,764)
    "wide": 80,  # tutorial_cnn_wide
    "tutorial": 5_000,
}


@dataclass(frozen=True)
class PlannedRun:
    recipe: str
    lr: str  # lr_label
    seed: int | None = None
    group: int | None = None

    def path(self, study: str, results: str | Path) -> Path:
        return run_dir(study, self.recipe, self.lr, self.seed, self.group, results) / "metrics.json"


def recipe_settings(spec: dict, recipe_id: str) -> dict:
    """A study's settings for one recipe: its per_recipe entry over the study's own."""
    return {**spec, **spec.get("per_recipe", {}).get(recipe_id, {})}


def learning_rates(spec: dict, recipe_id: str) -> list[str]:
    """The lr labels of one recipe in a study ("none" for the baselines, which have no lr)."""
    recipe = all_recipes()[recipe_id]
    if recipe.kind == "baseline":
        return ["none"]
    if recipe.kind == "ensemble":  # votes over its members' runs, at their learning rates
        recipe = all_recipes()[recipe.members]
    settings = recipe_settings(spec, recipe.id)
    own = spec.get("per_recipe", {}).get(recipe.id, {})
    if "learning_rates" in settings and "lr_factors" not in own:
        rates = settings["learning_rates"]
    else:  # rounded so that e.g. 0.03 * 0.333333 is 0.01, not 0.00999999
        rates = [float(f"{recipe.lr * factor:.4g}") for factor in settings.get("lr_factors", [1])]
    return list(dict.fromkeys(map(lr_label, rates)))


def seeds(spec: dict, recipe_id: str) -> list[int]:
    """Deterministic baselines run once (the first seed); everything else once per seed."""
    chosen = recipe_settings(spec, recipe_id)["seeds"]
    return chosen[:1] if all_recipes()[recipe_id].kind == "baseline" else chosen


def ensemble_groups(spec: dict, recipe_id: str) -> list[list[int]]:
    """Seeds of the member runs, in sorted groups of five; one short group if there are fewer."""
    chosen = sorted(seeds(spec, all_recipes()[recipe_id].members))
    size = ENSEMBLE_SIZE
    groups = [chosen[i:i + size] for i in range(0, len(chosen) - size + 1, size)]
    return groups or [chosen]  # the short group reports "not enough runs", never a number


def planned_runs(spec: dict) -> list[PlannedRun]:
    """Every run (and ensemble group) a study trains, in the study's recipe order."""
    runs = []
    for recipe_id in spec["recipes"]:
        for lr in learning_rates(spec, recipe_id):
            if all_recipes()[recipe_id].kind == "ensemble":
                groups = range(1, len(ensemble_groups(spec, recipe_id)) + 1)
                runs += [PlannedRun(recipe_id, lr, group=k) for k in groups]
            else:
                runs += [PlannedRun(recipe_id, lr, seed=s) for s in seeds(spec, recipe_id)]
    return runs


def at_published_lr(run: PlannedRun, recipe) -> bool:
    """Whether a run counts towards its recipe's verdict: trained at the published learning rate
    (a baseline has none; an ensemble votes at its members')."""
    return run.group is not None or run.lr in ("none", lr_label(recipe.lr))


def runs_needed(recipe) -> int:
    """Finished runs (ensemble groups) at the published learning rate a recipe's verdict needs:
    the report's rule (stats.runs_needed), so progress never counts a number the report cannot
    judge."""
    return stats.runs_needed(recipe.best_of, deterministic=recipe.kind == "baseline",
                             two_numbers=recipe.best_chosen_by == "validation")


# --- progress -------------------------------------------------------------------------------

def _cost_class(recipe) -> str:
    arch = recipe.arch
    if arch.conv_padding:
        return "wide"
    if recipe.protocol.code == "tutorial":
        return "tutorial"
    if not arch.convs:
        return "dense"
    if len(arch.convs) == 1:
        return "conv20"
    if max(arch.hidden) >= 1000:
        return "conv20-40-fc1000x2" if len(arch.hidden) > 1 else "conv20-40-fc1000"
    return "conv20-40"


def _compute(recipe) -> tuple:
    """What one training step costs: the same network at the same batch size, whatever its source,
    data or hyperparameters (network3's and the articles' ReLU double conv: 1,780-1,850 images per
    CPU-second each, docs/performance.md)."""
    return recipe.arch, recipe.batch_size


def planned_images(recipe, spec: dict) -> int:
    """Training images one run of the recipe trains in this study (epochs x images)."""
    subset = min(spec.get("train_subset", math.inf), recipe.train_subset or SPLIT_SIZE[recipe.protocol.split])
    return spec.get("epochs", recipe.epochs) * planned_train_images(recipe.with_overrides(train_subset=subset))


@dataclass
class Progress:
    published_done: int  # published numbers whose faithful recipe has a verdict's worth of runs
    published_total: int
    runs_done: int
    runs_planned: int
    core_hours_done: float
    core_hours_left: float
    rows: list[dict]  # one per recipe of the study


def measured_rates(records, cpu: str | None = None) -> tuple[dict[tuple, list[float]], float]:
    """The images per core-second of every finished network run among these records (its images/s
    over its torch threads, so that a two-thread run costs its two cores), by what a training
    step costs (`_compute`), and the factor by which a network without rates runs faster than its
    `NOMINAL_RATES` class.

    Once runs on the `cpu` kind (`train.cpu_kind`) are recorded, every estimate is at this kind's
    speed, since it trains what is left (a Zen 5 trains the conv nets 2x the Intel kind and 3.5x
    the nominal rates): its own runs' rates, and for the other networks, measured elsewhere or not
    at all, the nominal rate times the median over its networks of (rate here / nominal). On a
    kind with no runs yet, every kind's rates and the nominal ones, unscaled."""
    recipes = all_recipes()
    rates, here, classes = defaultdict(list), defaultdict(list), {}
    for m in records:
        recipe = recipes.get(m.get("recipe"))
        if recipe is not None and recipe.kind == "network" and is_finished(m) and m.get("images_per_second"):
            rate = m["images_per_second"] / run_threads(m)
            rates[_compute(recipe)].append(rate)
            classes[_compute(recipe)] = _cost_class(recipe)
            if cpu is not None and (m.get("environment") or {}).get("cpu_kind") == cpu:
                here[_compute(recipe)].append(rate)
    if not here:
        return rates, 1.0
    factor = statistics.median(statistics.median(measured) / NOMINAL_RATES[classes[key]]
                               for key, measured in here.items())
    return here, factor


def progress(spec: dict, study: str, results: str | Path = "results") -> Progress:
    """What a study's record holds and what is left, recipe by recipe."""
    recipes = all_recipes()
    records: dict[Path, dict] = {}
    for path in find_records(Path(results, study)):
        try:
            records[path.resolve()] = read_record(path)
        except RecordError:
            continue  # counted as missing; `mnistbench aggregate` names the broken file
    rates, speed = measured_rates(records.values(), cpu_kind())
    rows, done_seconds, left_seconds = [], 0.0, 0.0
    planned = planned_runs(spec)
    for recipe_id in spec["recipes"]:
        recipe = recipes[recipe_id]
        mine = [r for r in planned if r.recipe == recipe_id]
        found = [records.get(r.path(study, results).resolve()) for r in mine]
        finished = [m for m in found if m is not None and is_finished(m)]
        at_published = [m for r, m in zip(mine, found)
                        if m is not None and is_finished(m) and at_published_lr(r, recipe)]
        seconds = sum(core_seconds(m) for m in found if m is not None)
        missing = sum(m is None for m in found)
        one_run = 0.0  # seconds one more run costs; a baseline's or a vote's are negligible
        if recipe.kind == "network":
            measured = rates[_compute(recipe)]  # its network's runs: one rate for the same cost
            rate = statistics.median(measured) if measured else NOMINAL_RATES[_cost_class(recipe)] * speed
            one_run = planned_images(recipe, spec) / rate * 1.1  # + evaluation, ~10%
        left = missing * one_run
        need = runs_needed(recipe)
        reachable = sum(at_published_lr(r, recipe) for r in mine) >= need  # as the study is configured
        rows.append({"recipe": recipe_id, "published_id": recipe.published_id,
                     "variant": bool(recipe.variant), "planned": len(mine),
                     "finished": len(finished), "at_published_lr": len(at_published),
                     "needed": need, "reachable": reachable, "enough": len(at_published) >= need,
                     "core_hours": seconds / 3600, "core_hours_left": left / 3600,
                     "run_hours": one_run / 3600})
        done_seconds += seconds
        left_seconds += left
    faithful = [r for r in rows if not r["variant"]]
    return Progress(sum(r["enough"] for r in faithful), len({r["published_id"] for r in faithful}),
                    sum(r["finished"] for r in rows), len(planned),
                    done_seconds / 3600, left_seconds / 3600, rows)


def priorities(spec: dict, study: str, results: str | Path = "results") -> dict[PlannedRun, int]:
    """The campaign's order as Snakemake job priorities (higher runs first), so that a study's
    `snakemake ... all` gets its verdicts as early as it can: cheapest evidence first.

    A recipe's `priority` setting (per_recipe; default 0) comes first: the replication study puts
    its most expensive rows last with it. Then the runs a stopped campaign left half trained (a
    checkpoint in their folder), so a restart finishes them before it starts others and a lost
    machine costs as few epochs as it can. Then the runs a verdict still needs (at the published
    learning rate, in the study's seed order, as many as finished runs are missing) before the
    others (more seeds, other learning rates); an ensemble's verdict needs its groups' members
    too (3 groups: 15 member runs). Then the cheaper run first, at the rate `progress`
    estimates (the median rate of the runs of the same network at the same batch size, else a
    nominal one scaled to this CPU kind); then the study's order.
    """
    rows = {row["recipe"]: row for row in progress(spec, study, results).rows}
    recipes = all_recipes()
    runs = planned_runs(spec)
    needed = {recipe_id: row["needed"] for recipe_id, row in rows.items()}
    for recipe_id, row in rows.items():
        members = recipes[recipe_id].members
        if members in needed:  # an ensemble's groups need five member runs each
            needed[members] = max(needed[members], row["needed"] * ENSEMBLE_SIZE)
    still_needed = set()
    for recipe_id, row in rows.items():
        recipe = recipes[recipe_id]
        waiting = [r for r in runs if r.recipe == recipe_id and at_published_lr(r, recipe)
                   and not r.path(study, results).exists()]
        still_needed.update(waiting[:max(0, needed[recipe_id] - row["at_published_lr"])])
    resuming = {r for r in runs if (r.path(study, results).parent / CHECKPOINT_FILE).exists()}
    position = {run: i for i, run in enumerate(runs)}  # the study's recipe order, then lr, then seed
    keyed = sorted(runs, key=lambda r: (-recipe_settings(spec, r.recipe).get("priority", 0), r not in resuming,
                                        r not in still_needed, rows[r.recipe]["run_hours"], position[r]))
    return {run: len(keyed) - rank for rank, run in enumerate(keyed)}
