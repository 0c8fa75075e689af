# mnistbench: seeds x recipes x learning rates -> training jobs -> MLflow and tables.
#
#   snakemake --cores 4                              the `quick` study (a pipeline check)
#   snakemake --cores 4 --config study=nielsen       any study in config/config.yaml
#
# The rules live in workflow/rules/; common.smk (config, validation, helpers) comes first,
# then every other rule file, so a new workflow/rules/*.smk is picked up without editing this.

from pathlib import Path


include: "workflow/rules/common.smk"


for _rules in sorted(Path(workflow.basedir, "workflow", "rules").glob("*.smk")):
    if _rules.name != "common.smk":

        include: str(_rules)


rule all:
    default_target: True
    input:
        lambda wildcards: ALL_TARGETS,  # the study's tables, plus what rule files appended
