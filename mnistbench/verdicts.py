"""The verdict on each published number of a study, from its tables and run records.

Input: the study tables (results/<study>/runs.csv and summary.csv, from mnistbench.aggregate)
and each run's metrics.json (its configuration and history). Output: one row per published
number (judge_recipes): the replicated figures, the statistical verdict (mnistbench.stats) with
its reason, and Holm's adjustment over the verdicts. The report page (mnistbench.report) and
MLflow (mnistbench.tracking) both show these rows; neither judges anything itself.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd

from . import ensemble, stats
from .aggregate import UNLEARNED_RECALL, ci95, failed_column, missed_a_digit
from .definitions import learn
from .recipes import all_recipes, published_selection_text
from .recipes import published_row as published_row_of
from .record import RECORD_FILE, RecordError, core_seconds, read_record


class ReportError(Exception):
    """Missing or unusable inputs: reported as one line by the CLI."""


# --- inputs ---------------------------------------------------------------------------------

def load_tables(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    tables = []
    for name in ("runs.csv", "summary.csv"):
        path = study_dir / name
        if not path.is_file():
            raise ReportError(f"no {path}: build the study tables first "
                              f"('mnistbench aggregate {study_dir}' or the workflow)")
        table = pd.read_csv(path, dtype={"unlearned_digits": "string"})  # "9" stays text
        if table.empty:
            raise ReportError(f"{path} has no rows: the study has no finished runs yet")
        tables.append(table)
    return tables[0], tables[1]


def is_pipeline_check(summary: pd.DataFrame, study_config: dict | None) -> bool:
    """A pipeline check's tables say so (aggregate --pipeline-check); a study config saying so
    covers tables aggregated by hand without the flag."""
    return bool(summary["pipeline_check"].any() or (study_config or {}).get("pipeline_check"))


def study_config(study: str, config_path: str | None, inline_json: str | None) -> dict | None:
    """The study's entry of the workflow config: inline JSON (from the workflow), else
    studies.<study> of config_path when that file exists, else None."""
    if inline_json:
        try:
            value = json.loads(inline_json)
        except ValueError as err:
            raise ReportError(f"--study-config is not valid JSON: {err}") from None
        if not isinstance(value, dict):
            raise ReportError("--study-config must be a JSON object")
        return value
    if not config_path or not Path(config_path).is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load(Path(config_path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"cannot read {config_path}: {err}") from None
    return (config.get("studies") or {}).get(study)


def run_path(run_dir: str, study_dir: Path) -> Path:
    """A run folder as runs.csv names it, found again under study_dir if the tables were made
    from another working directory."""
    path = Path(run_dir)
    if path.is_dir():
        return path
    parts = path.parts
    if "runs" in parts:
        return study_dir.joinpath(*parts[len(parts) - 1 - parts[::-1].index("runs"):])
    return study_dir / path


def load_metrics(runs: pd.DataFrame, study_dir: Path) -> dict[int, dict]:
    """Each run's metrics.json (for its history, config and environment), by runs.csv row."""
    loaded = {}
    for index, run_dir in runs["run_dir"].items():
        path = run_path(run_dir, study_dir) / RECORD_FILE
        try:
            loaded[index] = read_record(path)
            loaded[index]["_mtime"] = path.stat().st_mtime
            learn(loaded[index])  # a user-defined recipe, as its record carries it
        except (OSError, RecordError) as err:
            raise ReportError(f"cannot read {path} (listed in runs.csv): {err}") from None
    return loaded


def _number(value) -> float:
    return float(value) if value is not None and pd.notna(value) else math.nan


def at_published_lr(table: pd.DataFrame) -> pd.Series:
    """Rows run at the published learning rate (the workflow rounds lrs to 4 significant digits);
    the baselines have none and always count."""
    close = (table["lr"] - table["published_lr"]).abs() <= 1e-3 * table["published_lr"].abs()
    return close | table["published_lr"].isna()


# --- judging each published number ----------------------------------------------------------

