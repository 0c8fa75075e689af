"""Resume after SIGKILL: a run killed mid-epoch and started again ends exactly like one never killed.

Each run is a real `mnistbench train` process. The killed one is stopped with SIGKILL at a random
moment of a later epoch, after its first checkpoint exists, then started again with the same
command. On the CPU its metrics (history, selected accuracy, test predictions) and final weights
must equal those of an uninterrupted run bit for bit: the checkpoint holds the weights, the
optimiser state (momentum buffers) and the dropout counters, and every other random choice is a
function of (seed, epoch, step).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistbench.recipes import get_recipe

# Timing and provenance differ between any two runs; everything else must not.
VOLATILE = {"train_seconds", "eval_seconds", "wall_seconds", "images_per_second", "environment", "command",
            "stretches"}
VOLATILE_EPOCH = {"train_seconds", "images_per_second"}

CASES = [
    # momentum 0.9 (optimizer state), per-channel dropout, reshuffled every epoch
    pytest.param("tutorial_cnn_nll", 3000, 4, id="tutorial_cnn_nll"),
    # network3.py: book-style dropout on two 1000-unit layers, expanded data, no shuffling
    # (its evaluation of 20,000 images per epoch is slow: 3 epochs)
    pytest.param("nielsen_ch6_dropout", 200, 3, id="nielsen_ch6_dropout"),
]


def train_command(recipe: str, subset: int, epochs: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "mnistbench", "train", "--recipe", recipe, "--seed", "7",
            "--epochs", str(epochs), "--train-subset", str(subset), "--device", "cpu",
            "--threads", "1", "--out", str(out)]


def comparable(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    kept = {k: v for k, v in metrics.items() if k not in VOLATILE}
    kept["history"] = [{k: v for k, v in h.items() if k not in VOLATILE_EPOCH} for h in metrics["history"]]
    return kept


def kill_mid_epoch(command: list[str], out: Path, rng: random.Random) -> int:
    """Start a run, SIGKILL it during an epoch after the first; return the epochs checkpointed."""
    checkpoint = out / "checkpoint.pt"
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        while not checkpoint.exists():
            assert process.poll() is None, f"run ended (exit {process.returncode}) before its first checkpoint"
            assert time.monotonic() - started < 600, "no checkpoint after 10 minutes"
            time.sleep(0.05)
        # A random point of the next epoch: its training steps take about as long as the first
        # epoch's did (evaluation follows them), and two more epochs remain after it.
        first_epoch = torch.load(checkpoint, weights_only=True)["history"][0]["train_seconds"]
        time.sleep(rng.uniform(0.0, 1.0) * first_epoch)
        assert process.poll() is None, "run finished before it could be killed; use more epochs"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists(), "a killed run must not look finished"
    state = torch.load(checkpoint, weights_only=True)  # the atomic write leaves no half file
    return len(state["history"])


@pytest.mark.parametrize("recipe, subset, epochs", CASES)
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(recipe, subset, epochs, data_dir, tmp_path):
    rng = random.Random()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The uninterrupted run trains alongside (one thread each): same numbers, less waiting.
    uninterrupted = subprocess.Popen(train_command(recipe, subset, epochs, straight),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        done = kill_mid_epoch(train_command(recipe, subset, epochs, killed), killed, rng)
    finally:
        _, errors = uninterrupted.communicate()
    assert uninterrupted.returncode == 0, errors
    assert 1 <= done < epochs
    resumed = subprocess.run(train_command(recipe, subset, epochs, killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {done}" in resumed.stderr  # it really resumed, not started afresh
    assert not (killed / "checkpoint.pt").exists()

    assert comparable(killed / "metrics.json") == comparable(straight / "metrics.json")
    weights_straight = torch.load(straight / "model.pt", weights_only=True)
    weights_resumed = torch.load(killed / "model.pt", weights_only=True)
    assert weights_straight.keys() == weights_resumed.keys()
    for name in weights_straight:
        assert torch.equal(weights_straight[name], weights_resumed[name]), name


def test_resumed_history_is_not_counted_twice(data_dir, tmp_path):
    """Killed twice, resumed twice: each epoch appears once, in order."""
    rng = random.Random()
    out = tmp_path / "run"
    command = train_command("tutorial_cnn_nll", 3000, 4, out)
    first = kill_mid_epoch(command, out, rng)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    # Kill the resumed run too, once it has saved at least one more epoch (if it gets that far).
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if (out / "checkpoint.pt").exists():
            try:
                epochs = len(torch.load(out / "checkpoint.pt", weights_only=True)["history"])
            except Exception:  # replaced while being read: try again
                epochs = first
            if epochs > first:
                os.killpg(process.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    process.wait()
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]
    # every process that trained it is a stretch, and the run's wall time is all of theirs
    stretches = record["stretches"]
    assert len(stretches) >= 2 and stretches[0]["first_epoch"] == 1 and stretches[-1]["last_epoch"] == 4
    assert all(b["first_epoch"] == a["last_epoch"] + 1 for a, b in zip(stretches, stretches[1:]))
    assert record["wall_seconds"] >= record["train_seconds"] + record["eval_seconds"]


# --- batched jobs (mnistbench train-batch): one checkpoint per run folder -------------------

BATCH_SEEDS, BATCH_LRS = ("1", "2"), ("0.01", "1e6")  # lr 1e6 diverges in epoch 1 and is dropped


def batch_command(out: Path, subset: int = 2000, epochs: int = 4) -> list[str]:
    return [sys.executable, "-m", "mnistbench", "train-batch", "--recipe", "tutorial_cnn_nll",
            "--seeds", *BATCH_SEEDS, "--lrs", *BATCH_LRS, "--epochs", str(epochs),
            "--train-subset", str(subset), "--device", "cpu", "--threads", "1",
            "--out-pattern", str(out / "lr={lr}/seed={seed}")]


def test_sigkill_mid_epoch_then_resume_a_batch_equals_uninterrupted_batch(data_dir, tmp_path):
    """Momentum, Dropout2d, per-run data orders, and two runs that diverged and left the stack
    before the kill: the resumed job restacks the same runs and ends bit for bit as one never killed."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    uninterrupted = subprocess.Popen(batch_command(straight), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    try:
        done = kill_mid_epoch(batch_command(killed), killed / f"lr={BATCH_LRS[0]}/seed=1", random.Random())
    finally:
        _, errors = uninterrupted.communicate()
    assert uninterrupted.returncode == 0, errors
    assert 1 <= done < 4
    resumed = subprocess.run(batch_command(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming 2 runs of tutorial_cnn_nll after epoch {done}" in resumed.stderr

    runs = [f"lr={lr}/seed={seed}" for lr in BATCH_LRS for seed in BATCH_SEEDS]
    for run in runs:
        assert not (killed / run / "checkpoint.pt").exists()
        assert comparable(killed / run / "metrics.json") == comparable(straight / run / "metrics.json"), run
        weights_straight = torch.load(straight / run / "model.pt", weights_only=True)
        weights_resumed = torch.load(killed / run / "model.pt", weights_only=True)
        assert weights_straight.keys() == weights_resumed.keys()
        for name in weights_straight:  # the diverged runs' NaN weights too
            assert torch.equal(weights_straight[name].nan_to_num(), weights_resumed[name].nan_to_num()), (run, name)
    statuses = [json.loads((killed / run / "metrics.json").read_text())["status"] for run in runs]
    assert statuses == ["finished", "finished", "diverged", "diverged"]


def test_a_batch_resumes_runs_whose_checkpoints_stand_at_different_epochs(data_dir, tmp_path):
    """Killed between two runs' checkpoint writes, a batch holds runs at two epochs: each group
    resumes from its own epoch (not restacked with the other, so float noise may differ)."""
    from mnistbench.batched import train_batch
    from mnistbench.train import CheckpointError, load_data, train

    base = get_recipe("nielsen_ch3_fc30_ce").with_overrides(train_subset=500, epochs=3)
    runs = [(base.with_overrides(lr=lr), seed) for seed, lr in ((1, 0.5), (2, 1.0), (3, 2.0))]
    data = load_data(base)
    paths = [tmp_path / f"{seed}.pt" for _, seed in runs]
    older = tmp_path / "1-after-epoch-1.pt"

    class Killed(Exception):
        pass

    def on_epoch(i, entry):
        if i == 0 and entry["epoch"] == 2:  # run 0's checkpoint still holds epoch 1 here
            shutil.copy(paths[0], older)
        if entry["epoch"] == 3:
            raise Killed

    with pytest.raises(Killed):
        train_batch(runs, data=data, checkpoints=paths, on_epoch=on_epoch)
    shutil.copy(older, paths[0])
    assert [len(torch.load(p, weights_only=True)["history"]) for p in paths] == [1, 2, 2]
    resumed = train_batch(runs, data=data, checkpoints=paths)
    uninterrupted = train_batch(runs, data=data)
    for r, u in zip(resumed, uninterrupted):
        assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
        for a, b in zip(r["history"], u["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.02
    # a single run does not take a batch's checkpoint for its own (nor the other way round)
    with pytest.raises(CheckpointError, match="train-batch"):
        train(*runs[1], data=data, checkpoint=paths[1])


def test_a_resumed_run_records_each_stretch_and_its_whole_wall_time(data_dir, tmp_path):
    """A run trained in two processes: its record lists both stretches (code, machine, threads,
    start and end), and its wall time is their sum, never the last stretch's alone."""
    from mnistbench.jobs import train_into
    from mnistbench.record import WALL_ALL_STRETCHES, WALL_LAST_STRETCH, wall_provenance
    from mnistbench.train import STRETCH_KEYS, train

    recipe = get_recipe("nielsen_ch1_fc30").with_overrides(epochs=3, train_subset=500)
    checkpoint = tmp_path / "checkpoint.pt"

    def stop_in_epoch_two(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt  # before epoch 2's checkpoint: the first stretch ends at epoch 1

    with pytest.raises(KeyboardInterrupt):
        train(recipe, 1, checkpoint=checkpoint, on_epoch=stop_in_epoch_two)
    first = torch.load(checkpoint, weights_only=True)["stretches"]
    assert [(s["first_epoch"], s["last_epoch"]) for s in first] == [(1, 1)] and first[0]["wall_seconds"] > 0
    record = train_into(recipe, 1, tmp_path, threads=1)
    stretches = record["stretches"]
    assert [(s["first_epoch"], s["last_epoch"]) for s in stretches] == [(1, 1), (2, 3)]
    for stretch in stretches:
        assert set(STRETCH_KEYS) <= set(stretch) and stretch["started_at"] <= stretch["ended_at"]
        assert stretch["host"] and stretch["cpu_kind"] and stretch["threads"] == 1
    assert record["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in stretches), abs=0.01)
    assert record["wall_seconds"] > stretches[-1]["wall_seconds"]
    assert wall_provenance(record) == WALL_ALL_STRETCHES
    old = {k: v for k, v in record.items() if k != "stretches"}  # a record made before stretches
    assert wall_provenance(old) == WALL_LAST_STRETCH


def test_a_checkpoint_made_before_stretches_were_recorded_says_so(data_dir, tmp_path):
    from mnistbench.jobs import train_into
    from mnistbench.record import WALL_LAST_STRETCH, wall_provenance
    from mnistbench.train import save_state, train

    recipe = get_recipe("nielsen_ch1_fc30").with_overrides(epochs=2, train_subset=500)
    checkpoint = tmp_path / "checkpoint.pt"

    def stop(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(recipe, 1, checkpoint=checkpoint, on_epoch=stop)
    state = torch.load(checkpoint, weights_only=True)
    del state["stretches"]
    save_state(checkpoint, state)
    record = train_into(recipe, 1, tmp_path, threads=1)
    stretches = record["stretches"]
    assert stretches[0]["wall_seconds"] is None and "unknown" in stretches[0]["note"]
    assert wall_provenance(record) == WALL_LAST_STRETCH  # its wall time misses the first stretch
    assert (stretches[1]["first_epoch"], stretches[1]["last_epoch"]) == (2, 2)
