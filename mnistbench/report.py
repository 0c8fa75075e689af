"""The replication report of a study: reports/<study>/index.html and its figures.

Input: the study tables (results/<study>/runs.csv and summary.csv, from mnistbench.aggregate)
and, for the learning curves and the exact configuration, each run's metrics.json. Output: one
self-contained HTML file (figures embedded as PNG, no external CSS, JavaScript or fonts) that
sets every published number beside its replication and its verdict (mnistbench.verdicts), plus
each figure as PNG and SVG in figures/ and learning_curves/.

    mnistbench report --study-dir results/nielsen --out reports/nielsen
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import struct
from importlib import metadata
from pathlib import Path

import pandas as pd

from . import figures, stats
from .aggregate import UNLEARNED_RECALL
from .recipes import all_recipes, protocol_fields
from .record import RECORD_FILE, WALL_LAST_STRETCH, atomic_write, experiment_name, git, wall_provenance
from .verdicts import (ReportError, is_pipeline_check, judge_recipes, load_metrics, load_tables, not_yet_run,
                       pooled_text, run_path)

FIGURES_DIR = "figures"  # overview figures: published_vs_replicated, lr_sensitivity, protocol_comparison
CURVES_DIR = "learning_curves"  # one <recipe>.png/.svg per trained recipe

REPORT_PACKAGES = ["pandas", "numpy", "scipy", "matplotlib", "seaborn", "jinja2", "mlflow", "snakemake"]
CONFIG_HIDDEN = {"recipe", "published_id", "seed", "group", "members_recipe", "vote"}


def protocol_groups(recipe_ids: list[str]) -> list[dict]:
    """Architectures that the study trains under both protocols ("nielsen" and "pytorch").

    Dropout's scaling convention belongs to the protocol, not the architecture."""
    recipes = all_recipes()
    by_arch: dict = {}
    for recipe_id in recipe_ids:
        recipe = recipes[recipe_id]
        if recipe.kind != "network":
            continue
        arch = dataclasses.replace(recipe.arch, dropout_style="nielsen")
        by_arch.setdefault(arch, []).append(recipe)
    groups = []
    for group in by_arch.values():
        families = {r.protocol.family for r in group}
        if families >= {"nielsen", "pytorch"}:
            group = sorted(group, key=lambda r: (r.protocol.family != "nielsen", r.id))
            groups.append({"label": group[0].notes, "recipes": [r.id for r in group]})
    return groups


# --- per-recipe details ---------------------------------------------------------------------

def history_frame(indices: list[int], metrics: dict[int, dict]) -> pd.DataFrame:
    """Long table of per-epoch accuracies: seed, epoch, split (validation|test), accuracy."""
    rows = []
    for i in indices:
        for entry in metrics[i].get("history") or []:
            for split, key in (("validation", "val_accuracy"), ("test", "test_accuracy")):
                if entry.get(key) is not None:
                    rows.append({"seed": metrics[i].get("seed"), "epoch": entry["epoch"],
                                 "split": split, "accuracy": entry[key]})
    return pd.DataFrame(rows, columns=["seed", "epoch", "split", "accuracy"])


def config_table(indices: list[int], metrics: dict[int, dict]) -> list[tuple[str, str]]:
    """The resolved run configuration shared by the runs; keys whose value differs say so."""
    configs = [metrics[i].get("config") or {} for i in indices]
    keys = list(dict.fromkeys(k for c in configs for k in c if k not in CONFIG_HIDDEN))
    table = []
    for key in keys:
        values = list(dict.fromkeys(json.dumps(c.get(key)) for c in configs))
        table.append((key, values[0] if len(values) == 1 else "varies: " + ", ".join(values)))
    return table


def protocol_notes(recipe, configs: list[dict]) -> list[tuple[str, str]]:
    """The recipe's protocol in words, with the weight decay its runs resolved to."""
    weight_decays = sorted({c.get("weight_decay") for c in configs if c.get("weight_decay") is not None})
    return protocol_fields(recipe, weight_decays or None)


def run_records(indices: list[int], runs: pd.DataFrame) -> list[dict]:
    """runs.csv rows as dicts: None for missing values, whole numbers as ints (CSV reads a
    column with gaps as floats)."""
    records = []
    for i in indices:
        record = {key: (None if pd.isna(value) else value) for key, value in runs.loc[i].items()}
        for key in ("seed", "group", "selected_epoch"):
            if record.get(key) is not None:
                record[key] = int(record[key])
        records.append(record)
    return records


# --- provenance -----------------------------------------------------------------------------

