"""Many runs at once: K runs of one recipe trained in one process as one stacked model.

Runs that share an architecture and a protocol but differ in seed, learning rate or L2 train
together. Their parameters are stacked along a leading run dimension (torch.func's
stack_module_state) and one vmap'd functional_call computes all K forward and backward passes
in the same kernels. Each run keeps everything that makes it itself: its initialisation
(models.create(seed)), its data order (train.epoch_order(seed, epoch)), its dropout masks (its
own row of each Dropout's rng buffer), its learning rate and its weight decay. Run k of a batch
therefore follows the trajectory of `train.train` of that run alone, up to float reassociation
in the batched kernels; tests/test_batched.py checks per-epoch accuracies and final weights.

SGD is torch.optim.SGD's, written for stacked tensors: d = g + wd*w (weights only for the book's
protocols), v = momentum*v + d, w -= lr*v. The per-run learning rate is folded into the loss
(gradients of lr_k * loss_k are lr_k * g_k), so the update is one foreach call for all runs.

Speed. The training data live on the training device; a step is an index into them, a batched
forward/backward and a foreach update, with no host round trip (the loss is summed on the
device and read once an epoch). On a GPU each step is captured once as a CUDA graph and then
replayed, which removes the per-kernel launch cost that dominates at mini-batch 10
(graphs=False, or MNISTBENCH_CUDA_GRAPHS=0, turns that off; capture failures fall back to eager).
A graph replays kernels on the memory they were captured with, so every tensor the step reads is
allocated once and updated in place (tests/test_gpu_path.py checks the addresses on the CPU).
A run whose epoch loss is not finite is marked diverged and dropped from the stack; the others go on.

Checkpoints. Like `train.train`, a batch saves each run's state after every epoch (the run
folder's checkpoint.pt) and resumes from it, bit for bit on the CPU: a killed job loses at most
the epoch it was in.
"""

from __future__ import annotations

import copy
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from .data import Splits
from .models import Dropout, create, decayed_parameters
from .recipes import Recipe
from .train import (EVAL_BATCH, LOSSES, PROGRESS_EVERY_S, RunConfig, RunProgress, configure_cuda, diverged,
                    environment, epoch_order, load_checkpoint, load_data, num_batches, resolve_config,
                    resolve_device, run_result, save_state)

# RunConfig fields that may differ between the runs of one batch; all others must agree.
PER_RUN_FIELDS = {"recipe", "published_id", "seed", "lr", "l2", "weight_decay"}
GRAPH_WARMUP_STEPS = 3
TRAINER = "train-batch"  # the kind of checkpoint this module writes (train.load_checkpoint)


class IncompatibleRuns(ValueError):
    """Runs that cannot share one stacked model (other architecture, data or protocol)."""


def check_compatible(recipes: Sequence[Recipe], cfgs: Sequence[RunConfig]) -> None:
    first = asdict(cfgs[0])
    for recipe, cfg in zip(recipes, cfgs):
        if recipe.kind != "network":
            raise IncompatibleRuns(f"{recipe.id} is a {recipe.kind}, not a network to train")
        if recipe.arch != recipes[0].arch:
            raise IncompatibleRuns(f"{recipe.id} and {recipes[0].id} have different architectures")
        differ = [k for k, v in asdict(cfg).items() if k not in PER_RUN_FIELDS and v != first[k]]
        if differ:
            raise IncompatibleRuns(f"{recipe.id} (seed {cfg.seed}) and {cfgs[0].recipe} (seed "
                                   f"{cfgs[0].seed}) differ in {', '.join(differ)}")