def settings_changed(recipe, configs: list[dict]) -> str:
    """What a study changed that the published number depends on (epochs, training images)."""
    if recipe.kind == "baseline":
        return ""
    reference = all_recipes()[recipe.members] if recipe.kind == "ensemble" else recipe
    changes = []
    for key, published in (("epochs", reference.epochs), ("train_images", reference.train_images)):
        used = sorted({c.get(key) for c in configs if c.get(key) is not None})
        if used and used != [published]:
            changes.append(f"{key.replace('_', ' ')} {', '.join(f'{v:,}' for v in used)} "
                           f"instead of {published:,}")
    return "; ".join(changes)


def unlearned_note(runs: pd.DataFrame) -> str | None:
    """'2 of 5 runs never learned a digit (...): digit 9 (seed 1), digits 0 3 (seed 4)'."""
    column = runs.get("unlearned_digits")
    if column is None:
        return None
    failed = runs[missed_a_digit(column)]
    if failed.empty:
        return None
    detail = ", ".join(f"{'digits' if ' ' in str(d) else 'digit'} {d} (seed {int(s)})"
                       for d, s in zip(failed["unlearned_digits"], failed["seed"]))
    return (f"{len(failed)} of {len(runs)} runs never learned a digit (test recall below "
            f"{UNLEARNED_RECALL:g}%): {detail}")


def reached_note(records: list[dict], published_text: str, printed_low: float,
                 split: str = "test") -> str | None:
    """For a published number above the runs: how many runs' accuracy on the split the source
    reported (test, or validation for the book's validation numbers) touched it (the lowest
    value its printed digits stand for) at some epoch. Runs that touched it say the gap is which
    epoch or run the rule selects; runs that never did say the nets fall short."""
    key = "val_accuracy" if split == "validation" else "test_accuracy"
    peaks = [max(accuracies) for m in records
             if (accuracies := [e[key] for e in m.get("history") or [] if e.get(key) is not None])]
    if not peaks:
        return None
    reached = sum(peak >= printed_low for peak in peaks)
    return (f"{reached} of {len(peaks)} runs reached {published_text}% at some epoch "
            f"(peak {split} accuracy {max(peaks):.2f}%)")


def vote_note(records: list[dict]) -> str | None:
    """What voting added: the vote against the mean of its members' final-epoch accuracies."""
    gains = []
    for m in records:
        members = [x["final_test_accuracy"] for x in m.get("members") or []
                   if x.get("final_test_accuracy") is not None]
        if members and m.get("selected_accuracy") is not None:
            mean = statistics.mean(members)
            gains.append((mean, m["selected_accuracy"] - mean))
    if not gains:
        return None
    return "; ".join(f"members' final epochs average {mean:.2f}%, the vote adds {gain:+.2f} point"
                     for mean, gain in gains)


def _ensemble_nets(recipe, runs: pd.DataFrame, metrics: dict[int, dict]) -> list[int]:
    """runs.csv rows of an ensemble's member nets at the published learning rate that can vote
    (finished, with their final-epoch test predictions), by seed: the book's training order."""
    members = runs[(runs["recipe"] == recipe.members) & at_published_lr(runs)
                   & (runs["status"] == "finished")].sort_values("seed")
    return [i for i in members.index if metrics[i].get("test_predictions")]


def judge_ensemble(recipe, runs: pd.DataFrame, metrics: dict[int, dict],
                   printed: tuple[float, float]) -> tuple[stats.Judgement, dict]:
    """An ensemble over every k-net subset of its recorded member nets, under the book's tie
    rule; the lowest-digit rule measured beside it (a deviation). Returns the judgement and
    what the page says about the subsets."""
    nets = _ensemble_nets(recipe, runs, metrics)
    if len(nets) < ensemble.SIZE:
        return stats.Judgement("not enough runs", reason=f"{len(nets)} {recipe.members} nets "
                               f"recorded at the published learning rate; a vote needs {ensemble.SIZE}"), {}
    labels = ensemble.official_test_labels()
    predictions = [metrics[i]["test_predictions"] for i in nets]
    votes = {rule: ensemble.subset_votes(predictions, labels, rule) for rule in ensemble.TIE_RULES}
    judgement = stats.judge_subset_votes(votes["book"], printed, len(nets), ensemble.SIZE)
    lowest = stats.judge_subset_votes(votes["lowest"], printed, len(nets), ensemble.SIZE)
    book = votes["book"]
    detail = {
        "nets": len(nets), "subsets": len(book), "seeds": [int(runs.loc[i, "seed"]) for i in nets],
        "min": float(book.min()), "max": float(book.max()),
        "reach": int((book >= printed[0]).sum()),
        "reach_lowest": int((votes["lowest"] >= printed[0]).sum()),
        "changed": int((book != votes["lowest"]).sum()),
        "shift": float((votes["lowest"] - book).mean()),  # what the deviation does
        "lowest": lowest,
    }
    return judgement, detail


