"""MLflow tracking: every run of a study is one MLflow run in experiment `mnistbench/<study>`.

metrics.json is the source of truth; MLflow is a view of it. So every MLflow failure here is
caught, reported once as a warning on stderr, and never costs a result: `mnistbench
mlflow-sync` replays metrics.json files into MLflow afterwards. Each MLflow run carries the tag
`mnistbench.run_key` ("<study>/<recipe>/lr=<lr>/seed=<seed>", or group=<k> for an ensemble),
which makes replays idempotent: one live MLflow run per key, older ones are deleted.

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

RUN_KEY_TAG = "mnistbench.run_key"
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


def experiment_name(study: str) -> str:
    return f"mnistbench/{study}"


def lr_label(lr: float | None) -> str:
    """The learning rate as the workflow's lr wildcard writes it."""
    return "none" if lr is None else f"{lr:g}"


def run_key(study: str, recipe: str, lr: float | None, seed: int | None = None,
            group: int | None = None) -> str:
    last = f"group={group}" if group is not None else f"seed={seed}"
    return f"{study}/{recipe}/lr={lr_label(lr)}/{last}"


def study_of(metrics: dict, path: Path) -> str:
    """The study a metrics.json belongs to: its own "study" key, else <study>/runs/... in its path."""
    if metrics.get("study"):
        return metrics["study"]
    parents = Path(path).resolve().parents
    if len(parents) > 4 and parents[3].name == "runs":
        return parents[4].name
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


def experiment_note(study: str) -> str:
    return (f"The runs of the mnistbench study `{study}` (config/config.yaml): one MLflow run per "
            f"recipe x learning rate x seed, named `<recipe> lr=<lr> seed=<seed>`. Each run's "
            f"metrics.json (results/{study}/runs/) is the source of truth; the study's tables "
            f"are results/{study}/summary.csv and runs.csv, its report reports/{study}/index.html.")


def run_note(metrics: dict) -> str:
    """A run's description: what it replicates, how it ended."""
    what = f"seed {metrics.get('seed')}" if metrics.get("group") is None else f"ensemble group {metrics['group']}"
    lr = "" if metrics.get("lr") is None else f", learning rate {lr_label(metrics['lr'])}"
    published = metrics.get("published_accuracy")
    result = (f"selected test accuracy {metrics['selected_accuracy']}%" if metrics.get("selected_accuracy")
              is not None else f"status {metrics.get('status')}")
    return (f"`{metrics['recipe']}` ({what}{lr}) replicates the published "
            f"{'' if published is None else f'{published}% of '}`{metrics.get('published_id') or metrics['recipe']}`: "
            f"{result}." + (" A pipeline check, not a replication." if metrics.get("pipeline_check") else ""))


