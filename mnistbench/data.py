"""MNIST as tensors: loading, the two splits, pixel scaling and the shifted-copy expansion.

Everything is loaded once into memory (60,000 + 10,000 images are 55 MB as float32) and
moved to the training device, so the training loop indexes tensors instead of running a
DataLoader with per-sample PIL transforms.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

# The mean and std the PyTorch articles normalise with (PROTOCOLS.md).
ARTICLE_MEAN, ARTICLE_STD = 0.1305, 0.3081

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Training images of each split: the book trains on the first 50,000 and validates on the last
# 10,000 of the official 60,000; the articles train on all 60,000.
SPLIT_SIZE = {"nielsen": 50_000, "official": 60_000}
NIELSEN_TRAIN_SIZE = SPLIT_SIZE["nielsen"]
# The book's expand_mnist.py shuffles the 250,000 images once, into one file that every run
# reads in the same order. We model that file with one fixed shuffle, independent of the run seed.
EXPANSION_SHUFFLE_SEED = 0


class DataError(Exception):
    """MNIST is missing, corrupted or asked for in a way the data cannot satisfy."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, then $MNISTBENCH_DATA_DIR, then ./data."""
    return Path(data_dir or os.environ.get("MNISTBENCH_DATA_DIR") or "data")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _missing_files_message(raw: Path) -> str:
    names = ", ".join(MNIST_FILES)
    return (
        f"MNIST not found in {raw} and it could not be downloaded. Put the four official files "
        f"({names}) into {raw}/, set MNISTBENCH_MNIST_MIRROR to a folder holding them (copied "
        f"from there), or point --data-dir / MNISTBENCH_DATA_DIR at a folder that has them under "
        f"MNIST/raw/."
    )


@functools.lru_cache(maxsize=4)
def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True):
    """The official MNIST as uint8 tensors: (train_images, train_labels, test_images, test_labels).

    torchvision finds the four .gz archives in <data_dir>/MNIST/raw/, checks their md5 sums and
    unpacks them; with download=True it fetches whatever is missing (and with the files already
    in place it never touches the network). $MNISTBENCH_MNIST_MIRROR names a local folder holding
    the .gz files, copied from before anything is downloaded: how offline machines and CI "download".
    Several jobs may start at once on a fresh data folder: one fetches, the others wait for it.
    """
    root = resolve_data_dir(data_dir)
    with _exclusive(root / "MNIST" / ".lock"):
        return _load_mnist(root, download)


@contextlib.contextmanager
def _exclusive(lock: Path):
    """Hold a POSIX lock on `lock` (also honoured across the nodes of an NFS share); without
    the right to create it (a read-only folder), nobody can be writing there: go on unlocked."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        yield


def _load_mnist(root: Path, download: bool):
    from torchvision.datasets import MNIST  # imported here: the CLI starts faster without it

    raw = root / "MNIST" / "raw"
    mirror = os.environ.get("MNISTBENCH_MNIST_MIRROR")
    if mirror and download:  # a local folder with the .gz files: "download" by copying
        for name in MNIST_FILES:
            if not (raw / name).exists() and (Path(mirror) / name).exists():
                raw.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(mirror) / name, raw / name)
    # A present but damaged archive must not be silently re-downloaded over (or, offline,
    # reported as "missing"): check the md5 sums of what is there first.
    for name, md5 in MNIST_FILES.items():
        archive = raw / name
        if archive.exists() and _md5(archive) != md5:
            raise DataError(
                f"{archive} is corrupted or truncated (md5 {_md5(archive)}, expected {md5}); "
                f"delete it and copy or download it again."
            )
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError, EOFError) as err:
        if all((raw / name).exists() for name in MNIST_FILES):
            raise DataError(f"MNIST files in {raw} could not be read ({err}); delete the "
                            f"unpacked files next to the .gz archives and try again.") from None
        raise DataError(_missing_files_message(raw)) from None
    tensors = (train.data, train.targets, test.data, test.targets)
    expected = [(60_000, 28, 28), (60_000,), (10_000, 28, 28), (10_000,)]
    if [tuple(t.shape) for t in tensors] != expected or int(train.targets.max()) > 9:
        raise DataError(f"MNIST files in {raw} have unexpected shapes; they are corrupted.")
    return tensors


@dataclass
class Splits:
    """Training, validation (None for the official split) and test data, ready for a model."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device) -> "Splits":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Splits(*(move(t) for t in (self.train_x, self.train_y, self.val_x, self.val_y,
                                          self.test_x, self.test_y)))


