"""The deeper CNN GAN of Rowel Atienza's Keras DCGAN tutorial (trained there with RMSprop).

G: Linear -> (H/4)x(H/4)x256 + BatchNorm + ReLU + Dropout(0.4); then (nearest x2 upsample
+) 5x5 conv -> 128, -> 64 (both upsampled), -> 32, -> C, BatchNorm + ReLU between, tanh.
Upsample + conv instead of transposed convs avoids their checkerboard artefacts.
D: 5x5 convs 64 -> 128 -> 256 -> 512 at strides 2, 2, 2, 1, LeakyReLU 0.2 + Dropout(0.4).

Generalised: G has one conv per width (w_i -> w_{i+1}, the last -> C), the first two after
an upsampling; D's convs are stride 2 except the last (when there is more than one).
"""

from __future__ import annotations

from torch import nn

from ganops.nets.common import (
    Arch,
    Defaults,
    ModelSpecError,
    NetConfig,
    activation,
    d_stack,
    dropout,
    same_conv,
)  # fmt: skip

RESOLUTIONS = (28, 32, 64)
UPSAMPLINGS = 2  # G starts at H/4

_DEFAULTS = Defaults(
    g_widths=(256, 128, 64, 32),
    d_widths=(64, 128, 256, 512),
    g_activation="relu",
    d_norm="none",
    d_dropout=0.4,
    g_dropout=0.4,
)


def defaults(_resolution: int) -> Defaults:
    return _DEFAULTS  # only the start size depends on the resolution


def generator(cfg: NetConfig) -> nn.Module:
    c, h, _ = cfg.image_shape
    widths = cfg.g_widths
    if len(widths) < UPSAMPLINGS:
        raise ModelSpecError(
            f"spec.model.g_widths: deep needs at least {UPSAMPLINGS} widths (one per upsampling), got {list(widths)}"
        )
    start, act = h // 4, cfg.g_activation
    layers: list[nn.Module] = [
        nn.Linear(cfg.g_in, start * start * widths[0], bias=False),  # BatchNorm's shift replaces the bias
        nn.Unflatten(1, (widths[0], start, start)),
        nn.BatchNorm2d(widths[0]),
        activation(act),
        # The tutorial's only dropout in G: noise on the seed feature map.
        *dropout(cfg.g_dropout),
    ]
    outs = (*widths[1:], c)
    for i, (cin, cout) in enumerate(zip(widths, outs, strict=True)):
        last = i == len(widths) - 1
        if i < UPSAMPLINGS:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers.append(same_conv(cin, cout, cfg.kernel_size, bias=last))
        if not last:
            layers += [nn.BatchNorm2d(cout), activation(act)]
    layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def discriminator(cfg: NetConfig) -> tuple[nn.Module, int]:
    # Atienza's D: strides 2, 2, 2, then a last stride-1 conv.
    n = len(cfg.d_widths)
    return d_stack(cfg, [2] * (n - 1) + [1] if n > 1 else [2])


ARCH = Arch("deep", RESOLUTIONS, defaults, generator, discriminator)
