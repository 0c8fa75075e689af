"""The GPU path, proven as far as a CPU can prove it (docs/performance.md says what is left).

No machine of this project has a GPU, so these tests check on the CPU the properties the CUDA
path depends on:

- a training step never waits for the host: run on the `meta` device (tensors with shapes and
  no data), any .item(), nonzero, bool(tensor) or CPU operand in the step raises;
- CUDA-graph bookkeeping: a stand-in for torch.cuda.graph records the step's kernels (aten ops)
  on the tensors it read, replays them like a CUDA graph does, and checks before every replay
  that every tensor the step reads still lives at the address it was captured at; training with
  it is bit-identical to eager training;
- a failed capture falls back to eager training on the right stream, after a synchronisation,
  says why, and records it in the run's metrics;
- saved states hold CPU tensors only; configure_cuda's settings allow training (the golden
  values of the dropout hash and masks, to compare a GPU's with, are in tests/test_models.py).
The tests marked for CUDA run only where a GPU is visible (docs/performance.md has the command).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mnistbench import batched, record, train as train_module
from mnistbench.batched import GRAPH_WARMUP_STEPS, StackedRuns, train_batch
from mnistbench.data import Splits
from mnistbench.recipes import all_recipes, get_recipe
from mnistbench.train import configure_cuda, load_data, resolve_config, save_state, train

NETWORKS = [r for r in all_recipes().values() if r.kind == "network"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- 1. no host synchronisation in a step --------------------------------------------------

class OnlyMeta(TorchFunctionMode):
    """Fails on any tensor operand that is not on the meta device. Plain CPU tensors already
    fail there, but 0-dim CPU tensors are accepted as scalars by every device, and on a GPU each
    such operand is a host value frozen into a captured graph. (At this level Python numbers
    are still numbers; below it, torch wraps them into 0-dim CPU tensors.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for value in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                raise AssertionError(f"{func} has an operand on {value.device}")
        return func(*args, **(kwargs or {}))


def meta_splits(n: int) -> Splits:
    meta = torch.device("meta")
    images = lambda count: torch.empty(count, 1, 28, 28, device=meta)  # noqa: E731
    labels = lambda count: torch.empty(count, dtype=torch.long, device=meta)  # noqa: E731
    return Splits(images(n), labels(n), images(20), labels(20), images(20), labels(20))


def steps_on_meta(recipe, inject=None) -> StackedRuns:
    """Two full steps and the epoch's last short mini-batch of two runs (two learning rates,
    so L2 and momentum act per run) on the meta device. inject(stack) runs inside each step."""
    data = meta_splits(2 * recipe.batch_size + 3)
    cfgs = [resolve_config(recipe.with_overrides(lr=lr), seed, data, torch.device("meta"))
            for seed, lr in ((1, recipe.lr), (2, 2 * recipe.lr))]
    stack = StackedRuns(recipe, cfgs, data, torch.device("meta"), graphs=False)
    if inject:
        step = stack._step
        stack._step = lambda columns: (inject(stack), step(columns))
    stack.begin_epoch(1)
    with OnlyMeta():
        stack.train_steps(2)
        stack.finish_epoch()
    return stack


@pytest.mark.parametrize("recipe", NETWORKS, ids=lambda r: r.id)
def test_a_training_step_never_waits_for_the_host(recipe):
    stack = steps_on_meta(recipe)
    assert all(p.device.type == "meta" for p in stack.params.values())


SYNCS = {  # what the meta test must catch, inserted into the step
    "item": lambda stack: stack.loss_sum.sum().item(),
    "nonzero": lambda stack: stack.lr.nonzero(),
    "bool": lambda stack: bool((stack.lr > 0).all()),
    "cpu tensor": lambda stack: stack.loss_sum.add_(torch.zeros(len(stack))),
    "cpu scalar tensor": lambda stack: stack.loss_sum.add_(torch.tensor(0.0)),
}


@pytest.mark.parametrize("sync", SYNCS)
def test_the_meta_check_catches_a_host_sync_in_the_step(sync):
    """The control: the same test fails when the step syncs with the host or reads the CPU."""
    with pytest.raises((RuntimeError, NotImplementedError, AssertionError)):
        steps_on_meta(get_recipe("tutorial_cnn_nll"), SYNCS[sync])


# --- 2. and 3. CUDA-graph bookkeeping, with a stand-in for torch.cuda ----------------------

NOT_CAPTURABLE = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                  torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}


def state_tensors(stack: StackedRuns) -> dict[str, torch.Tensor]:
    """Every tensor a stack holds between steps, by name (the step may read only these)."""
    found = {}

    def walk(value, name):
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{name}.{f.name}")

    for attribute, value in vars(stack).items():
        if attribute not in ("graph", "base"):  # base: the module structure, on meta
            walk(value, attribute)
    return found


