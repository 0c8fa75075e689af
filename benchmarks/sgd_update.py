"""torch's fused SGD kernel against the foreach path, per recipe family: step time and bit-identity.

    .venv/bin/python benchmarks/sgd_update.py                      # every family, 350 steps, 3 repeats
    .venv/bin/python benchmarks/sgd_update.py --recipes nielsen_ch6_double_fc1000 --steps 500

Each recipe trains --steps mini-batches from the same initialisation on the same data (the first
--images training images of its split, in its own order) once per SGD implementation, through
mnistbench's own model, loss and parameter groups, on one thread. The implementations take turns
step by step, so that whatever else runs on the machine slows them alike; all of it --repeats
times. A step's time is the CPU time of this thread (one torch thread computes in the calling
thread), so a step that the scheduler interrupts is not charged for the wait: on a busy
machine, wall time per step measured mostly the other processes. Printed per recipe: the median
step time of each (over every step of every repeat), the
ratio to foreach (> 1: faster than today's path), whether the parameters after the last step are
byte-identical to foreach's, and the implementation `train.sgd_implementation` picks.

"foreach+inplace" is the hand-made alternative the issue asked to measure: the same foreach
update with the weight-decay term added into the gradient in place (no new tensor per step).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import torch

from mnistbench.models import advance_dropout, create, decayed_parameters
from mnistbench.recipes import get_recipe
from mnistbench.train import LOSSES, epoch_order, load_data, make_optimizer, resolve_config, sgd_implementation

# One recipe per family: L2 on weights only (network2, network3) at several widths, weight decay
# on every parameter (articles), no decay, momentum (tutorial), both dropout styles, shuffled and
# never-shuffled data.
FAMILIES = {
    "nielsen_ch6_double_fc1000": "network3, L2, two fc1000, unshuffled",
    "nielsen_ch6_expanded_fc1000": "network3, L2, fc1000, expanded",
    "nielsen_ch6_double_fc300": "network3, L2, two fc300",
    "nielsen_ch6_double_fc100": "network3, L2, two fc100",
    "nielsen_ch6_expanded_fc300": "network3, L2, fc300",
    "nielsen_ch6_dropout": "network3, no L2, shared-mask dropout",
    "nielsen_ch3_fc100_ce_l2": "network2, L2, shuffled dense",
    "nielsen_ch1_fc30": "network.py, no decay",
    "seed_relu_wd01": "articles, weight decay on all, shuffled",
    "seed_relu_extended": "articles, weight decay 5e-5",
    "seed_final": "articles, no decay, inverted dropout",
    "tutorial_cnn_nll": "tutorial, momentum 0.9",
}
IMPLEMENTATIONS = ("foreach", "fused", "foreach+inplace")


def _optimizer(model, cfg, implementation):
    """The SGD optimizer and a hook run before each step (the in-place decay variant's)."""
    if implementation != "foreach+inplace":
        return make_optimizer(model, cfg, implementation), lambda: None
    decayed, _ = decayed_parameters(model, cfg.decay)
    optimizer = make_optimizer(model, cfg, "foreach")
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.0

    def add_decay():
        if cfg.weight_decay:
            torch._foreach_add_([p.grad for p in decayed], decayed, alpha=cfg.weight_decay)
    return optimizer, add_decay


def paired_steps(recipe, data, steps: int, seed: int = 1) -> tuple[dict, dict]:
    """Seconds of each step and the SHA-1 of every parameter after the last one, per implementation.

    The implementations train side by side, a step of each in turn on the same mini-batch, so
    that whatever else runs on the machine slows them alike.
    """
    cfg = resolve_config(recipe, seed, data, torch.device("cpu"))
    runs = {}
    for name in IMPLEMENTATIONS:
        model = create(recipe.arch, cfg.init, seed, cfg.dropout_masks)
        if recipe.arch.convs:
            model = model.to(memory_format=torch.channels_last)  # as train.train does on the CPU
        model.train()
        runs[name] = (model, *_optimizer(model, cfg, name))
    loss_fn = LOSSES[cfg.loss]
    order = epoch_order(seed, 1, len(data.train_x), cfg.shuffle, "cpu")
    times = {name: [] for name in IMPLEMENTATIONS}
    for step in range(steps):
        lo = step * cfg.batch_size % (len(data.train_x) - cfg.batch_size)
        index = slice(lo, lo + cfg.batch_size) if order is None else order[lo:lo + cfg.batch_size]
        x, y = data.train_x[index], data.train_y[index]
        for name, (model, optimizer, before_step) in runs.items():
            started = time.thread_time()
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            before_step()
            optimizer.step()
            advance_dropout(model)
            times[name].append(time.thread_time() - started)
    digests = {}
    for name, (model, _, _) in runs.items():
        digest = hashlib.sha1()
        for p in model.parameters():
            digest.update(p.detach().contiguous().numpy().tobytes())
        digests[name] = digest.hexdigest()
    return times, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="*", default=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=350)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000, help="training images (x5 if expanded)")
    parser.add_argument("--data-dir", default=os.environ.get("MNISTBENCH_DATA_DIR"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps x {args.repeats} repeats, "
          f"median CPU ms per step (SGD update included); ratio = foreach / other")
    print(f"{'recipe':30} {'foreach':>8} {'fused':>8} {'ratio':>6} {'same':>5} "
          f"{'inplace':>8} {'ratio':>6} {'same':>5}  picks")
    for recipe_id in args.recipes:
        recipe = get_recipe(recipe_id).with_overrides(train_subset=args.images)
        data = load_data(recipe, args.data_dir)
        times = {name: [] for name in IMPLEMENTATIONS}
        for _ in range(args.repeats):
            step_times, digests = paired_steps(recipe, data, args.steps)
            for name in IMPLEMENTATIONS:
                times[name] += step_times[name][5:]  # the first steps allocate
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        same = {name: "yes" if digests[name] == digests["foreach"] else "NO" for name in IMPLEMENTATIONS}
        cfg = resolve_config(recipe, 1, data, torch.device("cpu"))
        print(f"{recipe_id:30} {ms['foreach']:8.3f} {ms['fused']:8.3f} {ms['foreach'] / ms['fused']:6.2f} "
              f"{same['fused']:>5} {ms['foreach+inplace']:8.3f} {ms['foreach'] / ms['foreach+inplace']:6.2f} "
              f"{same['foreach+inplace']:>5}  {sgd_implementation(cfg)}  ({FAMILIES.get(recipe_id, '')})",
              flush=True)


if __name__ == "__main__":
    main()