def provenance(runs: pd.DataFrame, metrics: dict[int, dict], study_config: dict | None) -> dict:
    environments = [m.get("environment") or {} for m in metrics.values() if m.get("environment")]

    def distinct(key):
        return sorted({str(e[key]) for e in environments if e.get(key) is not None})

    trained = runs[runs["kind"] != "ensemble"]  # an ensemble's train_seconds is its members' sum
    wall, partial, short = run_walls(trained, metrics)
    # when each run finished: its own record says so (a clone's file times say when it was checked out)
    times = [datetime.datetime.strptime(m["environment"]["finished_at"], "%Y-%m-%dT%H:%M:%SZ")
             .replace(tzinfo=datetime.timezone.utc).timestamp()
             if (m.get("environment") or {}).get("finished_at") else m["_mtime"] for m in metrics.values()]
    devices = (trained["device"].fillna("?") + " (" + trained["device_name"].fillna("?") + ")").value_counts()
    report_versions = {}
    for name in REPORT_PACKAGES:
        try:
            report_versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "run_commits": sorted(runs["git_commit"].dropna().unique()),
        "report_commit": git("rev-parse", "HEAD"),
        "report_dirty": bool(dirty),
        "run_versions": {key: distinct(key) for key in ("mnistbench", "torch", "torchvision", "python")},
        "report_versions": {"python": platform.python_version(), **report_versions},
        "devices": list(devices.items()),
        "hosts": sorted(runs["host"].dropna().unique()),
        "threads": distinct("threads"),
        "jobs": len(runs), "trained_runs": len(trained),
        "total_wall_hours": wall.sum() / 3600,
        "wall_last_stretch_only": partial, "wall_shorter_than_training": short,
        "total_train_hours": trained["train_seconds"].fillna(0).sum() / 3600,
        "total_eval_hours": trained["eval_seconds"].fillna(0).sum() / 3600,
        "wall_median": wall.median() if len(wall) else math.nan,
        "wall_min": wall.min() if len(wall) else math.nan,
        "wall_max": wall.max() if len(wall) else math.nan,
        "first_run": _date(min(times)), "last_run": _date(max(times)),
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "study_config": _yaml(study_config) if study_config else None,
        "mlflow_errors": int(runs["mlflow_error"].notna().sum()),
    }


def run_walls(trained: pd.DataFrame, metrics: dict[int, dict]) -> tuple[pd.Series, int, int]:
    """Each trained run's wall seconds, as far as its record can say; how many records give their
    last stretch only (made before stretches were recorded, record.wall_provenance), and how many
    of those are shorter than their own training and evaluation: for those that time counts, so
    the total is at least the training it contains."""
    walls, partial, short = {}, 0, 0
    for index, row in trained.iterrows():
        wall = row["wall_seconds"]
        if pd.isna(wall):
            continue
        if wall_provenance(metrics.get(index) or {}) == WALL_LAST_STRETCH:
            partial += 1
            busy = (row["train_seconds"] if pd.notna(row["train_seconds"]) else 0.0) + (
                row["eval_seconds"] if pd.notna(row["eval_seconds"]) else 0.0)
            if wall < busy:
                short += 1
                wall = busy
        walls[index] = wall
    return pd.Series(walls, dtype=float), partial, short


