"""The form of G that goes to MLflow: one float32 array in, images out.

MLflow's PyTorch flavour serves a single input, so a conditional generator takes the
class index as an extra last column: ``[z_1 … z_latent, class]``. Output: (N, C, H, W)
float32 in [-1, 1]. Weights are copied to the CPU in eval mode (BatchNorm running
statistics, no dropout).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ganops.model_input import join_class_np, split_class
from ganops.nets.syncbn import revert_sync_batchnorm


class GeneratorExport(nn.Module):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        # Plain BatchNorm again: a synchronised one would need a process group to load.
        g = revert_sync_batchnorm(copy.deepcopy(generator)).cpu().eval()
        self.g = g.to(memory_format=torch.contiguous_format)
        self.latent_dim: int = g.latent_dim
        self.num_classes: int | None = g.num_classes
        self.image_shape: tuple[int, int, int] = tuple(g.image_shape)

    @property
    def input_width(self) -> int:
        return self.latent_dim + (1 if self.num_classes else 0)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.num_classes:
            return self.g(*split_class(x, self.latent_dim))
        return self.g(x)

    def example_input(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        return join_class_np(z, np.arange(n) % self.num_classes if self.num_classes else None)

    def metadata(self) -> dict[str, Any]:
        return {
            "ganops_latent_dim": self.latent_dim,
            "ganops_num_classes": self.num_classes or 0,
            "ganops_image_shape": list(self.image_shape),
            "ganops_input": "z" + (" + class index as the last column" if self.num_classes else ""),
        }
