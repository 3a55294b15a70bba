"""An evaluation as a spec (the ``GANEvaluation`` kind): what ``ganops evaluate`` runs.

Its fields are the ``ganops evaluate`` options. The command builds one from its flags and
validates it here, through the same loader as the other kinds; the evaluation's MLflow
run keeps it (``evaluation.yaml``). Unset fields take the training run's ``spec.eval``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ganops.spec.generation import GenerationTracking, ModelSource
from ganops.spec.models import API_VERSION, Location, Metadata, PositiveInt, Seed, _Resource, check_metrics

EVALUATION_KIND = "GANEvaluation"
# Where Inception runs: a torch device name.
_DEVICE = r"cpu|cuda(:[0-9]{1,2})?|mps"


class GANEvaluationSpec(ModelSource):
    num_samples: Annotated[int, Field(ge=2)] | None = None
    """Generated (and reference) images (unset: the run's `eval.num_samples`); FID needs a covariance, so >= 2."""
    metrics: list[Literal["fid", "kid", "is", "pr"]] | None = None
    """Which scores (unset: the run's `eval.metrics`)."""
    inception_weights: Location | None = None
    """The FID Inception-v3 weights, local or s3:// (unset: the run's `eval.inception_weights`, else the
    published file, downloaded once into $GANOPS_CACHE)."""
    inception_sha256: str | None = None
    """Expected sha256 of the weights (unset: the pinned pytorch-fid file's)."""
    reference_split: Literal["train", "test"] | None = None
    """Real split to compare against (unset: the run's `eval.reference_split`, else its `data.split`)."""
    data_root: Location | None = None
    """Where the dataset's files are here (unset: the run's `data.root`)."""
    batch_size: PositiveInt | None = None
    """Images per Inception pass (unset: the run's `eval.batch_size`)."""
    seed: Seed | None = None
    """Seed of the latents (unset: the run's `train.seed`)."""
    device: str | None = None
    """Where Inception runs: cpu, cuda, cuda:1 (unset: cuda when available)."""
    log: bool = True
    """Record the scores as an MLflow evaluation run tagged with the training run."""
    tracking: GenerationTracking = Field(default_factory=GenerationTracking)
    """Where the model's run is, and where this evaluation's own run goes."""

    @field_validator("inception_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError(f"expected 64 hex digits (got {len(v)} characters)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(_DEVICE, v):
            raise ValueError("expected cpu, cuda, cuda:N or mps")
        return v

    _metrics = field_validator("metrics")(classmethod(lambda _cls, v: check_metrics(v)))


class GANEvaluation(_Resource):
    apiVersion: Literal["ganops.io/v1alpha1"] = API_VERSION  # noqa: N815 - Kubernetes field name
    kind: Literal["GANEvaluation"] = EVALUATION_KIND
    metadata: Metadata
    spec: GANEvaluationSpec
