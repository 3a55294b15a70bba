"""Judge a generator by what an MNIST classifier sees in its samples.

Three numbers per generator:
- **FD**: the Fréchet distance between Gaussians fitted to the classifier's penultimate
  features of the samples and of the 2,000 held-out real digits (FID, with an MNIST
  classifier instead of Inception). Lower is better; noise and collapse score high.
- **coverage**: how many of the 10 classes hold at least 5% of the samples (a collapsed
  generator draws one or two classes).
- **agreement** (conditional generators): the share of samples the classifier puts in
  the class they were asked for.

From the command line, on a finished job (a run directory or one checkpoint)::

    .venv/bin/python -m tests.learning.judge runs/mnist-dcgan
    .venv/bin/python -m tests.learning.judge runs/cifar-dcgan/checkpoints/epoch_0005 -n 2000

The classifier is trained on first use (about a minute on 2 CPUs) and cached.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from tests.learning import classifier
from tests.learning.data import Digits, mnist, to_judged, unit

SAMPLES = 1000
MIN_SHARE = 0.05  # a class "is there" when it holds at least 5% of the samples

# -- the bar (the learning tier's pass rule; tests/learning/fixtures.py says why) ----------
# A generator passes when its samples are digit-like (FD below CEILING_FRACTION x the lowest
# FD that noise or collapse scores), cover MIN_CLASSES classes, and (conditional) show the
# class asked for in MIN_AGREEMENT of the samples.
CEILING_FRACTION = 0.5
MIN_CLASSES = 8
MIN_AGREEMENT = 0.8


def frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), in float64."""
    with warnings.catch_warnings():
        # A collapsed set has a singular covariance; sqrtm warns, the offset below handles it.
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            eps = np.eye(len(s1)) * 1e-6  # as the FID reference code does
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _stats(feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


@dataclass
class Verdict:
    """What the judge saw in one set of samples."""

    fd: float
    shares: list[float]
    agreement: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def classes(self) -> int:
        """Classes holding at least ``MIN_SHARE`` of the samples."""
        return sum(s >= MIN_SHARE for s in self.shares)

    def line(self) -> str:
        agree = f" | agreement {self.agreement:.0%}" if self.agreement is not None else ""
        return f"FD {self.fd:7.2f} | classes >= 5%: {self.classes:2d}/10{agree}"


class Judge:
    """The trained classifier plus the feature statistics of the held-out real digits."""

    def __init__(self, net: classifier.DigitNet, held_out: Digits) -> None:
        self.net = net
        self.held_out = held_out
        self.accuracy = classifier.accuracy(net, held_out)
        feats, _ = net.features_and_logits(unit(held_out.images))
        self.mu, self.sigma = _stats(feats)

    @classmethod
    def create(cls, log: bool = False) -> Judge:
        train, held = mnist()
        return cls(classifier.load_or_train(train, log=log), held)

    def judge(self, images: Tensor, wanted: Tensor | None = None) -> Verdict:
        """Samples in [-1, 1] of any job's shape (28/32 px, grey/RGB); ``wanted``: their asked-for classes."""
        x = to_judged(images)
        feats, logits = self.net.features_and_logits(x)
        fd = frechet(*_stats(feats), self.mu, self.sigma)
        pred = logits.argmax(1)
        shares = (torch.bincount(pred, minlength=10).float() / len(pred)).tolist()
        agreement = float((pred == wanted.cpu()).float().mean()) if wanted is not None else None
        return Verdict(fd, shares, agreement)

    def judge_generator(self, g: nn.Module, n: int = SAMPLES, seed: int = 0) -> Verdict:
        return self.judge(*sample(g, n, seed))

    def baselines(self, shape: tuple[int, int, int] = (1, 28, 28), n: int = SAMPLES) -> dict[str, Verdict]:
        """What failure scores: noise, one image repeated, one class of real digits (and real digits)."""
        gen = torch.Generator().manual_seed(0)
        held = unit(self.held_out.images)
        one_class = held[torch.from_numpy(self.held_out.labels == 1)]
        # Half the held-out set against the statistics of all of it: how close "real" gets.
        real_half = held[torch.randperm(len(held), generator=gen)[: len(held) // 2]]
        sets = {
            "real digits (held-out)": real_half,
            "uniform noise": torch.rand(n, *shape, generator=gen) * 2 - 1,
            "gaussian noise": (torch.randn(n, *shape, generator=gen) * 0.5).clamp(-1, 1),
            "one image repeated": held[:1].expand(n, -1, -1, -1),
            "one class of real digits": one_class,
        }
        return {name: self.judge(x) for name, x in sets.items()}


@torch.no_grad()
def sample(g: nn.Module, n: int = SAMPLES, seed: int = 0, eval_mode: bool = True) -> tuple[Tensor, Tensor | None]:
    """``n`` samples of G, in eval mode by default (as ganops' grids and exported models draw them).

    Conditional generators are asked for each class equally often; returns (images, classes).
    """
    was_training = g.training
    g.train(not eval_mode)
    gen = torch.Generator().manual_seed(seed)
    device = next(g.parameters()).device
    z = torch.randn(n, g.latent_dim, generator=gen).to(device)
    y = torch.arange(n) % g.num_classes if getattr(g, "num_classes", None) else None
    images = torch.cat([g(z[i : i + 500], y[i : i + 500].to(device) if y is not None else None)
                        for i in range(0, n, 500)])  # fmt: skip
    g.train(was_training)
    return images.cpu(), y


def ceiling_of(judge: Judge) -> float:
    """The FD a generator must stay below: a fraction of the best that noise or collapse reaches."""
    failed = [v.fd for name, v in judge.baselines().items() if not name.startswith("real")]
    return CEILING_FRACTION * min(failed)


def failures(v: Verdict, ceiling: float, conditional: bool = False) -> list[str]:
    """Why ``v`` fails the bar; empty: it passes."""
    out = []
    if v.fd >= ceiling:
        out.append(f"not digit-like (FD {v.fd:.1f} >= ceiling {ceiling:.1f})")
    if v.classes < MIN_CLASSES:
        out.append(f"too few classes ({v.classes} with >= 5% of the samples, want {MIN_CLASSES})")
    if conditional and (v.agreement is None or v.agreement < MIN_AGREEMENT):
        out.append(f"samples do not show the class asked for (agreement {v.agreement or 0:.0%})")
    return out


# --- command line ---------------------------------------------------------------------

_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32)}


def load_checkpoint_generator(path: Path) -> tuple[nn.Module, str]:
    """G (its EMA when the job keeps one) from a checkpoint directory or a job's run directory."""
    from ganops import client, jobdir

    if not (path / jobdir.STATE_FILE).exists():
        latest = jobdir.JobDir(str(path.parent), path.name).latest_checkpoint()
        if latest is None:
            raise SystemExit(f"{path}: neither a checkpoint (no {jobdir.STATE_FILE}) nor a job with a complete one")
        path = Path(latest.uri.removeprefix("file://"))
    job = client.load_job(path / jobdir.SPEC_FILE, resolve_paths=False)
    spec = job.spec
    if spec.data.dataset in _SHAPES:
        shape = _SHAPES[spec.data.dataset]
    elif spec.data.image_size is not None:
        shape = (spec.data.channels or 3, spec.data.image_size, spec.data.image_size)
    else:
        from ganops import data as gdata

        shape = gdata.probe(spec.data).shape
    from ganops.nets import build_generator

    state = torch.load(path / jobdir.STATE_FILE, map_location="cpu", weights_only=True)
    nets = state["nets"]
    g = build_generator(spec.model, shape, 10 if spec.model.conditional else None)
    which = "g_ema" if nets.get("g_ema") is not None else "g"
    g.load_state_dict(nets[which])
    return g, f"{path} ({which}, {job.name}, step {state['position']['step']})"


def main(argv: list[str] | None = None) -> Verdict:
    p = argparse.ArgumentParser(prog="python -m tests.learning.judge", description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a job's run directory (<storage>/<name>) or one checkpoint directory")
    p.add_argument("-n", "--samples", type=int, default=SAMPLES, help=f"samples to judge (default {SAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the samples")
    args = p.parse_args(argv)
    g, what = load_checkpoint_generator(args.path.resolve())
    judge = Judge.create(log=True)
    print(f"classifier: {judge.accuracy:.1%} on {len(judge.held_out)} held-out digits")
    v = judge.judge_generator(g, args.samples, args.seed)
    print(f"generator:  {what}")
    print(f"FD {v.fd:.2f} on {args.samples} samples (classifier features, vs the held-out digits)")
    print("class shares: " + "  ".join(f"{k}:{s:.1%}" for k, s in enumerate(v.shares)))
    print(f"classes with >= {MIN_SHARE:.0%} of the samples: {v.classes}/10")
    if v.agreement is not None:
        print(f"agreement with the asked-for class: {v.agreement:.1%}")
    base = judge.baselines()
    print("for scale: " + " | ".join(f"{name} FD {b.fd:.1f}" for name, b in base.items()))
    ceiling = ceiling_of(judge)
    why = failures(v, ceiling, conditional=v.agreement is not None)
    if why:
        print(f"verdict: not yet digits of {MIN_CLASSES}+ classes: {'; '.join(why)}")
    else:
        print(f"verdict: digits of {v.classes} classes (FD {v.fd:.0f}, below the bar of {ceiling:.0f}): learned")
    return v


if __name__ == "__main__":
    main()
    sys.exit(0)
