"""Generators and discriminators, by `spec.model.arch`.

    G = build_generator(spec.model, (1, 28, 28), num_classes=10)
    x = G(z, y)                      # z: [N, latent_dim], y: LongTensor[N] when conditional
    logits = build_discriminator(spec.model, (1, 28, 28), 10)(x, y)   # [N], no sigmoid

Fields of `spec.model` left as None take the arch's default for the image size.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from ganops.nets import dcgan, deep, mlp, resnet
from ganops.nets.common import (
    Arch,
    Discriminator,
    Generator,
    ModelSpecError,
    NetConfig,
    init_dcgan_,
    init_xavier_,
    resolve,
    spectral_norm_,
)  # fmt: skip
from ganops.spec.models import ModelSpec

__all__ = [
    "ARCHS",
    "Discriminator",
    "Generator",
    "ModelSpecError",
    "NetConfig",
    "build_discriminator",
    "build_generator",
    "default_widths",
    "get_arch",
    "resolve_config",
]

_Net = TypeVar("_Net", bound=nn.Module)

ARCHS: dict[str, Arch] = {a.name: a for a in (mlp.ARCH, dcgan.ARCH, deep.ARCH, resnet.ARCH)}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise KeyError(f"spec.model.arch: unknown arch {name!r}; valid: {', '.join(ARCHS)}") from None


def default_widths(arch: str, resolution: int) -> tuple[list[int], list[int]]:
    """(g_widths, d_widths) that `arch` uses at `resolution` x `resolution` when the spec sets none."""
    a = get_arch(arch)
    a.check_shape((1, resolution, resolution))
    d = a.defaults(resolution)
    return list(d.g_widths), list(d.d_widths)


def resolve_config(model: ModelSpec, image_shape: tuple[int, int, int], num_classes: int | None) -> NetConfig:
    """The spec with every default filled in for this data: worth printing and logging."""
    return resolve(get_arch(model.arch), model, image_shape, num_classes)


def _init(net: _Net, cfg: NetConfig) -> _Net:
    if cfg.init == "dcgan":
        init_dcgan_(net)
    elif cfg.init == "xavier":
        init_xavier_(net)
    return net  # "default": PyTorch's own init


def build_generator(model: ModelSpec, image_shape: tuple[int, int, int], num_classes: int | None) -> Generator:
    """G: (z [N, latent_dim], y [N] | None) -> images [N, C, H, W] in [-1, 1]."""
    cfg = resolve_config(model, image_shape, num_classes)
    return _init(Generator(get_arch(cfg.arch).generator(cfg), cfg), cfg)


def build_discriminator(model: ModelSpec, image_shape: tuple[int, int, int], num_classes: int | None) -> Discriminator:
    """D: (x [N, C, H, W], y [N] | None) -> raw logits [N]."""
    cfg = resolve_config(model, image_shape, num_classes)
    body, features = get_arch(cfg.arch).discriminator(cfg)
    d = _init(Discriminator(body, features, cfg), cfg)
    if cfg.d_spectral_norm:
        # After init: the parametrisation keeps the initialised weight as its `original`.
        # The label map of concat conditioning is D's input, not one of its layers.
        spectral_norm_(d, skip=d.label_map)
    return d
