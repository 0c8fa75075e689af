"""The articles' ReLU recipes against the articles' training step written out by hand.

`train_and_test_network(net, lr=0.03, wd=0.1)` in the articles is torch.optim.SGD with
`weight_decay` on every parameter (biases too), CrossEntropyLoss on the logits of
conv-relu-pool x2, fc-relu, fc, mini-batches of 10 from a reshuffled loader, pixels k/255. It is
spelled out here without nn.Modules or mnistbench's optimiser, on the order mnistbench drew, so a
run's outcome (the weight-decay-0.1 net's seed 2 never leaves chance, docs/protocols.md) is the
recipe's, not the harness's.
"""
import pytest
import torch
import torch.nn.functional as F

import protocol_oracle

from mnistbench.models import create
from mnistbench.recipes import get_recipe
from mnistbench.train import epoch_order, load_data, train


def articles_logits(params, x):
    conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, out_w, out_b = params
    x = F.max_pool2d(torch.relu(F.conv2d(x, conv1_w, conv1_b)), 2)
    x = F.max_pool2d(torch.relu(F.conv2d(x, conv2_w, conv2_b)), 2)
    return torch.relu(x.flatten(1) @ fc1_w.T + fc1_b) @ out_w.T + out_b


def articles_sgd(params, images, labels, order, lr, weight_decay, batch_size=10):
    for i in range(len(images) // batch_size):
        index = order[i * batch_size:(i + 1) * batch_size]
        loss = F.cross_entropy(articles_logits(params, images[index]), labels[index])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * (g + weight_decay * p)  # torch SGD's weight_decay: on every parameter
    return params


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)  # see tests/test_network3_reference.py
    yield
    torch.set_default_dtype(torch.float32)


def test_weight_decay_net_follows_the_articles_step(float64, data_dir):
    seed, weight_decay = 2, 0.1
    recipe = get_recipe("seed_relu_wd01").with_overrides(epochs=1, train_subset=500)
    assert recipe.weight_decay(500) == weight_decay  # as written, not scaled by the data size
    assert recipe.scaling == "k/255"  # the articles' ToTensor() pixels
    initial = [p.detach().clone().requires_grad_() for p in create(recipe.arch, recipe.init, seed).state_dict().values()]
    protocol_oracle.check_init("torch default", list(zip(initial[0::2], initial[1::2])))
    # the first 500 official training images as ToTensor() gives them, read here (not load_data)
    raw = protocol_oracle.raw_mnist(str(data_dir))
    images = torch.from_numpy(protocol_oracle.pixels(raw["train_x"][:500], "k/255")).double()
    labels = torch.from_numpy(raw["train_y"][:500].astype("int64"))
    data = load_data(recipe, data_dir)
    data.train_x, data.test_x = data.train_x.double(), data.test_x.double()
    order = epoch_order(seed, 1, len(data.train_x), True, "cpu")  # the run's seed-derived choice
    assert sorted(order.tolist()) == list(range(500))  # ...a permutation of every image
    expected = articles_sgd(initial, images, labels, order, recipe.lr, weight_decay)

    got = list(train(recipe, seed=seed, data=data)["final_model"].values())
    assert len(got) == len(expected)
    for mine, articles in zip(got, expected):
        assert mine.dtype == torch.float64
        torch.testing.assert_close(mine.contiguous(), articles.detach(), rtol=1e-9, atol=1e-10)
