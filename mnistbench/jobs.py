"""Jobs: train a recipe into a run folder, or many at once, or vote an ensemble into one; the
library functions behind `mnistbench train`, `train-batch` and `ensemble`, for Python users too:

    from mnistbench.jobs import train_into
    from mnistbench.recipes import get_recipe

    train_into(get_recipe("nielsen_ch1_fc30"), 1, "results/mine/runs/nielsen_ch1_fc30/lr=3/seed=1")

A job writes the run folder through mnistbench.record (model.pt, then metrics.json, then the
checkpoint goes) and, with mlflow=True, logs each run to MLflow as it trains (tracking.py).
Bad input raises ValueError (or data.DataError, train.CheckpointError), before any training
where it can; a failed or interrupted job leaves no metrics.json, and its MLflow runs end as
FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from .record import (CHECKPOINT_FILE, RECORD_FILE, check_writable, label_record, lr_label, run_key,
                     total_wall_seconds, write_record, write_run)

Log = Callable[[str], None] | None

# The largest mini-batch at which one torch thread is the default: the measured-fastest when
# other work shares the CPU. At the book's mini-batch of 10 a second thread buys little even on
# an idle machine, and with another process busy on one of two cores it costs over 10x: one
# epoch of the basic conv on 5,000 images trained in 27.7 s on torch's default of a thread per
# core against 2.0 s on one, and the tutorial's net (mini-batch 100) in 22.7 s against 1.2 s
# (docs/performance.md, "Threads of a single run"). Every recipe trains at mini-batch 10, 50 or 100.
ONE_THREAD_UP_TO_BATCH = 100


def default_threads(batch_size: int | None) -> int | None:
    """The torch threads of a single run not told otherwise (--threads): 1 for the mini-batches
    of this project's recipes, torch's default (None) above them."""
    return 1 if batch_size is None or batch_size <= ONE_THREAD_UP_TO_BATCH else None


def _set_threads(threads: int | None, batch_size: int | None, log: Log) -> None:
    """Set torch's threads (the given count, else the default for the mini-batch) and say which."""
    import torch

    chosen = threads or default_threads(batch_size)
    if chosen:
        torch.set_num_threads(chosen)
    if log:
        why = "as asked with --threads" if threads else (
            f"the default at mini-batch {batch_size}, the fastest when other work shares the CPU; "
            f"--threads N to change" if chosen else "torch's default: one per core")
        log(f"torch threads: {torch.get_num_threads()} ({why})")


def train_into(recipe, seed: int, out: str | Path, *, lr: float | None = None, epochs: int | None = None,
               train_subset: int | None = None, device: str = "auto", threads: int | None = None,
               data_dir=None, checkpoint: bool = True, study: str | None = None, mlflow: bool = False,
               pipeline_check: bool = False, log: Log = None) -> dict:
    """Train one run of a recipe (a network or a baseline) into run folder `out`; its record.

    lr, epochs, train_subset override the recipe's (networks only). checkpoint: save one after
    every epoch and resume from it. study, pipeline_check: recorded in metrics.json. threads:
    torch's CPU threads (default: default_threads of the mini-batch).
    """
    from .baselines import run_baseline
    from .train import train

    _check_tracking(mlflow, study)
    if recipe.kind == "ensemble":
        raise ValueError(f"{recipe.id} is a vote of trained {recipe.members} runs: train those, "
                         f"then use 'mnistbench ensemble'")
    out = Path(out)
    check_writable(out)
    if recipe.kind == "network":
        recipe = recipe.with_overrides(lr=lr, epochs=epochs, train_subset=train_subset)
    _set_threads(threads, recipe.batch_size if recipe.kind == "network" else None, log)
    started = time.time()
    trackers = [_start_tracking(study, recipe, seed, out, device, checkpoint, pipeline_check) if mlflow else None]
    with _ending(trackers):
        if recipe.kind == "baseline":
            result = run_baseline(recipe, seed, data_dir)
        else:
            if log:
                log(f"training {recipe.id} seed {seed} for {recipe.epochs} epochs, lr {recipe.lr:g}")
            tracker = trackers[0]
            result = train(recipe, seed, device=device, data_dir=data_dir,
                           checkpoint=out / CHECKPOINT_FILE if checkpoint else None, log=log,
                           extra_state={"mlflow_run_id": tracker.run_id} if tracker and tracker.run_id else None,
                           on_epoch=tracker.log_epoch if tracker else None)
    _end_stretches(result, started)
    _write(out, result, trackers[0], study, pipeline_check)
    if log:
        log(f"{result['status']}: selected accuracy {result['selected_accuracy']}% "
            f"({_published(recipe)}) -> {out / RECORD_FILE}")
    return result


