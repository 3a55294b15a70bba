"""The SNGAN ResNets (Miyato et al. 2018) as Mimicry builds them (`nets/sngan/sngan_32.py`,
`sngan_64.py`, `modules/resblocks.py`, `modules/layers.py`), and their class-conditional
BigGAN-style form: conditional BatchNorm in G, a projection discriminator.

G: z -> Linear -> S x S x w0 (S = 4; 7 at 28 px), one up-block per doubling (BN, ReLU,
bilinear x2, 3x3 conv, BN, ReLU, 3x3 conv; a 1x1-conv shortcut on the upsampled input),
then BN, ReLU, 3x3 conv, tanh. Conditional: every BatchNorm of a block takes its gain and
bias from a class embedding (cBN, init gain N(1, 0.02), bias 0); the last BN stays plain.
D: an optimised first down-block (conv, ReLU, conv, avg-pool; shortcut avg-pool then 1x1
conv), then blocks (ReLU, conv, ReLU, conv, avg-pool when downsampling; a 1x1 shortcut
where the shape changes), ReLU, global sum pooling, a linear to one logit (and the
projection <embed(y), h> when conditional). Spectral norm on every D layer, Glorot init
(gain sqrt 2 in the residual branches) as in Mimicry.

Departure: Mimicry's DBlock applies its ReLU in place, so its shortcut sees relu(x); here
the shortcut sees x, as in the SNGAN authors' Chainer code and BigGAN.

Defaults at 32 px are Mimicry's SNGAN-32: G 256 wide (4.28 M parameters at z 128, RGB),
D 128 wide with two downsampling blocks then two plain ones (1.05 M). At 64 px, SNGAN-64:
G 1024 -> 64 (12.2 M), D 64 -> 1024 with every block downsampling (10.1 M). At 28 px
(MNIST), the 32 px nets from a 7 x 7 start (G 4.12 M). `g_widths` = the linear's channels, then one width per up-block (any
extra widths first, as blocks that keep the size); `d_widths`: one width per D block.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganops.nets.common import Arch, Defaults, ModelSpecError, NetConfig, activation

RESOLUTIONS = (28, 32, 64)
# How many of D's blocks halve the size, at each resolution (Mimicry: 2 of 4 at 32 px,
# all 5 at 64 px); the first blocks downsample, the rest keep the size.
_D_DOWNS = {28: 2, 32: 2, 64: 5}
_RESIDUAL_GAIN = math.sqrt(2.0)  # Glorot gain of the convs ReLUs follow (init_xavier_)

_DEFAULTS = {
    28: Defaults((256, 256, 256), (128, 128, 128, 128), "relu", "none", 0.0, 0.0, 3, "xavier", True),
    32: Defaults((256, 256, 256, 256), (128, 128, 128, 128), "relu", "none", 0.0, 0.0, 3, "xavier", True),
    64: Defaults((1024, 512, 256, 128, 64), (64, 128, 256, 512, 1024), "relu", "none", 0.0, 0.0, 3, "xavier", True),
}


def defaults(resolution: int) -> Defaults:
    return _DEFAULTS[resolution]


def _conv(cin: int, cout: int, k: int, gain: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, 1, k // 2)
    conv.init_gain = gain  # type: ignore[assignment]  # read by init_xavier_
    return conv


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose per-channel gain and bias come from the class (de Vries et al. 2017;
    the cBN of SNGAN's projection model and BigGAN, as Mimicry's layers.py builds it)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(num_classes, 2 * channels)
        with torch.no_grad():
            self.embed.weight[:, :channels].normal_(1.0, 0.02)
            self.embed.weight[:, channels:].zero_()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        gain, bias = self.embed(y).view(-1, 2 * self.channels, 1, 1).chunk(2, dim=1)
        return gain * self.bn(x) + bias


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, upsample: bool, cfg: NetConfig) -> None:
        super().__init__()
        k, classes = cfg.kernel_size, cfg.num_classes
        self.upsample = upsample
        self.b1: nn.Module = ConditionalBatchNorm2d(cin, classes) if classes else nn.BatchNorm2d(cin)
        self.b2: nn.Module = ConditionalBatchNorm2d(cout, classes) if classes else nn.BatchNorm2d(cout)
        self.act = activation(cfg.g_activation)
        self.c1 = _conv(cin, cout, k, _RESIDUAL_GAIN)
        self.c2 = _conv(cout, cout, k, _RESIDUAL_GAIN)
        self.c_sc = _conv(cin, cout, 1) if cin != cout or upsample else None
        self.conditional = classes is not None

    def _up(self, x: Tensor) -> Tensor:
        # Bilinear, as Mimicry (the Chainer original unpools to nearest).
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) if self.upsample else x

    def _norm(self, bn: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        return bn(x, y) if self.conditional else bn(x)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.c1(self._up(self.act(self._norm(self.b1, x, y))))
        h = self.c2(self.act(self._norm(self.b2, h, y)))
        return h + (self.c_sc(self._up(x)) if self.c_sc is not None else x)


class Generator(nn.Module):
    """body(z, y): y only when conditional (cBN), else ignored."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        c, h, _ = cfg.image_shape
        self.start = 7 if h == 28 else 4
        ups = (h // self.start).bit_length() - 1
        widths = cfg.g_widths
        if len(widths) < ups + 1:
            raise ModelSpecError(
                f"spec.model.g_widths: resnet at {h}x{h} needs at least {ups + 1} widths (the linear's "
                f"channels, then one per up-block from {self.start}x{self.start}), got {list(widths)}"
            )
        self.linear = nn.Linear(cfg.latent_dim, self.start * self.start * widths[0])
        flat = len(widths) - 1 - ups
        self.blocks = nn.ModuleList(
            GBlock(cin, cout, i >= flat, cfg) for i, (cin, cout) in enumerate(itertools.pairwise(widths))
        )
        self.bn = nn.BatchNorm2d(widths[-1])
        self.act = activation(cfg.g_activation)
        self.out = _conv(widths[-1], c, cfg.kernel_size)
        self.width0 = widths[0]

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.linear(z).view(-1, self.width0, self.start, self.start)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out(self.act(self.bn(h))))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool, k: int, first: bool) -> None:
        super().__init__()
        self.first, self.downsample = first, downsample
        hidden = cout if first else cin  # Mimicry: the optimised block widens at once
        self.c1 = _conv(cin, hidden, k, _RESIDUAL_GAIN)
        self.c2 = _conv(hidden, cout, k, _RESIDUAL_GAIN)
        self.c_sc = _conv(cin, cout, 1) if first or cin != cout or downsample else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        # The optimised first block has no ReLU before its first conv (its input is the image).
        h = self.c2(F.relu(self.c1(x if self.first else F.relu(x))))
        h = self._pool(h)
        if self.c_sc is None:
            return h + x
        # Pool first in the optimised block (as Mimicry: a cheaper 1x1 conv), after elsewhere.
        return h + (self.c_sc(self._pool(x)) if self.first else self._pool(self.c_sc(x)))


