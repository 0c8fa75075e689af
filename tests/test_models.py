import math

import numpy as np
import pytest
import torch

from mnistbench.models import Arch, Dropout, _hash32, build, create
from mnistbench.recipes import all_recipes


def dense(*sizes):
    return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def conv(c_in, c_out, k=5):
    return c_in * c_out * k * k + c_out


# Parameter counts written out from the book's and the articles' layer sizes.
EXPECTED_PARAMETERS = {
    "nielsen_ch1_fc30": dense(784, 30, 10),
    "nielsen_ch1_fc100": dense(784, 100, 10),
    "nielsen_ch3_overfit_1000": dense(784, 30, 10),
    "nielsen_ch3_fc100_ce_l2_60ep": dense(784, 100, 10),
    "nielsen_ch6_fc100": dense(784, 100, 10),
    "nielsen_ch6_basic_conv": conv(1, 20) + dense(20 * 12 * 12, 100, 10),
    "nielsen_ch6_dbl_conv": conv(1, 20) + conv(20, 40) + dense(40 * 4 * 4, 100, 10),
    "nielsen_ch6_expanded_fc300": conv(1, 20) + conv(20, 40) + dense(640, 300, 10),
    "nielsen_ch6_expanded_fc1000": conv(1, 20) + conv(20, 40) + dense(640, 1000, 10),
    "nielsen_ch6_double_fc100": conv(1, 20) + conv(20, 40) + dense(640, 100, 100, 10),
    "nielsen_ch6_double_fc300": conv(1, 20) + conv(20, 40) + dense(640, 300, 300, 10),
    "nielsen_ch6_double_fc1000": conv(1, 20) + conv(20, 40) + dense(640, 1000, 1000, 10),
    "nielsen_ch6_dropout": conv(1, 20) + conv(20, 40) + dense(640, 1000, 1000, 10),
    "seed_dense_mse": dense(784, 100, 10),
    "seed_simple_conv": conv(1, 20) + dense(2880, 100, 10),
    "seed_final": conv(1, 20) + conv(20, 40) + dense(640, 1000, 1000, 10),
    "tutorial_cnn_nll": conv(1, 10) + conv(10, 20) + dense(320, 100, 10),
    "tutorial_cnn_wide": conv(1, 150) + conv(150, 64) + dense(64 * 7 * 7, 1024, 500, 10),
}


@pytest.mark.parametrize("recipe_id", sorted(EXPECTED_PARAMETERS))
def test_parameter_counts_match_the_published_layer_sizes(recipe_id):
    model = build(all_recipes()[recipe_id].arch)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS[recipe_id]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_every_network_recipe_builds():
    for recipe in all_recipes().values():
        if recipe.kind == "network":
            assert create(recipe.arch, recipe.init, seed=0)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_network3_init_follows_the_book():
    model = create(Arch(convs=(20, 40), hidden=(1000,), activation="relu"), "network3", seed=3)
    conv1, conv2 = model[0], model[3]
    fc, softmax = model[7], model[9]
    assert torch.all(softmax.weight == 0) and torch.all(softmax.bias == 0)
    assert conv2.weight.std().item() == pytest.approx(math.sqrt(1 / (40 * 25 / 4)), rel=0.05)
    assert fc.weight.std().item() == pytest.approx(math.sqrt(1 / 1000), rel=0.05)  # sic: n_out
    assert fc.bias.std().item() == pytest.approx(1.0, rel=0.1)
    assert conv1.bias.shape == (20,)


def test_network_and_network2_inits():
    big = create(Arch(hidden=(100,)), "network", seed=1)
    assert big[1].weight.std().item() == pytest.approx(1.0, rel=0.05)
    scaled = create(Arch(hidden=(100,)), "network2", seed=1)
    assert scaled[1].weight.std().item() == pytest.approx(1 / math.sqrt(784), rel=0.05)
    assert scaled[1].bias.std().item() == pytest.approx(1.0, rel=0.2)


