"""Every recipe, end to end through `mnistbench train`'s job (jobs.train_into), against oracles.

Each network recipe trains for two epochs on a handful of images (one and a half mini-batches)
and its run folder is checked against what the published table's prose and PROTOCOLS.md say
(tests/protocol_oracle.py, which imports nothing from mnistbench): the record's resolved
protocol, the images the network was fed (split, subset, pixel values, the expanded copies,
the order rule and the last mini-batch), the initial weights' distributions, the selected
accuracy under the source's rule, and for a few recipes per family the whole epoch's update
(cost and L2 form) and the dropout rule. The test set is cut to its first 200 images so the
wide tutorial's 150-channel net evaluates in a second; the training and validation images are
the real ones. Total: about a minute of one core.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import protocol_oracle as oracle
from mnistbench import data as mnist_data
from mnistbench import jobs
from mnistbench import train as train_module
from mnistbench.recipes import all_recipes, get_recipe

NETWORKS = [r.id for r in all_recipes().values() if r.kind == "network"]
TEST_IMAGES = 200


@pytest.fixture(scope="module")
def raw(data_dir):
    return oracle.raw_mnist(str(data_dir))


@pytest.fixture
def short_test_set(monkeypatch, data_dir):
    """load_mnist as the package reads it, with the test set cut to TEST_IMAGES images."""
    full = mnist_data.load_mnist

    def load(data_dir_arg=None, download=True):
        train_x, train_y, test_x, test_y = full(data_dir_arg, download)
        return train_x, train_y, test_x[:TEST_IMAGES], test_y[:TEST_IMAGES]

    monkeypatch.setattr(mnist_data, "load_mnist", load)


class Spy:
    """Wraps train.create: keeps the initial weights, the model, and every training input."""

    def __init__(self, monkeypatch):
        self.initial, self.models, self.fed = [], [], []
        real = train_module.create

        def create(*args, **kwargs):
            model = real(*args, **kwargs)
            self.initial.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            self.models.append(model)
            inputs = []
            self.fed.append(inputs)
            # training steps run with gradients; evaluation (either test mode) under no_grad
            model.register_forward_pre_hook(
                lambda module, args: inputs.append(args[0].detach().clone()) if torch.is_grad_enabled() else None)
            return model

        monkeypatch.setattr(train_module, "create", create)


def subset_size(protocol: dict) -> int:
    """One and a half mini-batches of training images (after expansion where the recipe expands)."""
    batch = protocol["batch_size"]
    return max(1, (batch + batch // 2) // 5) if protocol["expanded"] else batch + batch // 2


def train_recipe(recipe_id, tmp_path, monkeypatch, seed=1, epochs=2, train_subset=None):
    protocol = oracle.expected_protocol(recipe_id)
    spy = Spy(monkeypatch)
    out = tmp_path / f"{recipe_id}-{seed}"
    jobs.train_into(get_recipe(recipe_id), seed, out, epochs=epochs, device="cpu", threads=1,
                    train_subset=train_subset or subset_size(protocol), checkpoint=False)
    record = json.loads((out / "metrics.json").read_text())
    final = torch.load(out / "model.pt", weights_only=True)
    return protocol, record, spy, final


def oracle_training_set(protocol: dict, raw, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The training images (as the source's pixels) and labels of a run on the first n images."""
    images, labels = raw["train_x"][:n], raw["train_y"][:n]
    if protocol["expanded"]:
        images, labels = oracle.expanded(images), np.repeat(labels, 5)
    return oracle.pixels(images, protocol["pixels"]), labels


def fed_indices(batches, train_x: np.ndarray) -> list[list[int]]:
    """Which oracle training images each fed mini-batch holds (an image fed that is not one of
    them, bit for bit, fails: wrong split, subset, pixel scale or shift)."""
    where = {}
    for i, image in enumerate(train_x):
        where.setdefault(image.tobytes(), i)
    out = []
    for batch in batches:
        rows = []
        for image in batch.contiguous().numpy():
            key = np.ascontiguousarray(image, dtype=np.float32).tobytes()
            assert key in where, "a training image is not one of the protocol's training images " \
                                 "(split, subset, pixel scaling or shifted copies differ)"
            rows.append(where[key])
        out.append(rows)
    return out


