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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Timing and provenance differ between any two runs; everything else must not.
VOLATILE = {"train_seconds", "eval_seconds", "wall_seconds", "images_per_second", "environment", "command"}
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
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
