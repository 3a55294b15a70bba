"""DCGAN (Radford et al. 2016) at the sizes of the classic tutorials.

28x28 follows the TensorFlow DCGAN tutorial (MNIST): Linear -> 7x7x256, transposed convs
256 -> 128 (stride 1) -> 64 -> C, LeakyReLU in G; D without BatchNorm but with dropout.
32x32 (CIFAR-10, SVHN) and 64x64 follow pytorch/examples: Linear -> 4x4x512 and stride-2
transposed convs only, ReLU in G; D with BatchNorm after every conv but the first.

G has one transposed conv per width (w_i -> w_{i+1}, the last -> C). Enough of them are
stride 2 to double the start size up to H; any extra ones come first, at stride 1.
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

_DEFAULTS = {
    28: Defaults((256, 128, 64), (64, 128), "leaky_relu", "none", 0.3, 0.0),
    32: Defaults((512, 256, 128), (64, 128, 256), "relu", "batch", 0.0, 0.0),
    64: Defaults((512, 256, 128, 64), (64, 128, 256, 512), "relu", "batch", 0.0, 0.0),
}


def defaults(resolution: int) -> Defaults:
    return _DEFAULTS[resolution]


def _up(cin: int, cout: int, k: int, stride: int, bias: bool) -> nn.Module:
    if stride == 1 and k % 2 == 0:
        # A stride-1 transposed conv with an even kernel cannot keep the size (output_padding
        # must be < stride); it is a plain conv anyway, so use one with 'same' padding.
        return same_conv(cin, cout, k, bias=bias)
    pad = (k - 1) // 2
    # (in - 1) * s - 2 * pad + k + out_pad == in * s: 1 for odd kernels at stride 2, else 0.
    out_pad = stride - k + 2 * pad if stride > 1 else 0
    return nn.ConvTranspose2d(cin, cout, k, stride, pad, output_padding=out_pad, bias=bias)


def generator(cfg: NetConfig) -> nn.Module:
    c, h, _ = cfg.image_shape
    start = 7 if h == 28 else 4
    ups = (h // start).bit_length() - 1  # log2: 2 at 28, 3 at 32, 4 at 64
    widths = cfg.g_widths
    if len(widths) < ups:
        raise ModelSpecError(
            f"spec.model.g_widths: dcgan at {h}x{h} needs at least {ups} widths "
            f"(one per doubling from {start}x{start}), got {list(widths)}"
        )
    act, k = cfg.g_activation, cfg.kernel_size
    layers: list[nn.Module] = [
        # No bias before BatchNorm: its shift replaces it (and the TF tutorial has none).
        nn.Linear(cfg.g_in, start * start * widths[0], bias=False),
        nn.Unflatten(1, (widths[0], start, start)),
        # Per-channel BatchNorm (not per unit as the TF tutorial's Dense + BN): steadier
        # statistics from the small per-worker batches of data-parallel training.
        nn.BatchNorm2d(widths[0]),
        activation(act),
        *dropout(cfg.g_dropout),
    ]
    outs = (*widths[1:], c)
    flat = len(widths) - ups
    for i, (cin, cout) in enumerate(zip(widths, outs, strict=True)):
        last = i == len(widths) - 1
        layers.append(_up(cin, cout, k, 1 if i < flat else 2, bias=last))
        if not last:
            layers += [nn.BatchNorm2d(cout), activation(act), *dropout(cfg.g_dropout)]
    layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def discriminator(cfg: NetConfig) -> tuple[nn.Module, int]:
    return d_stack(cfg, [2] * len(cfg.d_widths))


ARCH = Arch("dcgan", RESOLUTIONS, defaults, generator, discriminator)
