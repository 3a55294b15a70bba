"""Per-rank batches from an in-memory uint8 dataset.

Datasets here fit in memory (MNIST 47 MB, CIFAR-10 150 MB), so a batch is one index
gather plus one uint8 → float conversion: no DataLoader processes, no per-image Python.
``DistributedSampler`` gives each rank a disjoint, epoch-seeded share; a resumed run
skips to the exact batch it stopped at.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DistributedSampler


class RankBatches:
    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels) if labels is not None else None
        if self.device.type == "cuda" and self.images.numel() < 2**31:
            # Small datasets live on the GPU: batches are gathered there, no host copies.
            self.images = self.images.to(self.device)
            self.labels = self.labels.to(self.device) if self.labels is not None else None
        self.batch_size = batch_size
        self.sampler = DistributedSampler(
            range(len(self.images)), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        # Whole batches only: every rank takes the same number of steps, and BatchNorm
        # never sees a batch of one.
        self.per_epoch = len(self.sampler) // batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Batches of ``epoch`` from batch index ``start``: images in [-1, 1], labels or None."""
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long, device=self.images.device)
        b = self.batch_size
        for i in range(start, self.per_epoch):
            sel = order[i * b : (i + 1) * b]
            real = self.images[sel].to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
            y = self.labels[sel].to(self.device, non_blocking=True) if self.labels is not None else None
            yield real, y
