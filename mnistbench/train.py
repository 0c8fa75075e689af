"""The training engine: plain mini-batch SGD on tensors that live on the training device.

One seed decides everything random in a run, through counters rather than generator state:
the initial weights (models.create), the data order of epoch e (a permutation seeded by
(seed, e)) and the dropout masks (a hash of the seed, the layer and the step). A run is
therefore reproducible bit for bit on the CPU, resumable from any epoch's checkpoint, and
identical whether it trains alone or stacked with other runs (batched.py).
"""

from __future__ import annotations

import math
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import __version__
from .data import Splits, make_splits
from .models import Dropout, advance_dropout, create, decayed_parameters
from .recipes import Recipe, planned_train_images, recipe_record
from .record import atomic_write, git, network_record

EVAL_BATCH = 1000
PROGRESS_EVERY_S = 15.0  # mid-epoch progress lines on long epochs


class CheckpointError(Exception):
    """A checkpoint that is truncated, unreadable, or belongs to another run."""


# --- losses: the model outputs logits; each cost applies its own output activation ----------

def _one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # A comparison rather than F.one_hot: the same 0/1 values, but it works under vmap (batched.py)
    # and needs no device-to-host check of the labels, so a CUDA graph can capture it.
    return (y.unsqueeze(-1) == torch.arange(10, device=y.device)).to(like.dtype)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    # network.py: C = 0.5 * ||sigmoid(z) - y||^2 per image, averaged over the mini-batch.
    "quadratic": lambda z, y: 0.5 * (torch.sigmoid(z) - _one_hot(y, z)).square().sum(1).mean(),
    # nn.MSELoss on sigmoid outputs: the same cost divided by 5 (it also averages over 10 outputs).
    "mse": lambda z, y: F.mse_loss(torch.sigmoid(z), _one_hot(y, z)),
    # network2.py: -[y ln a + (1-y) ln(1-a)] summed over the 10 outputs, averaged over the batch.
    "binary_cross_entropy": lambda z, y: F.binary_cross_entropy_with_logits(
        z, _one_hot(y, z), reduction="sum") / len(y),
    # network3.py's softmax + log-likelihood, nn.CrossEntropyLoss, and NLL on log_softmax.
    "cross_entropy": F.cross_entropy,
}


