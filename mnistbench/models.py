"""The networks: one builder for every architecture in the published table.

Every network here is "optional 5x5 conv + 2x2 max-pool blocks, then fully connected layers".
`Arch` names the few ways the book, the articles and the tutorials differ, and `build` turns it
into a plain `nn.Sequential` that outputs logits (the output activation lives in the loss).

Dropout masks come from a counter-based hash of (stream, step, element) rather than from
torch's global generator. A mask is then a pure function of the stream and the position in
training, so a run gives the same masks whether it trains alone, stacked with 31 other runs under
torch.func.vmap, or resumed from a checkpoint. The stream is derived from the run seed and the
layer ("independent" masks) or, as in the book's network3.py, from a constant ("shared").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


@dataclass(frozen=True)
class Arch:
    convs: tuple[int, ...] = ()  # output channels of each conv5x5 + maxpool2x2 block
    hidden: tuple[int, ...] = ()  # widths of the hidden fully connected layers
    activation: str = "sigmoid"
    conv_padding: int = 0  # 2 keeps 28x28 ("same"), as in the wide tutorial net
    dropout: float = 0.0  # p of dropping each input of the fully connected layers...
    dropout_from: int = 0  # ...starting at this fc layer (0 = the first fc layer's input)
    dropout_style: str = "nielsen"  # "nielsen": scale by (1-p) at test time; "inverted": by 1/(1-p) in training
    channel_dropout: float = 0.0  # Dropout2d after the conv blocks (the small tutorial net)
    hidden_activation: bool = True  # False: no activation between fc layers (the small tutorial net)

    def flat_size(self) -> int:
        channels, side = 1, 28
        for c in self.convs:
            channels, side = c, (side + 2 * self.conv_padding - 4) // 2
        return channels * side * side


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32 integer hash, on int64 tensors holding 32-bit values."""
    mask = 0xFFFFFFFF
    x = x & mask
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & mask
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & mask
    return x ^ (x >> 16)


