"""Small models sized for CPU training: a LeNet-style MNIST CNN, a tiny MLP, a compact ResNet.

`build_model(name, num_classes, in_shape)` is the one entry point the runner uses; each
constructor takes (num_classes, in_shape) so any task can be paired with any model that fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, GroupNorm (keeps no running stats: non-IID friendly) or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class MnistCNN(nn.Module):
    """conv5x5(16) - pool - conv5x5(32) - pool - fc(64) - fc: ~47k params.

    GroupNorm after each conv (no running stats, so nothing to sync between nodes) keeps training
    stable at the high step sizes thinwire's demos use (SGD lr 0.05, momentum 0.9): >= 98% after
    one epoch of full MNIST. `norm="none"` gives the plain FedAvg-paper style CNN.
    """

    def __init__(self, num_classes: int = 10, in_shape: Sequence[int] = (1, 28, 28),
                 width: int = 16, hidden: int = 64, norm: str = "group") -> None:
        super().__init__()
        c, h, w = check_image_shape("mnist_cnn", in_shape, min_side=12)
        self.conv1 = nn.Sequential(nn.Conv2d(c, width, 5), norm_layer(norm, width))
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 5), norm_layer(norm, 2 * width))
        flat = 2 * width * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        self.fc1 = nn.Linear(flat, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class MLP(nn.Module):
    """Flatten - Linear - ReLU - Linear: for fast tests and the synthetic task."""

    def __init__(self, num_classes: int = 10, in_shape: Sequence[int] = (784,),
                 hidden: int = 32) -> None:
        super().__init__()
        if not in_shape or any(int(s) < 1 for s in in_shape):
            raise ConfigError(f"mlp: in_shape must be positive sizes, got {tuple(in_shape)}")
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)




class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 strided projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3 stages of 16/32/64 channels, `blocks` per stage.

    Depth is 6*blocks+2: blocks=1 is ResNet-8 (~78k params, the CPU default), 3 is ResNet-20.
    """

    def __init__(self, num_classes: int = 10, in_shape: Sequence[int] = (3, 32, 32),
                 blocks: int = 1, width: int = 16, norm: str = "batch") -> None:
        super().__init__()
        c, _, _ = check_image_shape("resnet_cifar", in_shape, min_side=4)
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False),
                                  norm_layer(norm, width), nn.ReLU())
        layers, cin = [], width
        for stage in range(3):
            cout = width * 2 ** stage
            for i in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def check_image_shape(name: str, in_shape: Sequence[int], min_side: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < min_side:
        raise ConfigError(f"{name}: needs image input (C, H, W) with H, W >= {min_side}, got "
                          f"in_shape {shape}; use model 'mlp' for flat inputs")
    return shape  # type: ignore[return-value]


ModelFactory = Callable[[int, Sequence[int]], nn.Module]
MODELS: dict[str, ModelFactory] = {
    "mnist_cnn": MnistCNN,
    "mlp": MLP,
    "resnet_cifar": ResNetCifar,
}


def build_model(name: str, num_classes: int, in_shape: Sequence[int]) -> nn.Module:
    """Instantiate a registered model (or a `pkg.module:factory`, see tasks/user.py) for
    `num_classes` outputs and inputs of `in_shape`."""
    if name not in MODELS and ":" in name:
        from .user import model_from_path

        return model_from_path(name, num_classes, in_shape)
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}"
                          ", or pkg.module:factory")
    if num_classes < 2:
        raise ConfigError(f"{name}: num_classes must be >= 2, got {num_classes}")
    return MODELS[name](num_classes, tuple(in_shape))