@dataclass
class RunConfig:
    """Everything that decides a run's numbers, resolved from the recipe and the overrides."""

    recipe: str
    published_id: str
    protocol: str
    protocol_code: str
    seed: int
    lr: float
    epochs: int
    batch_size: int
    momentum: float
    l2: float
    weight_decay: float
    decay: str
    loss: str
    init: str
    split: str
    scaling: str
    shuffle: bool
    drop_last: bool
    expand: bool
    train_subset: int | None
    train_images: int
    selection: str
    selection_split: str
    dropout_masks: str
    test_mode: str
    device: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def configure_cuda(tf32: bool = False) -> None:
    """Full FP32 and deterministic kernels on GPUs, so GPU runs stay comparable with CPU runs.

    torch lets cuDNN convolutions use TF32 (10-bit mantissa) by default. At mini-batch 10 the
    kernels are tiny and launch-bound, so TF32 buys little, and a replication harness prefers
    numbers that do not depend on the GPU generation. docs/performance.md has the details.
    Call it before the process's first matrix product: cuBLAS reads CUBLAS_WORKSPACE_CONFIG
    once, when it starts, and only a fixed workspace makes its matrix products reproducible
    (https://docs.nvidia.com/cuda/cublas/#results-reproducibility).
    The flags are only written: with the fp32_precision API in use, torch's old allow_tf32
    getters raise, so nothing here (or anywhere in mnistbench) reads them.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    precision = "tf32" if tf32 else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    except AttributeError:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def load_data(recipe: Recipe, data_dir=None, device="cpu") -> Splits:
    p = recipe.protocol
    return make_splits(p.split, recipe.scaling, recipe.expand, recipe.train_subset,
                       p.shuffle_expanded_once, data_dir).to(device)


def planned_config(recipe: Recipe, seed: int, device, n_train: int | None = None) -> RunConfig:
    """Everything that decides a run's numbers; n_train defaults to the images the recipe's data
    has (its split or subset, 5x if expanded), so a record can be checked without loading data."""
    if n_train is None:
        n_train = planned_train_images(recipe)
    return RunConfig(
        recipe=recipe.id, published_id=recipe.published_id, protocol=recipe.protocol.family,
        protocol_code=recipe.protocol.code, seed=seed, lr=recipe.lr, epochs=recipe.epochs,
        batch_size=recipe.batch_size, momentum=recipe.momentum, l2=recipe.l2,
        weight_decay=recipe.weight_decay(n_train), decay=recipe.protocol.decay, loss=recipe.loss,
        init=recipe.init, split=recipe.protocol.split, scaling=recipe.scaling,
        shuffle=recipe.protocol.shuffle, drop_last=recipe.protocol.drop_last, expand=recipe.expand,
        train_subset=recipe.train_subset, train_images=n_train, selection=recipe.selection,
        selection_split=recipe.selection_split, dropout_masks=recipe.dropout_masks,
        test_mode=recipe.test_mode, device=str(device))


def resolve_config(recipe: Recipe, seed: int, data: Splits, device: torch.device) -> RunConfig:
    return planned_config(recipe, seed, device, len(data.train_x))


def epoch_order(seed: int, epoch: int, n: int, shuffle: bool, device) -> torch.Tensor | None:
    """The training-data order of one epoch (None: in stored order), a pure function of (seed, epoch)."""
    if not shuffle:
        return None
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def sgd_implementation(cfg: RunConfig) -> str:
    """Which of torch's SGD kernels updates a run: "fused" or "foreach" (never the per-parameter loop).

    Both compute p - lr * (g + wd * p). The foreach path allocates g + wd * p as new tensors
    every step; the fused kernel does it in place, measured 1.1-1.3x faster per step for the
    L2 nets with wide layers and bit-identical after hundreds of steps (benchmarks/sgd_update.py,
    tests/test_sgd_update.py). Without weight decay there is nothing to save, and with momentum
    the fused kernel rounds differently (different parameters after 350 steps) at no gain, so
    those runs keep the foreach path their records were trained with.
    """
    return "fused" if cfg.weight_decay and not cfg.momentum else "foreach"


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, implementation: str | None = None) -> torch.optim.SGD:
    decayed, not_decayed = decayed_parameters(model, cfg.decay)
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}]
    if not_decayed:
        groups.append({"params": not_decayed, "weight_decay": 0.0})
    # A multi-tensor kernel per update rule instead of torch's loop over parameters (which torch
    # picks by default on the CPU): the same arithmetic, measurably faster at mini-batch 10.
    implementation = implementation or sgd_implementation(cfg)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **{implementation: True})


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, mode: str = "eval") -> torch.Tensor:
    """Predicted digits, in chunks of 1,000 (the wide tutorial's test batch).

    mode "train" evaluates with dropout active, as the wide tutorial's notebook did (it never
    calls net.eval()): each chunk draws fresh masks, and the training mask stream is restored
    afterwards, so evaluating never changes the masks training sees.
    """
    if mode == "eval":
        model.eval()
        predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(EVAL_BATCH)])
        model.train()
        return predictions
    if mode != "train":
        raise ValueError(f"unknown test mode {mode!r}")
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    saved = [m.rng.clone() for m in dropouts]
    for m in dropouts:  # a stream apart from training's: step counters from -1 downwards
        m.rng[1] = -1
    predictions = []
    for chunk in x.split(EVAL_BATCH):
        predictions.append(model(chunk).argmax(1))
        for m in dropouts:
            m.rng[1] -= 1
    for m, rng in zip(dropouts, saved):
        m.rng.copy_(rng)
    return torch.cat(predictions)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * (predictions == labels).double().mean().item(), 4)


def select(history: list[dict], rule: str, split: str = "test") -> tuple[float | None, int | None]:
    """The reported accuracy under a source's model-selection rule, and its epoch.

    peak: the best per-epoch accuracy on `split`. best_validation (network3.py): the test
    accuracy of the last epoch whose validation accuracy was >= every earlier one. final: the
    test accuracy after the last epoch.
    """
    history = [h for h in history if h.get("test_accuracy") is not None]
    if not history:
        return None, None
    if rule == "final":
        chosen = history[-1]
    elif rule == "peak":
        key = {"test": "test_accuracy", "validation": "val_accuracy"}[split]
        chosen = max(history, key=lambda h: h[key])  # first of equal peaks
        return chosen[key], chosen["epoch"]
    elif rule == "best_validation":
        best, chosen = -1.0, None
        for h in history:
            if h["val_accuracy"] >= best:
                best, chosen = h["val_accuracy"], h
    else:
        raise ValueError(f"unknown selection rule {rule!r}")
    return chosen["test_accuracy"], chosen["epoch"]


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 7B13"), which platform.processor() leaves empty on Linux."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_kind() -> str:
    """What decides which floating-point kernels run on this CPU: its vendor family and model
    numbers and the instruction set torch dispatches to. Virtual machines often name every
    AMD EPYC just "AMD EPYC", while a Zen 3 (AVX2) and a Zen 4 (AVX-512) add in other orders."""
    info = _cpuinfo()
    family = " ".join(f"{k} {info[k]}" for k in ("vendor_id", "cpu family", "model") if k in info)
    family = family or platform.machine()
    # oneDNN and MKL pick their own instruction sets; these variables cap them (docs/replication.md).
    caps = [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if os.environ.get(k)]
    return ", ".join([family, torch.backends.cpu.get_cpu_capability(), *caps])


def environment(device: torch.device) -> dict:
    import torchvision

    # The package's own uncommitted changes make the commit an incomplete description of the code.
    changes = git("status", "--porcelain", "--", ".")
    model = cpu_model()
    return {
        "mnistbench": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "host": socket.gethostname(), "device": str(device), "cpu_model": model,
        "cpu_kind": cpu_kind(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else model,
        "threads": torch.get_num_threads(), "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": None if changes is None else bool(changes),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# What a stretch of a run (one process, from its start or resumption to its end or last
# checkpoint) records of where and with what code it ran: a run resumed elsewhere has several.
STRETCH_KEYS = ("git_commit", "git_dirty", "host", "cpu_model", "cpu_kind", "threads", "torch", "device")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def to_cpu(state):
    """`state` with every tensor in it (nested in dicts, lists, tuples) copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(value) for value in state)
    return state


