"""MLflow tracking: every run of a study is one MLflow run in experiment `mnistbench/<study>`.

metrics.json is the source of truth; MLflow is a view of it. So every MLflow failure here is
caught, reported once as a warning on stderr, and never costs a result: `mnistbench
mlflow-sync` replays metrics.json files into MLflow afterwards. Each MLflow run carries the tag
`mnistbench.run_key` ("<study>/<recipe>/lr=<lr>/seed=<seed>", or group=<k> for an ensemble),
which makes replays idempotent: one live MLflow run per key, older ones are deleted.

Above the runs, one parent run per study (tag `mnistbench.study_key` = the study) holds the
study as a whole: its summary and verdict tables, the report and its figures (`log_study`).
Every run of the study is its child (MLflow's `mlflow.parentRunId`). A job finds the parent
when it starts, or creates it if it is the study's first (under the store's lock, so once);
the report step (or `mnistbench mlflow-sync`) fills it and brings every run of the study under
it, including runs that started before it existed or under a parent since replaced.
Each run also logs the data it trained and was evaluated on as MLflow datasets (`datasets`):
names and digests of the MNIST files, split, subset, expansion and pixel scaling; no pixels.

The store is whatever MLflow resolves: $MLFLOW_TRACKING_URI, else MLflow's local default
(sqlite:///mlflow.db in the working directory, so `mlflow ui` there shows every run). A local
SQLite database fails with "database is locked" when several training jobs write at once, so
calls to a local store are serialised with a file lock next to it; servers need no lock.

MLflow is imported only when a run is tracked: the core trains without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from .record import RECORD_FILE, experiment_name, lr_label, parse_run_path, read_record, run_key

RUN_KEY_TAG = "mnistbench.run_key"
STUDY_KEY_TAG = "mnistbench.study_key"  # marks a study's parent run; its value is the study
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nesting: the UI shows a run under its parent
RESULT_TAG = "mnistbench.result"  # fingerprint of the logged result: replays skip what matches
# history key -> MLflow metric, logged at step = epoch. An epoch's time and speed get their own
# keys: MLflow's runs table shows a metric's value at the highest step, and `train_seconds`
# and `images_per_second` are the run's totals (as in metrics.json and runs.csv), logged once.
EPOCH_METRICS = {"train_loss": "train_loss", "val_accuracy": "val_accuracy",
                 "test_accuracy": "test_accuracy", "images_per_second": "epoch_images_per_second",
                 "train_seconds": "epoch_train_seconds"}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs
NOTE = "mlflow.note.content"  # the description MLflow's UI shows for an experiment or a run
FINAL_METRICS = ("selected_accuracy", "selected_epoch", "final_test_accuracy", "final_val_accuracy",
                 "published_accuracy", "train_seconds", "eval_seconds", "wall_seconds",
                 "images_per_second", "members_finished")


def warn(message: str) -> None:
    print(f"mnistbench: warning: {message}", file=sys.stderr, flush=True)


def study_of(metrics: dict, path: Path) -> str:
    """The study a metrics.json belongs to: its own "study" key, else <study>/runs/... in its path."""
    if metrics.get("study"):
        return metrics["study"]
    where = parse_run_path(Path(path).resolve())
    if where:
        return where["study"]
    raise ValueError(f"{path}: cannot tell its study (no 'study' key, not under <study>/runs/)")


def key_of(metrics: dict, path: Path) -> str:
    return run_key(study_of(metrics, path), metrics["recipe"], metrics.get("lr"),
                   metrics.get("seed"), metrics.get("group"))


def fingerprint(metrics: dict) -> str:
    """Identifies a result (not the file: mlflow-sync rewrites the file's MLflow fields)."""
    stable = {k: metrics.get(k) for k in ("recipe", "seed", "group", "lr", "status",
                                          "selected_accuracy", "history", "test_predictions")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def local_store(uri: str) -> Path | None:
    """The file or folder of a local store (sqlite or file), None for a server or remote DB."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        return Path(path) if path and path != ":memory:" else None
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or uri)
    return None


@contextlib.contextmanager
def store_lock():
    """Hold an exclusive lock on <store>.lock while talking to a local store."""
    import mlflow

    store = local_store(mlflow.get_tracking_uri())
    if store is None:
        yield
        return
    import fcntl

    lock = store.resolve().with_name(store.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(client, study: str) -> str:
    from mlflow.exceptions import MlflowException

    name = experiment_name(study)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={**EXPERIMENT_KIND, NOTE: experiment_note(study)})
        except MlflowException:  # created meanwhile by a job logging to a server (no lock there)
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    for key, value in {**EXPERIMENT_KIND, NOTE: experiment_note(study)}.items():
        if key not in experiment.tags:  # experiments of older versions; a user's note stays
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def ui_link(experiment_id: str, base: str | None = None) -> str:
    """The study's runs table in MLflow's UI: on the tracking server, else where `mlflow ui`
    serves by default. MLflow 3.17's UI shows an experiment as its global GenAI / Model
    training switch says (GenAI unless switched; the experiment's mlflow.experimentKind tag
    does not decide): the workflowType parameter opens it on the runs."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    base = base or (uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def study_link(study: str, base: str | None = None) -> str | None:
    """ui_link of a study's experiment; None if the store has no such experiment."""
    from mlflow import MlflowClient

    with store_lock():
        experiment = MlflowClient().get_experiment_by_name(experiment_name(study))
    return None if experiment is None else ui_link(experiment.experiment_id, base)


def run_name(key: str) -> str:
    """A run's name in MLflow's runs table, which shows its first 20 or so characters: the part
    that tells runs apart first. "replication/nielsen_ch6_dropout/lr=0.03/seed=7" -> "s7
    ch6_dropout lr=0.03" (the study is the experiment; "nielsen_" and "seed_" start most ids)."""
    _, recipe, lr, last = key.split("/")
    kind, number = last.split("=", 1)
    short = next((recipe[len(p):] for p in ("nielsen_", "seed_") if recipe.startswith(p)), recipe)
    return f"{'s' if kind == 'seed' else 'g'}{number} {short} {lr}"


def experiment_note(study: str) -> str:
    return (f"The runs of the mnistbench study `{study}` (config/config.yaml): one MLflow run per "
            f"recipe x learning rate x seed, named `s<seed> <recipe> lr=<lr>` (ensemble groups "
            f"`g<group> ...`; recipe ids without their `nielsen_` or `seed_` prefix). Each run's "
            f"metrics.json (results/{study}/runs/) is the source of truth; the study's tables "
            f"are results/{study}/summary.csv and runs.csv, its report reports/{study}/index.html.")


def run_note(metrics: dict) -> str:
    """A run's description: what it replicates, how it ended."""
    what = f"seed {metrics.get('seed')}" if metrics.get("group") is None else f"ensemble group {metrics['group']}"
    lr = "" if metrics.get("lr") is None else f", learning rate {lr_label(metrics['lr'])}"
    published = metrics.get("published_accuracy")
    result = (f"selected test accuracy {metrics['selected_accuracy']}%" if metrics.get("selected_accuracy")
              is not None else f"status {metrics.get('status')}")
    verb = ("checks the pipeline (a few epochs on a subset, not a replication) of the published"
            if metrics.get("pipeline_check") else "replicates the published")
    return (f"`{metrics['recipe']}` ({what}{lr}) {verb} "
            f"{'' if published is None else f'{published}% of '}`{metrics.get('published_id') or metrics['recipe']}`: "
            f"{result}.")


def _runs_with_key(client, experiment_id: str, key: str) -> list:
    from mlflow.entities import ViewType

    quoted = key.replace("'", "\\'")
    return list(client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{quoted}'",
                                   run_view_type=ViewType.ACTIVE_ONLY, max_results=100))


def _live_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every live run of the experiment that matches, page by page (a study may have thousands)."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


# --- the study's parent run ------------------------------------------------------------------

def _study_parents(client, experiment_id: str, study: str) -> list:
    """The study's live parent runs, the one to keep first: the oldest (ties: the lowest id)."""
    quoted = study.replace("'", "\\'")
    parents = _live_runs(client, experiment_id, f"tags.`{STUDY_KEY_TAG}` = '{quoted}'")
    return sorted(parents, key=lambda run: (run.info.start_time, run.info.run_id))


def _study_parent(client, experiment_id: str, study: str) -> str:
    """The id of the study's parent run; the study's first job creates it (empty until
    `log_study` fills it). With a local store the caller holds the store's lock, so there is
    one. Jobs logging to a server take no lock, and two may create one each at once: each then
    keeps the oldest and deletes its own; `log_study` folds any that remain into one."""
    parents = _study_parents(client, experiment_id, study)
    if parents:
        return parents[0].info.run_id
    created = client.create_run(experiment_id, run_name=f"study {study}", tags={
        STUDY_KEY_TAG: study, "study": study,
        NOTE: f"The mnistbench study `{study}`: its runs are this run's children. The study's "
              f"tables and report are logged here once the workflow's report step has run."}).info.run_id
    first = _study_parents(client, experiment_id, study)[0].info.run_id
    if first != created:
        client.delete_run(created)
    return first


def study_verdicts(study_dir: Path, study_config: dict | None = None):
    """The report's verdicts, one row per published number: recipe, published, mean, sd, n,
    verdict, reason (a DataFrame), judged from the study's tables as the report judges them."""
    import pandas as pd

    from .verdicts import is_pipeline_check, judge_recipes, load_metrics, load_tables

    runs, summary = load_tables(study_dir)
    rows = judge_recipes(runs, summary, load_metrics(runs, study_dir), is_pipeline_check(summary, study_config))
    return pd.DataFrame(rows, columns=["recipe", "published", "mean", "sd", "n", "verdict", "reason"])


def _study_files(study_dir: Path, report_dir: Path | None) -> dict[str, Path]:
    """What the parent holds as files, by artifact path: the report's pages and PNG figures."""
    files = {}
    if report_dir is not None and report_dir.is_dir():
        for name in ("index.html", "README.md"):
            if (report_dir / name).is_file():
                files[f"report/{name}"] = report_dir / name
        for png in sorted(report_dir.glob("*/*.png")):  # figures/, learning_curves/ (SVG twins stay out)
            files[f"report/{png.parent.name}/{png.name}"] = png
    return files


def log_study(study_dir: Path, report_dir: Path | None = None, study_config: dict | None = None,
              log=print) -> str:
    """Fill the study's parent run and bring every run of the study under it; the parent's id.

    The parent holds the summary (log_table, from summary.csv) and the verdicts as tables, the
    report (report/index.html, report/README.md) with its PNG figures, the study's settings as
    params, totals as metrics, the datasets of its runs and a description. Idempotent: the
    parent's `mnistbench.result` tag fingerprints its tables, verdicts and report files, and a
    parent that holds others is replaced by a fresh one (MLflow params cannot change and
    log_table appends), whose children are moved over before the old parent is deleted.
    """
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    study_dir = Path(study_dir)
    tables = {name: study_dir / f"{name}.csv" for name in ("runs", "summary")}
    runs = pd.read_csv(tables["runs"]) if tables["runs"].is_file() else None
    summary = pd.read_csv(tables["summary"]) if tables["summary"].is_file() else None
    study = (str(runs["study"].dropna().iloc[0]) if runs is not None and runs["study"].notna().any()
             else study_dir.name)
    verdicts = None
    if runs is not None and summary is not None:
        try:
            verdicts = study_verdicts(study_dir, study_config)
        except Exception as err:  # an unreadable record: the tables still go up, the report says why
            log(f"warning: no verdicts for the MLflow parent of {study}: {err}")
    files = _study_files(study_dir, report_dir)
    if not files:
        log(f"note: no report in {report_dir}: the MLflow parent of {study} holds its tables only")
    # What the parent shows, fingerprinted; not the study's settings, which the workflow passes
    # with its defaults filled in and `mlflow-sync` reads from the config file as written: the
    # tables record what the settings did, and the parent must not flip between the two.
    digest = hashlib.sha256(json.dumps({
        "verdicts": None if verdicts is None else verdicts.to_json(),
        "files": {name: hashlib.sha256(path.read_bytes()).hexdigest()
                  for name, path in {**{f"{k}.csv": v for k, v in tables.items() if v.is_file()},
                                     **files}.items()},
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]

    with store_lock():
        client = MlflowClient()
        experiment_id = _experiment_id(client, study)
        parents = _study_parents(client, experiment_id, study)
        children = [run for run in _live_runs(client, experiment_id)
                    if RUN_KEY_TAG in run.data.tags]  # not the parents, nor runs of other tools
        # The parent spans its runs as they happened: from the first run's start to the last
        # one's end. A replay (mlflow-sync of a record trained elsewhere, or long ago) creates
        # its runs with their recorded times, but its first replayed run made the parent now.
        first = min((run.info.start_time for run in children if run.info.start_time), default=None)
        last = max((run.info.end_time for run in children if run.info.end_time), default=None)
        same = [p for p in parents if p.data.tags.get(RESULT_TAG) == digest]
        empty = [p for p in parents if RESULT_TAG not in p.data.tags  # created by a job, not filled
                 and (first is None or p.info.start_time <= first)]
        if same:
            parent_id = same[0].info.run_id
        elif empty:
            parent_id = empty[0].info.run_id
        else:
            parent_id = client.create_run(experiment_id, start_time=first, run_name=f"study {study}",
                                          tags={STUDY_KEY_TAG: study}).info.run_id
        moved, inputs = 0, {}
        for run in children:
            if run.data.tags.get(PARENT_TAG) != parent_id:
                client.set_tag(run.info.run_id, PARENT_TAG, parent_id)
                moved += 1
            for given in run.inputs.dataset_inputs if run.inputs else []:
                if any(t.key == "mlflow.data.context" and t.value == "training" for t in given.tags):
                    inputs[(given.dataset.name, given.dataset.digest)] = given
        for other in parents:
            if other.info.run_id != parent_id:
                client.delete_run(other.info.run_id)
        if same:
            log(f"study {study}: MLflow parent run {parent_id} up to date"
                + (f", {moved} runs moved under it" if moved else "") + f"; its runs: {ui_link(experiment_id)}")
            return parent_id

        client.set_tag(parent_id, RESULT_TAG, "incomplete")  # until the last artifact is in
        if summary is not None:
            client.log_table(parent_id, summary, "summary.json")
        if verdicts is not None:
            client.log_table(parent_id, verdicts, "verdicts.json")
        for name, path in files.items():
            client.log_artifact(parent_id, str(path), str(Path(name).parent))
        if inputs:
            client.log_inputs(parent_id, datasets=list(inputs.values()))
        totals = {}
        if runs is not None:
            totals = {"runs": len(runs), "finished": int((runs["status"] == "finished").sum()),
                      "diverged": int((runs["status"] == "diverged").sum()),
                      "train_seconds": float(runs["train_seconds"].fillna(0).sum())}
        counts = {} if verdicts is None else verdicts["verdict"].value_counts().to_dict()
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in {
            **totals, **{f"verdicts_{v.replace(' ', '_')}": n for v, n in counts.items()}}.items()],
            params=[Param(k, v) for k, v in _params({"study": study, **(study_config or {})}).items()],
            tags=[RunTag(k, v) for k, v in {
                "study": study, STUDY_KEY_TAG: study, "mlflow.runName": f"study {study}",
                "pipeline_check": str(bool(summary is not None and summary["pipeline_check"].any())),
                NOTE: study_note(study, study_config, totals, counts, files)}.items()])
        client.set_tag(parent_id, RESULT_TAG, digest)
        client.set_terminated(parent_id, "FINISHED", end_time=last)
    log(f"study {study}: logged its tables, {len(files)} report files and {len(inputs)} datasets "
        f"to MLflow parent run {parent_id}" + (f"; {moved} runs moved under it" if moved else "")
        + f"; its runs: {ui_link(experiment_id)}")
    return parent_id


def study_note(study: str, config: dict | None, totals: dict, counts: dict, files: dict) -> str:
    """The parent's description: what the study is, how it came out, where to look."""
    lines = [f"The mnistbench study `{study}`" + (f": {config['description']}" if (config or {}).get(
        "description") else ".")]
    if totals:
        lines.append(f"{totals['runs']} runs ({totals['finished']} finished, {totals['diverged']} "
                     f"diverged) are this run's children; `train_seconds` is their total.")
    if counts:
        lines.append("Verdicts on the published numbers: "
                     + ", ".join(f"{n} {verdict}" for verdict, n in counts.items()) + " (verdicts.json).")
    lines.append(f"Tables: summary.json (results/{study}/summary.csv), verdicts.json."
                 + (" The report: report/index.html, report/README.md, figures in report/figures "
                    "and report/learning_curves." if files else
                    " No report yet: run the workflow's report step (`mnistbench report`)."))
    return "\n\n".join(lines)


# --- datasets: what a run trained and was evaluated on -----------------------------------------

def datasets(config: dict) -> list[tuple[str, object]]:
    """The MNIST data of a run's resolved config as (context, MLflow dataset): its training
    images, its validation images (the book's split only) and the test set. Name and digest
    tell the split, subset, expansion, pixel scaling and the md5 sums of the files read; the
    profile spells them out. No pixels are logged. [] for a config without split or scaling."""
    import numpy as np
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec
    from torchvision.datasets import MNIST

    from .data import MNIST_FILES, NIELSEN_TRAIN_SIZE, PIXEL_SCALINGS

    split, scaling = config.get("split"), config.get("scaling")
    if split not in ("nielsen", "official") or scaling not in PIXEL_SCALINGS:
        return []
    schema = json.dumps({"mlflow_tensorspec": TensorDatasetSchema(  # what a batch looks like
        features=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28), "image")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")])).to_dict()})

    class MnistDataset(MetaDataset):  # a MetaDataset with the profile and tensor schema it lacks
        def __init__(self, name: str, profile: dict):
            self._profile = profile
            digest = hashlib.sha256(json.dumps(profile, sort_keys=True).encode()).hexdigest()[:8]
            super().__init__(HTTPDatasetSource(MNIST.mirrors[0] + profile["source_file"]), name, digest)

        @property
        def profile(self) -> dict:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile), "schema": schema}

    train_size = NIELSEN_TRAIN_SIZE if split == "nielsen" else 60_000
    parts = [("training", "train", "train-", 0, config.get("train_subset") or train_size,
              bool(config.get("expand")))]
    if split == "nielsen":  # the last 10,000 training images validate
        parts.append(("validation", "validation", "train-", NIELSEN_TRAIN_SIZE, 60_000, False))
    parts.append(("testing", "test", "t10k-", 0, 10_000, False))
    found = []
    for context, part, prefix, start, stop, expanded in parts:
        files = sorted(name for name in MNIST_FILES if name.startswith(prefix))
        profile = {"split": split, "part": part, "rows": f"{start}:{stop}",
                   "expanded": expanded, "images": (stop - start) * (5 if expanded else 1),
                   "scaling": scaling, "pixels": PIXEL_SCALINGS[scaling],
                   "md5": {name: MNIST_FILES[name] for name in files}, "source_file": files[0]}
        name = (f"mnist-{split}-{part}-{stop - start}{'-x5shifted' if expanded else ''}"
                f"-{scaling.replace('/', '')}")
        found.append((context, MnistDataset(name, profile)))
    return found