class Discriminator(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        _, h, _ = cfg.image_shape
        widths, downs = cfg.d_widths, _D_DOWNS[h]
        ins = (cfg.d_in_channels, *widths[:-1])
        self.blocks = nn.Sequential(
            *(
                DBlock(cin, cout, i < downs, cfg.kernel_size, i == 0)
                for i, (cin, cout) in enumerate(zip(ins, widths, strict=True))
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling


def _check(cfg: NetConfig) -> None:
    for field, value, allowed in (
        ("d_norm", cfg.d_norm, "none"),
        ("d_dropout", cfg.d_dropout, 0.0),
        ("g_dropout", cfg.g_dropout, 0.0),
    ):
        if value != allowed:
            raise ModelSpecError(
                f"spec.model.{field}: resnet has no {field.split('_')[1]} in {'D' if field[0] == 'd' else 'G'} "
                f"(its D is spectrally normalised), got {value!r}"
            )
    if cfg.kernel_size % 2 == 0:
        raise ModelSpecError(
            f"spec.model.kernel_size: resnet's convs keep the size with odd kernels, got {cfg.kernel_size}"
        )


def generator(cfg: NetConfig) -> nn.Module:
    _check(cfg)
    return Generator(cfg)


def discriminator(cfg: NetConfig) -> tuple[nn.Module, int]:
    _check(cfg)
    return Discriminator(cfg), cfg.d_widths[-1]


ARCH = Arch("resnet", RESOLUTIONS, defaults, generator, discriminator, g_labels="body")
