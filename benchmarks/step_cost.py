"""What one training image costs each network of a study, in CPU time: the rates behind
`mnistbench progress`'s estimate for the networks that have no recorded run yet.

    .venv/bin/python benchmarks/step_cost.py         # the networks of `replication` without runs
    .venv/bin/python benchmarks/step_cost.py --all   # all of them (the wide tutorial net: minutes)
    .venv/bin/python benchmarks/step_cost.py --recipes nielsen_ch6_dropout seed_relu --repeats 5

A network is an architecture at a mini-batch size (`mnistbench.study._compute`): recipes that
share one cost the same per image, whatever their source or data. For each, the first recipe of
the study trains one epoch twice in this process, one thread, on the first --small and --large
training images (x5 for the expanded-data recipes); the difference of the two runs' CPU time is
the cost of the extra images alone, since startup and the evaluation of the validation and test
sets cancel. Process CPU time, unlike a record's wall-clock images/s, hardly depends on what else
runs on the machine (though a busy sibling core still slows it). The ratio of two networks'
rates, measured in one invocation, is the robust figure: it scales a recorded campaign rate to a
network that has no runs yet (study.NOMINAL_RATES). Printed beside each: its cost relative to
--reference, and the rate `progress` uses now (the median of the network's recorded runs, else
the nominal rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import yaml

from mnistbench.recipes import all_recipes
from mnistbench.record import find_records, read_record
from mnistbench.study import NOMINAL_RATES, _compute, _cost_class, measured_rates
from mnistbench.train import load_data, train


def cpu_seconds(recipe, images: int, data_dir: str) -> tuple[float, int]:
    """CPU seconds of one epoch on the first `images` training images (data loading excluded)."""
    recipe = recipe.with_overrides(epochs=1, train_subset=images)
    data = load_data(recipe, data_dir)
    started = time.process_time()
    train(recipe, seed=1, data=data)
    return time.process_time() - started, len(data.train_x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="replication")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--recipes", nargs="*",
                        help="measure these recipes' networks (default: the study's networks without runs)")
    parser.add_argument("--all", action="store_true", help="also the networks with recorded runs")
    parser.add_argument("--small", type=int, default=1000, help="training images of the short run")
    parser.add_argument("--large", type=int, default=3000, help="training images of the long run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", default="nielsen_ch6_dbl_conv",
                        help="the recipe whose network the others are compared with")
    parser.add_argument("--data-dir", default=os.environ.get("MNISTBENCH_DATA_DIR", "data"))
    opts = parser.parse_args()
    torch.set_num_threads(1)  # the campaign's jobs are one thread each

    recipes = all_recipes()
    chosen = opts.recipes or yaml.safe_load(Path(opts.config).read_text())["studies"][opts.study]["recipes"]
    unknown = [r for r in [opts.reference, *chosen] if r not in recipes]
    if unknown or recipes[opts.reference].kind != "network":
        parser.error(f"unknown recipes {unknown} (see 'mnistbench recipes')" if unknown
                     else f"--reference {opts.reference} is not a network")
    networks: dict = {}  # network -> the recipes that share it, in study order
    recorded, _ = measured_rates(read_record(path) for path in find_records(Path("results", opts.study)))
    for recipe_id in dict.fromkeys([opts.reference, *chosen]):
        recipe = recipes[recipe_id]
        network = _compute(recipe) if recipe.kind == "network" else None
        if network and (opts.all or opts.recipes or recipe_id == opts.reference or network not in recorded):
            networks.setdefault(network, []).append(recipe_id)

    # Repeats are the outer loop, so each repeat measures every network within a few minutes of
    # the reference: the ratio of the two is taken per repeat, which cancels a change of load.
    rates: dict = {network: [] for network in networks}
    ratios: dict = {network: [] for network in networks}
    for repeat in range(opts.repeats):
        for network, ids in networks.items():
            short, n_short = cpu_seconds(recipes[ids[0]], opts.small, opts.data_dir)
            long, n_long = cpu_seconds(recipes[ids[0]], opts.large, opts.data_dir)
            rates[network].append((n_long - n_short) / (long - short))
            ratios[network].append(rates[network][-1] / next(iter(rates.values()))[-1])
        print(f"repeat {repeat + 1}: " + ", ".join(f"{ids[0]} {rates[n][-1]:,.0f}" for n, ids in networks.items()),
              flush=True)

    print(f"\n{torch.__version__}, 1 thread, {opts.repeats} repeats (median): training images per "
          f"CPU-second, from {opts.large:,} - {opts.small:,} images; vs {opts.reference}")
    print(f"{'network (first recipe; +others sharing it)':<45} {'batch':>5} {'CPU rate':>9} "
          f"{'vs ref':>7} {'progress uses':>22}")
    for network, ids in networks.items():
        recipe = recipes[ids[0]]
        mine = recorded.get(network)
        uses = (f"{statistics.median(mine):,.0f} ({len(mine)} runs)" if mine
                else f"{NOMINAL_RATES[_cost_class(recipe)]:,} (nominal)")
        name = ids[0] + (f" (+{len(ids) - 1})" if len(ids) > 1 else "")
        print(f"{name:<45} {recipe.batch_size:>5} {statistics.median(rates[network]):>9,.0f} "
              f"{statistics.median(ratios[network]):>7.2f} {uses:>22}")


if __name__ == "__main__":
    main()
