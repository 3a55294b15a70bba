"""Step equivalence: ganops' training step on 2 DDP ranks computes what the papers' loop computes.

Every variant of the step (each loss x D's normalisation, conditional D, EMA, label smoothing,
the gradient penalty, RMSprop with clipping, several D steps, bf16, SyncBN) trains 20 steps
under real DDP (two processes on gloo, ``tests.ddp``), and ``PaperLoop`` below trains the
same networks from the same weights on the same global batches and noise in this process.
Both must end with the same G, D and EMA weights and BatchNorm statistics: fp32 within
``FP32_TOL`` (float rounding of another summation order, measured ≤ 3e-7), bf16 within
``BF16_TOL``.

``PaperLoop`` is written from the papers, not from ganops (it imports only the networks):
pytorch/examples' dcgan loop (Radford et al. 2016) for the step's shape — D on a real batch
and on a fake batch, then G through the updated D on the same fakes — with each objective as
its paper states it, WGAN-GP's Algorithm 1 for the critic (n_critic D steps on fresh real
batches, interpolates, the penalty), and data parallelism as its definition: each of W
workers computes the loss of its share of the global batch (BatchNorm normalising that share,
with that worker's running statistics), and the update uses the mean of their gradients
(SyncBN: BatchNorm normalises the global batch).

Where the loop departs from a paper on purpose, ganops does the same: WGAN-GP's Algorithm 1
draws a new z for the G update; pytorch/examples (and ganops) reuse the last D step's fakes
(the same distribution, one G forward less).

Not covered here: dropout (its masks come from each rank's RNG; ``spec.model.d_dropout: 0``
in every variant), and the 64 px and deep nets (the step does not depend on the widths).
``tests/test_step_mutants.py`` checks that each classic step bug fails this file.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ganops import client
from ganops.augment import UNIFORMS
from ganops.nets import build_discriminator, build_generator
from ganops.spec.models import GANJobSpec
from tests.ddp import Feed, train_many
from tests.helpers import JOBS

STEPS = 20
WORLD = 2
BATCH = 8  # global: 4 per rank
FP32_TOL = 1e-5
# bf16 rounds every forward's products to 8 bits of mantissa: a float32 difference of 1e-7 in
# an input can flip a rounding, which the next steps carry on. Measured between ganops and
# this loop: at most ~2e-3 after 20 steps; a step bug moves weights by ~1e-2 and more.
BF16_TOL = 1e-2

# mnist_dcgan's networks (28 px, BatchNorm in G) narrowed to run in milliseconds.
BASE = [
    "spec.data.root=/unused", "spec.data.download=false",
    "spec.model.g_widths=[8,4]", "spec.model.d_widths=[4,8]", "spec.model.kernel_size=3",
    "spec.model.latent_dim=8", "spec.model.d_dropout=0", "spec.model.embed_dim=4",
    f"spec.train.batch_size={BATCH}", "spec.train.ema_decay=null", "spec.train.precision=fp32",
    f"spec.scaling.num_workers={WORLD}",
]  # fmt: skip

LOSSES = ("bce", "minimax", "hinge", "wgan_gp", "lsgan")
RESNET = [
    "spec.model.arch=resnet",
    "spec.model.d_norm=null",
    "spec.model.g_widths=[8,4,4]",
    "spec.model.d_widths=[4,8]",
]
NORMS = ("none", "batch", "layer")
ADA = ["spec.augment.policy=[color,translation,cutout]", "spec.augment.ada_target=0.6", "spec.augment.p=0.5",
       "spec.augment.ada_kimg=0.4"]  # fmt: skip

# name -> (job file, overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    **{
        f"{loss}-{norm}": ("mnist_dcgan", [f"spec.train.loss={loss}", f"spec.model.d_norm={norm}"])
        for loss in LOSSES
        for norm in NORMS
        if (loss, norm) != ("wgan_gp", "batch")  # refused by the spec: the penalty is per sample
    },
    "bce-label-smoothing": ("mnist_dcgan", ["spec.train.label_smoothing=0.2", "spec.model.d_norm=batch"]),
    "lsgan-label-smoothing": ("mnist_dcgan", ["spec.train.loss=lsgan", "spec.train.label_smoothing=0.2"]),
    "conditional-projection": ("mnist_cgan", ["spec.model.d_conditioning=projection", "spec.model.d_norm=batch"]),
    "conditional-concat": ("mnist_cgan", ["spec.model.d_conditioning=concat"]),
    "ema": ("mnist_dcgan", ["spec.train.ema_decay=0.9", "spec.model.d_norm=batch"]),
    "wgan_gp-5-critic-steps": (
        "mnist_dcgan",
        ["spec.train.loss=wgan_gp", "spec.model.d_norm=layer", "spec.train.d_steps=5", "spec.train.gp_weight=5"],
    ),  # fmt: skip
    "rmsprop-clip-value": (
        "mnist_dcgan",
        [
            "spec.train.optimizer=rmsprop",
            "spec.train.clip_grad_value=0.01",
            "spec.train.rmsprop_alpha=0.9",
            "spec.train.eps=1e-7",
        ],
    ),  # fmt: skip
    "rmsprop-clip-norm": (
        "mnist_dcgan",
        [
            "spec.train.optimizer=rmsprop",
            "spec.train.clip_grad_norm=0.05",
            "spec.train.loss=hinge",
            "spec.model.d_norm=batch",
        ],
    ),  # fmt: skip
    # Mimicry's SNGAN recipe: both rates fall linearly to 0 over the run's G steps.
    "linear-lr-decay-2-d-steps": (
        "mnist_dcgan",
        [
            "spec.train.lr_decay=linear",
            "spec.train.d_steps=2",
            "spec.train.loss=hinge",
            "spec.train.betas=[0.0,0.9]",
            "spec.train.lr=1e-3",
        ],
    ),  # fmt: skip
    "ttur-weight-decay": (
        "mnist_dcgan",
        ["spec.train.g_lr=1e-4", "spec.train.d_lr=4e-4", "spec.train.weight_decay=1e-3", "spec.train.betas=[0.0,0.9]"],
    ),  # fmt: skip
    "syncbn": ("mnist_dcgan", ["spec.scaling.sync_batchnorm=true", "spec.model.d_norm=batch"]),
    "cifar-dcgan": (
        "cifar_dcgan",
        [
            "spec.data.dataset=fake",
            "spec.data.root=",
            "spec.model.d_widths=[8,16,16]",
            "spec.model.g_widths=[16,8,8]",
            "spec.eval.every_epochs=null",
            "spec.checkpoint.keep_best=null",
        ],
    ),  # fmt: skip
    # SNGAN's ResNets (spectral norm: one power iteration per D forward, on every rank), hinge
    # with two D steps per G step and the SNGAN betas; conditional: cBN in G, projection D.
    "resnet-hinge-2-d-steps": (
        "mnist_dcgan",
        [*RESNET, "spec.train.loss=hinge", "spec.train.d_steps=2", "spec.train.betas=[0.0,0.9]"],
    ),  # fmt: skip
    "resnet-conditional": ("mnist_cgan", [*RESNET, "spec.train.loss=hinge", "spec.train.ema_decay=0.9"]),
    "dcgan-spectral-norm": ("mnist_cgan", ["spec.model.d_spectral_norm=true", "spec.model.d_norm=none"]),
    # DiffAugment (every policy, p = 1) on D's real and fake and in the G step; ADA moving p
    # (from 0.5, by 0.08 per adjustment, every 4 D steps: 0.5 -> 0.1, never 0); augmented interpolates for WGAN-GP.
    "diffaugment": ("mnist_dcgan", ["spec.augment.policy=[color,translation,cutout]", "spec.model.d_norm=batch"]),
    "ada-hinge-2-d-steps": ("mnist_dcgan", [*ADA, "spec.train.loss=hinge", "spec.train.d_steps=2"]),
    "diffaugment-wgan_gp": (
        "mnist_dcgan",
        ["spec.augment.policy=[translation,cutout]", "spec.train.loss=wgan_gp", "spec.model.d_norm=layer"],
    ),  # fmt: skip
    # R1 (and R2) as StyleGAN2 regularises lazily: every 4th D step a penalty-only update,
    # times 4, with D's lr and betas rescaled by 4/5; R1 on augmented reals (the gradient
    # taken before the augmentation); and both penalties in every D step's loss.
    "r1-lazy": (
        "mnist_dcgan",
        ["spec.train.r1_gamma=5", "spec.train.reg_interval=4", "spec.model.d_norm=none", "spec.train.loss=bce"],
    ),  # fmt: skip
    "r1-r2-lazy-ada-spectral": (
        "mnist_dcgan",
        [
            *ADA,
            "spec.train.r1_gamma=2",
            "spec.train.r2_gamma=1",
            "spec.train.reg_interval=4",
            "spec.model.d_spectral_norm=true",
            "spec.model.d_norm=none",
            "spec.train.loss=hinge",
        ],
    ),  # fmt: skip
    "r1-r2-every-step": (
        "mnist_cgan",
        ["spec.train.r1_gamma=3", "spec.train.r2_gamma=1", "spec.train.reg_interval=1", "spec.model.d_norm=none"],
    ),  # fmt: skip
    "bf16-bce-batch": ("mnist_dcgan", ["spec.train.precision=bf16", "spec.model.d_norm=batch"]),
    "bf16-wgan_gp": (
        "mnist_dcgan",
        ["spec.train.precision=bf16", "spec.train.loss=wgan_gp", "spec.model.d_norm=layer"],
    ),  # fmt: skip
    "bf16-syncbn": (
        "mnist_dcgan",
        [
            "spec.train.precision=bf16",
            "spec.scaling.sync_batchnorm=true",
            "spec.model.d_norm=batch",
            "spec.train.ema_decay=0.9",
        ],
    ),  # fmt: skip
}


@dataclass(frozen=True)
class Case:
    name: str
    spec: GANJobSpec
    shape: tuple[int, int, int]
    classes: int | None
    feed: Feed

    @property
    def dtype(self) -> torch.dtype:
        return self.feed.real[0].dtype


def load(name: str):
    job, sets = VARIANTS[name]
    overrides = BASE + sets
    if job == "cifar_dcgan":
        overrides = [o for o in overrides if not o.startswith("spec.data.root=/")]
    return client.load_job(JOBS / f"{job}.yaml", overrides)


def make_case(name: str) -> Case:
    job = load(name)
    spec = job.spec
    shape = (3, 32, 32) if spec.data.dataset == "fake" else (1, 28, 28)
    classes = 10 if spec.model.conditional else None
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    dtype = torch.float64 if spec.train.precision == "fp32" else torch.float32
    real = [torch.rand(BATCH, *shape, generator=g, dtype=dtype) * 2 - 1 for _ in range(STEPS)]
    labels = [torch.randint(0, 10, (BATCH,), generator=g) for _ in range(STEPS)] if classes else None
    z = [torch.randn(BATCH, spec.model.latent_dim, generator=g, dtype=dtype) for _ in range(STEPS)]
    # One interpolation weight per sample and D step (WGAN-GP); unused by the other losses.
    mix = [torch.rand(BATCH, generator=g, dtype=dtype) for _ in range(STEPS)]
    aug = (
        [torch.rand(5, BATCH, UNIFORMS, generator=g, dtype=dtype) for _ in range(STEPS)]
        if spec.augment.policy
        else None
    )
    return Case(name, spec, shape, classes, Feed(real, labels, z, mix, aug))


# -- the reference ---------------------------------------------------------------------------


def d_loss_paper(loss: str, real: Tensor, fake: Tensor, smoothing: float) -> Tensor:
    """D's (critic's) objective to minimise, on raw logits, as each paper states it."""
    if loss in ("bce", "minimax"):
        # Goodfellow et al. 2014: max log D(x) + log(1 - D(G(z))); Salimans et al. 2016's
        # one-sided smoothing moves only the real targets, to 1 - s.
        return F.binary_cross_entropy_with_logits(
            real, torch.full_like(real, 1.0 - smoothing)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    if loss == "hinge":  # Lim & Ye 2017; Miyato et al. 2018, eq. 16
        return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()
    if loss == "wgan_gp":  # Gulrajani et al. 2017, Algorithm 1, line 7 (the penalty apart)
        return fake.mean() - real.mean()
    if loss == "lsgan":  # Mao et al. 2017, eq. 2 with a = 0, b = 1 (real targets 1 - s when smoothed)
        return 0.5 * ((real - (1.0 - smoothing)) ** 2).mean() + 0.5 * (fake**2).mean()
    raise AssertionError(loss)


def g_loss_paper(loss: str, fake: Tensor) -> Tensor:
    """G's objective to minimise."""
    if loss == "bce":  # the non-saturating heuristic: max log D(G(z))
        return -F.logsigmoid(fake).mean()
    if loss == "minimax":  # min log(1 - D(G(z)))
        return torch.log1p(-torch.sigmoid(fake)).mean()
    if loss in ("hinge", "wgan_gp"):  # min -D(G(z))
        return -fake.mean()
    if loss == "lsgan":  # Mao et al. 2017, eq. 2 with c = 1
        return 0.5 * ((fake - 1.0) ** 2).mean()
    raise AssertionError(loss)