class StackedRuns:
    """The parameters, buffers and SGD state of K runs, stacked along a leading run dimension."""

    def __init__(self, recipe: Recipe, cfgs: Sequence[RunConfig], data: Splits,
                 device: torch.device, graphs: bool | None = None,
                 states: Sequence[dict] | None = None):
        """states: the runs' checkpoints to resume from (all or none), else fresh runs."""
        first = cfgs[0]
        self.cfgs, self.data, self.device = list(cfgs), data, device
        self.batch_size, self.momentum = first.batch_size, first.momentum
        self.n = len(data.train_x)
        self.full_steps = self.n // self.batch_size
        self.steps = num_batches(self.n, self.batch_size, first.drop_last)
        self.loss_fn = LOSSES[first.loss]
        self.shuffle = first.shuffle
        if graphs is None:
            graphs = device.type == "cuda" and os.environ.get("MNISTBENCH_CUDA_GRAPHS", "1") != "0"
        self.graphs = graphs and device.type == "cuda"
        self.replays, self.graph_failure = 0, None

        models = [create(recipe.arch, first.init, cfg.seed, first.dropout_masks).to(device) for cfg in cfgs]
        for model, state in zip(models, states or []):
            model.load_state_dict(state["model"])
        template = models[0]
        self.state_keys = list(template.state_dict())
        decayed_ids = {id(p) for p in decayed_parameters(template, first.decay)[0]}
        self.names = [n for n, _ in template.named_parameters()]
        self.decayed = [n for n, p in template.named_parameters() if id(p) in decayed_ids]
        self.rng_keys = [f"{n}.rng" for n, m in template.named_modules() if isinstance(m, Dropout)]
        params, self.buffers = stack_module_state(models)
        self.params = {n: p.detach() for n, p in params.items()}
        # functional_call only needs the module structure: keep it on the meta device.
        self.base = copy.deepcopy(template).to("meta")
        self.lr = torch.tensor([c.lr for c in cfgs], device=device)
        self.weight_decay = torch.tensor([c.weight_decay for c in cfgs], device=device)
        # torch's SGD initialises the momentum buffer to the first d; m*0 + d is exactly that.
        self.velocity = None
        if self.momentum:
            self.velocity = {n: torch.stack([s["velocity"][n] for s in states]).to(device) if states
                             else torch.zeros_like(p) for n, p in self.params.items()}
        self.loss_sum = torch.zeros(len(cfgs), device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.columns = torch.arange(self.batch_size, device=device)
        self.orders: torch.Tensor | None = None
        self.graph = None
        self._build_functions()

    def __len__(self) -> int:
        return len(self.cfgs)

    # --- the step ---------------------------------------------------------------------------

    def _objective(self, params, buffers, x, y, lr):
        loss = self.loss_fn(functional_call(self.base, (params, buffers), (x,)), y)
        return lr * loss, loss

    def _build_functions(self) -> None:
        x_dim = 0 if self.shuffle else None  # unshuffled runs all see the same mini-batch
        self._grads = vmap(grad_and_value(self._objective, has_aux=True), in_dims=(0, 0, x_dim, x_dim, 0))
        k = len(self.cfgs)
        # lr * weight_decay per run, shaped to broadcast against each decayed parameter
        lr_wd = self.lr * self.weight_decay
        # decided on the host, from the configs: reading lr_wd would wait for the device
        decays = any(c.lr * c.weight_decay != 0 for c in self.cfgs)
        self._decay = [(n, lr_wd.view(k, *[1] * (self.params[n].dim() - 1))) for n in self.decayed] \
            if decays else []

    def _step(self, columns: torch.Tensor) -> None:
        """One SGD step of every run on the mini-batch at `columns` of its epoch order."""
        index = columns if self.orders is None else self.orders[:, columns]
        x = self.data.train_x.index_select(0, index.flatten()).view(*index.shape, *self.data.train_x.shape[1:])
        y = self.data.train_y.index_select(0, index.flatten()).view(index.shape)
        grads, (_, losses) = self._grads(self.params, self.buffers, x, y, self.lr)
        with torch.no_grad():
            for name, lr_wd in self._decay:  # d = lr*g + lr*wd*w
                grads[name].addcmul_(lr_wd, self.params[name])
            update = [grads[n] for n in self.names]
            if self.velocity is not None:
                velocity = [self.velocity[n] for n in self.names]
                torch._foreach_mul_(velocity, self.momentum)
                torch._foreach_add_(velocity, update)
                update = velocity
            torch._foreach_sub_([self.params[n] for n in self.names], update)
            for key in self.rng_keys:
                self.buffers[key][:, 1] += 1
            self.loss_sum += losses

    def _next_step(self) -> None:
        self._step(self.position * self.batch_size + self.columns)
        self.position += 1

    def _capture(self) -> int:
        """Record one step as a CUDA graph; returns the real training steps it took (warm-up).

        If capture fails (an op that syncs with the host, say), training goes on eagerly.
        """
        training_stream = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(training_stream)
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            for _ in range(GRAPH_WARMUP_STEPS):
                self._next_step()
        training_stream.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._next_step()  # recorded, not run: position and weights stay as they are
        except Exception as err:  # noqa: BLE001 -- whatever the reason, eager training still works
            # When capture_end fails, torch.cuda.graph leaves its capture stream current: go
            # back to the stream training ran on, and let everything queued so far finish
            # before the first eager step.
            torch.cuda.set_stream(training_stream)
            torch.cuda.synchronize()
            self.graphs, self.graph = False, None
            self.graph_failure = capture_failure(err)
            print(f"mnistbench: CUDA graph capture failed, training without CUDA graphs: "
                  f"{self.graph_failure}", flush=True)
        else:
            self.graph = graph
        return GRAPH_WARMUP_STEPS

    # --- epochs -----------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        if self.shuffle:
            orders = torch.stack([epoch_order(c.seed, epoch, self.n, True, "cpu") for c in self.cfgs])
            if self.orders is None or self.orders.shape != orders.shape:
                self.orders = orders.to(self.device)
                self.graph = None
            else:  # in place: a captured graph reads this very tensor
                self.orders.copy_(orders)
        self.position.zero_()
        self.loss_sum.zero_()

    def train_steps(self, count: int) -> None:
        """`count` full mini-batches from the current position (graph replays on a GPU)."""
        if self.graphs and self.graph is None and count > GRAPH_WARMUP_STEPS:
            count -= self._capture()
        for _ in range(count):
            if self.graph is not None:
                self.graph.replay()
                self.replays += 1
            else:
                self._next_step()

    def finish_epoch(self) -> None:
        """The last, smaller mini-batch when the training set is not a multiple of the batch size."""
        if self.steps > self.full_steps:
            self._step(torch.arange(self.full_steps * self.batch_size, self.n, device=self.device))

    def epoch_losses(self) -> list[float]:
        return (self.loss_sum.double() / self.steps).tolist()

    # --- evaluation, divergence, results ----------------------------------------------------

    @torch.no_grad()
    def predict(self, x: torch.Tensor, mode: str = "eval") -> torch.Tensor:
        """[K, N] predicted digits of every run, in eval mode (dropout off or rescaled) or, for
        a recipe tested with dropout active, in train mode (train.predict's mask steps -1, -2...).

        One run at a time, in chunks of EVAL_BATCH like train.predict: evaluation is once an
        epoch, large batches are efficient without vmap, and each run's predictions are then
        computed exactly as its solo run computes them.
        """
        self.base.train(mode == "train")
        try:
            runs = []
            for row in range(len(self)):
                state = {n: t[row] for n, t in {**self.params, **self.buffers}.items()}
                chunks = []
                for i, chunk in enumerate(x.split(EVAL_BATCH)):
                    for key in self.rng_keys if mode == "train" else ():
                        state[key] = torch.stack([self.buffers[key][row, 0], state[key].new_tensor(-1 - i)])
                    chunks.append(functional_call(self.base, state, (chunk,)).argmax(1))
                runs.append(torch.cat(chunks))
            return torch.stack(runs)
        finally:
            self.base.train()

    def keep(self, rows: list[int]) -> None:
        """Keep only these runs (drop diverged ones); graphs are re-captured for the new shape."""
        index = torch.tensor(rows, device=self.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.cfgs = [self.cfgs[i] for i in rows]
        self.params = {n: pick(p) for n, p in self.params.items()}
        self.buffers = {n: pick(b) for n, b in self.buffers.items()}
        if self.velocity is not None:
            self.velocity = {n: pick(v) for n, v in self.velocity.items()}
        self.lr, self.weight_decay, self.loss_sum = pick(self.lr), pick(self.weight_decay), pick(self.loss_sum)
        if self.orders is not None:
            self.orders = pick(self.orders)
        self.graph = None
        self._build_functions()

    def state_dict(self, row: int) -> dict:
        """Run `row`'s weights and buffers, keyed and ordered as its solo model's state_dict."""
        stacked = {**self.params, **self.buffers}
        return {key: stacked[key][row].clone() for key in self.state_keys}

    def velocity_of(self, row: int) -> dict | None:
        """Run `row`'s momentum buffers as this module keeps them (lr * torch SGD's buffers)."""
        return None if self.velocity is None else {n: v[row].clone() for n, v in self.velocity.items()}


def capture_failure(err: BaseException) -> str:
    """A failed capture's whole story: torch reports "operation failed due to a previous error
    during capture" and the error that caused it (the op that was not capturable) is its
    context; name every error in the chain and where the first one was raised."""
    chain = [err]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    story = " <- ".join(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                        for e in chain)
    frames = traceback.extract_tb(chain[-1].__traceback__)
    ours = [f for f in frames if f"{os.sep}mnistbench{os.sep}" in f.filename] or frames
    return story + (f" (raised at {ours[-1].filename}:{ours[-1].lineno})" if ours else "")


def save_progress(run: RunProgress, path: Path, cfg: RunConfig) -> None:
    """A batched run's checkpoint (train.load_checkpoint reads it back with trainer TRAINER)."""
    save_state(path, run.checkpoint(cfg, run.model, trainer=TRAINER, velocity=run.velocity))


def train_batch(runs: Sequence[tuple[Recipe, int]], *, device: str = "cpu", data: Splits | None = None,
                data_dir=None, log: Callable[[str], None] | None = None,
                on_epoch: Callable[[int, dict], None] | None = None,
                graphs: bool | None = None, checkpoints: Sequence[Path | None] | None = None,
                extra_states: Sequence[dict | None] | None = None) -> list[dict]:
    """Train every (recipe, seed) of `runs` together; one result per run, as train.train returns.

    The recipes may differ in lr and L2 only (Recipe.with_overrides(lr=...)); everything else
    (architecture, protocol, data, batch size, epochs, momentum) must agree.
    on_epoch(i, entry) is called with run i's history entry after every epoch.
    checkpoints: run i's checkpoint file (or None): saved after every epoch, resumed from if it
    exists, as train.train does. extra_states: small JSON-able values per run stored in its
    checkpoint (the MLflow run id) and returned under "extra_state".
    """
    if not runs:
        raise ValueError("no runs to train")
    device = resolve_device(device)
    if device.type == "cuda":
        configure_cuda()  # before the first matrix product (CUBLAS_WORKSPACE_CONFIG)
    recipes = [r for r, _ in runs]
    data = data if data is not None else load_data(recipes[0], data_dir, device)
    cfgs = [resolve_config(r, seed, data, device) for r, seed in runs]
    check_compatible(recipes, cfgs)
    checkpoints = list(checkpoints or [None] * len(runs))
    progress = []
    for cfg, path, extra in zip(cfgs, checkpoints, extra_states or [None] * len(runs)):
        state = load_checkpoint(path, cfg, TRAINER) if path else None
        progress.append(RunProgress.restore(state, extra or {}) if state else RunProgress(extra_state=dict(extra or {})))
        progress[-1].begin_stretch(device)
    first = cfgs[0]
    todo = [i for i, p in enumerate(progress) if p.status != "diverged" and len(p.history) < first.epochs]
    stacks = []
    # Runs that resume from the same epoch train together: normally all of them (a job killed
    # between two runs' checkpoint writes leaves two groups, each trained correctly).
    for start in sorted({len(progress[i].history) for i in todo}):
        group = [i for i in todo if len(progress[i].history) == start]
        if log and start:
            log(f"resuming {len(group)} runs of {first.recipe} after epoch {start} from their checkpoints")
        stacks.append(_train_together(recipes[0], [cfgs[i] for i in group], [progress[i] for i in group],
                                      [checkpoints[i] for i in group], group, data, device, graphs,
                                      log, on_epoch))

    env = {**environment(device), "batched_runs": len(runs),
           "cuda_graphs": any(stack.replays for stack in stacks),
           "cuda_graph_failure": next((s.graph_failure for s in stacks if s.graph_failure), None)}
    return [run_result(recipe, cfg, p, final_model=p.model, environment=env, test_labels=data.test_y)
            for (recipe, _), cfg, p in zip(runs, cfgs, progress)]


def _train_together(recipe: Recipe, cfgs: list[RunConfig], progress: list[RunProgress],
                    checkpoints: list[Path | None], indices: list[int], data: Splits,
                    device: torch.device, graphs: bool | None, log, on_epoch) -> StackedRuns:
    """Train runs that stand at the same epoch as one stack, updating their progress in place.
    indices: the runs' positions in train_batch's list (for on_epoch)."""
    first = cfgs[0]
    resumed = len(progress[0].history)
    states = [{"model": p.model, "velocity": p.velocity} for p in progress] if resumed else None
    stack = StackedRuns(recipe, cfgs, data, device, graphs, states)
    active = list(range(len(cfgs)))  # stack row -> index into cfgs
    batch_images = stack.steps * first.batch_size
    if log:
        log(f"training {len(cfgs)} runs of {first.recipe} together on {device}: seeds "
            f"{sorted({c.seed for c in cfgs})}, lrs {sorted({c.lr for c in cfgs})}, {first.epochs} epochs"
            + (", CUDA graphs" if stack.graphs else ""))

    for epoch in range(resumed + 1, first.epochs + 1):
        if not active:
            break
        started = time.perf_counter()
        stack.begin_epoch(epoch)
        done, last_report = 0, started
        while done < stack.full_steps:
            # Chunks of steps so that long epochs can report progress without a sync per step.
            count = min(stack.full_steps - done, 1000)
            stack.train_steps(count)
            done += count
            if log and time.perf_counter() - last_report > PROGRESS_EVERY_S and done < stack.full_steps:
                losses = stack.loss_sum.tolist()
                last_report = time.perf_counter()
                rate = done * first.batch_size * len(stack) / (last_report - started)
                log(f"  epoch {epoch}/{first.epochs} step {done}/{stack.steps} median loss "
                    f"{sorted(losses)[len(losses) // 2] / done:.4f} {rate:,.0f} img/s (all runs)")
        stack.finish_epoch()
        losses = stack.epoch_losses()  # the one host sync of the epoch's training
        epoch_s = time.perf_counter() - started

        t_eval = time.perf_counter()
        lost = [row for row, loss in enumerate(losses) if diverged(loss)]
        finite_rows = [row for row in range(len(stack)) if row not in lost]
        for row in lost:  # like a diverged solo run, it keeps the weights it stopped with
            progress[active[row]].model = stack.state_dict(row)
        if lost and finite_rows:
            stack.keep(finite_rows)
        val = test = None
        if finite_rows:
            val = stack.predict(data.val_x) if data.val_x is not None else None
            test = stack.predict(data.test_x, first.test_mode)
            test_eval_mode = stack.predict(data.test_x) if first.test_mode != "eval" else None
        eval_s = time.perf_counter() - t_eval

        for row, i in enumerate(active):
            run, predictions = progress[i], None
            if row not in lost:
                kept = finite_rows.index(row)
                predictions = (None if val is None else val[kept], test[kept],
                               None if test_eval_mode is None else test_eval_mode[kept])
                run.model, run.velocity = stack.state_dict(kept), stack.velocity_of(kept)
            entry = run.end_epoch(epoch, losses[row], predictions, data, epoch_s, eval_s, batch_images)
            if on_epoch:
                on_epoch(indices[i], entry)
        for i in active:
            if checkpoints[i]:
                save_progress(progress[i], checkpoints[i], cfgs[i])
        if log:
            accs = sorted(progress[active[row]].history[-1]["test_accuracy"] for row in finite_rows)
            spread = f" test {accs[0]:.2f}..{accs[-1]:.2f}%" if accs else ""
            log(f"{first.recipe} epoch {epoch}/{first.epochs}: {len(active)} runs{spread} "
                f"{batch_images * len(active) / epoch_s:,.0f} img/s (all runs)"
                + (f", {len(lost)} DIVERGED" if lost else ""))
        active = [active[row] for row in finite_rows]
    return stack