def _runs_with_key(client, experiment_id: str, key: str) -> list:
    from mlflow.entities import ViewType

    quoted = key.replace("'", "\\'")
    return list(client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{quoted}'",
                                   run_view_type=ViewType.ACTIVE_ONLY, max_results=100))


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

    def start(self, params: dict, tags: dict, resume_run_id: str | None = None) -> str | None:
        """Create the MLflow run (or reopen the resumed one); other runs with this key are deleted."""
        def action(client):
            experiment_id = _experiment_id(client, self.study)
            existing = _runs_with_key(client, experiment_id, self.key)
            if resume_run_id in {r.info.run_id for r in existing}:
                self.run_id = resume_run_id
                client.update_run(self.run_id, status="RUNNING")
                self._params.update(client.get_run(self.run_id).data.params)
            else:
                name = self.key.split("/", 1)[1].replace("/", " ")
                self.run_id = client.create_run(experiment_id, run_name=name,
                                                tags={RUN_KEY_TAG: self.key}).info.run_id
            for run in existing:  # a rerun replaces the earlier result
                if run.info.run_id != self.run_id:
                    client.delete_run(run.info.run_id)
            self._log(client, params=_params(params),
                      tags={k: str(v) for k, v in {**tags, "status": "running"}.items()})
            return self.run_id

        return self._call("starting the run", action)

    def log_epoch(self, entry: dict) -> None:
        """train(on_epoch=...): the epoch's metrics at step = epoch."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, _number(entry[k]), now, entry["epoch"]) for k, name in EPOCH_METRICS.items()
                   if _number(entry.get(k)) is not None]
        self._call(f"logging epoch {entry['epoch']}", lambda client: self._log(client, metrics))

    def finish(self, metrics: dict, out: Path) -> bool:
        """Final metrics, resolved parameters, tags, artifacts; then FINISHED. False on failure."""
        if self.run_id is None:
            return False
        from mlflow.entities import Metric

        def action(client):
            now = int(time.time() * 1000)
            finals = [Metric(k, _number(metrics[k]), now, 0) for k in FINAL_METRICS
                      if _number(metrics.get(k)) is not None]
            self._log(client, finals, params=_params(metrics.get("config") or {}),
                      tags=run_tags(metrics, self.key))
            for name in ("metrics.json", "model.pt"):
                if (out / name).exists():
                    client.log_artifact(self.run_id, str(out / name))
            client.set_terminated(self.run_id, "FINISHED")
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

def replay(path: Path, metrics: dict) -> str | None:
    """Log a finished metrics.json as a new MLflow run (replacing any run with its key)."""
    key = key_of(metrics, path)
    tracker = RunTracker(study_of(metrics, path), key)
    params = {k: metrics.get(k) for k in ("recipe", "seed", "lr", "group")}
    if not tracker.start(params, {}):
        raise RuntimeError(tracker.error)
    for entry in metrics.get("history") or []:
        tracker.log_epoch(entry)
    if not tracker.finish(metrics, path.parent):
        raise RuntimeError(tracker.error)
    return tracker.run_id


def up_to_date(path: Path, metrics: dict) -> bool:
    """True if MLflow holds exactly one live run for this result's key: FINISHED, same result."""
    from mlflow import MlflowClient

    key = key_of(metrics, path)
    with store_lock():
        client = MlflowClient()
        experiment = client.get_experiment_by_name(experiment_name(study_of(metrics, path)))
        if experiment is None or experiment.lifecycle_stage == "deleted":
            return False
        runs = _runs_with_key(client, experiment.experiment_id, key)
    return (len(runs) == 1 and runs[0].info.status == "FINISHED"
            and runs[0].data.tags.get(RESULT_TAG) == fingerprint(metrics))


def sync(paths: list[Path], write_json, dry_run: bool = False, log=print) -> dict[str, int]:
    """Replay every metrics.json under `paths` whose MLflow run is missing, unfinished or stale.

    Idempotent: a second sync logs nothing. A replayed file gets its new mlflow_run_id (and
    loses its mlflow_error) so that it points at the MLflow run that now holds it.
    """
    counts = {"up to date": 0, "replayed": 0, "failed": 0}
    for path in paths:
        metrics = json.loads(path.read_text())
        if up_to_date(path, metrics):
            counts["up to date"] += 1
            continue
        if dry_run:
            log(f"would replay {path}")
            counts["replayed"] += 1
            continue
        try:
            run_id = replay(path, metrics)
        except Exception as err:
            log(f"failed to replay {path}: {err}")
            counts["failed"] += 1
            continue
        metrics.pop("mlflow_error", None)
        metrics["extra_state"] = {**(metrics.get("extra_state") or {}), "mlflow_run_id": run_id}
        write_json(path, metrics)
        log(f"replayed {path} -> MLflow run {run_id}")
        counts["replayed"] += 1
    return counts


def find_metrics(paths: list[Path]) -> list[Path]:
    """metrics.json files: the given files, and every one below the given folders."""
    found = []
    for path in map(Path, paths):
        found += sorted(path.rglob("metrics.json")) if path.is_dir() else [path]
    return found
