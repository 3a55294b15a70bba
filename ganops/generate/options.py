"""What a generation job is asked to do, and what it knows about the model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ganops.errors import UserError

if TYPE_CHECKING:
    from ganops.spec.generation import GANGenerationSpec

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

    def __post_init__(self) -> None:
        # Checked here, where every caller (the CLI, the SDK, a remote driver) builds its
        # options, so that `--num 0` is refused before a model is looked up.
        if not isinstance(self.num, int) or self.num < 1:
            raise UserError(f"--num: must be a positive number of images (got {str(self.num)[:80]})", field="--num")
        for flag, value, least in (("--batch-size", self.batch_size, 1), ("--best-of", self.best_of, 1),
                                   ("--shard-size", self.shard_size, 1), ("--seed", self.seed, 0)):  # fmt: skip
            if not isinstance(value, int) or value < least:
                raise UserError(f"{flag}: must be >= {least} (got {str(value)[:80]})", field=flag)
        if self.truncation is not None and not (self.truncation > 0 and math.isfinite(self.truncation)):
            raise UserError(f"--truncation: must be > 0 and finite (got {self.truncation})", field="--truncation")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise UserError(f"--format: expected png, npz or both (got {','.join(self.formats)})", field="--format")
        if self.z_file is not None and (not self.z_file.strip() or "\0" in self.z_file):
            raise UserError(f"--z: {self.z_file[:80]!r} is not a file name", field="--z")

    @classmethod
    def from_spec(cls, spec: GANGenerationSpec, num: int) -> GenerateOptions:
        """The options a validated ``GANGeneration`` asks for; ``num`` resolved (see its field)."""
        formats = ("png", "npz") if spec.format == "both" else (spec.format,)
        return cls(
            num=num, seed=spec.seed, batch_size=spec.batch_size, truncation=spec.truncation,
            class_index=spec.class_index, best_of=spec.best_of, interpolate=spec.interpolate, z_file=spec.z_file,
            save_z=spec.save_z, formats=formats, shard_size=spec.shard_size,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["formats"] = list(self.formats)
        return d
