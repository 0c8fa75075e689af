"""Test oracles: what each source's protocol decides, written from the sources' own descriptions.

Nothing here imports mnistbench. The raw MNIST bytes are read with gzip + numpy (not
torchvision), the expected protocol of every recipe is read from the *prose* columns of the
published table (the columns a person reads, not the typed ones recipes.py reads) plus the
rules of /work/shared/reference/PROTOCOLS.md and docs/protocols.md written out below, and the
costs, L2 forms, shifts, forwards and selection rules are a few lines of numpy or plain torch.
Where mnistbench derives a choice from its counter-based seeds (which images an epoch visits
first, which units a dropout mask drops), the oracle takes the observed choice as an input and
checks everything else about it (a permutation of all images, masks of the right rate, ...).
"""

from __future__ import annotations

import csv
import gzip
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "mnistbench" / "published_results.csv"

# --- the raw data -------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def raw_mnist(data_dir: str) -> dict[str, np.ndarray]:
    """The four IDX files as uint8 arrays, parsed by hand (magic, sizes, then the bytes)."""
    out = {}
    for name, key in [("train-images-idx3-ubyte.gz", "train_x"), ("train-labels-idx1-ubyte.gz", "train_y"),
                      ("t10k-images-idx3-ubyte.gz", "test_x"), ("t10k-labels-idx1-ubyte.gz", "test_y")]:
        data = gzip.open(Path(data_dir) / "MNIST" / "raw" / name).read()
        dims = data[3]
        shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
        out[key] = np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
    return out


# mnist.pkl.gz (the book) stores k/256; ToTensor() (articles, tutorials) divides by 255 in
# float32; the articles' repository since 2019-09-15 then applies Normalize(0.1305, 0.3081),
# (x - mean) / sd in float32.
def pixels(images: np.ndarray, scaling: str) -> np.ndarray:
    k = images.astype(np.float32)
    if scaling == "k/256":
        value = k / np.float32(256)
    elif scaling == "k/255":
        value = k / np.float32(255)
    else:
        assert scaling == "normalized", scaling
        value = (k / np.float32(255) - np.float32(0.1305)) / np.float32(0.3081)
    return value[:, None]


def shifted_with_black(image: np.ndarray) -> list[np.ndarray]:
    """expand_mnist.py: the image, then shifted down, up, right, left by one pixel; the row or
    column that the shift uncovers is black (the book rolls, then zeroes the wrapped line)."""
    down, up, right, left = (np.zeros_like(image) for _ in range(4))
    down[1:] = image[:-1]
    up[:-1] = image[1:]
    right[:, 1:] = image[:, :-1]
    left[:, :-1] = image[:, 1:]
    return [image, down, up, right, left]


def expanded(images: np.ndarray) -> np.ndarray:
    return np.stack([copy for image in images for copy in shifted_with_black(image)])


# Real training images with ink on the edge row or column that a shift uncovers (found by
# scanning the official training set: MNIST's 20x20 boxes rarely touch the border). With ink
# there, a shift that wraps or leaves the old line in place differs from one that fills black.
INK_ON_EDGE = {"row 0": 12352, "row 27": 71, "column 0": 1322, "column 27": 615}


# --- what the published table and PROTOCOLS.md say each recipe does --------------------------

def code_of(recipe_id: str) -> str:
    """Which code produced the number: the book's chapters map to its three programs."""
    for prefix, code in [("nielsen_ch1", "network"), ("nielsen_ch3", "network2"),
                         ("nielsen_ch6", "network3"), ("seed_", "articles"), ("tutorial_", "tutorial")]:
        if recipe_id.startswith(prefix):
            return code
    raise KeyError(recipe_id)


# The named variants change one reading of their base row (docs/protocols.md, "Variants").
VARIANTS = {
    "seed_relu_wd01_normalized": ("seed_relu_wd01", {"pixels": "normalized"}),
    "nielsen_ch6_dropout_independent_masks": ("nielsen_ch6_dropout", {"masks": "independent"}),
    "nielsen_ch3_fc100_ce_l2_60ep_large_init": ("nielsen_ch3_fc100_ce_l2_60ep", {"init": "N(0,1)"}),
    "nielsen_ch1_fc30_k255": ("nielsen_ch1_fc30", {"pixels": "k/255"}),
}

