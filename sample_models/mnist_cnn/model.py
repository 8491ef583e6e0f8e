"""The trained MNIST CNN of `digit-recognizer-py` 0.1.0 (MIT), in plain PyTorch.

Layer names match the package's state_dict (`conv_layers.N`, `fc_layers.N`) so its
weights load strictly. Input: 1x28x28, pixels/255 then normalized with mean 0.1307,
std 0.3081 (white digit on black, as in MNIST)."""

import torch
from torch import nn


class MnistCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flatten (not view(size(0), -1)): no traced shape arithmetic for ct.convert
        return self.fc_layers(torch.flatten(self.conv_layers(x), 1))


def build_model() -> MnistCNN:
    return MnistCNN()
