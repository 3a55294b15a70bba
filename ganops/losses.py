"""GAN objectives, by name.

Each objective maps D's raw logits to a D loss and a G loss. D sees real and fake in one
DDP forward (one all-reduce per D step; see ``ganops.train.step``), so ``d_loss`` takes
both halves of that pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class GANLoss:
    name: str
    d_loss: Callable[[Tensor, Tensor, float], Tensor]
    """(real_logits, fake_logits, label_smoothing) -> D loss."""
    g_loss: Callable[[Tensor], Tensor]
    """fake_logits -> G loss."""
    gradient_penalty: bool = False
    probabilistic: bool = False
    """D's output is log-odds (bce, minimax): sigmoid(logit) is the probability "real"."""


def _bce_d(real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    # One-sided label smoothing: only the real targets move (Salimans et al. 2016).
    real_t = torch.full_like(real, 1.0 - smoothing)
    return F.binary_cross_entropy_with_logits(real, real_t) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )


def _bce_g_nonsaturating(fake: Tensor) -> Tensor:
    # maximize log D(G(z)) instead of minimizing log(1 - D(G(z))): strong early gradients.
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _minimax_g(fake: Tensor) -> Tensor:
    # The original objective (Goodfellow 2014): minimize log(1 - D(G(z))) = -softplus(logit).
    return -F.softplus(fake).mean()


def _hinge_d(real: Tensor, fake: Tensor, _smoothing: float) -> Tensor:  # smoothing: bce/minimax/lsgan only
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def _wgan_d(real: Tensor, fake: Tensor, _smoothing: float) -> Tensor:
    return fake.mean() - real.mean()


def _lsgan_d(real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    return 0.5 * ((real - (1.0 - smoothing)) ** 2).mean() + 0.5 * (fake**2).mean()


def _lsgan_g(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1.0) ** 2).mean()


LOSSES: dict[str, GANLoss] = {
    "bce": GANLoss("bce", _bce_d, _bce_g_nonsaturating, probabilistic=True),
    "minimax": GANLoss("minimax", _bce_d, _minimax_g, probabilistic=True),
    "hinge": GANLoss("hinge", _hinge_d, _hinge_g),
    "wgan_gp": GANLoss("wgan_gp", _wgan_d, _hinge_g, gradient_penalty=True),
    "lsgan": GANLoss("lsgan", _lsgan_d, _lsgan_g),
}


def get_loss(name: str) -> GANLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None


def interpolates(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """Points ``alpha * real + (1 - alpha) * fake`` between real and fake samples (WGAN-GP);
    ``alpha``: one weight in [0, 1) per sample, shape [N]."""
    a = alpha.view(-1, *([1] * (real.dim() - 1)))
    return (a * real + (1 - a) * fake).requires_grad_(True)


def gradient_penalty(logits: Tensor, inputs: Tensor) -> Tensor:
    """(||grad_x D(x)||_2 - 1)^2 at the interpolates; ``logits`` must come from ``inputs``.

    ``autograd.grad`` with ``inputs`` only touches the input, so no parameter hooks (and no
    DDP all-reduce) fire until the final backward of the total D loss.
    """
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def gradient_sq_norm(logits: Tensor, inputs: Tensor) -> Tensor:
    """E ||grad_x D(x)||^2 over the samples: R1 at real inputs, R2 at fake ones (Mescheder
    et al. 2018; StyleGAN2's r1_penalty). Like ``gradient_penalty``, touches only the inputs."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()
