# Config loading and checking, the study -> runs expansion, and the default target.
#
# A study (config["studies"][NAME]) is a grid of recipes x learning rates x seeds. Each cell is
# one training job writing RESULTS/<study>/runs/<recipe>/lr=<lr>/seed=<seed>/metrics.json.

import math
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from mnistbench.data import MNIST_FILES
from mnistbench.recipes import all_recipes

min_version("9.0")


configfile: "config/config.yaml"


def validate_config():
    """The schema sets the defaults and rejects unknown keys, wrong types and empty grids.

    Snakemake's own message dumps the whole schema; this one is one line: where, and what.
    """
    from jsonschema import ValidationError

    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as err:
        invalid = err.__context__  # validate() raises from within `except ValidationError`
        if not isinstance(invalid, ValidationError):
            raise
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in invalid.absolute_path)
        raise WorkflowError(f"config: {where.lstrip('.') + ': ' if where else ''}{invalid.message}") from None


validate_config()

# One GPU per training job when the jobs use a GPU, so that `--resources gpu=N` runs N of them
# at a time rather than time-slicing one device among --cores processes (docs/workflow.md).
if config["gpus_per_job"] == "auto":
    config["gpus_per_job"] = 1 if config["device"] == "cuda" else 0

RECIPES = all_recipes()
RESULTS = config["results_dir"]
STUDY = config["study"]
ENSEMBLE_SIZE = 5  # the book's ensemble: five dropout nets
DATA_DIR = config["data_dir"]
# The unpacked files torchvision reads: once they exist no job downloads or unpacks anything.
MNIST_READY = [f"{DATA_DIR}/MNIST/raw/{name.removesuffix('.gz')}" for name in MNIST_FILES]
# Options that do not change a run's numbers: kept out of `params` so that changing them
# (say, mlflow: false) does not make Snakemake rerun finished runs.
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


def lr_label(lr):
    """The lr wildcard: `{:g}` of the learning rate, passed verbatim to `mnistbench train --lr`."""
    return f"{lr:g}"


def learning_rates(study, recipe_id):
    """The lr wildcards of one recipe in a study ("none" for the baselines, which have no lr)."""
    recipe = RECIPES[recipe_id]
    if recipe.kind == "baseline":
        return ["none"]
    if recipe.kind == "ensemble":  # votes over its members' runs, at their learning rates
        recipe = RECIPES[recipe.members]
    spec = study_config(study)
    if "learning_rates" in spec:
        rates = spec["learning_rates"]
    else:  # rounded so that e.g. 0.03 * 0.333333 is 0.01, not 0.00999999
        rates = [float(f"{recipe.lr * factor:.4g}") for factor in spec.get("lr_factors", [1])]
    return list(dict.fromkeys(map(lr_label, rates)))


def seeds(study, recipe_id):
    """Deterministic baselines run once (the first seed); everything else once per seed."""
    chosen = study_config(study)["seeds"]
    return chosen[:1] if RECIPES[recipe_id].kind == "baseline" else chosen


def ensemble_groups(study):
    """Seeds of the member runs, in sorted groups of five; one short group if there are fewer."""
    chosen = sorted(study_config(study)["seeds"])
    groups = [chosen[i:i + ENSEMBLE_SIZE] for i in range(0, len(chosen) - ENSEMBLE_SIZE + 1, ENSEMBLE_SIZE)]
    return groups or [chosen]  # the short group reports "not enough runs", never a number


def run_metrics(study, recipe, lr, seed):
    return f"{RESULTS}/{study}/runs/{recipe}/lr={lr}/seed={seed}/metrics.json"


def ensemble_metrics(study, recipe, lr, group):
    return f"{RESULTS}/{study}/runs/{recipe}/lr={lr}/group={group}/metrics.json"


def study_outputs(study):
    """Every metrics.json of a study: the training runs and the ensemble groups."""
    outputs = []
    for recipe_id in study_config(study)["recipes"]:
        for lr in learning_rates(study, recipe_id):
            if RECIPES[recipe_id].kind == "ensemble":
                groups = range(1, len(ensemble_groups(study)) + 1)
                outputs += [ensemble_metrics(study, recipe_id, lr, k) for k in groups]
            else:
                outputs += [run_metrics(study, recipe_id, lr, s) for s in seeds(study, recipe_id)]
    return outputs


def study_tables(study):
    return [f"{RESULTS}/{study}/{name}" for name in ("runs.csv", "runs.parquet", "summary.csv")]


check_studies()


def batching_on():
    """batch_runs: auto batches when the jobs train on a GPU (as seen from where snakemake runs)."""
    if config["batch_runs"] != "auto":
        return config["batch_runs"] in (True, "true")
    if config["device"] != "auto":
        return config["device"] == "cuda"
    import torch

    return torch.cuda.is_available()


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


# What `snakemake` builds with no target (`rule all`, in the Snakefile: Snakemake ignores
# default_target in included files). Other rule files append to this list, e.g. report.smk
# adds the HTML report; `rule all` reads it only after every file is included.
# Every run's metrics.json is a target too: Snakemake does not rebuild a deleted intermediate
# file while the tables made from it are up to date, so deleting one run's metrics.json would
# otherwise rerun nothing. As a target, it reruns exactly that run (and then the tables).
ALL_TARGETS = study_outputs(STUDY) + study_tables(STUDY)