def _randint(u: Tensor, low: int, high: int) -> Tensor:
    """torch.randint(low, high) for each draw u ~ U(0, 1): the draws ganops takes them from."""
    return low + (u * (high - low)).floor().long()


def diffaugment_paper(x: Tensor, u: Tensor, policy: list[str], p: float | Tensor) -> Tensor:
    """DiffAugment_pytorch.py (Zhao et al. 2020) with its torch.rand/randint draws replaced
    by the columns of u (brightness, saturation, contrast, 2 translations, 2 cutout offsets,
    then whether each policy applies: u < p, ADA's per-sample choice; always with p = 1)."""
    n = x.size(0)
    col = {name: u[:, i] for i, name in enumerate(
        ("b", "s", "c", "tx", "ty", "ox", "oy", "color", "translation", "cutout"))}  # fmt: skip
    for name in policy:
        if name == "color":
            y = x + (col["b"].view(-1, 1, 1, 1) - 0.5)
            y_mean = y.mean(dim=1, keepdim=True)
            y = (y - y_mean) * (col["s"].view(-1, 1, 1, 1) * 2) + y_mean
            y_mean = y.mean(dim=[1, 2, 3], keepdim=True)
            y = (y - y_mean) * (col["c"].view(-1, 1, 1, 1) + 0.5) + y_mean
        elif name == "translation":
            shift_x, shift_y = x.size(2) // 8, x.size(3) // 8
            translation_x = _randint(col["tx"], -shift_x, shift_x + 1).view(-1, 1, 1)
            translation_y = _randint(col["ty"], -shift_y, shift_y + 1).view(-1, 1, 1)
            grid_batch, grid_x, grid_y = torch.meshgrid(
                torch.arange(n), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
            )
            grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
            grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
            x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
            y = x_pad[grid_batch, :, grid_x, grid_y].permute(0, 3, 1, 2)
        else:  # cutout
            cutout_size = x.size(2) // 2, x.size(3) // 2
            offset_x = _randint(col["ox"], 0, x.size(2) + (1 - cutout_size[0] % 2)).view(-1, 1, 1)
            offset_y = _randint(col["oy"], 0, x.size(3) + (1 - cutout_size[1] % 2)).view(-1, 1, 1)
            grid_batch, grid_x, grid_y = torch.meshgrid(
                torch.arange(n), torch.arange(cutout_size[0]), torch.arange(cutout_size[1]), indexing="ij"
            )
            grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
            grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
            mask = torch.ones(n, x.size(2), x.size(3), dtype=x.dtype)
            mask[grid_batch, grid_x, grid_y] = 0
            y = x * mask.unsqueeze(1)
        x = torch.where((col[name] < p).view(-1, 1, 1, 1), y, x)
    return x


