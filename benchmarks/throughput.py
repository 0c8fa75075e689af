"""Training throughput at mini-batch 10: the seed articles' loop against mnistbench, side by side.

    python benchmarks/throughput.py                  # CPU (and the GPU too, if there is one)
    python benchmarks/throughput.py --device cuda --repeats 5

For the chapter-6 basic conv and the dropout net it measures training images per second (all
runs counted, evaluation excluded) of
  - baseline: the articles' loop, written here as the reference: a torchvision MNIST dataset
    with per-sample ToTensor + Normalize, a shuffled DataLoader of batch 10, one nn.Module,
    CrossEntropyLoss, torch.optim.SGD;
  - mnistbench single run: mnistbench.train.train, as `mnistbench train` runs it;
  - mnistbench batched, K = 8 and 32 runs: mnistbench.batched.train_batch (seeds 1..K);
each `--repeats` times, interleaved, and prints medians and ratios to the baseline. Then it
projects the wall time of the whole `nielsen` study (every trained row, 5 seeds, published
learning rates) on this device. Absolute numbers depend on the machine and its load: compare
the ratios, which are measured in the same invocation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from mnistbench.batched import train_batch  # noqa: E402
from mnistbench.data import load_mnist, resolve_data_dir  # noqa: E402
from mnistbench.recipes import all_recipes, get_recipe  # noqa: E402
from mnistbench.train import configure_cuda, load_data, train  # noqa: E402

BENCHMARKS = {  # name -> the mnistbench recipe whose network both loops train
    "basic conv": "nielsen_ch6_basic_conv",
    "dropout net": "nielsen_ch6_dropout",
}


# --- the seed-style reference loop ----------------------------------------------------------

class BasicConv(nn.Module):
    """The articles' chapter-6 basic conv: conv 20x5x5, max-pool 2, fc 100, 10 outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 20, 5)
        self.fc = nn.Linear(20 * 12 * 12, 100)
        self.out = nn.Linear(100, 10)

    def forward(self, x):
        x = torch.sigmoid(F.max_pool2d(self.conv(x), 2))
        return self.out(torch.sigmoid(self.fc(x.flatten(1))))


class DropoutNet(nn.Module):
    """The articles' final net: two ReLU conv layers, two fc-1000 layers, dropout 0.5."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 40, 5)
        self.fc1 = nn.Linear(40 * 4 * 4, 1000)
        self.fc2 = nn.Linear(1000, 1000)
        self.out = nn.Linear(1000, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = self.dropout(F.relu(self.fc1(self.dropout(x.flatten(1)))))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.out(x)


BASELINE_MODELS = {"basic conv": BasicConv, "dropout net": DropoutNet}


def baseline_images_per_second(name: str, images: int, device: torch.device, data_dir: Path) -> float:
    """The seed articles' training loop, timed over `images` training images."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset = datasets.MNIST(str(data_dir), train=True, download=False, transform=transform)
    loader = DataLoader(Subset(dataset, range(images)), batch_size=10, shuffle=True)
    torch.manual_seed(1)
    model = BASELINE_MODELS[name]().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    sync(device)
    started = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    sync(device)
    return images / (time.perf_counter() - started)


# --- mnistbench -----------------------------------------------------------------------------