def ensemble_note(detail: dict, printed_text: str) -> str:
    """What the subsets say, and what the lowest-digit tie rule would have changed."""
    lowest = detail["lowest"]
    return (f"all {detail['subsets']:,} five-net votes of {detail['nets']} recorded nets: "
            f"{detail['min']:.2f}-{detail['max']:.2f}%, {detail['reach']} reach {printed_text}%; "
            f"ties broken towards the lowest digit (deviation) change {detail['changed']:,} votes, "
            f"by {detail['shift']:+.4f} point on average, mean {lowest.mean:.3f}%, interval "
            f"{lowest.low:.2f}-{lowest.high:.2f}: {lowest.verdict}")


def failure_note(judgement: stats.Judgement) -> str | None:
    if not judgement.failed:
        return None
    return stats.failed_runs_text(judgement.failed, judgement.runs, judgement.failure_low,
                                  judgement.failure_high)


def validation_pick(finished: pd.DataFrame, k: int, by: str) -> str | None:
    """Which run and epoch the source's rule picks from our first k seeds."""
    first = finished.sort_values("seed").head(k)
    if len(first) < k:
        return None
    column = "selected_val_accuracy" if by == "validation" else "selected_accuracy"
    pick = first.loc[first[column].astype(float).idxmax()]
    seeds = f"seeds {int(first['seed'].min())}-{int(first['seed'].max())}"
    if by == "validation":
        return (f"of {seeds} validation picks seed {int(pick['seed'])} at epoch "
                f"{int(pick['selected_epoch'])} (validation {pick['selected_val_accuracy']:.2f}%, "
                f"test {pick['selected_accuracy']:.2f}%)")
    return f"of {seeds} the best is seed {int(pick['seed'])} ({pick['selected_accuracy']:.2f}%)"


def rank_note(judgement: stats.Judgement, k: int) -> str | None:
    """The distribution-free check, where it disagrees with the normal interval."""
    if not judgement.rank_verdict or judgement.rank_verdict == judgement.verdict \
            or judgement.verdict not in ("consistent", "above", "below"):
        return None
    if judgement.rank_floor >= (1 - stats.LEVEL) / 2:
        return (f"the rank check (no normal model) cannot decide with {judgement.n} runs (its "
                f"smallest one-sided p is {judgement.rank_floor:.3f}; here {judgement.rank_p:.3f})")
    return (f"the rank check (no normal model) says {judgement.rank_verdict} (one-sided p "
            f"{judgement.rank_p:.3f}; {judgement.n} runs cannot give less than {judgement.rank_floor:.3f})")


def normality_note(judgement: stats.Judgement) -> str | None:
    if not judgement.normality_p < 0.05:
        return None
    return (f"Shapiro-Wilk rejects the normal model of the {judgement.n} runs "
            f"(p = {judgement.normality_p:.4f})")


def short_why(recipe, judgement: stats.Judgement, detail: dict, published_text: str,
              printed: tuple[float, float] | None, pick: str | None = None) -> str:
    """The verdict's reason in one line, for the summary table: generated from the record."""
    failures = (f"{judgement.failed} of {judgement.runs} runs failed to learn"
                if judgement.failed else "")
    if judgement.verdict == "not enough runs":
        return "; ".join(filter(None, [judgement.reason.split("; ")[0], failures]))
    if judgement.verdict == "uninformative":
        return "; ".join(filter(None, [judgement.reason, failures]))
    if detail:
        return (f"{detail['reach']} of {detail['subsets']:,} five-net votes of {detail['nets']} "
                f"nets reach {published_text}%")
    normality = (f"Shapiro-Wilk rejects a normal model (p = {judgement.normality_p:.4f})"
                 if judgement.normality_p < 0.05 else "")
    if judgement.verdict not in ("above", "below"):
        return "; ".join(filter(None, [failures, normality]))
    centre = judgement.expected_best if judgement.k > 1 else judgement.mean
    images = round(abs((printed[0] if judgement.verdict == "above" else printed[1]) - centre) * 100)
    side = "short of" if judgement.verdict == "above" else "above"
    what = f"the expected best of {judgement.k}" if judgement.k > 1 else "the mean"
    if recipe.kind == "baseline":
        return f"{round(abs(judgement.mean - printed[0]) * 100)} test images apart"
    parts = [f"{what} ({centre:.2f}%) is {images} test images {side} it", pick or "",
             f"verdict from the rank check ({normality})" if judgement.without_normal_model else "",
             "a variant: another reading of the source" if recipe.variant else "",
             ("rank check: cannot decide" if judgement.rank_floor >= (1 - stats.LEVEL) / 2
              else f"rank check: {judgement.rank_verdict}")
             if judgement.rank_verdict not in ("", judgement.verdict) else ""]
    return "; ".join(filter(None, parts))