class PaperLoop:
    """The papers' training loop for ``parts`` data-parallel workers, in one process.

    Parameters are shared by the workers; BatchNorm statistics (buffers) are each worker's
    own, so each worker's forwards run through ``functional_call`` with its buffers.
    ``parts=1`` with SyncBN: BatchNorm sees the global batch, as one worker would.
    """

    def __init__(self, spec: GANJobSpec, shape: tuple[int, int, int], classes: int | None,
                 init: dict[str, dict[str, Tensor]], parts: int) -> None:  # fmt: skip
        t = spec.train
        self.t, self.parts, self.classes = t, parts, classes
        self.G = build_generator(spec.model, shape, classes)
        self.D = build_discriminator(spec.model, shape, classes)
        self.G.load_state_dict(init["g"])
        self.D.load_state_dict(init["d"])
        self.g_buf = [{k: b.clone() for k, b in self.G.named_buffers()} for _ in range(parts)]
        self.d_buf = [{k: b.clone() for k, b in self.D.named_buffers()} for _ in range(parts)]
        # StyleGAN2's lazy regularisation: D's optimizer at lr * c and betas ** c, c = N / (N + 1).
        regularised = (t.r1_gamma or t.r2_gamma) and t.reg_interval > 1
        self.c = t.reg_interval / (t.reg_interval + 1) if regularised else 1.0
        self.opt_g = self._optimizer(self.G, t.g_lr or t.lr)
        self.opt_d = self._optimizer(self.D, (t.d_lr or t.lr) * self.c, self.c)
        self.ema = {k: p.detach().clone() for k, p in self.G.named_parameters()} if t.ema_decay else None
        self.iteration = 0
        self.aug = spec.augment
        self.p = self.aug.start_p
        self.signs: list[Tensor] = []  # ADA: sign D(real) of every real image since the last adjustment

    def _optimizer(self, net: nn.Module, lr: float, c: float = 1.0) -> torch.optim.Optimizer:
        t = self.t
        if t.optimizer == "rmsprop":
            return torch.optim.RMSprop(net.parameters(), lr=lr, alpha=t.rmsprop_alpha**c, eps=t.eps,
                                       weight_decay=t.weight_decay)  # fmt: skip
        betas = (t.betas[0] ** c, t.betas[1] ** c)
        return torch.optim.Adam(net.parameters(), lr=lr, betas=betas, eps=t.eps, weight_decay=t.weight_decay)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        # The AMP recipe: forwards and losses under autocast, backward outside, fp32 weights.
        if self.t.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _run(self, net: nn.Module, buffers: dict[str, Tensor], *args: Tensor | None) -> Tensor:
        return functional_call(net, {**dict(net.named_parameters()), **buffers}, args)

    def _logits(self, net: nn.Module, buffers: dict[str, Tensor], x: Tensor, y: Tensor | None) -> Tensor:
        out = self._run(net, buffers, x, y)
        return out.to(torch.promote_types(out.dtype, torch.float32))  # bf16 forwards: losses in fp32

    def _clip(self, net: nn.Module) -> None:
        if self.t.clip_grad_value is not None:
            nn.utils.clip_grad_value_(net.parameters(), self.t.clip_grad_value)
        elif self.t.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), self.t.clip_grad_norm)

    def _augment(self, x: Tensor, u: Tensor) -> Tensor:
        return diffaugment_paper(x, u, self.aug.policy, self.p) if self.aug.policy else x

    def _ada(self, d_real: Tensor) -> None:
        """Karras et al. 2020 (ADA): r_t = E[sign D(real)] over the interval, p moved toward the target."""
        if self.aug.ada_target is None:
            return
        self.signs.append(torch.sign(d_real.detach()))
        if self.iteration % self.aug.ada_interval == 0:
            r_t = float(torch.cat(self.signs).double().mean())
            step = self.t.batch_size * self.aug.ada_interval / (self.aug.ada_kimg * 1000)
            self.p = max(self.p + (r_t > self.aug.ada_target) * step - (r_t < self.aug.ada_target) * step, 0.0)
            self.signs = []

    def _r1_r2(self, d_real: Tensor | None, x: Tensor, d_fake: Tensor | None, f: Tensor) -> Tensor:
        """Mescheder et al. 2018: gamma/2 E||grad_x D(x)||^2 at the reals (R1) and the fakes (R2)."""
        t, total = self.t, 0.0
        for gamma, out, inp in ((t.r1_gamma, d_real, x), (t.r2_gamma, d_fake, f)):
            if gamma:
                (grad,) = torch.autograd.grad(out.sum(), inp, create_graph=True)
                total = total + gamma / 2 * (grad**2).sum(dim=[1, 2, 3]).mean()
        return total

    def _lazy_step(self, shares: list, ys: list, us: list, fakes: list[Tensor]) -> None:
        """StyleGAN2's lazy regularisation: an update of the penalty alone, times N, on the
        step's real images and fakes (each worker's share; the gradient mean over workers)."""
        t = self.t
        self.D.zero_grad()
        total = 0.0
        for w, ((x, _zw, _a), y, u, fake) in enumerate(zip(shares, ys, us, fakes, strict=True)):
            x_req, f_req = x.detach().requires_grad_(True), fake.detach().requires_grad_(True)
            x_in = self._augment(x_req, u[2]) if u is not None else x_req
            f_in = self._augment(f_req, u[3]) if u is not None else f_req
            with self._autocast():
                d_real = self._logits(self.D, self.d_buf[w], x_in, y) if t.r1_gamma else None
                d_fake = self._logits(self.D, self.d_buf[w], f_in, y) if t.r2_gamma else None
                penalty = self._r1_r2(d_real, x_req, d_fake, f_req) * t.reg_interval
                # StyleGAN2-ADA's Dreg phase adds real_logits * 0: every D parameter gets a (zero)
                # gradient, so Adam steps those the penalty does not reach (the output bias) too.
                outs = [o for o in (d_real, d_fake) if o is not None]
                total = total + (penalty + 0 * torch.cat(outs).sum()) / self.parts
        total.backward()
        self._clip(self.D)
        self.opt_d.step()

    def train_batch(self, real: Tensor, labels: Tensor | None, z: Tensor, mix: Tensor,
                    aug: Tensor | None = None) -> None:  # fmt: skip
        t = self.t
        self.iteration += 1
        g_turn = self.iteration % t.d_steps == 0  # n_critic D steps per G step
        if t.lr_decay == "linear":  # Mimicry's linear decay: lr * (1 - k / K) in G iteration k of K
            k, total = (self.iteration - 1) // t.d_steps, STEPS // t.d_steps
            for opt, lr in ((self.opt_g, t.g_lr or t.lr), (self.opt_d, (t.d_lr or t.lr) * self.c)):
                for group in opt.param_groups:
                    group["lr"] = lr * (1 - k / total)
        shares = list(zip(real.chunk(self.parts), z.chunk(self.parts), mix.chunk(self.parts), strict=True))
        ys = labels.chunk(self.parts) if labels is not None and self.classes else [None] * self.parts
        # Augmentation draws per worker: for its real batch, its fakes, and its fakes in the G step.
        us = aug.chunk(self.parts, dim=1) if aug is not None else [None] * self.parts
        # (1) D: each worker's loss on its share, the update on their mean.
        self.D.zero_grad()
        fakes, d_total, d_reals = [], 0.0, []
        for w, ((x, zw, a), y, u) in enumerate(zip(shares, ys, us, strict=True)):
            with self._autocast():
                if g_turn:
                    fake = self._run(self.G, self.g_buf[w], zw, y)
                else:
                    with torch.no_grad():
                        fake = self._run(self.G, self.g_buf[w], zw, y)
                both = t.reg_interval == 1  # R1/R2 inside the D loss
                x_req = x.detach().requires_grad_(True) if both and t.r1_gamma else x
                f_req = fake.detach().requires_grad_(True) if both and t.r2_gamma else fake.detach()
                x_in = self._augment(x_req, u[0]) if u is not None else x_req
                fake_in = self._augment(f_req, u[1]) if u is not None else f_req
                d_real = self._logits(self.D, self.d_buf[w], x_in, y)
                d_fake = self._logits(self.D, self.d_buf[w], fake_in, y)
                d_reals.append(d_real)
                loss = d_loss_paper(t.loss, d_real, d_fake, t.label_smoothing)
                if both:
                    loss = loss + self._r1_r2(d_real, x_req, d_fake, f_req)
                if t.loss == "wgan_gp":
                    a = a.view(-1, 1, 1, 1)
                    x_hat = (a * x_in + (1 - a) * fake_in).requires_grad_(True)
                    out = self._logits(self.D, self.d_buf[w], x_hat, y)
                    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
                    loss = loss + t.gp_weight * ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()
            d_total = d_total + loss / self.parts
            fakes.append(fake)
        d_total.backward()
        self._clip(self.D)
        self.opt_d.step()
        self._ada(torch.cat(d_reals))
        if (t.r1_gamma or t.r2_gamma) and t.reg_interval > 1 and (self.iteration - 1) % t.reg_interval == 0:
            self._lazy_step(shares, ys, us, fakes)
        if not g_turn:
            return
        # (2) G through the updated D, on the same fakes.
        self.G.zero_grad()
        g_total = 0.0
        for w, (fake, y, u) in enumerate(zip(fakes, ys, us, strict=True)):
            with self._autocast():
                fake_in = self._augment(fake, u[4]) if u is not None else fake
                g_total = g_total + g_loss_paper(t.loss, self._logits(self.D, self.d_buf[w], fake_in, y)) / self.parts
        g_total.backward()
        self._clip(self.G)
        self.opt_g.step()
        if self.ema is not None:  # Yazici et al. 2019: theta' <- beta theta' + (1 - beta) theta
            beta = t.ema_decay
            with torch.no_grad():
                for k, p in self.G.named_parameters():
                    self.ema[k] = beta * self.ema[k] + (1 - beta) * p

    def worker_state(self, w: int) -> dict[str, dict[str, Tensor] | None]:
        """What worker ``w`` holds: the shared weights with its own BatchNorm statistics."""
        w = 0 if self.parts == 1 else w
        g = {**{k: p.detach() for k, p in self.G.named_parameters()}, **self.g_buf[w]}
        d = {**{k: p.detach() for k, p in self.D.named_parameters()}, **self.d_buf[w]}
        ema = {**self.ema, **self.g_buf[w]} if self.ema is not None else None
        return {"g": g, "d": d, "g_ema": ema}


