# Ensemble votes and the study tables (runs.csv, runs.parquet, summary.csv).


rule ensemble:
    input:
        members=ensemble_members,
    output:
        ensemble_metrics("{study}", "{recipe}", "{lr}", "{group}"),
    log:
        "logs/{study}/{recipe}/lr={lr}/group={group}.log",
    params:
        out=lambda wildcards, output: Path(output[0]).parent,
        check=lambda wildcards: "--pipeline-check" if study_config(wildcards.study)["pipeline_check"] else "",
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "{MNISTBENCH} ensemble --recipe {wildcards.recipe} --group {wildcards.group} "
        "--study {wildcards.study} {params.check} {TRACKING} --data-dir {DATA_DIR:q} "
        "--out {params.out:q} {input.members:q} > {log:q} 2>&1"


rule aggregate:
    input:
        lambda wildcards: study_outputs(wildcards.study),
    output:
        study_tables("{study}"),
    log:
        "logs/{study}/aggregate.log",
    params:
        study_dir=f"{RESULTS}/{{study}}",
        check=lambda wildcards: "--pipeline-check" if study_config(wildcards.study)["pipeline_check"] else "",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{MNISTBENCH} aggregate {params.check} {params.study_dir:q} {input:q} > {log:q} 2>&1"