def test_the_seed_alone_decides_the_weights():
    arch = Arch(convs=(20,), hidden=(100,))
    a, b, c = (create(arch, "pytorch", s).state_dict() for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


def lowbias32(x: int) -> int:
    """Chris Wellons' lowbias32 (https://nullprogram.com/blog/2018/07/31/), in plain Python."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_matches_the_reference_integer_arithmetic():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**32 - 1, 2**40 + 17]
    assert _hash32(torch.tensor(values)).tolist() == [lowbias32(v) for v in values]


HASH_INPUTS = [0, 1, 2, 7919, 123456789, 0xFFFFFFFF, 2**32 + 5, 2**40 + 3]
HASH_GOLDEN = [0, 1753845952, 3507691905, 2358071405, 2834422664, 1734902346, 1548080446,
               1408362973]
# Indices of the elements kept by Dropout for rng = (stream 987654321, step 41), 2 x 12 elements.
MASK_GOLDEN = {
    ("nielsen", 0.5, None): [0, 2, 7, 9, 12, 13, 15, 22],
    ("inverted", 0.25, (0, 1)): [0, 1, 2, 3],  # Dropout2d: one draw per (sample, channel)
}
# The CUDA cases run where a GPU is visible: the masks must be the CPU's, bit for bit.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_hash32_golden_values(device):
    assert [lowbias32(x) for x in HASH_INPUTS] == HASH_GOLDEN
    hashed = _hash32(torch.tensor(HASH_INPUTS, dtype=torch.int64, device=device))
    assert hashed.tolist() == HASH_GOLDEN


@pytest.mark.parametrize("style, p, mask_dims", list(MASK_GOLDEN), ids=["elementwise", "channels"])
@pytest.mark.parametrize("device", DEVICES)
def test_dropout_mask_golden_values(style, p, mask_dims, device):
    layer = Dropout(p, style, mask_dims).to(device)
    layer.rng[0], layer.rng[1] = 987654321, 41
    shape = (2, 12) if mask_dims is None else (2, 3, 4, 4)
    out = layer(torch.ones(shape, dtype=torch.float64, device=device))
    units = out if mask_dims is None else out[:, :, 0, 0]  # one value per channel
    kept = [i for i, v in enumerate(units.flatten().tolist()) if v != 0]
    assert kept == MASK_GOLDEN[(style, p, mask_dims)]
    # the same mask from the hash in plain Python (float32 rounding of the 32-bit draw included)
    key = lowbias32(lowbias32(987654321) ^ 41)
    draws = [lowbias32(lowbias32(i + key) ^ key) for i in range(units.numel())]
    keep = np.float32(1 - p)
    assert kept == [i for i, d in enumerate(draws) if np.float32(d) * np.float32(2.0**-32) < keep]
    if style == "inverted":
        assert set(units.flatten().tolist()) <= {0.0, 1 / (1 - p)}


def test_nielsen_dropout_drops_inputs_and_scales_at_test_time():
    layer = Dropout(0.5, "nielsen")
    layer.rng[0] = 99
    x = torch.ones(200, 1000)
    first = layer(x)
    assert set(first.unique().tolist()) == {0.0, 1.0}  # no rescaling in training
    assert first.mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(layer(x), first)  # same (stream, step): same mask
    layer.rng[1] += 1
    second = layer(x)
    assert not torch.equal(second, first)
    assert (first * second).mean().item() == pytest.approx(0.25, abs=0.01)  # independent masks
    layer.eval()
    assert torch.equal(layer(x), x * 0.5)


def test_inverted_and_channel_dropout():
    inverted = Dropout(0.25, "inverted")
    out = inverted(torch.ones(100, 400))
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    channel = Dropout(0.5, "inverted", mask_dims=(0, 1))
    out = channel(torch.ones(50, 20, 4, 4))
    per_channel = out.flatten(2)
    assert torch.all(per_channel.min(2).values == per_channel.max(2).values)  # whole channels


def _masks(model, x):
    """The training-time masks of each dropout layer of model on input x, at the current step."""
    masks = []
    # feed each dropout layer ones, so that its output is its mask
    ones = [m.register_forward_pre_hook(lambda m, inp: (torch.ones_like(inp[0]),))
            for m in model if isinstance(m, Dropout)]
    hooks = ones + [m.register_forward_hook(lambda m, inp, out: masks.append(out != 0))
                    for m in model if isinstance(m, Dropout)]
    model.train()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return masks


def test_book_dropout_masks_are_shared_by_runs_and_by_equal_width_layers():
    """network3.dropout_layer seeds Theano's stream with a constant: every run draws the same
    masks, and the two 10 x 1000 masks (inputs of fc2 and of the softmax layer) are equal."""
    from mnistbench.models import advance_dropout
    from mnistbench.recipes import get_recipe

    book, independent = get_recipe("nielsen_ch6_dropout"), get_recipe("nielsen_ch6_dropout_independent_masks")
    x = torch.rand(10, 1, 28, 28)
    runs = [create(book.arch, book.init, seed, book.dropout_masks) for seed in (1, 2)]
    for step in range(3):
        one, two = (_masks(run, x) for run in runs)
        assert len(one) == 3 and [m.shape[1] for m in one] == [640, 1000, 1000]
        assert all(torch.equal(a, b) for a, b in zip(one, two))  # the same in both runs
        assert torch.equal(one[1], one[2])  # fc2's input mask is the softmax input's
        assert not torch.equal(one[0][:, :640], one[1][:, :640])
        for run in runs:
            advance_dropout(run)
    assert not torch.equal(_masks(runs[0], x)[1], one[1])  # a new mask each step
    # the variant: a stream per run and per layer
    a, b = (_masks(create(independent.arch, independent.init, s, independent.dropout_masks), x)
            for s in (1, 2))
    assert not torch.equal(a[1], b[1]) and not torch.equal(a[1], a[2])
    # the runs still differ: their weights come from the seed
    assert not torch.equal(runs[0][0].weight, runs[1][0].weight)


def test_a_dropout_net_needs_a_mask_policy():
    with pytest.raises(ValueError, match="mask policy"):
        create(Arch(hidden=(100,), dropout=0.5), "pytorch", 1, "-")