def save_state(path: Path, state: dict) -> None:
    """Every saved state (checkpoints, model.pt) goes through here: written from CPU tensors, so
    a run trained on a GPU loads on a machine without one, no map_location needed."""
    payload = to_cpu(state)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, cfg: RunConfig, trainer: str = "train") -> dict | None:
    """The checkpoint at `path` if it exists, on cfg's device. trainer: the command that writes
    this kind ("train": one run; "train-batch": a run of a batch, batched.py)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=cfg.device, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it "
                              f"to start the run afresh") from None
    if not isinstance(state, dict) or state.get("config") != asdict(cfg):
        raise CheckpointError(f"checkpoint {path} belongs to another run configuration; delete it "
                              f"or choose another --out")
    if state.get("trainer", "train") != trainer:
        raise CheckpointError(f"checkpoint {path} was written by 'mnistbench {state.get('trainer', 'train')}' "
                              f"and resumes only with it (or delete it to train the run afresh)")
    return state


@dataclass
class RunProgress:
    """One run so far: restored from its checkpoint, updated after every epoch by end_epoch
    (train and batched.train_batch share it, so both keep their history alike)."""

    history: list[dict] = field(default_factory=list)
    status: str = "finished"
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    test_predictions: torch.Tensor | None = None
    model: dict | None = None  # batched runs: the last epoch's weights (a diverged run: those it stopped with)
    velocity: dict | None = None  # batched runs: their momentum buffers
    extra_state: dict = field(default_factory=dict)
    # one entry per process that trained the run (record.WALL_ALL_STRETCHES): a resumed run has
    # several, and its wall time is their sum
    stretches: list[dict] = field(default_factory=list)
    stretch_started: float = 0.0  # time.time() when this process's stretch began

    @classmethod
    def restore(cls, state: dict, extra_state: dict) -> "RunProgress":
        history = state["history"]
        stretches = state.get("stretches")
        if stretches is None and history:  # a checkpoint made before stretches were recorded
            stretches = [{"first_epoch": 1, "last_epoch": len(history), "wall_seconds": None,
                          "note": "made before stretches were recorded: where and when it ran is unknown"}]
        return cls(history=history, status="diverged" if history and history[-1].get("diverged") else "finished",
                   train_seconds=state["train_seconds"], eval_seconds=state["eval_seconds"],
                   test_predictions=state["test_predictions"], model=state["model"],
                   velocity=state.get("velocity"), extra_state={**state.get("extra_state", {}), **extra_state},
                   stretches=list(stretches or []))

    def begin_stretch(self, device: torch.device) -> None:
        """This process starts (or resumes) the run: record where, with what code, and when."""
        env = environment(device)
        self.stretch_started = time.time()
        self.stretches.append({"first_epoch": len(self.history) + 1, "last_epoch": len(self.history),
                               "started_at": utc_now(), "ended_at": utc_now(), "wall_seconds": 0.0,
                               # plain str: torch.__version__ is a class torch.load refuses
                               **{key: str(env[key]) if isinstance(env.get(key), str) else env.get(key)
                                  for key in STRETCH_KEYS}})

    def end_stretch(self) -> None:
        """The stretch so far: its end now, its wall time (saved with each checkpoint, so a stretch
        that is killed keeps what it did up to its last checkpoint)."""
        if self.stretches and self.stretch_started:
            self.stretches[-1].update(last_epoch=len(self.history), ended_at=utc_now(),
                                      wall_seconds=round(time.time() - self.stretch_started, 3))

    def checkpoint(self, cfg: "RunConfig", model: dict, **trainer_state) -> dict:
        """The checkpoint of this run after its last epoch (save_state writes it from CPU
        tensors); trainer_state: what only one trainer keeps (its optimizer, or velocities)."""
        return {"config": asdict(cfg), "model": model, "history": self.history,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds,
                "extra_state": self.extra_state, "test_predictions": self.test_predictions,
                "stretches": self.stretches, **trainer_state}

    def end_epoch(self, epoch: int, train_loss: float, predictions: tuple | None, data: Splits,
                  train_s: float, eval_s: float, images: int) -> dict:
        """The epoch's history entry, appended: its accuracies, or, when the loss diverged
        (predictions None: see diverged()), the end of the run. predictions: the (validation or
        None, test, test in eval mode or None) digits predicted after the epoch."""
        entry = {"epoch": epoch, "train_loss": train_loss}
        if predictions is None:
            self.status, self.test_predictions = "diverged", None
            entry.update(val_accuracy=None, test_accuracy=None, diverged=True)
        else:
            val, test, test_eval_mode = predictions
            if val is not None:
                entry["val_accuracy"] = accuracy(val, data.val_y)
            self.test_predictions = test
            entry["test_accuracy"] = accuracy(test, data.test_y)
            if test_eval_mode is not None:  # the published measurement, and the usual one beside it
                entry["test_accuracy_eval_mode"] = accuracy(test_eval_mode, data.test_y)
        entry["train_seconds"] = round(train_s, 3)
        entry["images_per_second"] = round(images / train_s, 1)
        self.history.append(entry)
        self.train_seconds += train_s
        self.eval_seconds += eval_s
        self.end_stretch()
        return entry


def diverged(train_loss: float) -> bool:
    """A run whose epoch loss is not finite has diverged: it stops, keeping its last weights."""
    return not math.isfinite(train_loss)


def train(recipe: Recipe, seed: int, *, device: str = "cpu", data: Splits | None = None,
          data_dir=None, checkpoint: Path | None = None, log: Callable[[str], None] | None = None,
          extra_state: dict | None = None, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train one run of a recipe and return its result (the content of metrics.json).

    checkpoint: a file to save after every epoch and to resume from if it exists.
    extra_state: small JSON-able values stored in the checkpoint (the MLflow run id, say) and
    returned under "extra_state" on resume.
    on_epoch: called with each epoch's history entry (live tracking hooks in here; the core
    itself knows nothing of MLflow).
    """
    device = resolve_device(device)
    if device.type == "cuda":
        configure_cuda()
    data = data if data is not None else load_data(recipe, data_dir, device)
    cfg = resolve_config(recipe, seed, data, device)
    model = create(recipe.arch, cfg.init, seed, cfg.dropout_masks).to(device)
    if device.type == "cpu" and recipe.arch.convs:
        # oneDNN's channels-last convolution and pooling kernels are 10-25% faster for these
        # small maps (benchmarks/throughput.py); one-channel images need no conversion at all.
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    loss_fn = LOSSES[cfg.loss]

    run = RunProgress(extra_state=dict(extra_state or {}))
    state = load_checkpoint(checkpoint, cfg) if checkpoint else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run = RunProgress.restore(state, run.extra_state)
        if log:
            log(f"resuming {cfg.recipe} seed {seed} after epoch {len(run.history)} from {checkpoint}")
    run.begin_stretch(device)

    n = len(data.train_x)
    steps = num_batches(n, cfg.batch_size, cfg.drop_last)
    model.train()
    for epoch in range(len(run.history) + 1, cfg.epochs + 1):
        if run.status == "diverged":
            break
        started = time.perf_counter()
        order = epoch_order(seed, epoch, n, cfg.shuffle, device)
        loss_sum = torch.zeros((), device=device)
        last_report = started
        for step in range(steps):
            lo, hi = step * cfg.batch_size, min((step + 1) * cfg.batch_size, n)
            if order is None:
                x, y = data.train_x[lo:hi], data.train_y[lo:hi]
            else:
                index = order[lo:hi]
                x, y = data.train_x.index_select(0, index), data.train_y.index_select(0, index)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            advance_dropout(model)
            loss_sum += loss.detach()
            if log and time.perf_counter() - last_report > PROGRESS_EVERY_S:  # any epoch length
                last_report = time.perf_counter()
                rate = (step + 1) * cfg.batch_size / (last_report - started)
                log(f"  epoch {epoch}/{cfg.epochs} step {step + 1}/{steps} "
                    f"loss {loss_sum.item() / (step + 1):.4f} {rate:,.0f} img/s")
        train_loss = loss_sum.item() / steps
        epoch_train_s = time.perf_counter() - started
        t_eval = time.perf_counter()
        predictions = None
        if not diverged(train_loss):
            predictions = (predict(model, data.val_x) if data.val_x is not None else None,
                           predict(model, data.test_x, cfg.test_mode),
                           predict(model, data.test_x) if cfg.test_mode != "eval" else None)
        entry = run.end_epoch(epoch, train_loss, predictions, data, epoch_train_s,
                              time.perf_counter() - t_eval, steps * cfg.batch_size)
        if on_epoch:
            on_epoch(entry)
        if log:
            val = f" val {entry['val_accuracy']:.2f}%" if entry.get("val_accuracy") is not None else ""
            test = f" test {entry['test_accuracy']:.2f}%" if entry.get("test_accuracy") is not None else ""
            log(f"{cfg.recipe} seed {seed} epoch {epoch}/{cfg.epochs} loss {train_loss:.4f}{val}{test} "
                f"{entry['images_per_second']:,.0f} img/s" + (" DIVERGED" if run.status == "diverged" else ""))
        if checkpoint:
            save_state(checkpoint, run.checkpoint(cfg, model.state_dict(), optimizer=optimizer.state_dict()))

    return run_result(recipe, cfg, run, final_model=model.state_dict(), environment=environment(device),
                      test_labels=data.test_y)