def reference(case: Case, init: dict[str, dict[str, Tensor]], parts: int | None = None) -> PaperLoop:
    """The papers' loop on ``case`` from ``init``; ``parts``: how many shares BatchNorm
    normalises apart (default: 1 with SyncBN, else one per rank)."""
    if parts is None:
        parts = 1 if case.spec.scaling.sync_batchnorm else WORLD
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)  # the ranks' setting: the same kernels, the same rounding
    torch.set_default_dtype(case.dtype)  # the nets in the feed's dtype, as on the ranks
    try:
        loop = PaperLoop(case.spec, case.shape, case.classes, copy.deepcopy(init), parts)
        for i in range(STEPS):
            f = case.feed
            loop.train_batch(
                f.real[i], f.labels[i] if f.labels else None, f.z[i], f.mix[i], f.aug[i] if f.aug else None
            )
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    return loop


def max_differences(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, float]:
    assert ours.keys() == ref.keys()
    out = {}
    for k, v in ours.items():
        if v.is_floating_point():
            out[k] = float((v.double() - ref[k].double()).abs().max())
        else:
            out[k] = 0.0 if torch.equal(v, ref[k]) else float("inf")
    return out


# -- the runs: every variant on 2 ranks, once per module ---------------------------------------


def _selected_variants(request: pytest.FixtureRequest) -> list[str]:
    """The variants this session's selected tests of this file ask for: all of them unless only
    some parametrized variants were selected (``pytest FILE::test…[hinge-none]``, the mutants)."""
    wanted: set[str] = set()
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is None or "variant" not in callspec.params:
            return list(VARIANTS)  # a test over every variant
        wanted.add(callspec.params["variant"])
    return [v for v in VARIANTS if v in wanted] or list(VARIANTS)


