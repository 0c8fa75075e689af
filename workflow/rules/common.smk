# Config loading and checking, the study -> runs expansion, and the default target.
#
# A study (config["studies"][NAME]) is a grid of recipes x learning rates x seeds. Each cell is
# one training job writing RESULTS/<study>/runs/<recipe>/lr=<lr>/seed=<seed>/metrics.json.

import functools
import math
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

import mnistbench.definitions
import mnistbench.study
from mnistbench.data import MNIST_FILES
from mnistbench.recipes import all_recipes
from mnistbench.record import RECORD_FILE, parse_run_path, run_dir

min_version("9.0")


configfile: "config/config.yaml"


def validate_config():
    """The schema sets the defaults and rejects unknown keys, wrong types and empty grids.

    Snakemake's own message dumps the whole schema; this one is one line: where, and what.
    """
    from jsonschema import ValidationError

    for key in ("mlflow", "mlflow_server"):  # `--config mlflow=false` arrives as the string "false"
        if config.get(key) in ("true", "false"):
            config[key] = config[key] == "true"
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as err:
        invalid = err.__context__  # validate() raises from within `except ValidationError`
        if not isinstance(invalid, ValidationError):
            raise
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in invalid.absolute_path)
        raise WorkflowError(f"config: {where.lstrip('.') + ': ' if where else ''}{invalid.message}") from None


validate_config()


def define_recipes():
    """The study's own recipes (the config's `recipes:`, docs/claims.md): checked and registered
    before the run list is built, so that a bad definition stops the workflow before any job."""
    try:
        mnistbench.definitions.define(config.get("recipes"))
    except mnistbench.definitions.DefinitionError as err:
        raise WorkflowError(f"config: {err}") from None


define_recipes()

# One GPU per training job when the jobs use a GPU, so that `--resources gpu=N` runs N of them
# at a time rather than time-slicing one device among --cores processes (docs/workflow.md).
if config["gpus_per_job"] == "auto":
    config["gpus_per_job"] = 1 if config["device"] == "cuda" else 0

RECIPES = all_recipes()
RESULTS = config["results_dir"]
STUDY = config["study"]
DATA_DIR = config["data_dir"]
# The unpacked files torchvision reads: the `download` rule's output. Jobs do not depend on it:
# each fetches MNIST itself if it is missing (under a file lock, mnistbench.data.load_mnist), so
# that a fresh clone holding finished runs never retrains them because MNIST arrived (Snakemake
# reruns whatever depends on a job that runs).
MNIST_READY = [f"{DATA_DIR}/MNIST/raw/{name.removesuffix('.gz')}" for name in MNIST_FILES]
# Every rule runs the package with the interpreter that runs the workflow, so no activated
# environment or PATH is needed, and a job never picks up another installation's `mnistbench`.
# `snakemake --lint` findings left on purpose (tests/test_lint.py holds the list):
# - "Specify a conda environment or container for each rule": the workflow runs in the one
#   environment it is installed in (requirements.lock, or environment.yml), whose interpreter
#   is this one; five per-rule environments would be five copies of torch.
# - "Shell command directly uses variable MNISTBENCH / TRACKING / DATA_DIR / config from
#   outside of the rule": these say how a job runs (which interpreter, MLflow on or off,
#   where MNIST is, which device), not what it computes. As params they would be a rerun
#   trigger, and moving the environment or turning MLflow off would retrain finished runs.
MNISTBENCH = f"{shlex.quote(sys.executable)} -m mnistbench"
TRACKING = "--mlflow" if config["mlflow"] else ""


def check_studies():
    """What the schema cannot know: recipe ids, the selected study, ensemble members."""
    studies = config["studies"]
    if STUDY not in studies:
        raise WorkflowError(f"config: study {STUDY!r} is not defined; defined studies: "
                            f"{', '.join(studies)}")
    for name, study in studies.items():
        unknown = [r for r in study["recipes"] if r not in RECIPES]
        if unknown:
            raise WorkflowError(f"config: study {name!r} has unknown recipe(s) {', '.join(unknown)}; "
                                f"valid recipes (see 'mnistbench recipes'): {', '.join(RECIPES)}")
        if "lr_factors" in study and "learning_rates" in study:
            raise WorkflowError(f"config: study {name!r} sets both lr_factors and learning_rates; "
                                f"give one of them")
        for recipe in map(RECIPES.get, study["recipes"]):
            if recipe.kind == "ensemble" and recipe.members not in study["recipes"]:
                raise WorkflowError(f"config: study {name!r} has {recipe.id}, a vote of "
                                    f"{recipe.members} runs, but not {recipe.members}; add it")
            for lr in learning_rates(name, recipe.id):
                if lr != "none" and not 0 < float(lr) < math.inf:
                    raise WorkflowError(f"config: study {name!r} gives {recipe.id} the learning "
                                        f"rate {lr}; learning rates must be finite and > 0")



def study_config(study):
    return config["studies"][study]


# The study -> runs expansion lives in the package (mnistbench.study), so that the runs
# Snakemake trains and the runs `mnistbench progress` counts are one list; the run folder
# layout lives in mnistbench.record.
def learning_rates(study, recipe_id):
    """The lr wildcards of one recipe in a study ("none" for the baselines, which have no lr)."""
    return mnistbench.study.learning_rates(study_config(study), recipe_id)


