"""Demo architectures. Both take digits as (samples, 64) floats in [0, 1]."""

from __future__ import annotations

from torch import nn


def digits_mlp(
    hidden: tuple[int, ...] | list[int] = (256, 128), classes: int = 10
) -> nn.Sequential:
    """A multi-layer perceptron for 8x8 digits."""
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def digits_cnn(
    channels: tuple[int, int] | list[int] = (16, 32), classes: int = 10
) -> nn.Sequential:
    """A small convolutional network for 8x8 digits."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 16, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


FACTORIES = {
    "mlp": "ci_compress.demo.models:digits_mlp",
    "cnn": "ci_compress.demo.models:digits_cnn",
}
