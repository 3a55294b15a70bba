"""Shared pieces of the network zoo: resolved settings, the G/D wrappers that handle class
conditioning, layer helpers, and weight init.

Each architecture only builds a *body*: the generator body maps a flat input (z, plus a
class embedding when conditional) to an image, the discriminator body maps an image (plus a
label channel when conditioning by concatenation) to flat features. The wrappers here add
everything conditioning needs, so the three archs stay short and condition the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from ganops.errors import UserError
from ganops.spec.models import ModelSpec

DEFAULT_EMBED_DIM = 50
_T = TypeVar("_T")
DCGAN_INIT_STD = 0.02


class ModelSpecError(UserError, ValueError):
    """A `spec.model` setting the networks cannot be built from; the message names the field.

    A ValueError too, so code that only knows the builders' documented contract can catch it.
    """


@dataclass(frozen=True)
class Defaults:
    """What an arch uses for each `spec.model` field left as None, at one resolution."""

    g_widths: tuple[int, ...]
    d_widths: tuple[int, ...]
    g_activation: str
    d_norm: str
    d_dropout: float
    g_dropout: float
    kernel_size: int = 5
    init: str = "dcgan"
    d_spectral_norm: bool = False


@dataclass(frozen=True)
class NetConfig:
    """A `ModelSpec` with every default resolved for one dataset: what the bodies are built from."""

    arch: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    num_classes: int | None  # None: unconditional (even if the dataset has labels)
    embed_dim: int
    d_conditioning: str
    g_widths: tuple[int, ...]
    d_widths: tuple[int, ...]
    kernel_size: int
    g_activation: str
    d_norm: str
    d_dropout: float
    g_dropout: float
    init: str
    d_spectral_norm: bool
    g_labels: str = "embed"
    """How G's body sees the class: `embed` (a class embedding joined to z) or `body` (the
    body takes y itself, e.g. through conditional BatchNorm)."""

    @property
    def g_in(self) -> int:
        """Width of the generator body's input: z, plus the class embedding when G joins one."""
        joined = self.num_classes is not None and self.g_labels == "embed"
        return self.latent_dim + (self.embed_dim if joined else 0)

    @property
    def d_in_channels(self) -> int:
        """Channels the discriminator body sees: the image, plus one label map for `concat`."""
        concat = self.num_classes is not None and self.d_conditioning == "concat"
        return self.image_shape[0] + (1 if concat else 0)


@dataclass(frozen=True)
class Arch:
    """One registry entry: how to build an architecture's bodies."""

    name: str
    resolutions: tuple[int, ...] | None
    """Square image sizes it supports; None: any (H, W)."""
    defaults: Callable[[int], Defaults]
    """Resolution -> defaults (called only with a supported resolution)."""
    generator: Callable[[NetConfig], nn.Module]
    """(N, cfg.g_in) -> (N, C, H, W) in [-1, 1]."""
    discriminator: Callable[[NetConfig], tuple[nn.Module, int]]
    """-> (body, F): (N, cfg.d_in_channels, H, W) -> (N, F) features."""
    g_labels: str = "embed"
    """`embed`: G's body maps (N, cfg.g_in) to images and the wrapper joins the class
    embedding to z; `body`: the body is called as body(z, y) and conditions itself."""

    def check_shape(self, image_shape: tuple[int, int, int]) -> None:
        c, h, w = image_shape
        if min(c, h, w) < 1:
            raise ModelSpecError(f"image shape {image_shape}: channels, height and width must be positive")
        if self.resolutions is not None and (h != w or h not in self.resolutions):
            sizes = ", ".join(f"{r}x{r}" for r in self.resolutions)
            raise ModelSpecError(
                f"spec.model.arch: '{self.name}' supports {sizes} images, not {h}x{w} "
                "(resize the data, or use arch 'mlp', which takes any size)"
            )


