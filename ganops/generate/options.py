"""What a generation job knows about the model (what it is asked to do is the
``GANGenerationSpec``, resolved by ``client.generate``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    """The generator's contract (from the MLflow model's metadata and the training spec)."""

    latent_dim: int
    num_classes: int | None
    image_shape: tuple[int, int, int]  # (C, H, W)
