# One job per run: `mnistbench train` writes the run folder; metrics.json (written last) is
# the job's output. A run that is killed keeps its checkpoint.pt and resumes from it.

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
    return " ".join(map(str, options))


def train_options(wildcards):
    lr = "" if wildcards.lr == "none" else f"--lr {wildcards.lr} "
    return lr + run_options(wildcards.study, wildcards.recipe)


rule download:
    output:
        MNIST_READY,
    log:
        "logs/download.log",
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "mnistbench download --data-dir {DATA_DIR:q} > {log:q} 2>&1"


rule train:
    wildcard_constraints:
        recipe=SOLO_RECIPES,  # the batched ones are the batch rules' outputs (below)
    input:
        ancient(MNIST_READY),  # a re-download does not make finished runs stale
    output:
        run_metrics("{study}", "{recipe}", "{lr}", "{seed}"),
    log:
        "logs/{study}/{recipe}/lr={lr}/seed={seed}.log",
    params:
        run=train_options,
        out=lambda wildcards, output: Path(output[0]).parent,
    threads: config["threads_per_job"]
    resources:
        mem_mb=config["mem_mb_per_job"],
        gpu=config["gpus_per_job"],
    shell:
        "mnistbench train --recipe {wildcards.recipe} --seed {wildcards.seed} {params.run} "
        "--study {wildcards.study} {TRACKING} --threads {threads} --device {config[device]} "
        "--data-dir {DATA_DIR:q} --out {params.out:q} > {log:q} 2>&1"


def batch_resources():
    """A batch job is a training job: the train rule's resources, and what a profile sets for
    `train` (--set-resources train:..., e.g. a Slurm GPU partition) applies to it too."""
    resources = {"mem_mb": config["mem_mb_per_job"], "gpu": config["gpus_per_job"]}
    overrides = workflow.resource_settings.overwrite_resources.get("train", {})
    return {**resources, **{name: getattr(value, "raw", value) for name, value in overrides.items()}}


# Batched training (batch_runs): all seeds x learning rates of one recipe in one job, as one
# stacked model (mnistbench train-batch, mnistbench/batched.py); it writes the same run folders
# and one MLflow run per run. One rule per recipe of the study, since a rule's outputs must
# be known when it is defined. Each run of a batch keeps a checkpoint.pt, as in `train`.
for _recipe in BATCHED_RECIPES:

    rule:
        name:
            f"train_batch_{_recipe}"
        input:
            ancient(MNIST_READY),
        output:
            batch_outputs(STUDY, _recipe),
        log:
            f"logs/{STUDY}/{_recipe}/batch.log",
        params:
            recipe=_recipe,
            seeds=" ".join(map(str, seeds(STUDY, _recipe))),
            lrs=" ".join(learning_rates(STUDY, _recipe)),
            run=run_options(STUDY, _recipe),
            # filled in by mnistbench, so a function: Snakemake would expand a plain string
            out_pattern=lambda wildcards: f"{RESULTS}/{STUDY}/runs/{{recipe}}/lr={{lr}}/seed={{seed}}",
        threads: config["threads_per_job"]
        resources:
            **batch_resources(),
        shell:
            "mnistbench train-batch --recipe {params.recipe} --seeds {params.seeds} "
            "--lrs {params.lrs} {params.run} --study {STUDY} {TRACKING} --threads {threads} "
            "--device {config[device]} --data-dir {DATA_DIR:q} --out-pattern {params.out_pattern:q} "
            "> {log:q} 2>&1"
