"""The `mnistbench` command line: what the Snakemake rules (and people) call.

Every error a user can cause ends in one line on stderr and exit status 2, without a traceback
and without leaving a metrics.json that could be mistaken for a finished run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _lr_label(text: str) -> str:
    """A learning rate, kept as written: it names the run folder ({lr} in --out-pattern)."""
    _positive(float)(text)
    return text


def _check_writable(out: Path) -> None:
    from .record import check_writable

    try:
        check_writable(out)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _job(function, *args, **kwargs):
    """Run a job of mnistbench.jobs; its bad-input errors become one-line usage errors."""
    from .train import CheckpointError

    try:  # a DataError (MNIST missing or corrupt) is main's to report, as for every command
        return function(*args, **kwargs)
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None


# --- commands -------------------------------------------------------------------------------

def _workflow_config(path: str = "config/config.yaml") -> dict | None:
    """The workflow config, if there is one here (the card lists the studies that use a recipe)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def _define_recipes(configfile: str | None = None, define: str | None = None,
                    config: dict | None = None) -> None:
    """Register the recipes a study's config defines (its `recipes:`; docs/claims.md): of the
    config file, of a --define JSON object (the workflow's), or of a config already read."""
    from .definitions import DefinitionError, define as define_config, define_from_config, define_json

    try:
        if configfile:
            define_from_config(configfile)
        if define:
            define_json(define)
        if config:
            define_config(config.get("recipes"))
    except DefinitionError as err:
        raise UsageError(str(err)) from None


def cmd_recipes(args) -> None:
    from .recipes import UnknownRecipe, all_recipes, method_text

    config = _workflow_config(args.configfile or "config/config.yaml")
    if args.configfile and config is None:
        raise UsageError(f"cannot read the config {args.configfile}")
    _define_recipes(config=config)
    if args.recipe:
        from .card import card, render_card

        try:
            if args.json:
                print(json.dumps(dict(card(args.recipe, config)), indent=1))
            else:
                print(render_card(args.recipe, config))
        except UnknownRecipe as err:
            raise UsageError(str(err)) from None
        return
    rows = []
    for r in all_recipes().values():
        published = f"{r.published_accuracy:.2f}" if r.published_accuracy is not None else "-"
        if r.kind == "network":
            what = (f"{r.protocol.code:<8} lr={r.lr:g} batch={r.batch_size} epochs={r.epochs} "
                    f"images={r.train_images:,} pixels={r.scaling}"
                    + (f" masks={r.dropout_masks}" if r.dropout_masks != "-" else "")
                    + (f" test_mode={r.test_mode}" if r.test_mode != "eval" else ""))
        else:
            what = f"{r.kind}: {method_text(r)}"
        selected = f"best of {r.best_of} by {r.best_chosen_by}" if r.best_of > 1 else "one run"
        what = f"{what}; published: {selected}" + (f"; variant of {r.published_id}" if r.variant else "") + (
            f"; user-defined, from {r.base}" if r.user_defined else "")
        rows.append((r.id, published, what))
    if args.json:
        print(json.dumps([{"id": i, "published_accuracy": p, "summary": w} for i, p, w in rows], indent=1))
        return
    width = max(len(i) for i, _, _ in rows)
    print(f"{'recipe':<{width}}  published  configuration")
    for i, p, w in rows:
        print(f"{i:<{width}}  {p:>9}  {w}")


def cmd_train(args) -> None:
    from .jobs import train_into

    _job(train_into, _recipe(args), args.seed, args.out, lr=args.lr, epochs=args.epochs,
         train_subset=args.train_subset, checkpoint=not args.no_checkpoint, **_job_options(args))


def cmd_train_batch(args) -> None:
    """Train seeds x learning rates of one recipe together (batched.py); one run folder each."""
    from .jobs import train_batch_into

    _job(train_batch_into, _recipe(args), args.seeds, args.out_pattern, lrs=args.lrs or (),
         epochs=args.epochs, train_subset=args.train_subset, checkpoint=not args.no_checkpoint,
         graphs=False if args.no_cuda_graphs else None, **_job_options(args))


