"""The `mnistbench` command line: what the Snakemake rules (and people) call.

Every error a user can cause ends in one line on stderr and exit status 2, without a traceback
and without leaving a metrics.json that could be mistaken for a finished run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _finite(value):
    """JSON has no NaN or inf: store them as null (the run's status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    from .train import atomic_write

    text = json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to output folder {out}: {err.strerror or err}") from None


# --- commands -------------------------------------------------------------------------------

def cmd_recipes(args) -> None:
    from .recipes import all_recipes

    rows = []
    for r in all_recipes().values():
        published = f"{r.published_accuracy:.2f}" if r.published_accuracy is not None else "-"
        if r.kind == "network":
            what = (f"{r.protocol.code:<8} lr={r.lr:g} batch={r.batch_size} epochs={r.epochs} "
                    f"images={r.train_images:,}")
        else:
            what = f"{r.kind}: {r.notes}"
        rows.append((r.id, published, what))
    if args.json:
        print(json.dumps([{"id": i, "published_accuracy": p, "summary": w} for i, p, w in rows], indent=1))
        return
    width = max(len(i) for i, _, _ in rows)
    print(f"{'recipe':<{width}}  published  configuration")
    for i, p, w in rows:
        print(f"{i:<{width}}  {p:>9}  {w}")


def cmd_train(args) -> None:
    import torch

    from .data import DataError
    from .recipes import UnknownRecipe, get_recipe
    from .train import CheckpointError, train

    try:
        recipe = get_recipe(args.recipe)
    except UnknownRecipe as err:
        raise UsageError(str(err)) from None
    if recipe.kind == "ensemble":
        raise UsageError(f"{recipe.id} is a vote of trained {recipe.members} runs: train those, "
                         f"then use 'mnistbench ensemble'")
    out = Path(args.out)
    _check_writable(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_log = None if args.quiet else log
    started = time.time()
    try:
        if recipe.kind == "baseline":
            result = _run_baseline(recipe, args)
        else:
            recipe = recipe.with_overrides(lr=args.lr, epochs=args.epochs, train_subset=args.train_subset)
            if quiet_log:
                quiet_log(f"training {recipe.id} seed {args.seed} for {recipe.epochs} epochs, lr {recipe.lr:g}")
            result = train(recipe, args.seed, device=args.device, data_dir=args.data_dir,
                           checkpoint=None if args.no_checkpoint else out / "checkpoint.pt", log=quiet_log)
    except (DataError, CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None
    result["wall_seconds"] = round(time.time() - started, 3)
    _write_run(out, result)
    if not args.quiet:
        log(f"{result['status']}: selected accuracy {result['selected_accuracy']}% "
            f"(published {recipe.published_accuracy}%) -> {out / 'metrics.json'}")


def _run_baseline(recipe, args) -> dict:
    from .baselines import BASELINES
    from .data import make_splits
    from .train import accuracy, environment, resolve_device

    data = make_splits("nielsen", "raw", data_dir=args.data_dir)
    t = time.perf_counter()
    predictions = BASELINES[recipe.id](data)
    acc = accuracy(predictions, data.test_y)
    return {"schema": 1, "recipe": recipe.id, "published_id": recipe.id, "protocol": "nielsen",
            "seed": args.seed, "lr": None, "status": "finished",
            "published_accuracy": recipe.published_accuracy, "selected_accuracy": acc,
            "selected_epoch": None, "final_test_accuracy": acc, "final_val_accuracy": None,
            "config": {"recipe": recipe.id, "kind": "baseline", "seed": args.seed, "split": "nielsen",
                       "train_images": len(data.train_x)},
            "history": [], "train_seconds": round(time.perf_counter() - t, 3), "eval_seconds": 0.0,
            "images_per_second": None,
            "test_predictions": "".join(map(str, predictions.tolist())),
            "environment": environment(resolve_device("cpu"))}


def _write_run(out: Path, result: dict) -> None:
    """metrics.json last: its presence means the run is complete (Snakemake's output)."""
    import torch

    from .train import atomic_write

    weights = result.pop("final_model", None)
    if weights is not None:
        atomic_write(out / "model.pt", lambda tmp: torch.save(weights, tmp))
    write_json(out / "metrics.json", result)
    (out / "checkpoint.pt").unlink(missing_ok=True)


COMMANDS = {"recipes": cmd_recipes, "train": cmd_train}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="mnistbench", description="Replicate the classic MNIST results of Nielsen's "
                     "book and the PyTorch articles.")
    parser.add_argument("--version", action="version", version=f"mnistbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("recipes", help="list every recipe with its published accuracy")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("train", help="train one run of a recipe and write DIR/metrics.json")
    p.add_argument("--recipe", required=True, help="recipe id (see 'mnistbench recipes')")
    p.add_argument("--seed", type=int, required=True, help="decides init, data order and dropout")
    p.add_argument("--lr", type=_positive(float), help="learning rate (default: the recipe's)")
    p.add_argument("--epochs", type=_positive(int), help="epochs (default: the recipe's)")
    p.add_argument("--train-subset", type=_positive(int), metavar="N",
                   help="train on the first N images of the split (before expansion)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir", help="MNIST root (default: $MNISTBENCH_DATA_DIR or ./data)")
    p.add_argument("--threads", type=_positive(int), help="CPU threads for torch")
    p.add_argument("--out", required=True, help="run folder for metrics.json, model.pt, checkpoint.pt")
    p.add_argument("--no-checkpoint", action="store_true", help="do not save or resume checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except UsageError as err:
        print(f"mnistbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mnistbench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