# Which fully connected layers (0 = the first) get dropout on their inputs, and its style.
# network3: "0.5 on inputs of fc1 fc2 softmax", no rescaling in training, x(1-p) at test time.
# seed_final: "drop | fc1000 | drop | fc1000 | drop | out10", nn.Dropout (1/(1-p) in training).
# tutorial_cnn_wide: "fc 3136-1024 | drop | fc 1024-500 | drop | fc 500-10", nn.Dropout.
# tutorial_cnn_nll: Dropout2d(0.25) after the conv blocks: whole channels, 1/(1-p) in training.
DROPOUT = {
    "nielsen_ch6_dropout": dict(p=0.5, layers={0, 1, 2}, style="book"),
    "seed_final": dict(p=0.5, layers={0, 1, 2}, style="inverted"),
    "seed_final_lr005": dict(p=0.5, layers={0, 1, 2}, style="inverted"),
    "tutorial_cnn_wide": dict(p=0.5, layers={1, 2}, style="inverted"),
    "tutorial_cnn_nll": dict(p=0.25, layers={0}, style="channels"),
}


def table_rows() -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in csv.DictReader(TABLE.open())}


def expected_protocol(recipe_id: str) -> dict:
    """The protocol of a recipe as the sources state it, from the table's prose columns."""
    base, changes = VARIANTS.get(recipe_id, (recipe_id, {}))
    row = table_rows()[base]
    code = code_of(base)
    book = code in ("network", "network2", "network3")
    split_size = 50_000 if book else 60_000
    images = int(row["train_images"])
    l2 = row["l2"]
    if l2 in ("0", ""):
        l2_form = ("none", 0.0)
    elif l2.startswith("weight_decay"):
        l2_form = ("torch weight_decay on all parameters", float(l2.split()[1]))
    elif code == "network2":
        l2_form = ("lambda/n on weights", float(l2))
    else:
        l2_form = ("lambda/num_batches on weights", float(l2))
    selection = row["selection"]
    if selection.startswith("peak"):
        rule = ("peak", row["reported_split"])
    elif "best-validation epoch" in selection:
        rule = ("best_validation", "test")
    else:
        assert selection.startswith("final"), selection
        rule = ("final", "test")
    init = {"network": "N(0,1)", "network3": "network3", "articles": "torch default",
            "tutorial": "torch default"}.get(code)
    if code == "network2":
        init = "N(0,1)" if "(N(0;1) init)" in row["network"] else "weights N(0,1/sqrt(n_in))"
    dropout = DROPOUT.get(base)
    protocol = dict(
        code=code, split="nielsen" if book else "official", split_size=split_size,
        pixels="k/256" if book else "k/255",
        # network.py and network2.py shuffle every epoch; network3.py never does (its expanded
        # file was shuffled once by expand_mnist.py); the articles' and tutorials' DataLoaders
        # use shuffle=True. network3 runs size // mini_batch batches; DataLoaders and
        # network.py's slices keep the last, smaller one.
        order="stored" if code == "network3" else "reshuffled", drop_last=code == "network3",
        expanded=images > split_size, expanded_shuffled_once=code == "network3" and images > split_size,
        train_subset=images if images < split_size else None,
        init=init, cost=row["cost"], l2=l2_form, selection=rule,
        dropout=dropout, masks="shared" if base == "nielsen_ch6_dropout" else ("-" if not dropout else "independent"),
        # PROTOCOLS.md: the wide tutorial's notebook never calls net.eval().
        test_mode="train" if base == "tutorial_cnn_wide" else "eval",
        lr=float(row["lr"]), momentum=float(row["momentum"]), batch_size=int(row["mini_batch"]),
        activation=row["activation"],
    )
    if "masks" in changes:
        protocol["masks"] = changes["masks"]
    return {**protocol, **{k: v for k, v in changes.items() if k != "masks"}}


# --- costs, L2 and selection ----------------------------------------------------------------


def one_hot(y: torch.Tensor) -> torch.Tensor:
    return torch.eye(10, dtype=torch.float32)[y]


