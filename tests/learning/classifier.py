"""The judge's eyes: a small MNIST CNN, trained once and cached on disk.

Trained on the first 8,000 images of the shared split, scored on the last 2,000 (never
trained on). Its penultimate layer (128 ReLU features) is the space the Fréchet distance
is measured in; its argmax is the class a sample is counted as.

The weights are cached in ``~/.cache/ganops-tests/`` under a hash of this file and the
torch version: changing the training code retrains, a missing cache retrains.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from tests.learning.data import Digits, unit

FEATURES = 128
EPOCHS = 4
BATCH = 128
SEED = 1234
MIN_ACCURACY = 0.97
CACHE = Path(os.environ.get("GANOPS_TEST_CACHE", Path.home() / ".cache" / "ganops-tests"))


class DigitNet(nn.Module):
    """conv 32 -> pool -> conv 64 -> pool -> 128 features -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features_and_logits(self, x: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
        """(N, 128) penultimate features and (N, 10) logits of images in [-1, 1], 1x28x28."""
        feats, logits = [], []
        for i in range(0, len(x), batch):
            f = self.body(x[i : i + batch])
            feats.append(f)
            logits.append(self.head(f))
        return torch.cat(feats), torch.cat(logits)


def code_hash() -> str:
    """What the cached weights depend on: this file's source and the torch version."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def _shift(x: Tensor, gen: torch.Generator) -> Tensor:
    # Random shifts of up to 2 px: GAN digits are rarely centred like MNIST's, and the
    # classifier should not call a digit noise for sitting a pixel off.
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(data: Digits, log: bool = False) -> DigitNet:
    """A fresh classifier trained on ``data`` (seeded: the same data gives the same weights)."""
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    net = DigitNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = unit(data.images), torch.from_numpy(data.labels)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - BATCH + 1, BATCH):
            sel = order[i : i + BATCH]
            loss = loss_fn(net(_shift(x[sel], gen)), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if log:
            print(f"classifier epoch {epoch + 1}/{EPOCHS}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    return net.eval().requires_grad_(False)


def accuracy(net: DigitNet, data: Digits) -> float:
    _, logits = net.features_and_logits(unit(data.images))
    return float((logits.argmax(1) == torch.from_numpy(data.labels)).float().mean())


def load_or_train(data: Digits, log: bool = False) -> DigitNet:
    """The cached classifier for this code, trained (and cached) when there is none."""
    path = CACHE / f"mnist-classifier-{code_hash()}.pt"
    net = DigitNet()
    if path.exists():
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval().requires_grad_(False)
        except (OSError, RuntimeError, ValueError):
            pass  # a broken cache file is retrained over
    net = train(data, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)  # atomic: a concurrent session never reads half a file
    return net