def benchmark_recipe(name: str, images: int):
    """The benchmark's recipe: 1 epoch on `images` training images (after expansion)."""
    recipe = get_recipe(BENCHMARKS[name])
    per_image = 5 if recipe.expand else 1
    return recipe.with_overrides(epochs=1, train_subset=max(1, images // per_image))


def single_images_per_second(name: str, images: int, device: torch.device, data) -> float:
    result = train(benchmark_recipe(name, images), seed=1, device=str(device), data=data)
    return images_per_second([result])


def batched_images_per_second(name: str, images: int, k: int, device: torch.device, data) -> float:
    recipe = benchmark_recipe(name, images)
    results = train_batch([(recipe, seed) for seed in range(1, k + 1)], device=str(device), data=data)
    return images_per_second(results)


def images_per_second(results: list[dict]) -> float:
    """All runs' training images over the training time (the runs of a batch share their time)."""
    trained = sum(len(r["history"]) * r["config"]["train_images"] for r in results)
    return trained / results[0]["train_seconds"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the nielsen study's projected wall time -------------------------------------------------

def nielsen_workload() -> dict[str, int]:
    """Training images of one seed of each trained `nielsen` recipe (published epochs, lr)."""
    workload = {}
    for recipe in all_recipes().values():
        if recipe.kind != "network" or recipe.protocol.family != "nielsen":
            continue
        base = 1000 if "overfit_1000" in recipe.id else 50_000
        workload[recipe.id] = recipe.epochs * base * (5 if recipe.expand else 1)
    return workload


def rate_for(recipe_id: str, rates: dict[str, float]) -> float:
    """The measured network closest in cost: one-conv and dense nets are no slower than the basic
    conv; every two-conv net is no slower than the dropout net (the largest of them)."""
    convs = len(all_recipes()[recipe_id].arch.convs)
    return rates["dropout net"] if convs >= 2 else rates["basic conv"]


def projection(medians: dict[tuple[str, str], float], seeds: int = 5) -> list[tuple[str, float]]:
    workload = nielsen_workload()
    lines = []
    for label, method in (("baseline", "one run at a time"), ("single", "one run at a time"),
                          ("batched K=8", "one batched job of 5 seeds per recipe")):
        rates = {name: medians[(name, label)] for name in BENCHMARKS}
        if label.startswith("batched"):
            # A batched job of 5 seeds takes as many steps as one run; a step is assumed to cost
            # what a K=8 step cost (on a GPU step time barely depends on K; on a CPU this
            # overestimates by at most 8/5).
            seconds = sum(images * 8 / rate_for(r, rates) for r, images in workload.items())
        else:
            seconds = sum(seeds * images / rate_for(r, rates) for r, images in workload.items())
        lines.append((f"{label} ({method})", seconds))
    return lines


def human(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


# --- main -----------------------------------------------------------------------------------

def run_device(device: torch.device, args) -> None:
    data_dir = resolve_data_dir(args.data_dir)
    load_mnist(data_dir)  # the .gz files checked and unpacked once, for both loops
    if device.type == "cuda":
        configure_cuda()
    threads = torch.get_num_threads()
    print(f"\n## {describe(device)}, torch {torch.__version__}, {threads} CPU threads, "
          f"{args.repeats} repeats (median)\n")
    images = args.gpu_images if device.type == "cuda" else args.cpu_images
    configs = [("baseline", None), ("single", None)] + [(f"batched K={k}", k) for k in args.k]
    medians: dict[tuple[str, str], float] = {}
    for name in BENCHMARKS:
        recipe = benchmark_recipe(name, images)
        data = load_data(recipe, data_dir, device)
        samples: dict[str, list[float]] = {label: [] for label, _ in configs}
        # Warm-up (allocator, cuDNN, lazy inits) of every configuration, untimed.
        for label, k in configs:
            measure(name, label, k, min(images, 500), device, data_dir, args)
        for repeat in range(args.repeats):  # interleaved, so that drifting load hits all alike
            for label, k in configs:
                n = images if k is None or device.type == "cuda" else max(images // k * 4, 500)
                data_k = data if n == images else load_data(benchmark_recipe(name, n), data_dir, device)
                samples[label].append(measure(name, label, k, n, device, data_dir, args, data_k))
                print(f"  {name:12} {label:12} repeat {repeat + 1}: {samples[label][-1]:10,.0f} img/s",
                      file=sys.stderr, flush=True)
        for label, _ in configs:
            medians[(name, label)] = statistics.median(samples[label])

    print("| network | loop | training images/s (all runs) | vs baseline |")
    print("|---|---|---:|---:|")
    for name in BENCHMARKS:
        base = medians[(name, "baseline")]
        for label, _ in configs:
            rate = medians[(name, label)]
            print(f"| {name} | {label} | {rate:,.0f} | {rate / base:.1f}x |")
    print(f"\nProjected wall time of the `nielsen` study ({sum(nielsen_workload().values()) * 5 / 1e6:,.0f} "
          f"million training images: every trained row, 5 seeds, published learning rates) "
          f"on this device:")
    for label, seconds in projection(medians):
        print(f"- {label}: {human(seconds)}")


def measure(name, label, k, images, device, data_dir, args, data=None) -> float:
    if data is None:
        data = load_data(benchmark_recipe(name, images), data_dir, device)
    if label == "baseline":
        return baseline_images_per_second(name, images, device, data_dir)
    if label == "single":
        return single_images_per_second(name, images, device, data)
    return batched_images_per_second(name, images, k, device, data)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the CPU, then the GPU if there is one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 32], help="batch sizes in runs")
    parser.add_argument("--cpu-images", type=int, default=4000,
                        help="training images per single-run measurement on the CPU (batched "
                             "runs of K use 4/K of it per run, so each measurement trains 4x)")
    parser.add_argument("--gpu-images", type=int, default=50_000)
    parser.add_argument("--data-dir", help="MNIST root (default: $MNISTBENCH_DATA_DIR or ./data)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():  # a message, not a traceback
        parser.exit(2, f"{parser.prog}: error: --device cuda, but torch {torch.__version__} sees no "
                       f"CUDA device here; use --device cpu (or auto)\n")
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    print("# mnistbench training throughput at mini-batch 10")
    for device in devices:
        run_device(device, args)


if __name__ == "__main__":
    main()