def _params(values: dict, prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts into MLflow params (strings of at most 6,000 characters)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_tags(metrics: dict, key: str) -> dict[str, str]:
    """The tags of a finished result: what one filters MLflow runs by."""
    env = metrics.get("environment") or {}
    tags = {
        RUN_KEY_TAG: key, RESULT_TAG: fingerprint(metrics),
        "study": key.split("/", 1)[0], "recipe": metrics["recipe"],
        "published_id": metrics.get("published_id") or metrics["recipe"],
        "protocol": metrics.get("protocol"), "seed": metrics.get("seed"),
        "learning_rate": lr_label(metrics.get("lr")), "status": metrics.get("status"),
        "git_commit": env.get("git_commit"), "host": env.get("host") or socket.gethostname(),
        "device": env.get("device"), "device_name": env.get("device_name"),
        "pipeline_check": bool(metrics.get("pipeline_check")),
        "user_defined": True if metrics.get("user_recipe") else None,  # a recipe of the study's config
        "mlflow.source.git.commit": env.get("git_commit"), NOTE: run_note(metrics),
    }
    if metrics.get("group") is not None:
        tags["ensemble_group"] = metrics["group"]
        tags["members"] = ",".join(str(m.get("seed")) for m in metrics.get("members", []))
    return {k: str(v) for k, v in tags.items() if v is not None}


class RunTracker:
    """Live logging of one run: start, one call per epoch, finish (or abort).

    After the first MLflow failure the tracker stops calling MLflow (training goes on at full
    speed); `error` says what failed, and the run is left for `mnistbench mlflow-sync`.
    """

    def __init__(self, study: str, key: str):
        self.study, self.key = study, key
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.error: str | None = None
        self._params: set[str] = set()

    def _call(self, what: str, action):
        if self.error:
            return None
        try:
            from mlflow import MlflowClient

            with store_lock():
                return action(MlflowClient())
        except Exception as err:  # any MLflow, network or database error: keep training
            self.error = f"{what} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            warn(f"MLflow: {self.error}; the result stays in metrics.json, replay it with "
                 f"'mnistbench mlflow-sync'")
            return None

    def _log(self, client, metrics=(), params=None, tags=None):
        from mlflow.entities import Param, RunTag

        params = {k: v for k, v in (params or {}).items() if k not in self._params}
        client.log_batch(self.run_id, metrics=list(metrics),
                         params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in (tags or {}).items()])
        self._params.update(params)

    def start(self, params: dict, tags: dict, resume_run_id: str | None = None,
              start_time: int | None = None) -> str | None:
        """Create the MLflow run (or reopen the resumed one); other runs with this key are deleted.
        start_time: when it started, in ms since the epoch (a replay gives the record's; default now)."""
        def action(client):
            self.experiment_id = _experiment_id(client, self.study)
            parent_id = _study_parent(client, self.experiment_id, self.study)
            existing = _runs_with_key(client, self.experiment_id, self.key)
            if resume_run_id in {r.info.run_id for r in existing}:
                self.run_id = resume_run_id
                client.update_run(self.run_id, status="RUNNING")
                self._params.update(client.get_run(self.run_id).data.params)
            else:
                self.run_id = client.create_run(self.experiment_id, start_time=start_time,
                                                run_name=run_name(self.key), tags={
                    RUN_KEY_TAG: self.key, PARENT_TAG: parent_id}).info.run_id
            for run in existing:  # a rerun replaces the earlier result
                if run.info.run_id != self.run_id:
                    client.delete_run(run.info.run_id)
            self._log(client, params=_params(params), tags={
                **{k: str(v) for k, v in {**tags, "status": "running"}.items()}, PARENT_TAG: parent_id})
            return self.run_id

        return self._call("starting the run", action)

    def log_epoch(self, entry: dict, timestamp: int | None = None) -> None:
        """train(on_epoch=...): the epoch's metrics at step = epoch (at `timestamp` ms, default now)."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = timestamp or int(time.time() * 1000)
        metrics = [Metric(name, _number(entry[k]), now, entry["epoch"]) for k, name in EPOCH_METRICS.items()
                   if _number(entry.get(k)) is not None]
        self._call(f"logging epoch {entry['epoch']}", lambda client: self._log(client, metrics))

    def finish(self, metrics: dict, out: Path, end_time: int | None = None) -> bool:
        """Final metrics, resolved parameters, tags, artifacts; then FINISHED (at end_time ms,
        default now). False on failure."""
        if self.run_id is None:
            return False
        from mlflow.entities import DatasetInput, InputTag, Metric
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        def action(client):
            now = end_time or int(time.time() * 1000)
            finals = [Metric(k, _number(metrics[k]), now, 0) for k in FINAL_METRICS
                      if _number(metrics.get(k)) is not None]
            # the parent again: the report step may have replaced it while this run trained
            parent_id = _study_parent(client, self.experiment_id, self.study)
            self._log(client, finals, params=_params(metrics.get("config") or {}),
                      tags={**run_tags(metrics, self.key), PARENT_TAG: parent_id})
            client.log_inputs(self.run_id, datasets=[
                DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
                for context, dataset in datasets(metrics.get("config") or {})])
            for name in ("metrics.json", "model.pt"):
                if (out / name).exists():
                    client.log_artifact(self.run_id, str(out / name))
            client.set_terminated(self.run_id, "FINISHED", end_time=end_time)
            return True

        return bool(self._call("finishing the run", action))

    def abort(self, status: str = "FAILED") -> None:
        if self.run_id is not None:
            self._call("ending the run", lambda client: client.set_terminated(self.run_id, status))


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The MLflow run id saved in a run's checkpoint (train(extra_state=...)), if it has one."""
    if not checkpoint.exists():
        return None
    try:
        import torch

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        return (state.get("extra_state") or {}).get("mlflow_run_id")
    except Exception:  # unreadable: train() reports it; the run starts a new MLflow run
        return None


