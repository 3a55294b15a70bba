"""Fully-connected GAN (the classic MNIST tutorial net): works at any image size.

G: z -> 256 -> 512 -> 1024 (Linear + BatchNorm + LeakyReLU) -> C*H*W -> tanh.
D: flatten -> 1024 -> 512 -> 256 (Linear + LeakyReLU 0.2 + Dropout 0.3) -> features.
"""

from __future__ import annotations

import math

from torch import nn

from ganops.nets.common import Arch, Defaults, NetConfig, activation, d_norm_layer, dropout

_DEFAULTS = Defaults(
    g_widths=(256, 512, 1024),
    d_widths=(1024, 512, 256),
    g_activation="leaky_relu",
    d_norm="none",
    d_dropout=0.3,
    g_dropout=0.0,
)


def defaults(_resolution: int) -> Defaults:
    return _DEFAULTS  # the same net at every size: only the first/last layer's width changes


def generator(cfg: NetConfig) -> nn.Module:
    layers: list[nn.Module] = []
    width = cfg.g_in
    for w in cfg.g_widths:
        # No bias: BatchNorm's shift replaces it.
        layers += [nn.Linear(width, w, bias=False), nn.BatchNorm1d(w), activation(cfg.g_activation)]
        layers += dropout(cfg.g_dropout)
        width = w
    layers += [nn.Linear(width, math.prod(cfg.image_shape)), nn.Tanh(), nn.Unflatten(1, cfg.image_shape)]
    return nn.Sequential(*layers)


def discriminator(cfg: NetConfig) -> tuple[nn.Module, int]:
    _, h, w = cfg.image_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = cfg.d_in_channels * h * w
    for i, out in enumerate(cfg.d_widths):
        # Never normalise D's first layer (DCGAN paper): it would erase the input's statistics.
        norm = cfg.d_norm != "none" and i > 0
        layers.append(nn.Linear(width, out, bias=not norm))
        if norm:
            layers.append(d_norm_layer(cfg.d_norm, out, spatial=False))
        layers += [activation("leaky_relu"), *dropout(cfg.d_dropout)]
        width = out
    return nn.Sequential(*layers), width


ARCH = Arch("mlp", None, defaults, generator, discriminator)