@pytest.fixture(scope="module")
def ddp_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Case], list[dict[str, Any]]]]:
    cases = {name: make_case(name) for name in _selected_variants(request)}
    jobs = {name: (load(name), c.feed, c.classes) for name, c in cases.items()}
    yield cases, train_many(jobs, WORLD, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_step_on_two_ddp_ranks_matches_the_papers_loop(variant: str, ddp_runs) -> None:
    cases, ranks = ddp_runs
    case = cases[variant]
    for r, results in enumerate(ranks):
        assert "error" not in results[variant], f"rank {r}:\n{results[variant]['error']}"
    # One z per D step, and one interpolation weight per sample with a gradient penalty: all used.
    assert ranks[0][variant]["noise_left"] == (0, STEPS * (case.spec.train.loss != "wgan_gp"))
    assert ranks[0][variant]["aug_left"] == 0  # every augmentation draw used: D's real and fake, G's fake
    # One all-reduce (one bucket at these sizes) per D step and per G step; none for D's
    # weights in the G step, where D runs frozen outside DDP.
    t = case.spec.train
    lazy = (t.r1_gamma or t.r2_gamma) and t.reg_interval > 1
    # ... plus one per lazy R1/R2 update (D steps 1, N + 1, ...).
    regs = len(range(0, STEPS, t.reg_interval)) if lazy else 0
    assert ranks[0][variant]["reductions"] == {"d": STEPS + regs, "g": STEPS // t.d_steps}
    loop = reference(case, ranks[0][variant]["init"])
    tol = BF16_TOL if case.spec.train.precision == "bf16" else FP32_TOL
    if case.spec.train.lr_decay == "linear":  # the last G step ran at 1/K of the rate
        t, total = case.spec.train, STEPS // case.spec.train.d_steps
        assert ranks[0][variant]["lr"] == pytest.approx((t.lr / total, t.lr / total))
    for r, results in enumerate(ranks):  # ADA's p, where both ended (the same on every rank)
        assert results[variant]["augment_p"] == pytest.approx(loop.p, abs=1e-12), (r, loop.p)
    if case.spec.augment.ada_target is not None:
        assert 0 < loop.p < case.spec.augment.start_p, loop.p  # it moved, and not into the clamp
    for r, results in enumerate(ranks):
        ref = loop.worker_state(r)
        for net in ("g", "d", "g_ema"):
            ours = results[variant][net]
            assert (ours is None) == (ref[net] is None), net
            if ours is None:
                continue
            diffs = max_differences(ours, ref[net])
            worst = max(diffs, key=diffs.__getitem__)
            print(f"{variant} rank {r} {net}: {diffs[worst]:.2g}")
            assert diffs[worst] <= tol, (
                f"rank {r}'s {net} after {STEPS} steps differs from the papers' loop by {diffs[worst]:.3g} "
                f"at {worst} (tolerance {tol:g}); all over {tol:g}: "
                + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items() if v > tol)
            )


def test_the_variants_train_their_weights_away_from_the_start(ddp_runs) -> None:
    # Equal weights prove nothing if nothing moved: every variant's nets changed (by far more
    # than the tolerance), so a step that skipped an update could not pass as equal.
    cases, ranks = ddp_runs
    for name in cases:
        res = ranks[0][name]
        for net in ("g", "d"):
            moved = max(
                float((v.double() - res["init"][net][k].double()).abs().max())
                for k, v in res[net].items()
                if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))
            )
            assert moved > 50 * FP32_TOL, f"{name}: {net} moved by at most {moved:.2g} in {STEPS} steps"


