# The replication report of a study: reports/<study>/index.html (self-contained) and its
# figures as PNG and SVG. The figures (and the page) are marked for `snakemake --report`.
# With `mlflow: true` (TRACKING), the same step fills the study's MLflow parent run (tables,
# verdicts, this report) and brings every run of the study under it; runs missing from MLflow
# are replayed from their metrics.json first, so a fresh clone of a record trained elsewhere
# fills MLflow without training. It writes nothing else: the records are its inputs.
# Snakemake empties the figure folders before the step, so it regenerates the tracked page and
# figures of the replication record too (--write-tracked): `snakemake ... study=replication` is
# how the record is brought up to date.

import json
from pathlib import Path

REPORT_PAGE = "reports/{study}/index.html"


report: "../report/workflow.rst"  # the front page of `snakemake --report report.html`


rule report:
    input:
        runs=f"{RESULTS}/{{study}}/runs.csv",
        summary=f"{RESULTS}/{{study}}/summary.csv",
        # The report also reads every run's metrics.json (histories and configs), but the tables
        # already depend on each of them: listing them again printed 20 KB per dry run.
    output:
        page=report(REPORT_PAGE, caption="../report/page.rst", category="Replication report"),
        figures=report(directory("reports/{study}/figures"), patterns=["{figure}.png"],
                       caption="../report/figures.rst", category="Replication report",
                       labels={"study": "{study}", "figure": "{figure}"}),
        curves=report(directory("reports/{study}/learning_curves"), patterns=["{recipe}.png"],
                      caption="../report/learning_curves.rst", category="Learning curves",
                      labels={"study": "{study}", "recipe": "{recipe}"}),
    log:
        "logs/{study}/report.log",
    params:
        study_dir=lambda wildcards, input: Path(input.runs).parent,
        out=lambda wildcards, output: Path(output.page).parent,
        study_config=lambda wildcards: json.dumps(study_config(wildcards.study)),
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{MNISTBENCH} report --study-dir {params.study_dir:q} --out {params.out:q} --write-tracked "
        "--study-config {params.study_config:q} {TRACKING} > {log:q} 2>&1"


ALL_TARGETS.append(REPORT_PAGE.format(study=STUDY))


onsuccess:
    # The last thing `snakemake` (and so `make run`) prints: where to read the results.
    page = Path(REPORT_PAGE.format(study=STUDY))
    tables = Path(RESULTS, STUDY, "summary.csv")
    if page.exists() and tables.exists() and page.stat().st_mtime >= tables.stat().st_mtime:
        print(f"Replication report of study {STUDY}: {page.resolve()}")
    if config["mlflow"]:
        from mnistbench.tracking import study_link

        try:  # the store `mlflow ui` shows (the workflow's own server, if any, stops with it)
            link = study_link(STUDY, "http://127.0.0.1:5000" if config["mlflow_server"] else None)
        except Exception:  # MLflow is a view: its failure never spoils a finished workflow
            link = None
        if link:
            print(f"MLflow runs of study {STUDY}: {link} (`mlflow ui` in this folder serves a local store)")
