"""A generation job as a spec (the ``GANGeneration`` kind): what ``ganops generate``
runs, written down so that it can run elsewhere, on a Ray cluster or through the operator.

Its fields are the ``ganops generate`` options, so the remote driver runs exactly the
command a user would type (``to_args``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ganops.errors import FieldValueError
from ganops.spec.models import (
    API_VERSION,
    ClusterSpec,
    Metadata,
    PathStr,
    PositiveInt,
    RequiredPath,
    Seed,
    _Resource,
    _Strict,
)

GENERATION_KIND = "GANGeneration"


class GenerationTracking(_Strict):
    uri: PathStr | None = None
    """MLflow tracking URI (default: the cluster's, i.e. the operator's MLFLOW_TRACKING_URI)."""


class GANGenerationSpec(_Strict):
    run_id: str | None = None
    """The training run whose generator to use."""
    model: str | None = None
    """Or a registered generator: models:/NAME@ALIAS or models:/NAME/VERSION."""
    out: RequiredPath
    """Output: s3://bucket/prefix (or a path every node shares); must not hold a finished job."""
    num: PositiveInt = 64
    """Images to make (with `interpolate`: walks)."""
    format: Literal["png", "npz", "both"] = "png"
    seed: Seed = 0
    batch_size: PositiveInt = 256
    truncation: Annotated[float, Field(gt=0)] | None = None
    class_index: Annotated[int, Field(ge=0)] | None = None
    best_of: PositiveInt = 1
    interpolate: PositiveInt | None = None
    z_file: PathStr | None = None
    save_z: bool = False
    shard_size: PositiveInt = 1024
    workers: PositiveInt = 1
    """Ray workers, each loading G once."""
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    tracking: GenerationTracking = Field(default_factory=GenerationTracking)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @model_validator(mode="after")
    def _one_source(self) -> GANGenerationSpec:
        if (self.run_id is None) == (self.model is None):
            raise FieldValueError("run_id", "set exactly one of run_id and model")
        return self

    def to_args(self) -> list[str]:
        """The ``ganops generate`` arguments this spec stands for."""
        args = ["--run-id", self.run_id] if self.run_id else ["--model", str(self.model)]
        args += ["--out", self.out, "--num", str(self.num), "--format", self.format, "--seed", str(self.seed)]
        args += ["--batch-size", str(self.batch_size), "--best-of", str(self.best_of)]
        args += ["--shard-size", str(self.shard_size), "--workers", str(self.workers)]
        if self.gpus_per_worker:
            args += ["--gpus-per-worker", f"{self.gpus_per_worker:g}"]
        for flag, value in (("--truncation", self.truncation), ("--class", self.class_index),
                            ("--interpolate", self.interpolate), ("--z", self.z_file),
                            ("--tracking-uri", self.tracking.uri)):  # fmt: skip
            if value is not None:
                args += [flag, str(value)]
        if self.save_z:
            args.append("--save-z")
        return args


class GANGeneration(_Resource):
    apiVersion: Literal["ganops.io/v1alpha1"] = API_VERSION  # noqa: N815 - Kubernetes field name
    kind: Literal["GANGeneration"] = GENERATION_KIND
    metadata: Metadata
    spec: GANGenerationSpec