def resolve(arch: Arch, model: ModelSpec, image_shape: tuple[int, int, int], num_classes: int | None) -> NetConfig:
    """Fill the spec's None fields with the arch's defaults and check what the nets need."""
    image_shape = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
    if len(image_shape) != 3:
        raise ModelSpecError(f"image shape must be (C, H, W), got {image_shape}")
    arch.check_shape(image_shape)
    if model.conditional and num_classes is None:
        raise ModelSpecError("spec.model.conditional: needs a labelled dataset (this one has no classes)")
    if model.conditional and num_classes is not None and num_classes < 2:
        raise ModelSpecError(f"spec.model.conditional: needs at least 2 classes, the dataset has {num_classes}")
    d = arch.defaults(image_shape[1])

    def pick(value: _T | None, default: _T) -> _T:
        return default if value is None else value

    cfg = NetConfig(
        arch=arch.name,
        image_shape=image_shape,
        latent_dim=model.latent_dim,
        num_classes=num_classes if model.conditional else None,
        embed_dim=pick(model.embed_dim, DEFAULT_EMBED_DIM),
        d_conditioning=model.d_conditioning,
        g_widths=tuple(pick(model.g_widths, d.g_widths)),
        d_widths=tuple(pick(model.d_widths, d.d_widths)),
        kernel_size=pick(model.kernel_size, d.kernel_size),
        g_activation=pick(model.g_activation, d.g_activation),
        d_norm=pick(model.d_norm, d.d_norm),
        d_dropout=pick(model.d_dropout, d.d_dropout),
        g_dropout=pick(model.g_dropout, d.g_dropout),
        init=pick(model.init, d.init),
        d_spectral_norm=pick(model.d_spectral_norm, d.d_spectral_norm),
        g_labels=arch.g_labels,
    )
    for field in ("g_widths", "d_widths"):
        if not getattr(cfg, field):
            raise ModelSpecError(f"spec.model.{field}: needs at least one width")
    return cfg


# --- layer helpers -------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    # 0.2: the slope of the DCGAN paper and of every tutorial these archs come from.
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise KeyError(f"unknown activation {name!r}; valid: {', '.join(_ACTIVATIONS)}") from None


def d_norm_layer(kind: str, width: int, spatial: bool) -> nn.Module:
    """D's normalisation after a conv (``spatial``) or linear layer.

    `layer` normalises each sample on its own (GroupNorm with one group is LayerNorm over
    C, H and W), so per-sample gradient penalties stay per sample: the WGAN-GP paper's
    choice for its critic. `batch` mixes the samples of a batch.
    """
    if kind == "batch":
        return nn.BatchNorm2d(width) if spatial else nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.GroupNorm(1, width) if spatial else nn.LayerNorm(width)
    raise KeyError(f"unknown d_norm {kind!r}; valid: batch, layer, none")


def dropout(p: float) -> list[nn.Module]:
    # No module at p=0: keeps printed nets and state_dicts free of no-op layers.
    return [nn.Dropout(p)] if p > 0 else []


def same_conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Module:
    """Stride-1 conv that keeps H and W (Keras' padding='same')."""
    if k % 2:
        return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    # Even kernels need one more pixel on one side; padding='same' would do it too, but with
    # a warning and a padded copy on every call.
    lo = (k - 1) // 2
    return nn.Sequential(nn.ZeroPad2d((lo, k - 1 - lo, lo, k - 1 - lo)), nn.Conv2d(cin, cout, k, bias=bias))


