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

from ganops.nets.common import Arch, Defaults, ModelSpecError, NetConfig, activation, conv_out, dropout, same_conv

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


def defaults(resolution: int) -> Defaults:
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
    for i, (cin, cout) in enumerate(zip(widths, outs)):
        last = i == len(widths) - 1
        if i < UPSAMPLINGS:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers.append(same_conv(cin, cout, cfg.kernel_size, bias=last))
        if not last:
            layers += [nn.BatchNorm2d(cout), activation(act)]
    layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def discriminator(cfg: NetConfig) -> tuple[nn.Module, int]:
    _, size, _ = cfg.image_shape
    k, widths = cfg.kernel_size, cfg.d_widths
    cin = cfg.d_in_channels
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        stride = 1 if i == len(widths) - 1 and len(widths) > 1 else 2
        # Never normalise D's first layer (DCGAN paper): it would erase the input's statistics.
        norm = cfg.d_norm == "batch" and i > 0
        if stride == 1:
            layers.append(same_conv(cin, w, k, bias=not norm))
        else:
            size = conv_out(size, k, 2, (k - 1) // 2)
            if size < 1:
                raise ModelSpecError(
                    f"spec.model.d_widths: {len(widths)} convs with kernel_size {k} shrink "
                    f"{cfg.image_shape[1]}x{cfg.image_shape[1]} images to nothing; use fewer widths"
                )
            layers.append(nn.Conv2d(cin, w, k, 2, (k - 1) // 2, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(w))
        layers += [activation("leaky_relu"), *dropout(cfg.d_dropout)]
        cin = w
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), cin * size * size


ARCH = Arch("deep", RESOLUTIONS, defaults, generator, discriminator)