def cost(name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The source's cost of a mini-batch, from the network's last pre-activations z."""
    if name == "quadratic":  # network.py: 0.5 ||a - y||^2, averaged over the mini-batch
        return (0.5 * (torch.sigmoid(z) - one_hot(y)) ** 2).sum(1).mean()
    if name == "MSELoss on one-hot":  # nn.MSELoss: mean over the batch and the 10 outputs
        return ((torch.sigmoid(z) - one_hot(y)) ** 2).mean()
    if name == "cross-entropy":  # network2.py: -[y ln a + (1-y) ln(1-a)] summed over outputs
        a = torch.sigmoid(z)
        return -(one_hot(y) * torch.log(a) + (1 - one_hot(y)) * torch.log(1 - a)).sum(1).mean()
    if name in ("log-likelihood", "CrossEntropyLoss", "NLL on log_softmax"):
        return -(z - torch.logsumexp(z, 1, keepdim=True))[torch.arange(len(y)), y].mean()
    raise KeyError(name)


def l2_step_terms(l2_form: tuple[str, float], n_train: int, batch_size: int) -> tuple[float, bool]:
    """(coefficient c added to a parameter's gradient as c * w, whether biases get it too)."""
    form, value = l2_form
    if form == "none":
        return 0.0, False
    if form == "lambda/n on weights":  # network2: w <- (1 - eta lambda / n) w - ...
        return value / n_train, False
    if form == "lambda/num_batches on weights":  # network3: cost + 0.5 lambda sum(w^2) / batches
        return value / (n_train // batch_size), False
    return value, True  # torch.optim.SGD(weight_decay=...) decays every parameter


def select(history: list[dict], rule: str, split: str) -> tuple[float, int]:
    """network.py/network2.py print every epoch and the book quotes the peak; network3.py
    measures test accuracy whenever validation accuracy is >= the best so far and reports the
    last such; the articles and tutorials report the last epoch."""
    if rule == "final":
        return history[-1]["test_accuracy"], history[-1]["epoch"]
    if rule == "peak":
        key = "test_accuracy" if split == "test" else "val_accuracy"
        best = history[0]
        for h in history[1:]:
            if h[key] > best[key]:
                best = h
        return best[key], best["epoch"]
    best_val, chosen = -math.inf, None
    for h in history:
        if h["val_accuracy"] >= best_val:
            best_val, chosen = h["val_accuracy"], h
    return chosen["test_accuracy"], chosen["epoch"]


# --- initial weights --------------------------------------------------------------------------


def check_init(init: str, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Statistical checks of the initial weights and biases against the stated distribution.
    Tolerances: 6 standard errors of a sample sd (sqrt(1/(2N))), at least 25% for tiny layers."""

    def sd_close(values: torch.Tensor, sd: float, what: str) -> None:
        n = values.numel()
        tolerance = max(6 / math.sqrt(2 * n), 0.25 if n < 100 else 0.0)
        got = values.double().std().item()
        assert abs(got / sd - 1) < tolerance, f"{what}: sd {got:.4g}, expected {sd:.4g} ({init})"
        assert abs(values.double().mean().item()) < 6 * sd / math.sqrt(n) + 1e-12, f"{what}: mean not 0"

    biases = []
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        fan_in = w[0].numel()
        if init == "N(0,1)":
            sd_close(w, 1.0, f"layer {i} weights")
        elif init == "weights N(0,1/sqrt(n_in))":
            sd_close(w, 1 / math.sqrt(fan_in), f"layer {i} weights")
        elif init == "network3":
            if last:  # SoftmaxLayer: W and b zeros
                assert not w.any() and not b.any(), "network3's softmax layer starts at zero"
                continue
            n_out = w.shape[0] * w[0, 0].numel() / 4 if w.dim() == 4 else w.shape[0]  # sic: n_out
            sd_close(w, math.sqrt(1 / n_out), f"layer {i} weights")
        elif init == "torch default":  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(fan_in)
            for values, what in ((w, "weights"), (b, "biases")):
                assert values.abs().max() <= bound + 1e-7, f"layer {i} {what} beyond U(+-1/sqrt(fan_in))"
                if values.numel() >= 100:
                    sd_close(values, bound / math.sqrt(3), f"layer {i} {what}")
            continue
        biases.append(b.flatten())
    if biases:  # every book scheme draws biases N(0, 1)
        sd_close(torch.cat(biases), 1.0, "biases")


# --- forwards written from the sources' layer descriptions ------------------------------------


def layers_of(state: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) pairs in network order: a state dict lists each layer's weight, then bias."""
    values = [v for k, v in state.items() if k.endswith(("weight", "bias"))]
    return list(zip(values[0::2], values[1::2]))


def conv_features(layers, x, activation, padding=0):
    """ConvPool blocks: act(maxpool2x2(conv5x5(x)) + b); the same as act-then-pool for these
    monotonic activations. Returns the flattened features and the fully connected layers."""
    act = {"sigmoid": torch.sigmoid, "relu": torch.relu}[activation]
    convs = [layer for layer in layers if layer[0].dim() == 4]
    for w, b in convs:
        x = act(F.max_pool2d(F.conv2d(x, w, padding=padding), 2) + b[None, :, None, None])
    return x.flatten(1), layers[len(convs):]