# --- replay: metrics.json -> MLflow, afterwards ----------------------------------------------

def _ms(iso: str | None) -> int | None:
    """A record's UTC time ("2026-12-06T20:28:55Z") in ms since the epoch."""
    if not iso:
        return None
    import calendar

    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")) * 1000


def run_times(metrics: dict) -> tuple[int | None, int | None, list[int | None]]:
    """When a recorded run started and ended (ms since the epoch), and when each epoch ended:
    its first stretch's start and last stretch's end, else (records made before stretches were
    recorded) the time it finished less its wall time, at least its training and evaluation
    time. Epochs are placed by their training time in between. (None, None, ...) if the record
    does not say when it finished."""
    history = metrics.get("history") or []
    stretches = [s for s in metrics.get("stretches") or [] if s.get("started_at")]
    if stretches:
        start, end = _ms(stretches[0]["started_at"]), _ms(stretches[-1].get("ended_at"))
    else:
        end = _ms((metrics.get("environment") or {}).get("finished_at"))
        busy = (metrics.get("train_seconds") or 0.0) + (metrics.get("eval_seconds") or 0.0)
        start = None if end is None else end - int(1000 * max(metrics.get("wall_seconds") or 0.0, busy))
    if start is None or end is None:
        return None, None, [None] * len(history)
    seconds = [h.get("train_seconds") or 0.0 for h in history]
    total, done, epochs = sum(seconds) or 1.0, 0.0, []
    for s in seconds:
        done += s
        epochs.append(start + int((end - start) * done / total))
    return start, end, epochs


