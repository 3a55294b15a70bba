"""One GAN training step, the same on one process (benchmarks) and under DDP (workers).

The DDP details follow from having two networks:
- D sees real and fake in one DDP forward (``PartsForward``), so each D step does one
  all-reduce. When D has BatchNorm, that forward runs D's body on the real and the fake
  batch *separately*, as pytorch/examples' dcgan does: normalising them together gives D
  statistics it never sees in the G step (fakes alone), where it then rates every fake as
  real and G gets almost no gradient (the noise-only CIFAR DCGAN of issue 11).
- In the G step, fake images go through D's *plain module* with D's parameters frozen:
  no D weight gradients are computed and none are all-reduced (only G's DDP syncs).
- ``broadcast_buffers=False``: each rank keeps its own BatchNorm statistics; rank 0's
  would otherwise overwrite them on every forward, costing a broadcast per call.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ganops.augment import UNIFORMS, ada_adjust, augment
from ganops.losses import get_loss, gradient_penalty, gradient_sq_norm, interpolates
from ganops.nets import build_discriminator, build_generator
from ganops.nets.syncbn import convert_sync_batchnorm
from ganops.spec.models import GANJobSpec, TrainSpec
from ganops.train.precision import resolve as resolve_precision


def stat_names(loss: str) -> tuple[str, str, str, str]:
    """What the step reports, in ``StepStats.sums`` order.

    With bce/minimax D's logit is log-odds, so sigmoid gives the probabilities D(x) and
    D(G(z)) of the papers. A hinge, WGAN or least-squares critic's score is no log-odds:
    its sigmoid would mean nothing, so the raw critic means are reported under other names.
    """
    if get_loss(loss).probabilistic:
        return ("d_loss", "g_loss", "d_x", "d_g_z")
    return ("d_loss", "g_loss", "critic_real", "critic_fake")


def _optimizer(train: TrainSpec, params: list[nn.Parameter], lr: float, c: float = 1.0) -> torch.optim.Optimizer:
    """``c``: lazy regularisation's rescaling (StyleGAN2): lr * c, and the moment decays ** c."""
    if train.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr * c, alpha=train.rmsprop_alpha**c, eps=train.eps, weight_decay=train.weight_decay
        )
    betas = (train.betas[0] ** c, train.betas[1] ** c)
    return torch.optim.Adam(params, lr=lr * c, betas=betas, eps=train.eps, weight_decay=train.weight_decay)


def lazy_c(train: TrainSpec) -> float:
    """StyleGAN2's mb_ratio for D: N / (N + 1) with R1/R2 every N > 1 D steps, else 1."""
    regularised = train.r1_gamma > 0 or train.r2_gamma > 0
    return train.reg_interval / (train.reg_interval + 1) if regularised and train.reg_interval > 1 else 1.0