def seeds(study, recipe_id):
    return mnistbench.study.seeds(study_config(study), recipe_id)


def ensemble_groups(study, recipe_id):
    return mnistbench.study.ensemble_groups(study_config(study), recipe_id)


def run_metrics(study, recipe, lr, seed):
    return str(run_dir(study, recipe, lr, seed=seed, results=RESULTS) / RECORD_FILE)


def ensemble_metrics(study, recipe, lr, group):
    return str(run_dir(study, recipe, lr, group=group, results=RESULTS) / RECORD_FILE)


def study_outputs(study):
    """Every metrics.json of a study: the training runs and the ensemble groups."""
    return [str(run.path(study, RESULTS)) for run in mnistbench.study.planned_runs(study_config(study))]


def ensemble_members(wildcards):
    """The member runs of ensemble group k: the k-th five seeds, in sorted order."""
    members = RECIPES[wildcards.recipe].members
    group = ensemble_groups(wildcards.study, wildcards.recipe)[int(wildcards.group) - 1]
    return [run_metrics(wildcards.study, members, wildcards.lr, seed) for seed in group]


def run_options(study_name, recipe_id):
    """The options, other than lr and seed, that decide a run's result (Snakemake reruns a run
    if they change)."""
    study, recipe = study_config(study_name), RECIPES[recipe_id]
    options = []
    if recipe.kind == "network":
        if "epochs" in study:
            options += ["--epochs", study["epochs"]]
        if "train_subset" in study:  # at most: recipes that use fewer images keep their number
            options += ["--train-subset", min(study["train_subset"], recipe.train_subset or math.inf)]
    if study["pipeline_check"]:
        options.append("--pipeline-check")
    definition = mnistbench.definitions.definition_json(recipe_id)
    if definition:  # a recipe of the config: the job gets its definition (a change reruns its runs)
        options += ["--define", shlex.quote(definition)]
    return " ".join(map(str, options))


def job_threads(study, recipe_id):
    """Torch threads of one training job (its Snakemake threads): the recipe's `threads` in the
    study's per_recipe settings, else threads_per_job."""
    return mnistbench.study.recipe_settings(study_config(study), recipe_id).get("threads", config["threads_per_job"])


@functools.cache
def study_priorities(study):
    return mnistbench.study.priorities(study_config(study), study, RESULTS)


def run_priority(wildcards):
    """Snakemake's job priority of one run: the study's campaign order (mnistbench.study.priorities),
    so that `snakemake ... all` trains the runs a verdict still needs first. Computed once per
    invocation, from the records there are when it starts."""
    run = mnistbench.study.PlannedRun(wildcards.recipe, wildcards.lr, int(wildcards.seed))
    return study_priorities(wildcards.study).get(run, 0)


def run_of(path):
    """results/<study>/runs/<recipe>/lr=<lr>/seed=<seed>/metrics.json -> (recipe, lr, seed)."""
    run = parse_run_path(path)
    return run["recipe"], run["lr"], run["seed"]


def study_tables(study):
    return [f"{RESULTS}/{study}/{name}" for name in ("runs.csv", "runs.parquet", "summary.csv")]


check_studies()


def batching_on():
    """batch_runs: auto batches when the config says the jobs train on a GPU (device: cuda).

    Decided by the config alone, never by the machine that runs `snakemake` (a login node
    without a GPU submits GPU jobs). How runs are grouped into jobs never makes a finished run
    stale: see the params of the training rules (train.smk) and the workflow profile.
    """
    if config["batch_runs"] != "auto":
        return config["batch_runs"] in (True, "true")
    return config["device"] == "cuda"


def batch_outputs(study, recipe_id):
    return [run_metrics(study, recipe_id, lr, seed)
            for lr in learning_rates(study, recipe_id) for seed in seeds(study, recipe_id)]


# Recipes of the selected study trained as one batched job each; every other run is a job.
BATCHED_RECIPES = [r for r in study_config(STUDY)["recipes"]
                   if batching_on() and RECIPES[r].kind == "network" and len(batch_outputs(STUDY, r)) > 1]
SOLO_RECIPES = f"(?!(?:{'|'.join(BATCHED_RECIPES)})$)[a-z0-9_]+" if BATCHED_RECIPES else "[a-z0-9_]+"


wildcard_constraints:
    study=r"[A-Za-z0-9_-]+",
    recipe=r"[a-z0-9_]+",
    lr=r"none|[0-9.]+(e[-+]?[0-9]+)?",
    seed=r"[0-9]+",
    group=r"[0-9]+",


# What `snakemake` builds with no target (the Snakefile's `all`: Snakemake ignores a
# default_target in included files). Other rule files append to this list, e.g. report.smk
# adds the HTML report; `rule all` reads it only after every file is included.
# Every run's metrics.json is a target too: Snakemake does not rebuild a deleted intermediate
# file while the tables made from it are up to date, so deleting one run's metrics.json would
# otherwise rerun nothing. As a target, it reruns exactly that run (and then the tables).
ALL_TARGETS = study_outputs(STUDY) + study_tables(STUDY)