# Pixel scalings: uint8 pixel k -> float. The book's mnist.pkl.gz stores k/256 (largest value
# 255/256); torchvision's ToTensor(), which every published article number used, gives k/255;
# "normalized" is the articles' repository after 2019-09-15 (ToTensor, then Normalize), a variant.
PIXEL_SCALINGS = {
    "k/256": "k/256, in [0, 255/256] (the book's mnist.pkl.gz)",
    "k/255": "k/255, in [0, 1] (torchvision's ToTensor())",
    "normalized": f"ToTensor(), then normalised with mean {ARTICLE_MEAN}, sd {ARTICLE_STD}",
}


def scale(images: torch.Tensor, scaling: str) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in one of PIXEL_SCALINGS."""
    if scaling == "k/256":
        return images.float().div_(256).unsqueeze(1)
    x = images.float().div_(255).unsqueeze(1)
    if scaling == "normalized":
        x = x.sub_(ARTICLE_MEAN).div_(ARTICLE_STD)
    elif scaling != "k/255":
        raise ValueError(f"unknown pixel scaling {scaling!r}; one of {', '.join(PIXEL_SCALINGS)}")
    return x


def shifted_copies(x: torch.Tensor) -> torch.Tensor:
    """Each image followed by its four one-pixel shifts (down, up, right, left), black fill.

    x is [N, H, W] uint8 pixels; the result is [5N, H, W] with the five versions of image i at
    rows 5i..5i+4. The row or column that a shift uncovers is set to pixel 0 (black), as both
    sources do: the book shifts its [0, 1] arrays, the articles their ToTensor() images. Shifting
    before scaling keeps the fill black under every scaling (after normalisation, black is
    -mean/sd, not 0).
    """
    down = torch.zeros_like(x)
    down[..., 1:, :] = x[..., :-1, :]
    up = torch.zeros_like(x)
    up[..., :-1, :] = x[..., 1:, :]
    right = torch.zeros_like(x)
    right[..., :, 1:] = x[..., :, :-1]
    left = torch.zeros_like(x)
    left[..., :, :-1] = x[..., :, 1:]
    return torch.stack([x, down, up, right, left], dim=1).flatten(0, 1)


def make_splits(split: str, scaling: str, expand: bool = False, train_subset: int | None = None,
                shuffle_expanded: bool = False, data_dir=None, download: bool = True) -> Splits:
    """Build the tensors a recipe trains and evaluates on.

    split: "nielsen" (first 50,000 train / last 10,000 validation / official test) or
    "official" (60,000 train / official test, no validation).
    scaling: one of PIXEL_SCALINGS.
    train_subset: use only the first N training images of the split (before expansion).
    expand: append the four shifted copies of every training image (5x the images).
    shuffle_expanded: shuffle the expanded set once, with a fixed seed (the book's file).
    """
    train_images, train_labels, test_images, test_labels = load_mnist(
        None if data_dir is None else str(data_dir), download)
    if split == "nielsen":
        tx, ty = train_images[:NIELSEN_TRAIN_SIZE], train_labels[:NIELSEN_TRAIN_SIZE]
        vx, vy = scale(train_images[NIELSEN_TRAIN_SIZE:], scaling), train_labels[NIELSEN_TRAIN_SIZE:]
    elif split == "official":
        tx, ty, vx, vy = train_images, train_labels, None, None
    else:
        raise ValueError(f"unknown split {split!r}")
    if train_subset is not None:
        if not 1 <= train_subset <= len(tx):
            raise DataError(f"--train-subset must be between 1 and {len(tx)} for the {split} "
                            f"split, got {train_subset}")
        tx, ty = tx[:train_subset], ty[:train_subset]
    if expand:
        tx, ty = shifted_copies(tx), ty.repeat_interleave(5)
        if shuffle_expanded:
            order = torch.randperm(len(tx), generator=torch.Generator().manual_seed(EXPANSION_SHUFFLE_SEED))
            tx, ty = tx[order], ty[order]
    tx = scale(tx, scaling)
    return Splits(tx, ty.long(), vx, None if vy is None else vy.long(),
                  scale(test_images, scaling), test_labels.long())
