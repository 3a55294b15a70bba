"""The logged generator's one input, in one place: z, then (conditional models) the class
index as a last float column: ``[z_1 … z_latent, class]``.

MLflow's PyTorch flavour serves a single input, so the exported G (``nets/export.py``),
``ganops generate`` (its batches and ``--z`` files) and ``ganops evaluate`` all speak this.
numpy only at import: the torch variants import torch when called.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def join_class_np(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """[N, latent] z and [N] classes (or None) → the model's float32 [N, latent (+1)] input."""
    z = np.asarray(z, dtype=np.float32)
    if labels is None:
        return np.ascontiguousarray(z)
    return np.concatenate([z, np.asarray(labels, dtype=np.float32)[:, None]], axis=1)


def split_class_np(x: np.ndarray, latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's input → (z, the class column as stored: callers check it)."""
    return x[:, :latent_dim], x[:, latent_dim]


def join_class(z: Any, y: Any | None) -> Any:
    """``join_class_np`` for torch tensors."""
    import torch

    return z if y is None else torch.cat([z, y.to(z.dtype)[:, None]], dim=1)


def split_class(x: Any, latent_dim: int) -> tuple[Any, Any]:
    """``split_class_np`` for torch tensors, classes rounded to int64."""
    return x[:, :latent_dim], x[:, latent_dim].round().long()
