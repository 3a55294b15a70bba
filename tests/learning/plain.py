"""The reference: pytorch/examples' dcgan loop, around ganops' own networks.

One implementation for the benchmarks (``bench/train_throughput.py``, ``bench/quality.py``)
and the learning tests. Per batch, as in ``dcgan/main.py``::

    (1) Update D: D(real) backward, D(G(z).detach()) backward, D step
    (2) Update G: D(G(z)) backward, G step

D sees real and fake in *separate* forward passes, so BatchNorm in D always normalises
one kind of image at a time. Nothing here comes from ``ganops.train`` or ``ganops.losses``:
the objectives are written out below, so the reference cannot share a bug with the code
it judges. ``textbook=True`` is the loop exactly as pytorch/examples has it (BCE with hard
labels, no clipping), whatever the spec says; otherwise the spec's loss, one-sided label
smoothing, gradient penalty and gradient clipping are followed. In every mode
``spec.train.precision: bf16`` runs the forward passes under bfloat16 autocast (the
standard AMP recipe: backward outside it, float32 weights), so a bf16 job is compared
with the same arithmetic.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganops.nets import build_discriminator, build_generator
from ganops.spec.models import GANJobSpec


class PlainGAN:
    """G, D and their optimizers, trained one batch at a time the pytorch/examples way."""

    def __init__(
        self,
        spec: GANJobSpec,
        image_shape: tuple[int, int, int],
        num_classes: int | None,
        device: torch.device,
        init: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
        textbook: bool = False,
        precision: str | None = None,
    ) -> None:
        t = spec.train
        if not textbook and t.d_steps != 1:
            raise ValueError("the plain loop does one D step per G step")
        # ``t.ema_decay`` (not in textbook mode): an exponential moving average of G's weights
        # after each G step (Yazici et al. 2019), with G's BatchNorm statistics; ``sampler`` is
        # then that average, as the ganops step's is, so both sides are judged on what they draw.
        self.spec, self.device, self.textbook = spec, device, textbook
        self.loss = "bce" if textbook else t.loss
        self.num_classes = num_classes if spec.model.conditional else None
        self.latent_dim = spec.model.latent_dim
        self.netG = build_generator(spec.model, image_shape, self.num_classes).to(device)
        self.netD = build_discriminator(spec.model, image_shape, self.num_classes).to(device)
        if init is not None:  # identical starting weights to the side it is compared with
            self.netG.load_state_dict(init[0])
            self.netD.load_state_dict(init[1])
        self.ema_decay = None if textbook else t.ema_decay
        self.netG_ema = copy.deepcopy(self.netG).requires_grad_(False) if self.ema_decay is not None else None
        opt: Any = torch.optim.RMSprop if t.optimizer == "rmsprop" else torch.optim.Adam
        # eps and rmsprop_alpha are newer spec fields: PyTorch's defaults where a spec lacks them.
        extra: dict[str, Any] = {"eps": getattr(t, "eps", 1e-8)}
        if t.optimizer == "rmsprop":
            extra["alpha"] = getattr(t, "rmsprop_alpha", 0.99)
        else:
            extra["betas"] = (t.betas[0], t.betas[1])
        self.optimizerG = opt(self.netG.parameters(), lr=t.lr_g, weight_decay=t.weight_decay, **extra)
        self.optimizerD = opt(self.netD.parameters(), lr=t.lr_d, weight_decay=t.weight_decay, **extra)
        # ``precision`` (fp32/bf16) when given, else what the spec's resolves to on this device
        # (auto: bf16 only where native), so that the reference runs the ganops step's arithmetic.
        from ganops.train.precision import resolve

        self.bf16 = (precision or resolve(getattr(t, "precision", "fp32"), device)) == "bf16"

    def _fwd(self, net: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        """One forward pass, under bfloat16 autocast for a bf16 spec; float32 out."""
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            return net(x, y).float()

    # -- the objectives, one half of D's loss at a time ---------------------------------
    def _d_real(self, logits: Tensor) -> Tensor:
        smooth = 0.0 if self.textbook else self.spec.train.label_smoothing
        if self.loss in ("bce", "minimax"):
            return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 - smooth))
        if self.loss == "hinge":
            return F.relu(1.0 - logits).mean()
        if self.loss == "lsgan":
            return 0.5 * ((logits - (1.0 - smooth)) ** 2).mean()
        return -logits.mean()  # wgan_gp

    def _d_fake(self, logits: Tensor) -> Tensor:
        if self.loss in ("bce", "minimax"):
            return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
        if self.loss == "hinge":
            return F.relu(1.0 + logits).mean()
        if self.loss == "lsgan":
            return 0.5 * (logits**2).mean()
        return logits.mean()  # wgan_gp

    def _g(self, logits: Tensor) -> Tensor:
        if self.loss == "bce":  # non-saturating: maximize log D(G(z))
            return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if self.loss == "minimax":  # minimize log(1 - D(G(z)))
            return -F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
        if self.loss == "lsgan":
            return 0.5 * ((logits - 1.0) ** 2).mean()
        return -logits.mean()  # hinge, wgan_gp

    def _penalty(self, real: Tensor, fake: Tensor, y: Tensor | None) -> Tensor:
        """WGAN-GP (Gulrajani et al. 2017): (||grad D(x^)|| - 1)^2 on real-fake interpolates."""
        alpha = torch.rand(real.size(0), 1, 1, 1, device=self.device)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self._fwd(self.netD, x_hat, y).sum(), x_hat, create_graph=True)
        return self.spec.train.gp_weight * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    def _clip(self, net: nn.Module) -> None:
        t = self.spec.train
        if self.textbook:
            return
        if t.clip_grad_value is not None:
            nn.utils.clip_grad_value_(net.parameters(), t.clip_grad_value)
        elif t.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), t.clip_grad_norm)

    # -- the loop body -------------------------------------------------------------------
    def train_batch(self, real: Tensor, labels: Tensor | None) -> None:
        netG, netD = self.netG, self.netD
        y = labels if self.num_classes is not None else None
        b = real.size(0)
        # (1) Update D network: maximize log D(x) + log(1 - D(G(z)))
        netD.zero_grad()
        errD_real = self._d_real(self._fwd(netD, real, y))
        errD_real.backward()
        noise = torch.randn(b, self.latent_dim, device=self.device)
        fake = self._fwd(netG, noise, y)
        errD_fake = self._d_fake(self._fwd(netD, fake.detach(), y))
        errD_fake.backward()
        if self.loss == "wgan_gp" and not self.textbook:
            self._penalty(real, fake.detach(), y).backward()
        self._clip(netD)
        self.optimizerD.step()
        # (2) Update G network: maximize log D(G(z))
        netG.zero_grad()
        errG = self._g(self._fwd(netD, fake, y))
        errG.backward()
        self._clip(netG)
        self.optimizerG.step()
        if self.netG_ema is not None:
            beta = self.ema_decay
            with torch.no_grad():  # theta' <- beta theta' + (1 - beta) theta; statistics copied
                for p_ema, p in zip(self.netG_ema.parameters(), netG.parameters(), strict=True):
                    p_ema.mul_(beta).add_(p, alpha=1 - beta)
                for b_ema, b in zip(self.netG_ema.buffers(), netG.buffers(), strict=True):
                    b_ema.copy_(b)

    @property
    def sampler(self) -> nn.Module:
        """What to draw samples from: the EMA of G when the spec keeps one, else G."""
        return self.netG_ema if self.netG_ema is not None else self.netG
