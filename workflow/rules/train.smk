# One job per run: `mnistbench train` writes the run folder; metrics.json (written last) is
# the job's output. A run that is killed keeps its checkpoint.pt and resumes from it.
#
# Whether a finished run is up to date depends only on what decides its numbers: its path
# (study, recipe, lr, seed) and run_options() (common.smk), the one non-derived param of every
# training rule. The other params are derived from the output paths, so Snakemake's params
# trigger ignores them, and the workflow profile drops the code trigger: running a run alone
# (rule train) or batched with others (train_batch_<recipe>) gives the same up-to-date runs.


# What a training job asks of the machine or the cluster; the time limit grows with each
# attempt (a profile's `retries`), and a resubmitted job resumes from its last checkpoint.
# A cluster's own settings (partition, account, GPUs) live in its profile (workflow/profiles/).
TRAINING_RESOURCES = {
    "mem_mb": config["mem_mb_per_job"],
    "runtime": lambda wildcards, attempt: config["runtime_per_job"] * attempt,
    **({"gpu": config["gpus_per_job"]} if config["gpus_per_job"] else {}),
}


rule download:
    output:
        MNIST_READY,
    log:
        "logs/download.log",
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "{MNISTBENCH} download --data-dir {DATA_DIR:q} > {log:q} 2>&1"


rule train:
    wildcard_constraints:
        recipe=SOLO_RECIPES,  # the batched ones are the batch rules' outputs (below)
    output:
        run_metrics("{study}", "{recipe}", "{lr}", "{seed}"),
    log:
        "logs/{study}/{recipe}/lr={lr}/seed={seed}.log",
    params:
        run=lambda wildcards: run_options(wildcards.study, wildcards.recipe),
        # derived from the output path, which holds the lr ("none" for the baselines)
        lr=lambda wildcards, output: "" if run_of(output[0])[1] == "none" else f"--lr {run_of(output[0])[1]}",
        out=lambda wildcards, output: Path(output[0]).parent,
    threads: lambda wildcards: job_threads(wildcards.study, wildcards.recipe)
    priority: run_priority
    resources:
        **TRAINING_RESOURCES,
    shell:
        "{MNISTBENCH} train --recipe {wildcards.recipe} --seed {wildcards.seed} {params.lr} "
        "{params.run} --study {wildcards.study} {TRACKING} --threads {threads} "
        "--device {config[device]} --data-dir {DATA_DIR:q} --out {params.out:q} > {log:q} 2>&1"


# Batched training (batch_runs): all seeds x learning rates of one recipe in one job, as one
# stacked model (mnistbench train-batch, mnistbench/batched.py); it writes the same run folders
# and one MLflow run per run. One rule per recipe of the study, since a rule's outputs must
# be known when it is defined. Each run of a batch keeps a checkpoint.pt, as in `train`.
for _recipe in BATCHED_RECIPES:

    rule:
        name:
            f"train_batch_{_recipe}"
        output:
            batch_outputs(STUDY, _recipe),
        log:
            f"logs/{STUDY}/{_recipe}/batch.log",
        params:
            run=run_options(STUDY, _recipe),
            study=lambda wildcards, output: parse_run_path(output[0])["study"],
            recipe=lambda wildcards, output: run_of(output[0])[0],
            seeds=lambda wildcards, output: " ".join(dict.fromkeys(run_of(p)[2] for p in output)),
            lrs=lambda wildcards, output: " ".join(dict.fromkeys(run_of(p)[1] for p in output)),
            # filled in by mnistbench, so a function: Snakemake would expand a plain string
            out_pattern=lambda wildcards, output: str(
                run_dir(parse_run_path(output[0])["study"], run_of(output[0])[0], "{lr}", "{seed}", results=RESULTS)),
        threads: job_threads(STUDY, _recipe)
        resources:
            **TRAINING_RESOURCES,
        shell:
            "{MNISTBENCH} train-batch --recipe {params.recipe} --seeds {params.seeds} "
            "--lrs {params.lrs} {params.run} --study {params.study} {TRACKING} --threads {threads} "
            "--device {config[device]} --data-dir {DATA_DIR:q} --out-pattern {params.out_pattern:q} "
            "> {log:q} 2>&1"