def conv_out(size: int, k: int, stride: int, padding: int) -> int:
    """Output size of a Conv2d along one axis (0 when the input is too small for the kernel)."""
    return max((size + 2 * padding - k) // stride + 1, 0)


def d_stack(cfg: NetConfig, strides: list[int]) -> tuple[nn.Module, int]:
    """D's conv stack, one block per width: conv (stride 2, or 'same' at stride 1),
    BatchNorm when asked (never on the first block), LeakyReLU 0.2, dropout; then flatten.

    Returns the stack and its flattened feature size.
    """
    _, size, _ = cfg.image_shape
    k, cin = cfg.kernel_size, cfg.d_in_channels
    layers: list[nn.Module] = []
    for i, (w, stride) in enumerate(zip(cfg.d_widths, strides, strict=True)):
        # Never normalise D's first layer (DCGAN paper): it would erase the input's statistics.
        norm = cfg.d_norm != "none" and i > 0
        if stride == 1:
            layers.append(same_conv(cin, w, k, bias=not norm))
        else:
            size = conv_out(size, k, stride, (k - 1) // 2)
            if size < 1:
                raise ModelSpecError(
                    f"spec.model.d_widths: {len(cfg.d_widths)} convs with kernel_size {k} shrink "
                    f"{cfg.image_shape[1]}x{cfg.image_shape[1]} images to nothing; use fewer widths"
                )
            layers.append(nn.Conv2d(cin, w, k, stride, (k - 1) // 2, bias=not norm))
        if norm:
            layers.append(d_norm_layer(cfg.d_norm, w, spatial=True))
        layers += [activation("leaky_relu"), *dropout(cfg.d_dropout)]
        cin = w
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), cin * size * size


# --- conditioning --------------------------------------------------------------------


def _labels(y: Tensor | None, n: int, who: str) -> Tensor:
    if y is None:
        raise ValueError(f"this {who} is class-conditional: call it with labels y (LongTensor of shape [N])")
    if y.dim() != 1 or y.size(0) != n:
        raise ValueError(f"{who} labels y must have shape [{n}], got {list(y.shape)}")
    return y


class LabelMap(nn.Module):
    """Class -> one H x W plane, stacked onto D's input (the conditional-GAN tutorials' way)."""

    def __init__(self, num_classes: int, embed_dim: int, height: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.to_map = nn.Linear(embed_dim, height * width)
        self.shape = (1, height, width)

    def forward(self, y: Tensor) -> Tensor:
        return self.to_map(self.embed(y)).view(-1, *self.shape)


class Generator(nn.Module):
    """z (and y) -> image in [-1, 1]; prepends a class embedding to z when conditional."""

    def __init__(self, body: nn.Module, cfg: NetConfig) -> None:
        super().__init__()
        self.config = cfg
        self.latent_dim = cfg.latent_dim
        self.num_classes = cfg.num_classes
        self.image_shape = cfg.image_shape
        joins = cfg.num_classes is not None and cfg.g_labels == "embed"
        # Only created when used: DDP fails on parameters that get no gradient.
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim) if joins else None
        self.body_takes_labels = cfg.num_classes is not None and cfg.g_labels == "body"
        self.body = body

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Unconditional generators ignore y, so a loop can pass the labels it has either way."""
        if z.dim() != 2 or z.size(1) != self.latent_dim:
            raise ValueError(f"generator expects z of shape [N, {self.latent_dim}], got {list(z.shape)}")
        if self.body_takes_labels:
            return self.body(z, _labels(y, z.size(0), "generator"))
        if self.embed is not None:
            z = torch.cat([z, self.embed(_labels(y, z.size(0), "generator"))], dim=1)
        return self.body(z)


class Discriminator(nn.Module):
    """image (and y) -> one raw logit per sample (no sigmoid: the losses take logits)."""

    def __init__(self, body: nn.Module, features: int, cfg: NetConfig) -> None:
        super().__init__()
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.image_shape = cfg.image_shape
        conditioning = cfg.d_conditioning if cfg.num_classes is not None else None
        _, h, w = cfg.image_shape
        self.label_map = LabelMap(cfg.num_classes, cfg.embed_dim, h, w) if conditioning == "concat" else None
        self.body = body
        self.linear = nn.Linear(features, 1)
        self.project: nn.Embedding | None = None
        if conditioning == "projection":
            # Projection discriminator (Miyato & Koyama 2018): logit += <embed(y), h>. Glorot
            # init as in their code; N(0, 1) over thousands of features would start D saturated.
            self.project = nn.Embedding(cfg.num_classes, features)
            nn.init.xavier_uniform_(self.project.weight)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Unconditional discriminators ignore y."""
        if self.num_classes is not None:
            y = _labels(y, x.size(0), "discriminator")
        if self.label_map is not None:
            x = torch.cat([x, self.label_map(y)], dim=1)
        h = self.body(x)
        logit = self.linear(h).squeeze(1)
        if self.project is not None:
            logit = logit + (self.project(y) * h).sum(dim=1)
        return logit


# --- init and spectral norm ----------------------------------------------------------

_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # LayerNorm/GroupNorm keep PyTorch's (1, 0) init


def init_dcgan_(net: nn.Module) -> nn.Module:
    """DCGAN paper init: weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), biases 0.

    Embeddings keep their own init: G's label embedding stays N(0, 1) so the class is as
    loud as z, the projection embedding keeps Glorot (see Discriminator).
    """
    for m in net.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.normal_(m.weight, 0.0, DCGAN_INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and m.affine:  # conditional BatchNorm's own BN has no affine
            nn.init.normal_(m.weight, 1.0, DCGAN_INIT_STD)
            nn.init.zeros_(m.bias)
    return net


def init_xavier_(net: nn.Module) -> nn.Module:
    """Glorot-uniform weights, as the SNGAN code (Miyato et al.; Mimicry) initialises its
    ResNets: gain `init_gain` where a layer sets one (sqrt 2 in the residual branches,
    which ReLUs follow), else 1. Biases, norms and embeddings keep their own init, as there.
    """
    for m in net.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.xavier_uniform_(m.weight, getattr(m, "init_gain", 1.0))
    return net


_SPECTRAL = (nn.Linear, nn.Conv2d, nn.Embedding)


def spectral_norm_(net: nn.Module, skip: nn.Module | None = None) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every linear, conv and embedding layer
    of `net` but those inside `skip`: W / sigma(W), sigma estimated by one power iteration
    per training forward. PyTorch's parametrisation, so `weight` stays a computed tensor,
    the state_dict keeps `original` and the power iteration's u and v (a resumed run
    continues the same estimate), and R1's double backward runs through it.
    """
    skipped = set(skip.modules()) if skip is not None else set()
    for m in list(net.modules()):
        if isinstance(m, _SPECTRAL) and m not in skipped:
            nn.utils.parametrizations.spectral_norm(m)
    return net