def _date(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _yaml(value: dict) -> str:
    import yaml

    return yaml.safe_dump(value, sort_keys=False, width=100)


# --- figures --------------------------------------------------------------------------------

def _embed(png: Path) -> dict:
    """The PNG as a data URI, with its size in CSS pixels (112 per inch) for width/height."""
    data = png.read_bytes()
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    scale = 112 / figures.PNG_DPI  # a little above print size: legible, and still fits
    return {"src": "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
            "width": round(width * scale), "height": round(height * scale)}


def make_figures(out: Path, runs: pd.DataFrame, summary: pd.DataFrame, rows: list[dict],
                 metrics: dict[int, dict]) -> dict:
    """Write every figure (PNG + SVG) and return, per figure name, its embedded PNG and alt text."""
    judged = {row["recipe"]: row for row in rows}
    made: dict = {"curves": {}}

    def add(fig, stem: Path, alt: str) -> dict:
        png, _ = figures.save(fig, stem)
        return {**_embed(png), "alt": alt, "png": str(png.relative_to(out)),
                "svg": str(stem.with_suffix(".svg").relative_to(out))}

    counts = pd.Series([r["verdict"] for r in rows]).value_counts()
    made["published_vs_replicated"] = add(
        figures.published_vs_replicated(rows, runs), out / FIGURES_DIR / "published_vs_replicated",
        f"Published versus replicated accuracy for {len(rows)} published numbers, one row each on its "
        f"own scale: dots are seeds, a circle with bars the mean and its 95% confidence interval, a "
        f"shaded band the 95% prediction interval, a diamond the published value. Verdicts: "
        + ", ".join(f"{n} {v}" for v, n in counts.items()) + ". The summary table lists the same numbers.")
    swept = summary.groupby("recipe")["lr"].nunique()
    if (swept > 1).any():
        made["lr_sensitivity"] = add(
            figures.lr_sensitivity(runs, summary, judged), out / FIGURES_DIR / "lr_sensitivity",
            "Accuracy against learning rate on a log axis for "
            + ", ".join(swept[swept > 1].index) + ": seeds as dots (runs that failed to learn as "
            "crosses), the means of the runs that learned with 95% confidence intervals joined by a line, the published learning rate as a dashed vertical line and "
            "the published accuracy as a diamond on it. The per-recipe tables list the same numbers.")
    groups = protocol_groups([r["recipe"] for r in rows])
    if groups:
        made["protocol_comparison"] = add(
            figures.protocol_comparison(runs, groups, judged), out / FIGURES_DIR / "protocol_comparison",
            "The same architecture under Nielsen's and the PyTorch articles' protocols: "
            + "; ".join(" versus ".join(g["recipes"]) for g in groups)
            + ". Seeds as dots, mean with 95% confidence interval, published value as a diamond.")
        made["protocol_groups"] = groups
    for row in rows:
        if row["kind"] != "network":
            continue
        history = history_frame(row["run_index"], metrics)
        title = f"{row['recipe']} at lr {row['published_lr']:g} ({row['n']} finished runs)"
        last = history.groupby("split")["accuracy"].mean() if not history.empty else {}
        made["curves"][row["recipe"]] = add(
            figures.learning_curves(history, title, row["published"], row["reported_split"]),
            out / CURVES_DIR / row["recipe"],
            f"Learning curves of {row['recipe']}: validation and test accuracy per epoch, mean over "
            f"seeds with a band of one standard deviation"
            + (f", published {row['published']:g}% as a dashed line" if row["published"] is not None else "")
            + "." + "".join(f" Mean {split} accuracy over all epochs and seeds: {value:.2f}%."
                            for split, value in dict(last).items()))
    return made


# --- the page -------------------------------------------------------------------------------

def _fmt(value, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def render(context: dict, template: str = "report.html.j2") -> str:
    """The page from one of the templates: the HTML report, or its markdown twin (report.md.j2)."""
    import jinja2
    import markupsafe

    env = jinja2.Environment(loader=jinja2.PackageLoader("mnistbench", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    # long recipe ids may break after their underscores in narrow table columns
    env.filters["wbr"] = lambda text: markupsafe.Markup("_<wbr>").join(str(text).split("_"))
    env.filters["lr"] = lambda v: "–" if v is None or pd.isna(v) else f"{v:g}"
    page = env.get_template(template).render(**context)
    return code_spans(page) if template.endswith(".html.j2") else page


def code_spans(html: str) -> str:
    """Markdown's `code` in the HTML page's text (verdict reasons, the study's description) as
    <code>: a browser would show the backticks. Escaped text holds no < or >, so a span that
    does is markup, not text, and stays."""
    return re.sub(r"`([^`<>\n]+)`", r"<code>\1</code>", html)


FINDINGS_START = "<!-- findings: generated by `mnistbench findings`; do not edit by hand -->"
FINDINGS_END = "<!-- end of findings -->"


def findings_table(study_dir, planned=()) -> str:
    """The README's findings: one line per published number of the study, from its tables;
    planned: the study's recipes, of which those without a run yet get a line saying so."""
    study_dir = Path(study_dir)
    if not (study_dir / "summary.csv").exists():
        return "No finished runs in the record yet."
    runs, summary = load_tables(study_dir)
    metrics = load_metrics(runs, study_dir)
    lines = ["| published number | published | replicated (mean ± sd, runs that learned) | failed runs | verdict |",
             "| --- | --: | --: | --: | --- |"]
    rows = judge_recipes(runs, summary, metrics, pipeline_check=False)
    for r in rows:
        name = f"`{r['recipe']}`" + (f" (best of {r['k']} by {r['best_chosen_by']})" if r["k"] > 1 else "")
        if r["variant"]:
            name += f", variant of `{r['published_id']}`"
        published = r["published_text"] or "–"
        if r["ensemble"]:
            replicated = f"{_fmt(r['mean'])} ± {_fmt(r['sd'])} ({r['ensemble']['subsets']:,} votes of {r['ensemble']['nets']} nets)"
        else:
            replicated = (f"{_fmt(r['mean'])} ± {_fmt(r['sd'])} ({r['n']})" if r["n"] > 1
                          else f"{_fmt(r['mean'])} ({r['n']})" if r["n"] else "–")
        failed = (f"{r['failed']} of {r['judged_runs']} ({r['failure_low']:.0f}-{r['failure_high']:.0f}%)"
                  if r["failed"] else "0" if r["judged_runs"] else "–")
        lines.append(f"| {name} | {published} | {replicated} | {failed} | {r['verdict']} |")
    for r in not_yet_run(planned, rows):
        variant = f", variant of `{r['published_id']}`" if r["variant"] else ""
        lines.append(f"| `{r['recipe']}`{variant} | {r['published_text'] or '–'} | – | – | no runs yet |")
    together = pooled_text(rows)
    return "\n".join(lines + (["", together] if together else []))


def update_findings(readme, study_dir, write: bool = True, planned=()) -> bool:
    """Replace the findings block of a README with the table of the study; True if it changed
    (with write=False: if it would change, leaving the README as it is)."""
    readme = Path(readme)
    text = readme.read_text()
    if FINDINGS_START not in text or FINDINGS_END not in text:
        raise ReportError(f"{readme} has no findings block ({FINDINGS_START} ... {FINDINGS_END})")
    head, rest = text.split(FINDINGS_START, 1)
    _, tail = rest.split(FINDINGS_END, 1)
    new = f"{head}{FINDINGS_START}\n{findings_table(study_dir, planned)}\n{FINDINGS_END}{tail}"
    if new != text and write:
        readme.write_text(new)
    return new != text


def build_report(study_dir, out_dir, study_config: dict | None = None) -> Path:
    """Write out_dir/index.html and the figures for the study in study_dir; returns the HTML path."""
    study_dir, out = Path(study_dir), Path(out_dir)
    runs, summary = load_tables(study_dir)
    study = str(runs["study"].dropna().iloc[0]) if runs["study"].notna().any() else study_dir.name
    metrics = load_metrics(runs, study_dir)
    for folder in (FIGURES_DIR, CURVES_DIR):  # ours alone: no figure of an earlier report survives
        shutil.rmtree(out / folder, ignore_errors=True)
    pipeline_check = is_pipeline_check(summary, study_config)
    rows = judge_recipes(runs, summary, metrics, pipeline_check)
    made = make_figures(out, runs, summary, rows, metrics)
    recipes = all_recipes()
    sections = []
    for row in rows:
        recipe = recipes[row["recipe"]]
        configs = [metrics[i].get("config") or {} for i in row["run_index"]]
        sections.append({
            **row, "notes": protocol_notes(recipe, configs),
            "config": config_table(row["run_index"], metrics),
            "lrs": summary[summary["recipe"] == row["recipe"]].to_dict("records"),
            "runs_table": run_records(list(runs.index[runs["recipe"] == row["recipe"]]), runs),
            "curves": made["curves"].get(row["recipe"]),
        })
    context = {
        "study": study, "description": (study_config or {}).get("description"),
        "pipeline_check": pipeline_check, "rows": rows, "sections": sections, "figures": made,
        "verdicts": stats.VERDICTS, "failed_rule": stats.FAILED_RULE, "max_width": f"{stats.MAX_WIDTH:g}",
        "tested": rows[0]["tested"] if rows else 0, "pooled": pooled_text(rows),
        # the verdicts that reject the published number, and how many survive Holm's adjustment
        "off_side": sum(r["verdict"] in ("above", "below") and not math.isnan(r["p_holm"]) for r in rows),
        "surviving": sum(r["verdict"] in ("above", "below") and r["p_holm"] < 0.05 for r in rows),
        "counts": pd.Series([r["verdict"] for r in rows]).value_counts().to_dict(),
        "min_runs": stats.MIN_RUNS, "unlearned_recall": f"{UNLEARNED_RECALL:g}",
        "experiment": experiment_name(study),
        "provenance": provenance(runs, metrics, study_config),
        "study_dir": str(study_dir), "any_best_of": any(r["k"] > 1 for r in rows),
        "not_yet_run": not_yet_run((study_config or {}).get("recipes"), rows),
    }
    for section in sections:  # links from the markdown page to each run's record
        for run in section["runs_table"]:
            run["record_link"] = os.path.relpath(run_path(run["run_dir"], study_dir) / RECORD_FILE, out)
    context["core_hours"] = sum(r["core_hours"] for r in rows)
    context["progress"] = None
    if study_config and study_config.get("recipes") and not pipeline_check:
        from .study import progress

        context["progress"] = progress(study_config, study, study_dir.parent)
    for name, template in (("README.md", "report.md.j2"), ("index.html", "report.html.j2")):
        text = render(context, template)
        atomic_write(out / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out / "index.html"
