"""A generation job as a spec (the ``GANGeneration`` kind): what ``ganops generate``
runs, written down so that it can run elsewhere, on a Ray cluster or through the operator.

Its fields are the ``ganops generate`` options. ``ganops generate`` builds one from its
flags for every target and validates it here; a remote driver receives the spec itself
(``ganops generate --spec-b64``), as training's does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ganops.errors import FieldValueError, short
from ganops.spec.models import (
    API_VERSION,
    ClusterSpec,
    Location,
    Metadata,
    PositiveInt,
    RequiredLocation,
    Seed,
    TrackingUri,
    _Resource,
    _Strict,
)

GENERATION_KIND = "GANGeneration"

# What one job may ask for, whatever the model (the memory a job needs given the model is
# checked where the model is known, ganops.generate.limits). The manifest lists every file
# with its sha256 (~100 bytes a PNG), so 10^8 images already make a ~10 GB manifest and
# ~1 h of one H200 at its measured 25.9k img/s; more is several jobs (other seeds).
MAX_NUM = 100_000_000
# An interpolation is one grid (walks x steps tiles) and one GIF of `steps` frames, made in
# memory: a GIF of 1,000 frames at 120 ms already plays for two minutes.
MAX_INTERPOLATE_STEPS = 1000


class GenerationTracking(_Strict):
    uri: TrackingUri | None = None
    """MLflow tracking URI (default: the cluster's, i.e. the operator's MLFLOW_TRACKING_URI)."""


class ModelSource(_Strict):
    """The generator a job uses: a training run's, or a registered version (exactly one)."""

    run_id: str | None = None
    """The training run whose generator to use."""
    model: str | None = None
    """Or a registered generator: models:/NAME@ALIAS or models:/NAME/VERSION."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.run_id is None) == (self.model is None):
            raise FieldValueError("run_id", "set exactly one of run_id and model")
        return self


class GANGenerationSpec(ModelSource):
    out: RequiredLocation
    """Output: s3://bucket/prefix (or a path every node shares); must not hold a finished job."""
    num: PositiveInt | None = None
    """Images to make (with `interpolate`: walks); unset: one per vector of `z_file`, else 64."""
    format: Literal["png", "npz", "both"] = "png"
    """PNG files (a folder per shard), uint8 .npz shards, or both."""
    seed: Seed = 0
    """Image i depends only on (seed, i): the same seed gives byte-identical images."""
    batch_size: PositiveInt = 256
    """Images per forward pass of G (and D with `best_of`)."""
    truncation: Annotated[float, Field(gt=0)] | None = None
    """Resample latent entries whose magnitude exceeds this (e.g. 1.5): sharper, less varied."""
    class_index: Annotated[int, Field(ge=0)] | None = None
    """Only this class (conditional models); unset: classes cycle i % num_classes."""
    best_of: PositiveInt = 1
    """K candidates per image; keep the one that the discriminator saved with G rates most real."""
    interpolate: PositiveInt | None = None
    """Walk (slerp) between consecutive seeds in this many steps (>= 2): a grid and a GIF of `num` walks."""
    z_file: Location | None = None
    """Latent vectors to use, one image each: .npy [N, latent] (conditional: + a class column) or .npz (z, labels)."""
    save_z: bool = False
    """Store each image's latent vector with it (npz shards)."""
    shard_size: PositiveInt = 1024
    """Images per shard (a multiple of `batch_size` wastes no G rows)."""
    workers: PositiveInt = 1
    """Ray workers, each loading G once (1: in the driver)."""
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    """GPUs each worker reserves (on Kubernetes: per worker pod)."""
    tracking: GenerationTracking = Field(default_factory=GenerationTracking)
    """Where the model's run is, and where this job's own run goes."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    """Pod sizes and image on Kubernetes (unset: the operator's defaults)."""

    @property
    def count(self) -> int:
        """`num` once resolved: the engine runs only specs that ``client.generate`` resolved."""
        if self.num is None:
            raise ValueError("GANGenerationSpec.num is unresolved (client.generate fills it in)")
        return self.num

    @property
    def formats(self) -> tuple[str, ...]:
        """The shard formats `format` asks for."""
        return ("png", "npz") if self.format == "both" else (self.format,)

    def params(self) -> dict[str, object]:
        """What decides the images (logged as the generation run's MLflow params)."""
        keep = ("num", "seed", "batch_size", "truncation", "class_index", "best_of", "interpolate", "z_file",
                "save_z", "format", "shard_size")  # fmt: skip
        return {k: getattr(self, k) for k in keep}

    @model_validator(mode="after")
    def _combinations(self) -> GANGenerationSpec:
        # Checked wherever the spec is (the CLI, the operator, the remote driver), before any
        # model is looked up.
        if self.z_file and self.best_of > 1:
            raise FieldValueError(
                "best_of", "cannot be combined with z_file (--z): the vectors are given, there is nothing to pick from"
            )
        if self.interpolate is not None and (self.z_file or self.best_of > 1):
            raise FieldValueError("interpolate", "cannot be combined with z_file (--z) or best_of")
        if self.interpolate is not None and self.interpolate < 2:
            raise FieldValueError("interpolate", f"needs at least 2 steps (got {self.interpolate})")
        if self.interpolate is not None and self.interpolate > MAX_INTERPOLATE_STEPS:
            raise FieldValueError(
                "interpolate", f"at most {MAX_INTERPOLATE_STEPS:,} steps per walk (got {short(self.interpolate)})"
            )
        if self.num is not None and self.num > MAX_NUM:
            raise FieldValueError(
                "num",
                f"at most {MAX_NUM:,} images per job (got {short(self.num)}); make more as several jobs "
                "with other --seed values and --out locations",
            )
        return self


class GANGeneration(_Resource):
    apiVersion: Literal["ganops.io/v1alpha1"] = API_VERSION  # noqa: N815 - Kubernetes field name
    kind: Literal["GANGeneration"] = GENERATION_KIND
    metadata: Metadata
    spec: GANGenerationSpec