def _job_options(args) -> dict:
    """What `train` and `train-batch` pass on alike (their shared options, _training_options)."""
    return dict(device=args.device, threads=args.threads, data_dir=args.data_dir, study=args.study,
                mlflow=args.mlflow, pipeline_check=args.pipeline_check, log=None if args.quiet else log)


def _recipe(args):
    """The recipe of --recipe (after the recipes of --configfile and --define)."""
    from .recipes import UnknownRecipe, get_recipe

    _define_recipes(getattr(args, "configfile", None), getattr(args, "define", None))
    try:
        return get_recipe(args.recipe)
    except UnknownRecipe as err:
        raise UsageError(str(err)) from None


def cmd_download(args) -> None:
    from .data import load_mnist, resolve_data_dir

    train_x, _, test_x, _ = load_mnist(args.data_dir, download=True)
    raw = resolve_data_dir(args.data_dir) / "MNIST" / "raw"
    log(f"MNIST ready in {raw}: {len(train_x):,} training and {len(test_x):,} test images, md5 checked")


def cmd_ensemble(args) -> None:
    from .jobs import vote_into

    _job(vote_into, _recipe(args), args.members, args.out, group=args.group, data_dir=args.data_dir,
         study=args.study, mlflow=args.mlflow, pipeline_check=args.pipeline_check, log=log)


