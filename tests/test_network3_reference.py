"""The chapter-6 recipes against network3's update rule written out by hand.

network3.py (Theano) is spelled out here without nn.Modules, optimisers or mnistbench's loss
table: conv-pool layers add their bias after pooling, the cost is the mean log-likelihood plus
0.5 * lmbda * sum(w**2) / num_training_batches, and plain SGD walks the mini-batches in order.
mnistbench's run must follow the same trajectory from the same initial weights (checked against
network3's stated distributions) over the book's images read independently of mnistbench.
"""
import pytest
import torch
import torch.nn.functional as F

import protocol_oracle

from mnistbench.models import create
from mnistbench.recipes import get_recipe
from mnistbench.train import load_data, train

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


def network3_cost(layers, x, y, activation, lmbda, num_batches):
    for w, b in layers[:-1]:
        if w.dim() == 4:  # ConvPoolLayer: activation(max_pool(conv(x, w)) + b)
            x = activation(F.max_pool2d(F.conv2d(x, w), 2) + b[None, :, None, None])
        else:  # FullyConnectedLayer
            x = activation(x.flatten(1) @ w.T + b)
    w, b = layers[-1]  # SoftmaxLayer
    log_likelihood = torch.log_softmax(x @ w.T + b, dim=1)[torch.arange(len(y)), y].mean()
    l2 = sum((w**2).sum() for w, _ in layers)
    return -log_likelihood + 0.5 * lmbda * l2 / num_batches


def network3_sgd(layers, images, labels, eta, activation, lmbda, batch_size=10):
    num_batches = len(images) // batch_size
    params = [p for layer in layers for p in layer]
    for i in range(num_batches):  # network3 never shuffles
        x, y = images[i * batch_size:(i + 1) * batch_size], labels[i * batch_size:(i + 1) * batch_size]
        grads = torch.autograd.grad(network3_cost(layers, x, y, activation, lmbda, num_batches), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= eta * g
    return params


@pytest.fixture
def float64():
    """Both sides in float64. In float32 the two add in different orders, and over 50 steps a
    ReLU net can turn a rounding difference into a flipped unit or pooling choice (measured:
    1e-3 apart with k/256 pixels, 1e-7 with k/255); in float64 any real difference stands out."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def check_recipe_follows_network3(recipe_id, l2, data_dir):
    recipe = get_recipe(recipe_id).with_overrides(epochs=1, train_subset=500)
    assert recipe.l2 == l2  # the published lmbda, scaled by network3's 1/num_training_batches
    initial = [p.detach().clone().requires_grad_() for p in create(recipe.arch, recipe.init, 3).state_dict().values()]
    layers = list(zip(initial[0::2], initial[1::2]))
    protocol_oracle.check_init("network3", [(w.detach(), b.detach()) for w, b in layers])
    # the book's first 500 training images as mnist.pkl.gz stores them (k/256), read here, so a
    # wrong split or pixel scale in load_data cannot agree with the expected trajectory
    raw = protocol_oracle.raw_mnist(str(data_dir))
    book_x = torch.from_numpy(protocol_oracle.pixels(raw["train_x"][:500], "k/256")).double()
    book_y = torch.from_numpy(raw["train_y"][:500].astype("int64"))
    data = load_data(recipe, data_dir)
    data.train_x, data.val_x, data.test_x = data.train_x.double(), data.val_x.double(), data.test_x.double()
    expected = network3_sgd(layers, book_x, book_y, recipe.lr, ACTIVATIONS[recipe.arch.activation], l2)

    result = train(recipe, seed=3, data=data)
    got = list(result["final_model"].values())
    assert len(got) == len(expected)
    for mine, book in zip(got, expected):
        assert mine.dtype == torch.float64
        torch.testing.assert_close(mine.contiguous(), book.detach(), rtol=1e-9, atol=1e-10)


def test_basic_conv_follows_network3(float64, data_dir):
    check_recipe_follows_network3("nielsen_ch6_basic_conv", l2=0.0, data_dir=data_dir)


def test_double_conv_relu_with_l2_follows_network3(float64, data_dir):
    check_recipe_follows_network3("nielsen_ch6_dbl_conv_relu", l2=0.1, data_dir=data_dir)
