"""Which way of running the replication campaign trains the most images per second on this CPU.

    .venv/bin/python benchmarks/campaign.py                        # nielsen_ch6_dbl_conv, 2 cores
    .venv/bin/python benchmarks/campaign.py --recipe seed_relu --images 6000 --repeats 3

Each configuration trains the recipe for one epoch on the first --images training images, as
real `mnistbench` processes (the way Snakemake runs jobs), and the machine's training throughput
is the sum of the jobs' images per second (evaluation excluded):

  - 1 job x 1 thread                (the reference)
  - N jobs x 1 thread, side by side (what `snakemake --cores N` does with threads_per_job: 1)
  - 1 job x N threads               (threads_per_job: N)
  - 1 train-batch of N runs x 1 thread (batch_runs: true)

with N = --cores. The configurations run in turn, --repeats times, and the medians and their
ratios to the reference are printed: on a shared machine, compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnistbench", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rates(folders: list[Path]) -> float:
    return sum(json.loads((f / "metrics.json").read_text())["images_per_second"] for f in folders)


def measure(config: str, opts, workdir: Path) -> float:
    """Training images per second of the whole machine under one configuration."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--recipe", opts.recipe, "--epochs", "1", "--train-subset", str(opts.images),
              "--device", "cpu", "--quiet", "--no-checkpoint", "--data-dir", opts.data_dir]
    out = Path(tempfile.mkdtemp(dir=workdir))
    n = opts.cores
    if config == "batch":
        pattern = str(out / "{seed}")
        jobs = [_run(["train-batch", *common, "--seeds", *map(str, range(1, n + 1)), "--threads", "1",
                      "--out-pattern", pattern], env)]
        folders = [out / str(seed) for seed in range(1, n + 1)]
    else:
        count, threads = {"one": (1, 1), "side_by_side": (n, 1), "threads": (1, n)}[config]
        if threads > 1:
            env["OMP_NUM_THREADS"] = str(threads)
        folders = [out / str(seed) for seed in range(1, count + 1)]
        jobs = [_run(["train", *common, "--seed", str(seed), "--threads", str(threads),
                      "--out", str(folder)], env) for seed, folder in enumerate(folders, 1)]
    for job in jobs:
        if job.wait() != 0:
            raise SystemExit(f"{config}: mnistbench failed: {job.stderr.read()}")
    if config == "batch":  # one process trained them all: its rate is per run, all runs at once
        return statistics.mean(json.loads((f / "metrics.json").read_text())["images_per_second"]
                               for f in folders) * n
    return _rates(folders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="nielsen_ch6_dbl_conv")
    parser.add_argument("--images", type=int, default=5000, help="training images per run")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("MNISTBENCH_DATA_DIR", "data"))
    opts = parser.parse_args()
    configs = ["one", "side_by_side", "threads", "batch"]
    labels = {"one": "1 job x 1 thread", "side_by_side": f"{opts.cores} jobs x 1 thread",
              "threads": f"1 job x {opts.cores} threads", "batch": f"train-batch of {opts.cores} x 1 thread"}
    rates: dict[str, list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(opts.repeats):
            for config in configs:
                rates[config].append(measure(config, opts, Path(workdir)))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{c} {rates[c][-1]:,.0f}" for c in configs),
                  flush=True)
    reference = statistics.median(rates["one"])
    print(f"\n{opts.recipe}, {opts.images:,} images, {opts.repeats} repeats, {opts.cores} cores: "
          "training images/s of the whole machine (median)")
    for config in configs:
        median = statistics.median(rates[config])
        print(f"  {labels[config]:<28} {median:>8,.0f}   x{median / reference:.2f}")


if __name__ == "__main__":
    main()