def test_the_reference_tells_the_variants_apart(ddp_runs) -> None:
    # The comparison can fail: the loop of one loss run on another's data ends elsewhere.
    cases, ranks = ddp_runs
    case = cases["hinge-none"]
    wrong = Case(case.name, load("lsgan-none").spec, case.shape, case.classes, case.feed)
    loop = reference(wrong, ranks[0]["hinge-none"]["init"])
    diffs = max_differences(ranks[0]["hinge-none"]["d"], loop.worker_state(0)["d"])
    assert max(diffs.values()) > 100 * FP32_TOL


def test_sync_batchnorm_is_what_makes_two_ranks_train_the_global_batch(ddp_runs) -> None:
    # The syncbn variant matches the loop that normalises the global batch as one share; it does
    # not match per-rank shares, and plain BatchNorm on 2 ranks does not match the global batch:
    # so the comparison sees the difference SyncBN makes (measured: 8e-4 and more apart after 20 steps).
    cases, ranks = ddp_runs
    for name, parts in (("syncbn", WORLD), ("bce-batch", 1)):
        loop = reference(cases[name], ranks[0][name]["init"], parts=parts)
        diffs = max_differences(ranks[0][name]["d"], loop.worker_state(0)["d"])
        # Far beyond the ~1e-15 that two runs of the same computation differ by in float64.
        assert max(diffs.values()) > 1e-6, (name, parts, max(diffs.values()))