def train_batch_into(recipe, seeds: Sequence[int], out_pattern: str, *, lrs: Sequence[str | float] = (),
                     epochs: int | None = None, train_subset: int | None = None, device: str = "auto",
                     threads: int | None = None, data_dir=None, checkpoint: bool = True,
                     graphs: bool | None = None, study: str | None = None, mlflow: bool = False,
                     pipeline_check: bool = False, log: Log = None) -> list[dict]:
    """Train seeds x learning rates of one network recipe together (batched.train_batch), each
    into its run folder: out_pattern with {recipe}, {lr} and {seed} filled in. lrs: learning
    rates, as they name the folders (default: the recipe's). graphs: CUDA graphs (None: on a GPU).
    """
    from .batched import train_batch

    _check_tracking(mlflow, study)
    if recipe.kind != "network":
        raise ValueError(f"{recipe.id} is a {recipe.kind}, not a network to train: use 'mnistbench "
                         f"{'ensemble' if recipe.kind == 'ensemble' else 'train'}'")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds repeats a seed: {' '.join(map(str, seeds))}")
    lrs = [lr_label(lr) for lr in lrs] or [lr_label(recipe.lr)]  # the labels go into the paths verbatim
    if len({float(lr) for lr in lrs}) < len(lrs):
        raise ValueError(f"--lrs repeats a learning rate: {' '.join(lrs)}")
    for name, values in (("{seed}", seeds), ("{lr}", lrs)):
        if len(values) > 1 and name not in out_pattern:
            raise ValueError(f"--out-pattern must contain {name}: the runs would share a folder")
    base = recipe.with_overrides(epochs=epochs, train_subset=train_subset)
    runs, outs = [], []
    for lr in lrs:
        for seed in seeds:
            runs.append((base.with_overrides(lr=float(lr)), seed))
            try:
                outs.append(Path(out_pattern.format(recipe=recipe.id, lr=lr, seed=seed)))
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"--out-pattern {out_pattern!r}: only {{recipe}}, {{lr}} and "
                                 f"{{seed}} can be filled in ({type(err).__name__}: {err})") from None
    for out in outs:
        check_writable(out)
    _set_threads(threads, base.batch_size, log)
    started = time.time()
    trackers = []
    with _ending(trackers):
        trackers += [_start_tracking(study, r, seed, out, device, checkpoint, pipeline_check) if mlflow else None
                     for (r, seed), out in zip(runs, outs)]
        on_epoch = (lambda i, entry: trackers[i].log_epoch(entry)) if mlflow else None
        results = train_batch(runs, device=device, data_dir=data_dir, log=log, on_epoch=on_epoch,
                              graphs=graphs,
                              checkpoints=[out / CHECKPOINT_FILE for out in outs] if checkpoint else None,
                              extra_states=[{"mlflow_run_id": t.run_id} if t and t.run_id else None
                                            for t in trackers])
    for result, tracker, out in zip(results, trackers, outs):
        _end_stretches(result, started)  # this stretch: the whole batch's, the runs shared it
        _write(out, result, tracker, study, pipeline_check)
        if log:
            log(f"{result['status']}: lr {result['lr']:g} seed {result['seed']} selected accuracy "
                f"{result['selected_accuracy']}% ({_published(recipe)}) -> {out / RECORD_FILE}")
    return results