class Recorder(TorchDispatchMode):
    """Runs and records every aten op (a CUDA graph's kernels) and, like a capture, makes the
    recorded step leave no trace: every tensor it writes is restored on exit."""

    def __init__(self):
        super().__init__()
        self.ops, self.produced, self.read, self.saved = [], set(), {}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in NOT_CAPTURABLE:
            raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({func})")
        schema_args = func._schema.arguments
        flat_args = tree_flatten((args, kwargs))[0]
        for value in flat_args:
            if isinstance(value, torch.Tensor) and id(value) not in self.produced:
                self.read[value.untyped_storage().data_ptr()] = value
        written = [a.name for a in schema_args if a.alias_info is not None and a.alias_info.is_write]
        bound = {**{a.name: v for a, v in zip(schema_args, args)}, **kwargs}
        for name in written:  # in-place: remember the old contents (restored in reverse order)
            for tensor in tree_flatten(bound.get(name))[0]:
                if isinstance(tensor, torch.Tensor):
                    self.saved.append((tensor, tensor.clone()))
        out = func(*args, **kwargs)
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.produced.add(id(value))
        view = any(r.alias_info is not None for r in func._schema.returns)
        # (holding every output also keeps the ids in self.produced unique)
        self.ops.append((func, args, kwargs, out, "mutate" if written else "view" if view else "compute"))
        return out

    def undo(self):
        for tensor, old in reversed(self.saved):
            tensor.copy_(old)

    def replay(self):
        for func, args, kwargs, out, kind in self.ops:
            if kind == "mutate":
                func(*args, **kwargs)
            elif kind == "compute":  # into the captured output buffers, as a graph does
                for recorded, new in zip(tree_flatten(out)[0], tree_flatten(func(*args, **kwargs))[0]):
                    if isinstance(recorded, torch.Tensor):
                        recorded.copy_(new)