def check_order(protocol, batches_per_epoch, n, epochs):
    batch = protocol["batch_size"]
    steps = n // batch if protocol["drop_last"] else -(-n // batch)
    sizes = [[len(b) for b in epoch] for epoch in batches_per_epoch]
    expected_sizes = [batch] * (n // batch) + ([] if protocol["drop_last"] or n % batch == 0 else [n % batch])
    assert sizes == [expected_sizes] * epochs, (
        f"mini-batch sizes {sizes}: expected {expected_sizes} per epoch "
        f"({'last partial batch dropped' if protocol['drop_last'] else 'last partial batch kept'})")
    assert len(expected_sizes) == steps
    orders = [[i for b in epoch for i in b] for epoch in batches_per_epoch]
    if protocol["order"] == "stored":
        if protocol["expanded_shuffled_once"]:
            assert orders[0] == orders[1], "network3 reads its (once shuffled) file in the same order every epoch"
        else:
            assert orders == [list(range(steps * batch))] * epochs, "network3 never shuffles: batch i is images 10i..10i+9"
    else:
        for order in orders:
            assert sorted(order) == list(range(n)), "an epoch must visit every training image once"
        assert orders[0] != orders[1], "the training data must be reshuffled every epoch"


@pytest.mark.parametrize("recipe_id", NETWORKS)
def test_recipe_run_follows_its_published_protocol(recipe_id, tmp_path, monkeypatch, raw, short_test_set):
    protocol, record, spy, final = train_recipe(recipe_id, tmp_path, monkeypatch)
    cfg = record["config"]
    n = subset_size(protocol) * (5 if protocol["expanded"] else 1)

    # the resolved protocol, as recorded
    assert (cfg["split"], cfg["scaling"]) == (protocol["split"], protocol["pixels"]), "split or pixels"
    assert cfg["shuffle"] == (protocol["order"] == "reshuffled"), "data order rule"
    assert cfg["drop_last"] == protocol["drop_last"], "drop-last rule"
    assert cfg["expand"] == protocol["expanded"] and cfg["train_images"] == n, "expanded training data"
    assert (cfg["selection"], cfg["selection_split"]) == protocol["selection"], "selection rule"
    assert cfg["test_mode"] == protocol["test_mode"], "test-time mode"
    assert cfg["dropout_masks"] == protocol["masks"], "dropout mask policy"
    assert (cfg["lr"], cfg["momentum"], cfg["batch_size"]) == (protocol["lr"], protocol["momentum"],
                                                              protocol["batch_size"])
    coefficient, on_biases = oracle.l2_step_terms(protocol["l2"], n, protocol["batch_size"])
    assert cfg["weight_decay"] == pytest.approx(coefficient, rel=1e-12), f"L2 form {protocol['l2']}"
    if coefficient:
        assert cfg["decay"] == ("all" if on_biases else "weights"), "which parameters L2 decays"

    # the images fed, in the order the source's rule gives
    train_x, _ = oracle_training_set(protocol, raw, subset_size(protocol))
    steps = len(spy.fed[0]) // 2
    batches = fed_indices(spy.fed[0], train_x)
    check_order(protocol, [batches[:steps], batches[steps:]], n, epochs=2)

    # the initial weights
    oracle.check_init(protocol["init"], oracle.layers_of(spy.initial[0]))

    # the selected number, by the source's rule on the run's own history
    assert (record["selected_accuracy"], record["selected_epoch"]) == oracle.select(
        record["history"], *protocol["selection"]), "selection rule applied to the run's history"
    assert len(record["history"]) == 2 and all("val_accuracy" in h for h in record["history"]) == (
        protocol["split"] == "nielsen"), "validation is measured exactly on the book's split"
    if protocol["test_mode"] == "train":
        assert all("test_accuracy_eval_mode" in h for h in record["history"])


def row_set(images: np.ndarray) -> np.ndarray:
    """The images as a sorted array of byte strings: equal for two orders of the same images."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return np.sort(flat.view(np.dtype((np.void, flat.shape[1] * flat.itemsize))).ravel())


def check_split(recipe_id, raw):
    """load_data's tensors for a recipe are the oracle's: boundaries, pixels, no expansion of
    validation or test."""
    protocol = oracle.expected_protocol(recipe_id)
    data = train_module.load_data(get_recipe(recipe_id).with_overrides(train_subset=None))
    size = protocol["split_size"]
    if protocol["expanded"]:
        return data, protocol
    pixels = protocol["pixels"]
    assert np.array_equal(data.train_x.numpy(), oracle.pixels(raw["train_x"][:size], pixels)), \
        f"training images: not the first {size:,} official training images as {pixels} pixels"
    assert np.array_equal(data.train_y.numpy(), raw["train_y"][:size]), "training labels"
    if protocol["split"] == "nielsen":
        assert np.array_equal(data.val_x.numpy(), oracle.pixels(raw["train_x"][50_000:], pixels)), \
            f"validation images: not the last 10,000 official training images as {pixels} pixels"
        assert np.array_equal(data.val_y.numpy(), raw["train_y"][50_000:]), "validation labels"
    else:
        assert data.val_x is None, "the official split has no validation set"
    assert np.array_equal(data.test_x.numpy(), oracle.pixels(raw["test_x"], pixels)), \
        f"test images: not the official test set as {pixels} pixels"
    assert np.array_equal(data.test_y.numpy(), raw["test_y"]), "test labels"
    return data, protocol


@pytest.mark.parametrize("recipe_id", ["nielsen_ch1_fc30", "nielsen_ch6_dbl_conv", "seed_relu",
                                       "seed_relu_wd01_normalized"])
def test_split_boundaries_and_pixels_of_the_whole_data(recipe_id, raw, data_dir):
    check_split(recipe_id, raw)


@pytest.mark.parametrize("recipe_id", ["nielsen_ch6_expanded", "seed_relu_extended"])
def test_expanded_data_on_real_images_with_ink_on_the_edge(recipe_id, raw, data_dir):
    """load_data's path for the expanded recipes, on the first 12,353 images, which hold digits
    touching each edge: every shifted copy fills the uncovered line with black (never wraps,
    never keeps the old line); the book's file is shuffled once (the same for every run), the
    articles' copies stay in place; validation and test are not expanded."""
    protocol = oracle.expected_protocol(recipe_id)
    n = max(oracle.INK_ON_EDGE.values()) + 1
    data = train_module.load_data(get_recipe(recipe_id).with_overrides(train_subset=n))
    expected_x, expected_y = oracle_training_set(protocol, raw, n)
    got_x = data.train_x.numpy()
    assert got_x.shape == expected_x.shape
    if protocol["expanded_shuffled_once"]:
        assert np.array_equal(row_set(got_x), row_set(expected_x)), \
            "the expanded images are not the five black-filled copies of each image"
        assert not np.array_equal(got_x, expected_x), "the book's expanded file is shuffled (once)"
        again = train_module.load_data(get_recipe(recipe_id).with_overrides(train_subset=n))
        assert torch.equal(again.train_x, data.train_x), "every run reads the same shuffled file"
        assert np.array_equal(np.sort(data.train_y.numpy()), np.sort(expected_y))
    else:
        assert np.array_equal(got_x, expected_x), "the articles' extended data: five black-filled copies in place"
        assert np.array_equal(data.train_y.numpy(), expected_y)
    for where, index in oracle.INK_ON_EDGE.items():
        copies = oracle.expanded(raw["train_x"][index:index + 1])
        assert len({c.tobytes() for c in copies}) == 5, f"image {index} must touch {where}"
    assert len(data.test_x) == 10_000 and (data.val_x is None or len(data.val_x) == 10_000)


def test_every_expanded_recipe_takes_the_expanded_path(raw, data_dir):
    """Each recipe whose published training set is 5x its split loads five black-filled copies."""
    for recipe in all_recipes().values():
        if recipe.kind != "network":
            continue
        protocol = oracle.expected_protocol(recipe.id)
        data = train_module.load_data(recipe.with_overrides(train_subset=20))
        expected_x, _ = oracle_training_set(protocol, raw, 20)
        got = data.train_x.numpy()
        assert got.shape == expected_x.shape, f"{recipe.id}: {len(got)} training images"
        assert np.array_equal(row_set(got), row_set(expected_x)), recipe.id


# --- one epoch's arithmetic: cost, L2 form and update, from the observed initial weights and order


def fc_logits(layers, x, activation, hidden_activation=True):
    act = {"sigmoid": torch.sigmoid, "relu": torch.relu}[activation]
    features, fcs = oracle.conv_features(layers, x, activation)
    for i, (w, b) in enumerate(fcs):
        features = features @ w.T + b
        if i < len(fcs) - 1 and hidden_activation:
            features = act(features)
    return features


@pytest.mark.parametrize("recipe_id", ["nielsen_ch1_fc30", "nielsen_ch3_fc30_ce_l2", "nielsen_ch3_overfit_1000_l2",
                                       "nielsen_ch6_fc100", "nielsen_ch6_dbl_conv_relu", "seed_dense_mse",
                                       "seed_relu_wd01"])
def test_one_epoch_follows_the_sources_cost_and_l2(recipe_id, tmp_path, monkeypatch, raw, short_test_set):
    """The run's final weights are the oracle's SGD (its cost, its L2 form, momentum where the
    source had it) from the run's own initial weights over the images the run was fed."""
    protocol, record, spy, final = train_recipe(recipe_id, tmp_path, monkeypatch, epochs=1)
    check_one_epoch(recipe_id, protocol, record["config"]["train_images"], spy, final, raw)


def test_momentum_is_torch_sgds(tmp_path, monkeypatch, raw, short_test_set):
    """The tutorials' torch.optim.SGD(momentum=0.9): v <- 0.9 v + g, w <- w - lr v (no dampening,
    no Nesterov), on a net without dropout (the tutorials' own nets drop units)."""
    protocol = {**oracle.expected_protocol("seed_dense_mse"), "momentum": 0.9}
    spy = Spy(monkeypatch)
    recipe = get_recipe("seed_dense_mse").with_overrides(momentum=0.9, epochs=1, train_subset=25)
    result = train_module.train(recipe, seed=1, device="cpu")
    check_one_epoch("seed_dense_mse with momentum 0.9", protocol, 25, spy, result["final_model"], raw)


def check_one_epoch(what, protocol, n, spy, final, raw):
    """The final weights against the oracle's SGD over the mini-batches the run was fed."""
    train_x, train_y = oracle_training_set(protocol, raw, n // (5 if protocol["expanded"] else 1))
    batches = fed_indices(spy.fed[0], train_x)
    params = [p.clone().requires_grad_() for layer in oracle.layers_of(spy.initial[0]) for p in layer]
    velocity = [torch.zeros_like(p) for p in params]
    coefficient, on_biases = oracle.l2_step_terms(protocol["l2"], n, protocol["batch_size"])
    for index in batches:
        x, y = torch.from_numpy(train_x[index]), torch.from_numpy(train_y[index].astype(np.int64))
        layers = list(zip(params[0::2], params[1::2]))
        loss = oracle.cost(protocol["cost"], fc_logits(layers, x, protocol["activation"]), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                is_bias = i % 2 == 1
                g = g + (coefficient * p if (not is_bias or on_biases) else 0)
                velocity[i] = protocol["momentum"] * velocity[i] + g
                p -= protocol["lr"] * velocity[i]
    got = [p for layer in oracle.layers_of(final) for p in layer]
    assert len(got) == len(params)
    for mine, expected in zip(got, params):
        torch.testing.assert_close(mine.contiguous(), expected.detach(), rtol=1e-4, atol=2e-5,
                                   msg=lambda m: f"{what}: weights after one epoch differ from the "
                                                 f"source's cost/L2/SGD: {m}")


# --- dropout: where, how much, how scaled, which masks are shared


def linear_inputs(model, x):
    """The input each nn.Linear of the model sees in one training-mode forward."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().flatten(1)))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def observed_masks(model, layers, x, arch) -> list[torch.Tensor]:
    """For each fc layer: its observed input divided by what the previous layer produced."""
    inputs = linear_inputs(model, x)
    padding = 2 if arch == "wide" else 0
    features, fcs = oracle.conv_features(layers, x, "relu", padding)
    before = [features]
    for i, (w, b) in enumerate(fcs[:-1]):
        z = inputs[i] @ w.T + b
        before.append(z if arch == "no hidden activation" else torch.relu(z))
    ratios = []
    for seen, pre in zip(inputs, before):
        # a unit near zero shows float32 rounding (a kernel's summation order differs by CPU),
        # not a mask: only units well above the rounding of their layer's sums are read
        live = pre.abs() > 1e-4 * pre.abs().amax()
        ratio = torch.full_like(pre, float("nan"))
        ratio[live] = seen[live] / pre[live]
        ratios.append(ratio)
    return ratios


def same_masks(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two observed masks drop the same units, where both show it (a unit that the
    previous layer left at zero shows no mask)."""
    live = ~a.isnan() & ~b.isnan()
    assert live.sum() > 100
    return torch.equal(a[live].abs() < 1e-4, b[live].abs() < 1e-4)


@pytest.mark.parametrize("recipe_id", ["nielsen_ch6_dropout", "nielsen_ch6_dropout_independent_masks",
                                       "seed_final", "tutorial_cnn_wide", "tutorial_cnn_nll"])
def test_dropout_rule(recipe_id, tmp_path, monkeypatch, raw, short_test_set):
    protocol, record, spy, _ = train_recipe(recipe_id, tmp_path, monkeypatch, epochs=1)
    rule = protocol["dropout"]
    model = spy.models[0]
    layers = oracle.layers_of(model.state_dict())
    x = spy.fed[0][0]
    arch = "wide" if recipe_id == "tutorial_cnn_wide" else (
        "no hidden activation" if recipe_id == "tutorial_cnn_nll" else "")
    ratios = observed_masks(model, layers, x, arch)
    keep_scale = 1.0 if rule["style"] == "book" else 1 / (1 - rule["p"])
    for i, ratio in enumerate(ratios):
        values = ratio[~ratio.isnan()]
        if i not in rule["layers"]:
            assert torch.allclose(values, torch.ones_like(values), atol=1e-4), f"fc layer {i}: no dropout expected"
            continue
        dropped = values.abs() < 1e-4
        kept = (values - keep_scale).abs() < 1e-3 * keep_scale
        assert bool((dropped | kept).all()), f"fc layer {i}: kept inputs must be scaled by {keep_scale}"
        assert abs(dropped.double().mean().item() - rule["p"]) < 0.08, f"fc layer {i}: drop rate"
        if rule["style"] == "channels":  # Dropout2d: whole channels of the last conv block
            per_channel = ratio.view(len(ratio), -1, 16)
            for image in per_channel:
                for channel in image:
                    values = channel[~channel.isnan()]
                    assert len(values) == 0 or (values.max() - values.min()) < 1e-3, "one mask per channel"
    # at test time: the book scales the inputs of dropout layers by (1 - p); nn.Dropout does nothing
    model.eval()
    with torch.no_grad():
        got = model(x)
    padding = 2 if arch == "wide" else 0
    features, fcs = oracle.conv_features(layers, x, "relu", padding)
    for i, (w, b) in enumerate(fcs):
        if i in rule["layers"] and rule["style"] == "book":
            features = features * (1 - rule["p"])
        features = features @ w.T + b
        if i < len(fcs) - 1 and arch != "no hidden activation":
            features = torch.relu(features)
    torch.testing.assert_close(got, features, rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{recipe_id}: test-time dropout scaling: {m}")
    if recipe_id.startswith("nielsen_ch6_dropout"):
        # network3 seeds every dropout layer's stream with one constant: equal-shaped masks (the
        # 1000-wide inputs of fc2 and the softmax layer) are equal, and every run draws the same.
        same_layers = same_masks(ratios[1], ratios[2])
        assert same_layers == (protocol["masks"] == "shared"), "fc2 and softmax masks shared?"
        _, _, other, _ = train_recipe(recipe_id, tmp_path, monkeypatch, seed=2, epochs=1)
        model2 = other.models[0]
        ratios2 = observed_masks(model2, oracle.layers_of(model2.state_dict()), x, arch)
        same_runs = same_masks(ratios[0], ratios2[0])
        assert same_runs == (protocol["masks"] == "shared"), "masks shared by every run?"


def test_darkness_baseline_through_the_job_is_the_books_2225(tmp_path, raw):
    """mnist_average_darkness.py, from the raw bytes: each digit's mean total ink over the book's
    50,000 training images; a test image gets the digit whose mean is closest. The book prints
    2,225 of 10,000 right; the job's record must say 22.25 with the same guesses."""
    ink = raw["train_x"][:50_000].reshape(50_000, -1).sum(1, dtype=np.int64)
    means = np.array([ink[raw["train_y"][:50_000] == d].mean() for d in range(10)])
    test_ink = raw["test_x"].reshape(10_000, -1).sum(1, dtype=np.int64)
    guesses = np.abs(test_ink[:, None] - means[None, :]).argmin(1)
    assert (guesses == raw["test_y"]).sum() == 2225
    out = tmp_path / "darkness"
    record = jobs.train_into(get_recipe("nielsen_ch1_darkness"), 1, out, device="cpu", checkpoint=False)
    assert record["selected_accuracy"] == 22.25 and record["status"] == "finished"
    assert record["test_predictions"] == "".join(map(str, guesses))