def judge_recipes(runs: pd.DataFrame, summary: pd.DataFrame, metrics: dict[int, dict],
                  pipeline_check: bool) -> list[dict]:
    """One row per recipe of the study (one per published number), from its runs at the
    published learning rate, in the order of the published table; Holm's adjustment over every
    verdict drawn from an interval closes it (add_holm)."""
    recipes = all_recipes()
    if "failed" not in runs:  # tables from before runs.csv had the column
        runs = runs.assign(failed=failed_column(runs))
    rows = []
    for recipe_id in [r for r in recipes if r in set(summary["recipe"])]:
        recipe = recipes[recipe_id]
        published_row = published_row_of(recipe)
        lines = summary[summary["recipe"] == recipe_id]
        at_lr = lines[at_published_lr(lines)]
        line = at_lr.iloc[0].to_dict() if len(at_lr) else {}  # summary.csv's row, if any
        index = list(runs.index[(runs["recipe"] == recipe_id) & at_published_lr(runs)])
        k = recipe.best_of
        k_note = (f"'{published_row['selection']}' names no number: judged as the best of {k}"
                  if "several" in published_row["selection"] else "")
        published = recipe.published_accuracy
        judged_runs = runs.loc[index]
        judged_runs = judged_runs[(judged_runs["status"] == "diverged") | (
            (judged_runs["status"] == "finished") & judged_runs["selected_accuracy"].notna())]
        finished = judged_runs[judged_runs["status"] == "finished"]

        chooser = judged_runs["selected_val_accuracy" if recipe.best_chosen_by == "validation"
                              else "selected_accuracy"].astype(float).tolist()
        printed = (stats.printed_range(published_row["published_accuracy_pct"], recipe.printed_as)
                   if published is not None else None)
        changed = settings_changed(recipe, [metrics[i].get("config") or {} for i in index])
        learned = finished[~finished["failed"].astype(bool)]
        detail = {}
        if recipe.kind == "ensemble" and published is not None and not pipeline_check and not changed:
            judgement, detail = judge_ensemble(recipe, runs, metrics, printed)
        else:  # a pipeline check's runs fail nothing (runs.csv's `failed`, aggregate.collect_runs)
            judgement = stats.judge_runs(
                published, judged_runs["selected_accuracy"].astype(float).tolist(),
                judged_runs["failed"].astype(bool).tolist(), k=k,
                chooser=chooser if recipe.best_chosen_by == "validation" else None,
                printed=printed, pipeline_check=pipeline_check, settings_changed=changed,
                deterministic=recipe.kind == "baseline")
        reason = judgement.reason
        if not line:
            reason = f"no runs at the published learning rate {line_lr(lines)}"
        elif judgement.verdict == "not enough runs" and isinstance(line.get("note"), str):
            reason = f"{reason}; {line['note']}"
        if recipe.variant and judgement.verdict in ("above", "below"):
            # a variant measures another reading of the source: missing the number is its finding
            reason = "; ".join(filter(None, [reason, f"trained under another reading than the source's "
                                             f"({recipe.variant}); `{recipe.published_id}` is the faithful recipe"]))
        if recipe.kind == "baseline" and judgement.verdict in ("above", "below") and not reason:
            images = round(abs(judgement.mean - published) * 100)  # the 10,000 test images, in percent
            reason = f"{images} test image{'s' if images != 1 else ''} apart"
        # Only runs of the published recipe: a tiny pipeline-check run misses many digits.
        judged = judgement.verdict not in ("settings changed", "pipeline check")
        short = judgement.verdict in ("above", "below") and recipe.kind == "network"
        pick = validation_pick(learned, k, recipe.best_chosen_by) if k > 1 else None
        notes = [failure_note(judgement) if judged and "failed (" not in reason else None,
                 unlearned_note(runs.loc[index]) if judged else None,
                 pick if short else None,
                 reached_note([metrics[i] for i in learned.index], published_row["published_accuracy_pct"],
                              printed[0], recipe.selection_split)
                 if short and judgement.verdict == "above" else None,
                 normality_note(judgement) if judged and not judgement.without_normal_model else None,
                 rank_note(judgement, k) if judged else None,
                 ensemble_note(detail, published_row["published_accuracy_pct"]) if detail else None,
                 vote_note([metrics[i] for i in finished.index]) if recipe.kind == "ensemble" else None]
        reason = "; ".join(filter(None, [reason, *notes]))
        why = short_why(recipe, judgement, detail, published_row["published_accuracy_pct"],
                        printed, pick if short else None) if line else reason
        learned_values = learned["selected_accuracy"].astype(float)
        ci = ci95(learned_values) if recipe.kind != "ensemble" else (math.nan, math.nan)
        n, mean, sd = judgement.n, judgement.mean, judgement.sd
        if recipe.kind == "ensemble" and not detail:  # the groups' votes, no verdict
            n, mean = len(finished), _number(line.get("mean"))
            sd = _number(line.get("std"))
        single = (stats.clip_percent(stats.prediction_interval(mean, sd, n))
                  if recipe.kind != "ensemble" else (judgement.low, judgement.high))
        # what the recipe's record cost, at every learning rate (an ensemble's members count once)
        cost = sum(core_seconds(metrics[i]) for i in runs.index[runs["recipe"] == recipe_id]
                   if runs.loc[i, "kind"] != "ensemble") / 3600
        member = recipes[recipe.members] if recipe.kind == "ensemble" else recipe
        rows.append({
            "recipe": recipe_id, "kind": recipe.kind, "deterministic": recipe.kind == "baseline",
            "source": recipe.source, "section": published_row["chapter_or_section"],
            "network": published_row["network"], "table_row": published_row,
            "protocol": member.protocol.family if member.protocol else "nielsen",
            "published": published, "published_text": published_row["published_accuracy_pct"],
            "reported_split": published_row["reported_split"],
            "selection_text": published_selection_text(recipe), "k": k, "k_note": k_note,
            "best_chosen_by": recipe.best_chosen_by, "variant": recipe.variant,
            "published_id": recipe.published_id, "printed_as": recipe.printed_as,
            "published_lr": member.lr, "runs": int(line.get("runs", 0)), "n": n,
            "user_defined": recipe.user_defined,
            "judged_runs": judgement.runs, "failed": judgement.failed,
            "failure_low": judgement.failure_low, "failure_high": judgement.failure_high,
            "diverged": int(line.get("diverged", 0)), "mean": mean, "sd": sd,
            "ci_low": ci[0], "ci_high": ci[1],
            "diff_pp": mean - published if published is not None else math.nan,
            "pi1_low": single[0], "pi1_high": single[1],  # one run, whatever the verdict uses
            "pi_low": judgement.low, "pi_high": judgement.high,  # the verdict's interval
            "expected_best": judgement.expected_best, "p_value": judgement.p_value,
            "rank_p": judgement.rank_p, "rank_verdict": judgement.rank_verdict,
            "rank_floor": judgement.rank_floor, "normality_p": judgement.normality_p, "ensemble": detail,
            "position": judgement.position, "without_normal_model": judgement.without_normal_model,
            "verdict": judgement.verdict, "reason": reason, "why": why, "run_index": index,
            "core_hours": cost,
        })
    return add_holm(rows)