def recall_per_digit(predictions: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Test recall of each digit 0-9 in percent. A run whose overall accuracy looks merely low
    may have never learned one digit at all (a saturated sigmoid output neuron, say)."""
    predictions, labels = predictions.cpu(), labels.cpu()  # a resumed run's come from the checkpoint
    hits = torch.bincount(labels[predictions == labels], minlength=10)
    counts = torch.bincount(labels, minlength=10)
    return [round(100 * h / c, 2) for h, c in zip(hits.tolist(), counts.tolist())]


def run_result(recipe: Recipe, cfg: RunConfig, run: RunProgress, *, final_model: dict | None,
               environment: dict, test_labels: torch.Tensor) -> dict:
    """A finished run's record (record.network_record; plus "final_model"); batched.py shares it."""
    selected, selected_epoch = select(run.history, cfg.selection, cfg.selection_split)
    steps = num_batches(cfg.train_images, cfg.batch_size, cfg.drop_last)
    run.end_stretch()
    return network_record(
        recipe, asdict(cfg), status=run.status, history=run.history, selected=selected,
        selected_epoch=selected_epoch, train_seconds=run.train_seconds, eval_seconds=run.eval_seconds,
        trained_images=len(run.history) * steps * cfg.batch_size, test_predictions=run.test_predictions,
        test_recall_per_digit=None if run.test_predictions is None
        else recall_per_digit(run.test_predictions, test_labels),
        final_model=final_model, extra_state=run.extra_state, environment=environment,
        user_recipe=recipe_record(recipe), stretches=run.stretches)