def replay(path: Path, metrics: dict) -> str | None:
    """Log a finished metrics.json as a new MLflow run (replacing any run with its key), with
    the start and end time its record gives, so MLflow shows when it trained and for how long."""
    key = key_of(metrics, path)
    tracker = RunTracker(study_of(metrics, path), key)
    params = {k: metrics.get(k) for k in ("recipe", "seed", "lr", "group")}
    start, end, epoch_times = run_times(metrics)
    if not tracker.start(params, {}, start_time=start):
        raise RuntimeError(tracker.error)
    for entry, timestamp in zip(metrics.get("history") or [], epoch_times):
        tracker.log_epoch(entry, timestamp)
    if not tracker.finish(metrics, path.parent, end_time=end):
        raise RuntimeError(tracker.error)
    return tracker.run_id


def live_run(path: Path, metrics: dict) -> str | None:
    """The MLflow run that holds this result, if it is up to date: the one live run with its
    key, FINISHED, with the same result. None if it is missing, unfinished or stale."""
    from mlflow import MlflowClient

    key = key_of(metrics, path)
    with store_lock():
        client = MlflowClient()
        experiment = client.get_experiment_by_name(experiment_name(study_of(metrics, path)))
        if experiment is None or experiment.lifecycle_stage == "deleted":
            return None
        runs = _runs_with_key(client, experiment.experiment_id, key)
    if (len(runs) == 1 and runs[0].info.status == "FINISHED"
            and runs[0].data.tags.get(RESULT_TAG) == fingerprint(metrics)):
        return runs[0].info.run_id
    return None