def not_yet_run(planned, rows: list[dict]) -> list[dict]:
    """The study's recipes (its config's `recipes:`) that its tables have no run of yet, so no
    row of judge_recipes: listed after the judged rows (in the order of the recipe table), so
    that a table of the study names every number it plans."""
    waiting = set(planned or ()) - {r["recipe"] for r in rows}
    return [{"recipe": r.id, "variant": r.variant, "published_id": r.published_id,
             "published_text": published_row_of(r)["published_accuracy_pct"] if r.published_accuracy is not None
             else ""} for r in all_recipes().values() if r.id in waiting]


def add_holm(rows: list[dict]) -> list[dict]:
    """Holm's adjustment over every verdict drawn from an interval (consistent, above, below,
    uninformative: each is one test at 5%); the rows that do not come out consistent say
    whether they survive it. The deterministic baselines are compared exactly, not tested.
    Uninformative rows stay in the family: it is set by which rows are tested, not by how wide
    their intervals came out (choosing it by the runs' spread would make it depend on the data),
    and their p is a valid one, large as a rule, so it only makes the adjustment more
    conservative. A row whose normal model is rejected and whose rank check cannot decide has no
    p to adjust (nan) and is left out."""
    tested = [r for r in rows if r["verdict"] in ("consistent", "above", "below", "uninformative")
              and not r["deterministic"] and not math.isnan(r["p_value"])]
    for row, adjusted in zip(tested, stats.holm([r["p_value"] for r in tested])):
        row["p_holm"] = adjusted
    for row in rows:
        row.setdefault("p_holm", math.nan)
        if row["verdict"] in ("above", "below") and not math.isnan(row["p_holm"]):
            survives = "survives" if row["p_holm"] < 0.05 else "does not survive"
            row["reason"] = "; ".join(filter(None, [
                row["reason"], f"p = {row['p_value']:.3f}, Holm-adjusted over {len(tested)} "
                f"verdicts {row['p_holm']:.3f}: {survives} the adjustment"]))
            row["why"] = "; ".join(filter(None, [row["why"], f"Holm: {survives}"]))
    for row in rows:
        row["tested"] = len(tested)
    return rows