def _full(logits: Tensor) -> Tensor:
    """Logits in float32 at least: the losses of bfloat16 forwards (autocast) in float32."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def has_spectral_norm(net: nn.Module) -> bool:
    return any(
        type(p).__name__ == "_SpectralNorm"
        for m in net.modules()
        if nn.utils.parametrize.is_parametrized(m)
        for plist in m.parametrizations.values()
        for p in plist
    )


class PartsForward(nn.Module):
    """D over several batches in one call: one DDP forward, one backward, one all-reduce.

    With ``separate`` each part runs through D alone, so BatchNorm normalises each with its
    own statistics (and advances its running statistics once per part, as separate D calls
    would) and spectral norm runs one power iteration per part (as SNGAN's code and Mimicry,
    which call D on the real and the fake batch apart); without it the parts are
    concatenated into one cheaper pass, which is the same computation for a D with neither.
    Parameters used by several parts get their gradients summed by autograd before DDP's
    hook fires, so the all-reduce stays one.
    """

    def __init__(self, d: nn.Module, separate: bool) -> None:
        super().__init__()
        self.d = d
        self.separate = separate

    def forward(self, parts: list[Tensor], labels: list[Tensor] | None) -> Tensor:
        if not self.separate:
            y = torch.cat(labels) if labels is not None else None
            return self.d(torch.cat(parts), y)
        ys = labels if labels is not None else [None] * len(parts)
        return torch.cat([self.d(x, y) for x, y in zip(parts, ys, strict=True)])


@dataclass
class StepStats:
    """Device-side running sums of the step statistics (see ``stat_names``)."""

    sums: Tensor
    d_steps: int = 0
    g_steps: int = 0

    def reset(self) -> None:
        self.sums.zero_()
        self.d_steps = self.g_steps = 0


class GANStep:
    """Holds G, D, their optimizers and the optional EMA of G, and trains one batch at a time."""

    def __init__(
        self,
        spec: GANJobSpec,
        image_shape: tuple[int, int, int],
        num_classes: int | None,
        device: torch.device,
        ddp: bool = False,
        noise_seed: int = 0,
    ) -> None:
        self.spec = spec
        self.train_spec = spec.train
        self.device = device
        self.num_classes = num_classes if spec.model.conditional else None
        self.latent_dim = spec.model.latent_dim
        # channels_last: oneDNN (CPU) and cuDNN tensor-core convolutions run faster in NHWC;
        # measured 10-15% per conv net on the CPU here. Same weights, another layout.
        self.memory_format = torch.channels_last if spec.model.arch != "mlp" else torch.contiguous_format
        g = build_generator(spec.model, image_shape, self.num_classes)
        d = build_discriminator(spec.model, image_shape, self.num_classes)
        if ddp and spec.scaling.sync_batchnorm:
            cuda = device.type == "cuda"
            g, d = convert_sync_batchnorm(g, cuda), convert_sync_batchnorm(d, cuda)
        self.g = g.to(device, memory_format=self.memory_format)
        self.d = d.to(device, memory_format=self.memory_format)
        self.g_ema: nn.Module | None = None
        if spec.train.ema_decay is not None:
            self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        self.opt_g = _optimizer(spec.train, list(self.g.parameters()), spec.train.lr_g)
        self.d_lr_c = lazy_c(spec.train)
        self.opt_d = _optimizer(spec.train, list(self.d.parameters()), spec.train.lr_d, self.d_lr_c)
        self.loss = get_loss(spec.train.loss)
        self.stat_names = stat_names(spec.train.loss)
        self.g_train: nn.Module = self.g
        self.d_train: nn.Module = PartsForward(self.d, separate=has_batchnorm(self.d) or has_spectral_norm(self.d))
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.g_train = DDP(self.g, device_ids=ids, broadcast_buffers=False)
            self.d_train = DDP(self.d_train, device_ids=ids, broadcast_buffers=False)
        # A dedicated generator for z keeps the noise stream independent of dropout's RNG,
        # and its state is part of the checkpoint.
        self.noise = torch.Generator(device=device)
        self.noise.manual_seed(noise_seed)
        self.stats = StepStats(torch.zeros(len(self.stat_names), device=device))
        self._batches = 0
        self.precision = resolve_precision(spec.train.precision, device)
        """``fp32`` or ``bf16``: what ``spec.train.precision`` resolved to on this device (a
        resumed ``auto`` job keeps its checkpoint's)."""
        # The step at which d_loss / g_loss was first non-finite (-1: not yet). Kept on the
        # device and read only when the loop checks (every few steps): no sync per step.
        self._first_bad = torch.full((2,), -1.0, device=device)
        self.lr_scale = 1.0
        """What rollbacks after a divergence have multiplied the spec's learning rates by."""
        self.run_batches: int | None = None
        """The D steps the whole run takes (epochs x batches per epoch): linear lr_decay's length."""
        aug = spec.augment
        self.ddp = ddp
        self.augment_p: Tensor | float = aug.start_p
        """The probability of each augmentation policy: a float when fixed; with ADA a device
        tensor (adjusted without a host sync, kept in checkpoints)."""
        self._ada = torch.zeros(3, dtype=torch.float64, device=device)  # sum sign D(real), count, last r_t
        self._ada_steps = 0
        if aug.ada_target is not None:
            self.augment_p = torch.tensor(aug.start_p, dtype=torch.float64, device=device)
            self._ada[2] = float("nan")

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        """Forward passes only: PyTorch advises against running backward under autocast."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- sampling ---------------------------------------------------------------------
    def sample_z(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self.device, generator=self.noise)

    def sample_aug(self, n: int) -> Tensor:
        """The U(0, 1) draws of one augmentation of n images (ganops.augment), from the noise stream."""
        return torch.rand(n, UNIFORMS, device=self.device, generator=self.noise)

    def _augment(self, x: Tensor) -> Tensor:
        """What D sees of x: x itself, or its augmentation (a fresh draw on every call)."""
        policy = self.spec.augment.policy
        if not policy:
            return x
        return augment(x, self.sample_aug(x.size(0)), policy, self.augment_p)

    @torch.no_grad()
    def _ada_observe(self, real_logits: Tensor) -> None:
        """ADA: accumulate sign D(real); every ada_interval D steps, move p (all ranks agree:
        the sums are all-reduced first)."""
        aug = self.spec.augment
        if aug.ada_target is None:
            return
        self._ada[0] += torch.sign(real_logits).sum().double()
        self._ada[1] += real_logits.numel()
        self._ada_steps += 1
        if self._ada_steps % aug.ada_interval:
            return
        totals = self._ada[:2].clone()
        if self.ddp:
            import torch.distributed as dist

            dist.all_reduce(totals)
        r_t = totals[0] / totals[1]
        images = self.train_spec.batch_size * aug.ada_interval
        assert isinstance(self.augment_p, Tensor)
        self.augment_p = ada_adjust(self.augment_p, r_t, aug.ada_target, images, aug.ada_kimg)
        self._ada[0] = self._ada[1] = 0.0
        self._ada[2] = r_t

    def sample_mix(self, n: int) -> Tensor:
        """WGAN-GP's interpolation weights, one per sample, from the noise stream (after z)."""
        return torch.rand(n, device=self.device, generator=self.noise)

    @property
    def sampler(self) -> nn.Module:
        """The network to draw samples from: the EMA of G when enabled."""
        return self.g_ema if self.g_ema is not None else self.g

    # -- training ---------------------------------------------------------------------
    def _clip(self, params: list[nn.Parameter]) -> None:
        t = self.train_spec
        if t.clip_grad_value is not None:
            nn.utils.clip_grad_value_(params, t.clip_grad_value)
        elif t.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, t.clip_grad_norm)

    def d_step(self, real: Tensor, labels: Tensor | None, keep_fake: bool) -> Tensor:
        """(1) Update D: push D(x) up and D(G(z)) down. Returns the fake batch.

        With ``keep_fake`` the fakes keep their graph through G so the G step that follows
        reuses them (one G forward per iteration, as in pytorch/examples' dcgan); otherwise
        they are made without a graph (more D steps to come, and DDP must not see a forward
        without its backward).
        """
        n = real.size(0)
        y = labels if self.num_classes is not None else None
        z = self.sample_z(n)
        t = self.train_spec
        every_step = t.reg_interval == 1  # R1/R2 in this loss, not in a lazy step of their own
        with self._autocast():
            if keep_fake:
                fake = self.g_train(z, y)
            else:
                with torch.no_grad():
                    fake = self.g(z, y)
            real_x = real.detach().requires_grad_(True) if every_step and t.r1_gamma else real
            fake_x = fake.detach().requires_grad_(True) if every_step and t.r2_gamma else fake.detach()
            # D sees augmented batches (when spec.augment asks), each with its own draw; the
            # gradient penalty's interpolates lie between what D sees.
            parts = [self._augment(real_x), self._augment(fake_x)]
            interp = None
            if self.loss.gradient_penalty:
                interp = interpolates(parts[0], parts[1], self.sample_mix(n))
                parts.append(interp)
            logits = _full(self.d_train(parts, [y] * len(parts) if y is not None else None))
            real_logits, fake_logits = logits[:n], logits[n : 2 * n]
            loss = self.loss.d_loss(real_logits, fake_logits, self.train_spec.label_smoothing)
            if interp is not None:
                loss = loss + self.train_spec.gp_weight * gradient_penalty(logits[2 * n :], interp)
            if every_step:
                loss = loss + self._penalty(real_logits, real_x, fake_logits, fake_x, scale=1.0)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(list(self.d.parameters()))
        self.opt_d.step()
        with torch.no_grad():
            self._watch(0, loss)
            self._ada_observe(real_logits)
            s = self.stats.sums
            s[0] += loss.detach()
            if self.loss.probabilistic:
                real_logits, fake_logits = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
            s[2] += real_logits.mean()
            s[3] += fake_logits.mean()
        self.stats.d_steps += 1
        return fake

    def _penalty(self, real_logits: Tensor, real_x: Tensor, fake_logits: Tensor, fake_x: Tensor,
                 scale: float) -> Tensor:  # fmt: skip
        """gamma / 2 * E ||grad D||^2 at the real (R1) and the fake (R2) inputs, times ``scale``."""
        t = self.train_spec
        total = real_logits.new_zeros(())
        if t.r1_gamma:
            total = total + t.r1_gamma / 2 * gradient_sq_norm(real_logits, real_x)
        if t.r2_gamma:
            total = total + t.r2_gamma / 2 * gradient_sq_norm(fake_logits, fake_x)
        return total * scale

    def regularise(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> None:
        """Lazy R1/R2 (StyleGAN2): a D update of the penalty alone, times reg_interval, on the
        D step's real images (gradient taken before augmentation) and fakes."""
        t = self.train_spec
        n = real.size(0)
        y = labels if self.num_classes is not None else None
        real_x = real.detach().requires_grad_(True)
        fake_x = fake.detach().requires_grad_(True)
        inputs = [x for x, gamma in ((real_x, t.r1_gamma), (fake_x, t.r2_gamma)) if gamma]
        with self._autocast():
            parts = [self._augment(x) for x in inputs]
            logits = _full(self.d_train(parts, [y] * len(parts) if y is not None else None)).split(n)
            real_logits, fake_logits = logits[0], logits[-1]  # whichever are used
            loss = self._penalty(real_logits, real_x, fake_logits, fake_x, scale=float(t.reg_interval))
            # + 0 * D's output, as StyleGAN2-ADA's Dreg phase: parameters the penalty does not
            # reach (the output bias) still get a (zero) gradient, so DDP's all-reduce completes.
            loss = loss + 0.0 * torch.cat(logits).sum()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(list(self.d.parameters()))
        self.opt_d.step()

    def g_step(self, fake: Tensor, labels: Tensor | None) -> None:
        """(2) Update G: push D(G(z)) up, through D's plain module with D frozen."""
        y = labels if self.num_classes is not None else None
        self.d.requires_grad_(False)
        try:
            with self._autocast():
                loss = self.loss.g_loss(_full(self.d(self._augment(fake), y)))
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            self.d.requires_grad_(True)
        self._clip(list(self.g.parameters()))
        self.opt_g.step()
        if self.g_ema is not None:
            self._update_ema()
        with torch.no_grad():
            self._watch(1, loss)
        self.stats.sums[1] += loss.detach()
        self.stats.g_steps += 1

    def _watch(self, which: int, loss: Tensor) -> None:
        """Remember the first step at which loss ``which`` (0: D's, 1: G's) was not finite."""
        first = self._first_bad[which]
        bad = ~torch.isfinite(loss.detach()) & (first < 0)
        self._first_bad[which] = torch.where(bad, torch.full_like(first, self._batches), first)

    def nonfinite(self) -> dict[str, int]:
        """The losses that went non-finite since the last ``clear_nonfinite``, with the step
        at which each did first (one device sync)."""
        steps = self._first_bad.tolist()
        return {name: int(at) for name, at in zip(("d_loss", "g_loss"), steps, strict=True) if at >= 0}

    def clear_nonfinite(self) -> None:
        self._first_bad.fill_(-1.0)
        self.stats.reset()

    def weight_sums(self) -> tuple[float, float]:
        """(sum of G's and D's weights, sum of the EMA's; 0 without one), in float64: a
        non-finite weight makes its sum non-finite, and DDP keeps the first equal on every rank."""
        with torch.no_grad():
            gd = float(sum(p.double().sum() for net in (self.g, self.d) for p in net.parameters()))
            ema = float(sum(p.double().sum() for p in self.g_ema.parameters())) if self.g_ema is not None else 0.0
        return gd, ema

    def scale_lr(self, scale: float) -> None:
        """Set the learning rates to the spec's times ``scale`` (kept in checkpoints)."""
        self.lr_scale = scale
        self._set_lr()

    def _decay(self) -> float:
        """Linear lr_decay's factor for the next batch: 1 - k / K at G step k of K."""
        t = self.train_spec
        if t.lr_decay != "linear" or not self.run_batches:
            return 1.0
        total = max(self.run_batches // t.d_steps, 1)
        return max(1.0 - (self._batches // t.d_steps) / total, 0.0)

    def _set_lr(self) -> None:
        factor = self.lr_scale * self._decay()
        for opt, lr in ((self.opt_g, self.train_spec.lr_g), (self.opt_d, self.train_spec.lr_d * self.d_lr_c)):
            for group in opt.param_groups:
                group["lr"] = lr * factor

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.train_spec.ema_decay
        assert self.g_ema is not None and decay is not None
        ema_params = list(self.g_ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.g.parameters()], 1.0 - decay)
        for b_ema, b in zip(self.g_ema.buffers(), self.g.buffers(), strict=True):
            b_ema.copy_(b)

    def train_batch(self, real: Tensor, labels: Tensor | None) -> None:
        """One D step, plus a G step every ``d_steps`` batches."""
        if self.train_spec.lr_decay != "none" and self._batches % self.train_spec.d_steps == 0:
            self._set_lr()  # a new G step: its rate (and that of the D steps before it)
        self._batches += 1
        g_turn = self._batches % self.train_spec.d_steps == 0
        real = real.contiguous(memory_format=self.memory_format)
        fake = self.d_step(real, labels, keep_fake=g_turn)
        t = self.train_spec
        if (t.r1_gamma or t.r2_gamma) and t.reg_interval > 1 and (self._batches - 1) % t.reg_interval == 0:
            self.regularise(real, fake, labels)  # D steps 1, N + 1, 2N + 1, ... (StyleGAN2-ADA's phases)
        if g_turn:
            self.g_step(fake, labels)

    def take_stats(self) -> dict[str, float]:
        """Means since the last call (local to this rank); one device sync."""
        sums = self.stats.sums.tolist()
        d, g = max(self.stats.d_steps, 1), max(self.stats.g_steps, 1)
        per = (d, g, d, d)  # the G loss is summed per G step, the rest per D step
        out = {name: v / n for name, v, n in zip(self.stat_names, sums, per, strict=True)}
        self.stats.reset()
        if self.spec.augment.policy:
            out["augment_p"] = float(self.augment_p)
        r_t = float(self._ada[2])
        if self.spec.augment.ada_target is not None and r_t == r_t:  # NaN until the first adjustment
            out["ada_r_t"] = r_t
        return out

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        return {
            "g": self.g.state_dict(),
            "d": self.d.state_dict(),
            "g_ema": self.g_ema.state_dict() if self.g_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "batches": self._batches,
            "lr_scale": self.lr_scale,
            "precision": self.precision,
            "augment": {"p": float(self.augment_p), "ada": self._ada.tolist(), "ada_steps": self._ada_steps},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        if self.g_ema is not None:
            if state.get("g_ema") is not None:
                self.g_ema.load_state_dict(state["g_ema"])
            else:  # EMA switched on mid-run: start it from the current G.
                self.g_ema.load_state_dict(self.g.state_dict())
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self._batches = int(state.get("batches", 0))
        # The optimizer state carries the old learning rates; the resolved spec wins, so a
        # resumed job can change them (times what rollbacks scaled them by, and where the
        # batch count puts linear lr_decay).
        self.scale_lr(float(state.get("lr_scale", 1.0)))
        if self.train_spec.precision == "auto" and state.get("precision") in ("fp32", "bf16"):
            self.precision = str(state["precision"])  # a job keeps the arithmetic it started with
        saved = state.get("augment")
        if isinstance(saved, dict) and self.spec.augment.ada_target is not None:
            # ADA resumes where it was (stylegan2-ada-pytorch#81): p and the open interval.
            self.augment_p = torch.tensor(float(saved["p"]), dtype=torch.float64, device=self.device)
            self._ada = torch.tensor(saved["ada"], dtype=torch.float64, device=self.device)
            self._ada_steps = int(saved["ada_steps"])
        self.clear_nonfinite()