def logged_here(run_id: str | None) -> bool:
    """True if run_id is a run (live or deleted) of the current store: the record was logged to
    it. A record trained elsewhere names a run of another store, or none (MLflow was off)."""
    if not run_id:
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with store_lock():
        try:
            MlflowClient().get_run(run_id)
        except MlflowException:
            return False
    return True


def study_dirs(paths: list[Path]) -> list[Path]:
    """The study folders (<study> of <study>/runs/<recipe>/<lr>/<seed>/metrics.json) of paths."""
    return list(dict.fromkeys(where["study_dir"] for where in map(parse_run_path, paths) if where))


def sync(paths: list[Path], write_json=None, dry_run: bool = False, log=print,
         reports: Path | None = Path("reports"), study_config=lambda study: None) -> dict[str, int]:
    """Replay every metrics.json under `paths` whose MLflow run is missing, unfinished or stale,
    then log each of their studies' parent run (log_study, with reports/<study> as its report).

    Idempotent: a second sync logs nothing. With write_json, a record whose MLflow run this sync
    replaced gets the new run's id, and loses its mlflow_error: the record of a failed live
    logging, or of a run of this store that was deleted or stale. A record logged to another
    store (trained elsewhere, e.g. the tracked replication record) is left as it is.
    """
    counts = {"up to date": 0, "replayed": 0, "failed": 0}
    for path in paths:
        metrics = read_record(path)
        run_id = live_run(path, metrics)
        if run_id:
            counts["up to date"] += 1
        elif dry_run:
            log(f"would replay {path}")
            counts["replayed"] += 1
            continue
        else:
            try:
                run_id = replay(path, metrics)
            except Exception as err:
                log(f"failed to replay {path}: {err}")
                counts["failed"] += 1
                continue
            log(f"replayed {path} -> MLflow run {run_id}")
            counts["replayed"] += 1
        recorded = (metrics.get("extra_state") or {}).get("mlflow_run_id")
        if write_json and recorded != run_id and (metrics.get("mlflow_error") or logged_here(recorded)):
            metrics.pop("mlflow_error", None)
            metrics["extra_state"] = {**(metrics.get("extra_state") or {}), "mlflow_run_id": run_id}
            write_json(path, metrics)
    for study_dir in study_dirs(paths):
        if dry_run:
            log(f"would log the study {study_dir} to its MLflow parent run")
            continue
        try:
            log_study(study_dir, None if reports is None else Path(reports) / study_dir.name,
                      study_config(study_dir.name), log=log)
        except Exception as err:
            log(f"failed to log the study {study_dir} to its MLflow parent run: "
                f"{type(err).__name__}: {err}")
            counts["failed"] += 1
    return counts


def find_metrics(paths: list[Path]) -> list[Path]:
    """metrics.json files: the given files, and every one below the given folders."""
    found = []
    for path in map(Path, paths):
        found += sorted(path.rglob(RECORD_FILE)) if path.is_dir() else [path]
    return found