def cmd_aggregate(args) -> None:
    from .aggregate import BrokenRunRecord, collect_runs, find_run_files, write_tables

    study_dir = Path(args.study_dir)
    paths = [Path(p) for p in args.runs] or find_run_files(study_dir)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such metrics.json: {', '.join(missing[:3])}")
    if not paths:
        raise UsageError(f"no runs found: {study_dir}/runs/**/metrics.json")
    try:
        runs = collect_runs(paths, pipeline_check=args.pipeline_check)
    except BrokenRunRecord as err:
        raise UsageError(f"broken run record {err}; delete it to train that run again") from None
    _check_writable(study_dir)
    summary = write_tables(runs, study_dir)
    log(f"{len(runs)} runs -> {study_dir / 'runs.csv'}, {study_dir / 'runs.parquet'}; "
        f"{len(summary)} recipe x lr rows -> {study_dir / 'summary.csv'}")
    if runs["pipeline_check"].any():
        log("note: this study is a pipeline check (tiny subset, few epochs), not a replication")
    unlogged = runs["mlflow_error"].notna().sum()
    if unlogged:
        log(f"warning: {unlogged} runs were not logged to MLflow (column mlflow_error); "
            f"replay them with 'mnistbench mlflow-sync {study_dir}'")
    columns = ["recipe", "lr", "runs", "finished", "diverged", "mean", "ci95_low", "ci95_high",
               "published_accuracy", "diff_pp"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def cmd_mlflow_sync(args) -> None:
    from .record import write_record
    from .tracking import find_metrics, sync

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    paths = find_metrics(args.paths)
    try:
        import mlflow
    except ImportError:
        raise UsageError("mlflow-sync needs MLflow: pip install mlflow") from None
    from .verdicts import ReportError, study_config

    def config_of(study: str) -> dict | None:
        try:
            return study_config(study, args.config, None)
        except ReportError as err:
            raise UsageError(str(err)) from None

    log(f"syncing {len(paths)} metrics.json files into MLflow at {mlflow.get_tracking_uri()}")
    counts = sync(paths, write_record, dry_run=args.dry_run, log=log, reports=Path(args.reports),
                  study_config=config_of)
    log(", ".join(f"{n} {what}" for what, n in counts.items()))
    if counts["failed"]:
        raise UsageError(f"{counts['failed']} runs could not be logged to MLflow (see above)")


def cmd_report(args) -> None:
    from .report import build_report
    from .verdicts import ReportError, study_config

    study_dir = Path(args.study_dir)
    if not study_dir.is_dir():
        raise UsageError(f"no such study folder: {study_dir}")
    out = Path(args.out) if args.out else Path("reports") / study_dir.name
    tracked = [] if args.write_tracked else tracked_files(out)
    with tempfile.TemporaryDirectory(prefix="mnistbench-report-") as scratch:
        # Files git tracks in OUT (the replication record's page and figures) are rewritten
        # only when asked: otherwise the report is built aside and only what git does not
        # track is copied into OUT.
        build_dir = Path(scratch, out.name) if tracked else out
        try:
            config = study_config(study_dir.name, args.config, args.study_config)
            _check_writable(out)
            html = build_report(study_dir, build_dir, config)
        except ReportError as err:
            raise UsageError(str(err)) from None
        if tracked:
            html = out / html.name
            shutil.copyfile(build_dir / html.name, html)
            log(f"left {len(tracked)} git-tracked files in {out} as they are ({', '.join(tracked[:2])}"
                f"{', ...' if len(tracked) > 2 else ''}); --write-tracked rewrites them")
        log(f"report of study {study_dir.name}: " + ("its figures are inside the page" if tracked
                                                     else f"figures in {out}") + ", the page is")
        print(html.resolve())
        if args.mlflow:
            _log_study_to_mlflow(study_dir, build_dir, config)


def tracked_files(folder: Path) -> list[str]:
    """The files git tracks in `folder` (none outside a git checkout, or if it does not exist)."""
    if not folder.is_dir():
        return []
    try:
        done = subprocess.run(["git", "ls-files", "."], cwd=folder, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def _log_study_to_mlflow(study_dir: Path, report_dir: Path, config: dict | None) -> None:
    """report --mlflow: the study's parent run, with this report; runs missing from MLflow
    (a fresh clone of a record trained elsewhere) are replayed first. The records are not
    touched (they are the report step's inputs), and MLflow failing never fails the report."""
    from .tracking import find_metrics, sync

    try:
        counts = sync(find_metrics([study_dir / "runs"]), log=log, reports=report_dir.parent,
                      study_config=lambda study: config)
    except Exception as err:
        counts = {"failed": f"{type(err).__name__}: {err}"}
    if counts["failed"]:
        log(f"warning: MLflow: the study was not fully logged ({counts['failed']} failed); the "
            f"report stands; replay with 'mnistbench mlflow-sync {study_dir}'")


def cmd_docs(args) -> None:
    from .card import write_docs

    if not Path("docs/recipes.md").is_file():
        raise UsageError("no docs/recipes.md here: run 'mnistbench docs' from the project root")
    changed = write_docs(_workflow_config(), write=args.write)
    if not changed:
        log("docs/recipes.md and docs/protocols.md are up to date")
    elif args.write:
        log(f"updated {', '.join(map(str, changed))}")
    else:  # a check by default: it rewrites git-tracked files only when asked
        log(f"out of date: {', '.join(map(str, changed))}; 'mnistbench docs --write' rewrites them")
        raise SystemExit(1)


def cmd_findings(args) -> None:
    from .report import findings_table, update_findings
    from .verdicts import ReportError, study_config

    if not Path(args.study_dir).is_dir():  # a mistyped folder must not empty the README's table
        raise UsageError(f"no such study folder: {args.study_dir}")
    try:
        # the study's planned recipes: those without a run yet get a line saying so
        planned = (study_config(Path(args.study_dir).name, args.config, None) or {}).get("recipes") or ()
        changed = update_findings(args.readme, args.study_dir, write=args.write, planned=planned)
        if not args.write:
            print(findings_table(args.study_dir, planned))
    except (ReportError, OSError) as err:
        raise UsageError(str(err)) from None
    if args.write or not changed:
        log(f"{args.readme}: findings of {args.study_dir} {'updated' if changed else 'up to date'}")
    else:  # a reading by default: it rewrites the git-tracked README only when asked
        log(f"{args.readme}: its findings differ from these; 'mnistbench findings --write' rewrites them")
        raise SystemExit(1)


def cmd_progress(args) -> None:
    import yaml

    from .study import priorities, progress

    try:
        config = yaml.safe_load(Path(args.config).read_text()) or {}
        spec = config["studies"][args.study]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise UsageError(f"cannot read study {args.study!r} from {args.config} ({err})") from None
    _define_recipes(config=config)
    results = args.results or config.get("results_dir", "results")
    p = progress(spec, args.study, results)
    if not args.quiet:
        width = max(len(r["recipe"]) for r in p.rows)
        print(f"{'recipe':<{width}}  runs  at published lr (needed)  core-h done  core-h left")
        for r in p.rows:
            mark = "ok" if r["enough"] else "  "
            needed = f"({r['needed']})" if r["reachable"] else "(-)*"
            print(f"{r['recipe']:<{width}}  {r['finished']:>2}/{r['planned']:<2} {mark} "
                  f"{r['at_published_lr']:>6} {needed:<4}            {r['core_hours']:>6.2f}"
                  f"       {r['core_hours_left']:>6.2f}")
        if not all(r["reachable"] for r in p.rows):
            print("* (-): the study plans fewer runs than a verdict needs; such a row is measured, "
                  "not judged")
        order = priorities(spec, args.study, results)
        upcoming = [r for r in sorted(order, key=order.get, reverse=True)  # votes follow their members
                    if r.group is None and not r.path(args.study, results).exists()][:4]
        if upcoming:
            print("next in Snakemake's order: " + ", ".join(f"{r.recipe} lr {r.lr} seed {r.seed}" for r in upcoming))
    print(f"{args.study}: {p.published_done}/{p.published_total} published numbers with enough runs; "
          f"{p.runs_done}/{p.runs_planned} runs finished; {p.core_hours_done:.1f} core-hours done, "
          + (f"about {p.core_hours_left:.1f} core-hours left" if p.core_hours_left >= 0.05 or not p.core_hours_left
             else f"about {max(1, round(p.core_hours_left * 60))} core-minutes left"))


def cmd_audit(args) -> None:
    from .audit import audit
    from .definitions import DefinitionError
    from .record import RecordError

    worst = 0  # the worst exit status of the records (audit.EXIT_*): different > numerical > same
    for path in args.records:
        try:  # an audit trains (or votes) again, so it meets the same bad input as `train`
            result = audit(path, epochs=args.epochs, data_dir=args.data_dir,
                           log=None if args.quiet else log)
        except (RecordError, DefinitionError) as err:
            raise UsageError(str(err)) from None
        print(result.summary(), flush=True)
        worst = max(worst, result.exit_status, key=lambda status: (status == 1, status))
    if worst:
        raise SystemExit(worst)


COMMANDS = {"recipes": cmd_recipes, "train": cmd_train, "train-batch": cmd_train_batch, "download": cmd_download,
            "ensemble": cmd_ensemble, "aggregate": cmd_aggregate, "mlflow-sync": cmd_mlflow_sync,
            "report": cmd_report, "progress": cmd_progress, "audit": cmd_audit,
            "findings": cmd_findings, "docs": cmd_docs}


# What each command does, reads, writes and costs: the top of its `--help` (the one-line `help`
# of the command list says only what it does).
DESCRIPTIONS = {
    "recipes": "List every recipe with its published accuracy, or show one recipe's card. Reads "
               "the package's recipe table, config/config.yaml and results/replication; writes "
               "nothing; takes a second.",
    "docs": "Check docs/recipes.md and the protocol wording of docs/protocols.md against the "
            "recipes: exit status 1 and their names if either is out of date. With --write, "
            "rewrite them (both git-tracked); run it from the project root after changing a "
            "recipe. Takes a second; trains nothing.",
    "train": "Train one run of a recipe and write DIR/metrics.json and DIR/model.pt "
             "(DIR/checkpoint.pt after every epoch while it trains; an interrupted run resumes "
             "from it). Reads MNIST (downloads it into ./data once). Costs the recipe's epochs: "
             "from under a core-minute (the dense nets) to several core-hours (the dropout and "
             "expanded-data nets: 'mnistbench progress' estimates each); 'mnistbench recipes ID' shows a recipe's epochs and images. Uses one torch "
             "thread by default (the fastest at these mini-batches when other work shares the CPU).",
    "train-batch": "Train seeds x learning rates of one recipe together as one stacked model (fast "
                   "on a GPU, slower than separate one-thread jobs on a CPU) and write each run's "
                   "folder as 'train' does. Reads MNIST; costs what the runs cost together.",
    "download": "Fetch MNIST into DATA_DIR/MNIST/raw (about 11 MB; or copy it from "
                "$MNISTBENCH_MNIST_MIRROR) and check its md5 sums. Writes only there.",
    "ensemble": "Plurality vote of trained runs' recorded test predictions; writes DIR/metrics.json. "
                "Reads the members' metrics.json and the MNIST test labels; takes seconds.",
    "aggregate": "Read every metrics.json of a study and write its tables: STUDY_DIR/runs.csv, "
                 "runs.parquet and summary.csv (for results/replication, runs.csv and summary.csv "
                 "are git-tracked). Takes seconds; trains nothing.",
    "report": "Write a study's self-contained HTML report, OUT/index.html, with its figures, from "
              "the study's tables and records. Trains nothing; takes about a minute. Where OUT "
              "holds git-tracked files (reports/replication: README.md and the PNG figures), "
              "they are left as they are unless --write-tracked is given.",
    "mlflow-sync": "Replay metrics.json files into MLflow ($MLFLOW_TRACKING_URI, else ./mlflow.db) "
                   "with their recorded start and end times, then log their studies' parent runs. "
                   "Idempotent: only what is missing, unfinished or different there. Writes the "
                   "MLflow store, and a replayed run's id into a record logged to this store "
                   "before; about 3 s per run (about 14 minutes for the replication record's 283 runs).",
    "findings": "Print the findings table of a study's record (one line per published number) "
                "and say whether the README's differs (exit status 1 if it does). With --write, "
                "rewrite it there, between the findings markers (README.md is git-tracked). "
                "Takes seconds; trains nothing.",
    "progress": "How far a study's record has come: published numbers with enough runs, runs "
                "finished, core-hours done and an estimate of those left. Reads the config and "
                "the study's records; writes nothing; takes seconds.",
    "audit": "Train recorded runs again (or vote an ensemble again) and compare them with their "
             "records. Costs what the runs cost (up to hours each: --epochs 1 for a quick "
             "audit); writes nothing (no run folder, no MLflow). Exit status 0: bit-identical; "
             "3: numerically different, same accuracies and predictions; 1: different results "
             "or a stale record; 2: bad input.",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="mnistbench", description="Replicate the classic MNIST results of Nielsen's "
                     "book and the PyTorch articles.")
    parser.add_argument("--version", action="version", version=f"mnistbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **kwargs):
        return sub.add_parser(name, description=DESCRIPTIONS[name], **kwargs)

    p = add("recipes", help="list every recipe with its published accuracy, or show "
                       "one recipe's card")
    p.add_argument("recipe", nargs="?", metavar="ID", help="a recipe id: its card (published row, "
                   "protocol field by field, studies, where its outputs are)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--configfile", metavar="FILE", help="a study's config whose own recipes "
                   "(its `recipes:`, docs/claims.md) are listed too (default: config/config.yaml)")

    p = add("docs", help="check (or, with --write, regenerate) docs/recipes.md and the protocol "
                       "wording of docs/protocols.md (run from the project root)")
    p.add_argument("--write", action="store_true", help="rewrite the files that are out of date "
                   "(git-tracked); without it, only say which are (exit status 1 if any)")

    p = add("train", help="train one run of a recipe and write DIR/metrics.json")
    p.add_argument("--seed", type=int, required=True, help="decides init, data order and dropout")
    p.add_argument("--lr", type=_positive(float), help="learning rate (default: the recipe's)")
    p.add_argument("--out", required=True, help="run folder for metrics.json, model.pt, checkpoint.pt")
    _training_options(p)

    p = add("train-batch", help="train seeds x learning rates of one recipe together, as "
                       "one stacked model (fast on a GPU); one run folder each, as 'train' writes")
    p.add_argument("--seeds", type=int, nargs="+", required=True, metavar="SEED", help="one run per seed...")
    p.add_argument("--lrs", type=_lr_label, nargs="+", metavar="LR",
                   help="...and per learning rate (default: the recipe's)")
    p.add_argument("--out-pattern", required=True, metavar="PATTERN",
                   help="run folder of each run, with {recipe}, {lr} and {seed} filled in, e.g. "
                        "'results/x/runs/{recipe}/lr={lr}/seed={seed}'")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on a GPU, launch every kernel instead of replaying a captured step")
    _training_options(p)

    p = add("download", help="fetch MNIST once (or copy it from $MNISTBENCH_MNIST_MIRROR) "
                       "and check its md5 sums")
    p.add_argument("--data-dir", help="MNIST root (default: $MNISTBENCH_DATA_DIR or ./data)")

    p = add("ensemble", help="plurality vote of trained runs' test predictions "
                       "(nielsen_ch6_ensemble) -> DIR/metrics.json")
    p.add_argument("members", nargs="+", metavar="METRICS_JSON", help="the member runs' metrics.json")
    p.add_argument("--recipe", default="nielsen_ch6_ensemble", help="the ensemble recipe")
    p.add_argument("--group", type=_positive(int), default=1, help="group number within the study")
    p.add_argument("--data-dir", help="MNIST root (default: $MNISTBENCH_DATA_DIR or ./data)")
    p.add_argument("--out", required=True, help="folder for metrics.json")
    _tracking_options(p)

    p = add("aggregate", help="tables of a study: runs.csv, runs.parquet, summary.csv")
    p.add_argument("study_dir", help="results/<study>: the tables are written here")
    p.add_argument("runs", nargs="*", metavar="METRICS_JSON",
                   help="the runs to include (default: every metrics.json below STUDY_DIR/runs)")
    p.add_argument("--pipeline-check", action="store_true",
                   help="mark every row as a pipeline check, not a replication")

    p = add("report", help="the replication report of a study: OUT/index.html (self-"
                       "contained) and its figures as PNG and SVG")
    p.add_argument("--study-dir", required=True, help="results/<study>, with runs.csv and summary.csv")
    p.add_argument("--out", help="folder for index.html and the figures (default: reports/<study>)")
    p.add_argument("--config", default="config/config.yaml",
                   help="workflow config whose studies.<study> entry the report shows "
                        "(default: config/config.yaml, if it exists)")
    p.add_argument("--study-config", metavar="JSON",
                   help="the study's configuration as a JSON object (the workflow passes its own)")
    p.add_argument("--mlflow", action="store_true",
                   help="also log the study to MLflow: its parent run holds the tables, verdicts and "
                        "this report; runs missing from MLflow are replayed from their metrics.json")
    p.add_argument("--write-tracked", action="store_true",
                   help="also rewrite the files git tracks in OUT (reports/replication: README.md "
                        "and the PNG figures), as when regenerating the record; without it they stay")

    p = add("mlflow-sync", help="replay metrics.json files into MLflow, then log their "
                       "studies' parent runs (idempotent: only what is missing, unfinished or "
                       "different there)")
    p.add_argument("paths", nargs="*", default=["results"], metavar="PATH",
                   help="metrics.json files or folders to search (default: results)")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    p.add_argument("--reports", default="reports",
                   help="where each study's report is (REPORTS/<study>), logged on its parent run "
                        "(default: reports)")
    p.add_argument("--config", default="config/config.yaml",
                   help="workflow config whose studies.<study> settings the parent run records "
                        "(default: config/config.yaml, if it exists)")

    p = add("findings", help="print the findings table of a study's record; with --write, "
                       "write it into the README (between its findings markers)")
    p.add_argument("--write", action="store_true", help="rewrite the README's findings block "
                   "(git-tracked); without it, print the table and say whether the README's "
                   "differs (exit status 1 if it does)")
    p.add_argument("--study-dir", default="results/replication", help="default: results/replication")
    p.add_argument("--config", default="config/config.yaml",
                   help="workflow config: the study's recipes without a run yet are listed as such "
                        "(default: config/config.yaml, if it exists)")
    p.add_argument("--readme", default="README.md", help="default: README.md")

    p = add("progress", help="how far a study's record has come: published numbers with "
                       "enough runs, core-hours done and left")
    p.add_argument("--study", default="replication", help="the study (default: replication)")
    p.add_argument("--config", default="config/config.yaml", help="the workflow config")
    p.add_argument("--results", help="results folder (default: the config's results_dir)")
    p.add_argument("--quiet", action="store_true", help="only the summary line")

    p = add("audit", help="train recorded runs again and compare them with their "
                       "records (exit status 1 if any differs)")
    p.add_argument("records", nargs="+", metavar="METRICS_JSON", help="recorded runs' metrics.json")
    p.add_argument("--epochs", type=_positive(int),
                   help="compare only the first N epochs (a quick audit; default: the whole run)")
    p.add_argument("--data-dir", help="MNIST root (default: $MNISTBENCH_DATA_DIR or ./data)")
    p.add_argument("--quiet", action="store_true", help="no training progress output")
    return parser


def _training_options(p) -> None:
    """The options `train` and `train-batch` share (passed on by _job_options)."""
    p.add_argument("--recipe", required=True, help="recipe id (see 'mnistbench recipes')")
    p.add_argument("--configfile", metavar="FILE", help="a study's config that defines --recipe "
                   "in its `recipes:` (docs/claims.md)")
    p.add_argument("--define", metavar="JSON", help="recipes of your own as a JSON object "
                   "{id: definition}, as a config's `recipes:` (the workflow passes them so)")
    p.add_argument("--epochs", type=_positive(int), help="epochs (default: the recipe's)")
    p.add_argument("--train-subset", type=_positive(int), metavar="N",
                   help="train on the first N images of the split (before expansion)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", help="MNIST root (default: $MNISTBENCH_DATA_DIR or ./data)")
    p.add_argument("--threads", type=_positive(int), help="CPU threads for torch")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="do not save or resume checkpoints (the run folder's checkpoint.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _tracking_options(p)


def _tracking_options(p) -> None:
    p.add_argument("--study", help="the study the run belongs to (recorded in metrics.json)")
    p.add_argument("--mlflow", action="store_true",
                   help="log the run to MLflow experiment mnistbench/STUDY ($MLFLOW_TRACKING_URI, "
                        "else ./mlflow.db)")
    p.add_argument("--pipeline-check", action="store_true",
                   help="mark the run as a pipeline check, not a replication")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except UsageError as err:
        print(f"mnistbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mnistbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`mnistbench recipes | head`): stop quietly
        # Python would report the failed flush of stdout at exit; point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a command killed by SIGPIPE returns
    except Exception as err:  # after BrokenPipeError, which is one too: MNIST missing (report, findings)
        from .data import DataError  # imported here: the CLI starts faster without torch
        if not isinstance(err, DataError):
            raise
        print(f"mnistbench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