class Dropout(nn.Module):
    """Dropout with reproducible, counter-based masks.

    `rng` holds (stream, step): stream is derived from the run seed and the layer, step is the
    optimisation step, advanced by the training loop. mask_dims says which dims get independent
    draws ((0, 1) for Dropout2d's per-channel masks; None for every element).

    style "nielsen" is network3.py's dropout: masks without rescaling in training, activations
    scaled by (1 - p) at test time. This is *not* the same as PyTorch's inverted dropout under
    plain SGD (the effective learning rate of the layer after it differs by (1 - p)^2), so the
    book's recipes use it. style "inverted" is nn.Dropout's: rescale by 1/(1 - p) in training.
    """

    def __init__(self, p: float, style: str = "nielsen", mask_dims: tuple[int, ...] | None = None):
        super().__init__()
        if style not in ("nielsen", "inverted"):
            raise ValueError(f"unknown dropout style {style!r}")
        self.p, self.style, self.mask_dims = p, style, mask_dims
        self.register_buffer("rng", torch.zeros(2, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.p
        if not self.training:
            return x * keep if self.style == "nielsen" else x
        shape = x.shape if self.mask_dims is None else tuple(
            s if d in self.mask_dims else 1 for d, s in enumerate(x.shape))
        key = _hash32(_hash32(self.rng[0]) ^ self.rng[1])
        index = torch.arange(math.prod(shape), device=x.device).view(shape)
        bits = _hash32(_hash32(index + key) ^ key)
        mask = (bits.to(torch.float32) * 2.0**-32 < keep).to(x.dtype)
        return x * mask if self.style == "nielsen" else x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}, style={self.style}"


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that pools channels-last on the CPU: the same numbers, faster.

    torch's CPU kernel for NCHW max-pooling is slow for these small maps; its channels-last
    kernel scans each window in the same order, so outputs, indices and gradients (ties
    included) are bit-identical. train.py keeps conv nets channels-last on the CPU anyway; this
    is for NCHW inputs, as in batched.py, whose vmap sees the layout only through the permutes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        return super().forward(nhwc).contiguous()


def build(arch: Arch) -> nn.Sequential:
    """The network as an nn.Sequential that maps [N, 1, 28, 28] images to [N, 10] logits."""
    act = ACTIVATIONS[arch.activation]
    layers: list[nn.Module] = []
    channels = 1
    for c in arch.convs:
        # Nielsen's ConvPoolLayer computes act(maxpool(conv(x)) + b). The conv bias is constant
        # per channel, so pooling first and activating after is exactly that function (and
        # equals conv -> act -> pool, the articles' order, for monotonic activations).
        layers += [nn.Conv2d(channels, c, 5, padding=arch.conv_padding), MaxPool2d(2), act()]
        channels = c
    if arch.channel_dropout:
        layers.append(Dropout(arch.channel_dropout, "inverted", mask_dims=(0, 1)))
    layers.append(nn.Flatten())
    widths = [arch.flat_size(), *arch.hidden, 10]
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if arch.dropout and i >= arch.dropout_from:
            layers.append(Dropout(arch.dropout, arch.dropout_style))
        layers.append(nn.Linear(n_in, n_out))
        if n_out != 10 and arch.hidden_activation:
            layers.append(act())
    return nn.Sequential(*layers)


# network3.dropout_layer seeds each layer's Theano stream with the same constant
# (RandomState(0).randint(999999)), so every run draws the same mask sequence, and two dropout
# layers whose masks have the same shape (the 10 x 1000 inputs of fc2 and of the softmax layer)
# draw the same mask at every step. The "shared" policy models that: one stream per mask width,
# whatever the run seed. (Theano's own random numbers cannot be reproduced in torch; which masks
# are equal to which is what decides the book's behaviour, and that is kept.)
SHARED_MASK_SEED = 999_999
MASK_POLICIES = ("independent", "shared", "-")  # "-": the recipe has no dropout


def seed_dropout(model: nn.Module, seed: int, masks: str = "independent") -> None:
    """Give every dropout layer its mask stream: from the run seed and the layer's position
    ("independent"), or from a constant and the layer's input width ("shared", network3.py)."""
    if masks not in MASK_POLICIES:
        raise ValueError(f"unknown dropout mask policy {masks!r}; one of {', '.join(MASK_POLICIES)}")
    layers = list(model.children()) if isinstance(model, nn.Sequential) else list(model.modules())
    dropouts = [(i, m) for i, m in enumerate(layers) if isinstance(m, Dropout)]
    if masks == "-" and dropouts:
        raise ValueError("a network with dropout needs a mask policy: independent or shared")
    for layer_index, (position, m) in enumerate(dropouts):
        if masks == "shared":
            width = next(x.in_features for x in layers[position:] if isinstance(x, nn.Linear))
            stream = SHARED_MASK_SEED * 7919 + width
        else:
            stream = seed * 7919 + layer_index
        m.rng[0] = int(_hash32(torch.tensor(stream)))
        m.rng[1] = 0


def advance_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.rng[1] += 1


@torch.no_grad()
def init_weights(model: nn.Sequential, scheme: str) -> None:
    """Re-initialise with one of the book's schemes ("pytorch" keeps PyTorch's defaults).

    network:  every weight and bias N(0, 1) (network.py; network2.py's large_weight_initializer).
    network2: weights N(0, 1/sqrt(n_in)), biases N(0, 1) (network2.py's default).
    network3: conv weights N(0, sqrt(1/(filters*25/4))), fc weights N(0, sqrt(1/n_out)) (sic:
              n_out, as in network3.py), biases N(0, 1), the softmax layer all zeros.
    """
    if scheme == "pytorch":
        return
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        if scheme == "network":
            std = 1.0
        elif scheme == "network2":
            std = 1 / math.sqrt(layer.weight.shape[1])
        elif scheme == "network3" and isinstance(layer, nn.Conv2d):
            # n_out of a ConvPoolLayer = filters * 5 * 5 / (2 * 2)
            std = math.sqrt(1 / (layer.out_channels * 25 / 4))
        elif scheme == "network3":
            std = math.sqrt(1 / layer.out_features)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        layer.weight.normal_(0, std)
        layer.bias.normal_(0, 1)
    if scheme == "network3":
        layers[-1].weight.zero_()
        layers[-1].bias.zero_()


def create(arch: Arch, init: str, seed: int, masks: str = "independent") -> nn.Sequential:
    """Build and initialise a network; the seed alone decides its weights (and, with
    independent masks, its dropout masks)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(arch)
        init_weights(model, init)
    seed_dropout(model, seed, masks)
    return model


def decayed_parameters(model: nn.Module, which: str) -> tuple[list, list]:
    """Split parameters into (decayed, not decayed): the book decays weights only, torch all."""
    params = list(model.named_parameters())
    if which == "all":
        return [p for _, p in params], []
    return ([p for n, p in params if n.endswith("weight")],
            [p for n, p in params if not n.endswith("weight")])
