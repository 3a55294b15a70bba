"""What a generation job is asked to do, and what it knows about the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FORMATS = ("png", "npz")


@dataclass(frozen=True)
class ModelInfo:
    """The generator's contract (from the MLflow model's metadata and the training spec)."""

    latent_dim: int
    num_classes: int | None
    image_shape: tuple[int, int, int]  # (C, H, W)


@dataclass(frozen=True)
class GenerateOptions:
    num: int
    """Images to produce (with --interpolate: the number of walks)."""
    seed: int = 0
    batch_size: int = 256
    truncation: float | None = None
    """Resample latent entries whose magnitude exceeds this threshold."""
    class_index: int | None = None
    """Only this class (conditional models); None: classes cycle i % num_classes."""
    best_of: int = 1
    """Make best_of candidates per image and keep the one D rates most real."""
    interpolate: int | None = None
    """Steps of each walk between consecutive seeds (writes a grid and a GIF)."""
    z_file: str | None = None
    """Latent vectors to use (.npy or .npz), one image each."""
    save_z: bool = False
    formats: tuple[str, ...] = ("png",)
    shard_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["formats"] = list(self.formats)
        return d