def vote_into(recipe, members: Sequence[str | Path], out: str | Path, *, group: int = 1, data_dir=None,
              study: str | None = None, mlflow: bool = False, pipeline_check: bool = False,
              log: Log = None) -> dict:
    """The plurality vote of an ensemble recipe's member runs (their metrics.json) into `out`."""
    from .data import load_mnist
    from .ensemble import vote
    from .record import RecordError, read_record

    _check_tracking(mlflow, study)
    if recipe.kind != "ensemble":
        raise ValueError(f"{recipe.id} is not an ensemble recipe (try nielsen_ch6_ensemble)")
    records = []
    for path in members:
        try:
            metrics = read_record(path)
        except RecordError as err:
            raise ValueError(f"cannot read member run {err}") from None
        if metrics.get("recipe") != recipe.members:
            raise ValueError(f"{path} is a {metrics.get('recipe')} run; {recipe.id} votes "
                             f"{recipe.members} runs")
        records.append((str(path), metrics))
    if len({m.get("lr") for _, m in records}) > 1:
        raise ValueError("the member runs of one ensemble must share a learning rate")
    seeds = [m.get("seed") for _, m in records]
    if len(set(seeds)) < len(seeds):  # one net voting twice is not an ensemble of that many
        raise ValueError(f"the member runs of one ensemble must be distinct runs (seeds {seeds})")
    test_labels = load_mnist(data_dir)[3]
    out = Path(out)
    check_writable(out)
    started = time.time()
    result = vote(recipe, records, group, test_labels)
    result["wall_seconds"] = round(time.time() - started, 3)
    tracker = None
    if mlflow:
        from .tracking import RunTracker

        tracker = RunTracker(study, run_key(study, recipe.id, result["lr"], group=group))
        tracker.start({"study": study, "recipe": recipe.id, "group": group, "lr": result["lr"]},
                      {"recipe": recipe.id, "published_id": recipe.id})
    _write(out, result, tracker, study, pipeline_check)
    if log:
        log(f"{recipe.id} group {group}: {result['note']}: "
            + (f"{result['selected_accuracy']}%" if result["status"] == "finished" else result["status"])
            + f" ({_published(recipe)}) -> {out / RECORD_FILE}")
    return result


def _published(recipe) -> str:
    """'published 98.78%', or that the source printed no number (the tutorials' nets)."""
    return ("no published number" if recipe.published_accuracy is None
            else f"published {recipe.published_accuracy:g}%")


def _end_stretches(result: dict, started: float) -> None:
    """The job's stretch spans the whole job (loading data, writing the record too); the run's
    wall time adds up its stretches."""
    stretches = result.get("stretches")
    this = round(time.time() - started, 3)
    if stretches:
        stretches[-1].update(started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                             ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), wall_seconds=this)
    result["wall_seconds"] = total_wall_seconds(stretches, this) if stretches else this


def _check_tracking(mlflow: bool, study: str | None) -> None:
    if mlflow and not study:
        raise ValueError("--mlflow needs --study NAME (the MLflow experiment is mnistbench/NAME)")


@contextlib.contextmanager
def _ending(trackers: list):
    """A job that fails or is interrupted ends its MLflow runs as FAILED or KILLED."""
    try:
        yield
    except BaseException as err:
        for tracker in filter(None, trackers):
            tracker.abort("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


def _start_tracking(study: str, recipe, seed: int, out: Path, device: str, checkpoint: bool,
                    pipeline_check: bool):
    """Open a run's MLflow run; a resumed run continues the MLflow run of its checkpoint. Its
    params: the run's resolved configuration (what metrics.json records as "config"), and the
    network's architecture; a baseline's configuration follows when it finishes."""
    from .tracking import RunTracker, checkpoint_run_id

    lr = recipe.lr if recipe.kind == "network" else None
    tracker = RunTracker(study, run_key(study, recipe.id, lr, seed=seed))
    params = {"study": study, "recipe": recipe.id, "seed": seed, "lr": lr}
    if recipe.kind == "network":
        from .train import planned_config, resolve_device

        params.update(asdict(planned_config(recipe, seed, resolve_device(device))), arch=asdict(recipe.arch))
    tags = {"recipe": recipe.id, "published_id": recipe.published_id, "seed": seed,
            "learning_rate": lr_label(lr), "protocol": recipe.protocol.family if recipe.protocol else "nielsen",
            "pipeline_check": bool(pipeline_check), "device": device,
            **({"user_defined": True} if recipe.user_defined else {})}
    resume = checkpoint_run_id(out / CHECKPOINT_FILE) if checkpoint else None
    tracker.start(params, tags, resume_run_id=resume)
    return tracker


def _write(out: Path, result: dict, tracker, study: str | None, pipeline_check: bool) -> None:
    """The run folder, then the MLflow run; if logging fails, metrics.json records why (and stays)."""
    from .train import save_state

    label_record(result, study, pipeline_check, tracker.run_id if tracker else None)
    write_run(out, result, save_state)
    if tracker is not None and not tracker.finish(result, out):
        result["mlflow_error"] = tracker.error or "MLflow run was not started"
        write_record(out / RECORD_FILE, result)