def pooled(rows: list[dict]) -> dict | None:
    """The rows taken together (stats.sign_test): of the published numbers judged from an
    interval that holds its model (consistent, above or below; no variant, which repeats its
    published number, no baseline, which has no spread, no ensemble, which votes another row's
    nets: the sign test counts rows as independent, and the book's ensemble voted its dropout
    nets too), how many lie above the middle of their predictive distribution. None where fewer
    than 6 rows qualify (their p could not fall below 0.05)."""
    judged = [r for r in rows if r["verdict"] in ("consistent", "above", "below") and not r["variant"]
              and not r["deterministic"] and r["kind"] != "ensemble"
              and not r["without_normal_model"] and not math.isnan(r["position"])]
    high, n, p = stats.sign_test([r["position"] for r in judged])
    if n < 6:  # 5 coin flips all on one side give p = 0.0625: fewer rows can never reject
        return None
    return {"high": high, "n": n, "p": p, "median": statistics.median(r["position"] for r in judged)}


def pooled_text(rows: list[dict]) -> str:
    """pooled() in words, for the README's findings and the report page; "" where it has too
    few rows."""
    together = pooled(rows)
    if together is None:
        return ""
    high, n, p = together["high"], together["n"], together["p"]
    text = (f"Taken together: of the {n} published numbers judged from an interval (variants, "
            f"baselines and the ensembles, which vote another row's nets, left out), {high} lie "
            f"above the middle of what our runs predict for them (the median position is "
            f"{together['median']:.2f}, where 0.5 is our runs' middle). If every source's runs were "
            f"exchangeable with ours, as each verdict assumes, and the rows independent, each would "
            f"be a coin flip: two-sided sign-test p = {p:.3f}. This check was added after the "
            f"record had been read, so its p is indicative, not a preregistered test.")
    if p >= 0.05:
        return text + " The published numbers lean to neither side of our runs."
    side = "above" if high > n / 2 else "below"
    return (text + f" The published numbers lean {side} our runs as a whole: by more than our "
            "seed-to-seed spread explains, although no row alone shows it. The test cannot say "
            "why: a source reporting a good run among more than it says it ran, a difference "
            "between its code and ours that moves every run a little, or its hardware's numerics "
            "would each do it.")


def line_lr(lines: pd.DataFrame) -> str:
    published = lines["published_lr"].iloc[0]
    ran = ", ".join(f"{v:g}" for v in sorted(lines["lr"].dropna().unique()))
    return f"{published:g} (the study ran {ran})"