class FakeCuda:
    """torch.cuda's streams, graphs and synchronize as StackedRuns._capture uses them, on the CPU.

    graph(g) records the step and undoes it (captured, not run); g.replay() runs the recorded
    ops on the captured tensors, after checking that each state tensor the step read is still
    the one at the captured address. Like torch.cuda.graph, a failed capture raises "operation
    failed due to a previous error during capture" from __exit__ and leaves the capture stream
    current.
    """

    def __init__(self):
        fake = self

        class Stream:
            def __init__(self, name="side stream"):
                self.name = name

            def __repr__(self):
                return self.name

            def wait_stream(self, other):
                pass

        self.default = self.current = Stream("default stream")
        self.capture_stream = Stream("capture stream")
        self.events, self.captures, self.replays, self.stacks = [], 0, 0, []

        class CUDAGraph:
            def replay(self):
                fake.check_addresses(self)
                fake.replays += 1
                self.recorder.replay()

        @contextlib.contextmanager
        def stream(s):
            previous, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = previous

        class graph:
            def __init__(self, cuda_graph):
                self.cuda_graph = cuda_graph

            def __enter__(self):
                fake.synchronize()
                self.previous, fake.current = fake.current, fake.capture_stream
                fake.events.append("capture")
                self.cuda_graph.recorder = Recorder().__enter__()

            def __exit__(self, kind, error, tb):
                recorder = self.cuda_graph.recorder
                recorder.__exit__(None, None, None)
                recorder.undo()
                if error is not None:
                    fake.events.append("capture failed")
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                fake.captures += 1
                stack = fake.stacks[-1]
                named = state_tensors(stack)
                by_storage = {t.untyped_storage().data_ptr(): name for name, t in named.items()}
                unknown = [t.shape for ptr, t in recorder.read.items() if ptr not in by_storage]
                assert not unknown, f"the step reads tensors that the stack does not hold: {unknown}"
                self.cuda_graph.stack = stack
                self.cuda_graph.addresses = {by_storage[ptr]: ptr for ptr in recorder.read}
                fake.current = self.previous

        self.Stream, self.CUDAGraph, self.stream, self.graph = Stream, CUDAGraph, stream, graph

    def current_stream(self):
        return self.current

    def set_stream(self, s):
        self.events.append(f"set_stream({s})")
        self.current = s

    def synchronize(self):
        self.events.append(f"synchronize on {self.current}")

    def check_addresses(self, graph):
        now = state_tensors(graph.stack)
        moved = [name for name, ptr in graph.addresses.items()
                 if name not in now or now[name].untyped_storage().data_ptr() != ptr]
        assert not moved, f"replayed on stale memory: {', '.join(moved)} moved since capture"

    def install(self, monkeypatch):
        for name in ("Stream", "CUDAGraph", "stream", "graph", "current_stream", "set_stream", "synchronize"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        fake = self

        class GraphedStack(StackedRuns):  # graphs on the CPU, and the fake knows the stack
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.graphs = True
                fake.stacks.append(self)

        monkeypatch.setattr(batched, "StackedRuns", GraphedStack)


VOLATILE = {"train_seconds", "eval_seconds", "images_per_second", "environment", "stretches"}


def small_evaluation(data: Splits) -> Splits:
    """500 validation and test images: evaluation is not what these tests are about."""
    cut = lambda t: None if t is None else t[:500]  # noqa: E731
    return dataclasses.replace(data, val_x=cut(data.val_x), val_y=cut(data.val_y),
                               test_x=cut(data.test_x), test_y=cut(data.test_y))


def assert_identical(a: dict, b: dict) -> None:
    def comparable(result):  # as JSON, like metrics.json, so that a NaN loss equals a NaN loss
        kept = {k: v for k, v in result.items() if k not in VOLATILE | {"final_model"}}
        kept["history"] = [{k: v for k, v in h.items() if k not in VOLATILE} for h in result["history"]]
        return json.dumps(kept)

    assert comparable(a) == comparable(b)
    assert a["final_model"].keys() == b["final_model"].keys()
    for key in a["final_model"]:
        torch.testing.assert_close(a["final_model"][key], b["final_model"][key], rtol=0, atol=0,
                                   equal_nan=True, msg=key)  # a diverged run's weights hold NaN


GRAPH_CASES = {
    # recipe, subset, epochs, learning rates, (re)captures: what it exercises
    "book_dropout": ("nielsen_ch6_dropout", 60, 2, (0.03, 0.1), 1),  # unshuffled, network3 dropout
    "inverted_dropout": ("seed_final", 60, 2, (0.03, 0.01), 1),  # per-run orders and masks
    # momentum, Dropout2d, batch 100; lr 1e6 diverges in epoch 1, is dropped, the graph re-captured
    "tutorial_diverging": ("tutorial_cnn_nll", 1050, 3, (0.01, 1e6, 0.02), 2),
}


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_graph_replays_equal_eager_training(case, data_dir, monkeypatch):
    recipe_id, subset, epochs, lrs, captures = GRAPH_CASES[case]
    base = get_recipe(recipe_id).with_overrides(train_subset=subset, epochs=epochs)
    runs = [(base.with_overrides(lr=lr), seed) for seed, lr in enumerate(lrs, 1)]
    data = small_evaluation(load_data(base))
    eager = train_batch(runs, data=data, graphs=False)
    fake = FakeCuda()
    fake.install(monkeypatch)
    graphed = train_batch(runs, data=data)
    for g, e in zip(graphed, eager):
        assert_identical(g, e)
    full_steps = fake.stacks[0].full_steps
    assert fake.captures == captures
    assert fake.replays == epochs * full_steps - captures * GRAPH_WARMUP_STEPS
    assert graphed[0]["environment"]["cuda_graphs"] is True
    if case == "tutorial_diverging":
        assert [r["status"] for r in graphed] == ["finished", "diverged", "finished"]


def test_the_address_check_catches_a_step_reading_stale_memory(data_dir, monkeypatch):
    """The control: a begin_epoch that puts the new epoch's order into a new tensor (the graph
    keeps reading the old one) is caught before the first replay of epoch 2."""
    def begin_epoch(self, epoch):
        orders = [train_module.epoch_order(c.seed, epoch, self.n, True, "cpu") for c in self.cfgs]
        self.orders = torch.stack(orders).to(self.device)
        self.position.zero_()
        self.loss_sum.zero_()

    monkeypatch.setattr(StackedRuns, "begin_epoch", begin_epoch)
    FakeCuda().install(monkeypatch)
    base = get_recipe("seed_simple_conv").with_overrides(train_subset=100, epochs=2)
    with pytest.raises(AssertionError, match="orders moved since capture"):
        train_batch([(base, 1), (base, 2)])


def test_a_failed_capture_falls_back_to_eager_steps_on_the_training_stream(data_dir, monkeypatch, capsys):
    base = get_recipe("tutorial_cnn_nll").with_overrides(train_subset=1050, epochs=2)
    runs = [(base, 1), (base.with_overrides(lr=0.02), 2)]
    data = small_evaluation(load_data(base))
    eager = train_batch(runs, data=data, graphs=False)
    fake = FakeCuda()
    fake.install(monkeypatch)
    steps = {"eager": 0, "captured": 0}
    step = StackedRuns._step

    def syncing_step(self, columns):  # a host sync: not capturable, harmless when eager
        steps["captured" if fake.current is fake.capture_stream else "eager"] += 1
        self.loss_sum.sum().item()
        step(self, columns)

    monkeypatch.setattr(StackedRuns, "_step", syncing_step)
    fallen_back = train_batch(runs, data=data)
    for f, e in zip(fallen_back, eager):
        assert_identical(f, e)
    stack = fake.stacks[0]
    # every step of both epochs ran eagerly (the warm-up too), one attempt at capturing one
    assert steps == {"eager": 2 * stack.steps, "captured": 1}
    assert fake.captures == fake.replays == 0
    # back on the training stream, then a synchronisation, before the first eager step
    after = fake.events[fake.events.index("capture failed") + 1:]
    assert after[:2] == ["set_stream(default stream)", "synchronize on default stream"]
    assert fake.current is fake.default
    message = capsys.readouterr().out
    assert "previous error during capture" in message and "not permitted when stream is capturing" in message
    assert "batched.py" in message  # where the step raised, to find the op to fix
    environment = fallen_back[0]["environment"]
    assert environment["cuda_graphs"] is False
    assert "not permitted when stream is capturing" in environment["cuda_graph_failure"]


# --- 4. saved states hold CPU tensors ----------------------------------------------------

def test_every_saved_state_is_written_from_cpu_copies(data_dir, tmp_path, monkeypatch):
    """On the CPU a tensor's .cpu() is itself, so the spy makes it a marked copy: every tensor
    that torch.save receives must be one (from train.to_cpu) in checkpoints (single and batched
    runs) and model.pt. On a GPU the same path copies device tensors to the host."""
    made, saved = set(), []
    real_cpu, real_save = torch.Tensor.cpu, torch.save

    def marked_cpu(tensor, *args, **kwargs):
        copy = real_cpu(tensor, *args, **kwargs).clone()
        made.add(id(copy))
        saved.append(copy)  # keeps it alive: ids stay unique
        return copy

    def checked_save(obj, *args, **kwargs):
        tensors = [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]
        assert tensors and all(id(t) in made and t.device.type == "cpu" for t in tensors)
        real_save(obj, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", marked_cpu)
    monkeypatch.setattr(torch, "save", checked_save)
    recipe = get_recipe("tutorial_cnn_nll").with_overrides(train_subset=200, epochs=1)
    result = train(recipe, 1, checkpoint=tmp_path / "solo" / "checkpoint.pt")
    record.write_run(tmp_path / "solo", result, save_state)
    train_batch([(recipe, 1), (recipe, 2)], checkpoints=[tmp_path / "a.pt", tmp_path / "b.pt"])
    assert (tmp_path / "solo" / "model.pt").exists() and (tmp_path / "b.pt").exists()


@CUDA
def test_a_gpu_run_loads_without_a_gpu(data_dir, tmp_path):
    common = ["--recipe", "tutorial_cnn_nll", "--epochs", "1", "--train-subset", "300", "--device", "cuda", "--quiet"]
    subprocess.run([sys.executable, "-m", "mnistbench", "train", "--seed", "1", "--no-checkpoint",
                    "--out", str(tmp_path / "solo"), *common], check=True)
    subprocess.run([sys.executable, "-m", "mnistbench", "train-batch", "--seeds", "1", "2",
                    "--out-pattern", str(tmp_path / "batch/{seed}"), *common], check=True)
    load = ("import sys, torch; assert not torch.cuda.is_available()\n"
            "for path in sys.argv[1:]:\n"
            "    state = torch.load(path, weights_only=True)\n"
            "    assert all(t.device.type == 'cpu' for t in state.values()), path\n")
    files = [str(tmp_path / "solo/model.pt"), str(tmp_path / "batch/1/model.pt")]
    subprocess.run([sys.executable, "-c", load, *files], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


# --- 5. determinism settings --------------------------------------------------------------

@pytest.fixture
def restore_cuda_settings(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved


def test_configure_cuda_then_training_works(data_dir, restore_cuda_settings):
    """With the fp32_precision API in use, torch's old allow_tf32 getters raise: a step that
    read them (mnistbench or torch on its behalf) would fail here."""
    configure_cuda()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.deterministic
    with pytest.raises(RuntimeError, match="legacy and new APIs"):
        torch.backends.cudnn.allow_tf32  # noqa: B018 -- the getter that must never be read
    recipe = get_recipe("tutorial_cnn_nll").with_overrides(train_subset=200, epochs=1)
    assert train(recipe, 1)["status"] == "finished"
    assert train_batch([(recipe, 1), (recipe, 2)])[1]["status"] == "finished"


# 6. On a GPU, graph replays, eager batched steps and solo runs are compared in
# tests/test_batched.py (test_cuda_graphs_give_the_eager_and_the_solo_results).
