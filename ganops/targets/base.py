"""What every remote target answers: the job verbs and one row type for their output."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class JobStatus:
    """One job as ``ganops status`` / ``ganops list`` show it."""

    name: str
    """The job's metadata.name (training) or generation name."""
    kind: str
    """``train`` or ``generate``."""
    phase: str
    """One of ``ganops.phases.PHASES``."""
    target: str
    """``ray`` or ``k8s``."""
    id: str | None = None
    """The backend's handle: the Ray submission id, or the RayJob's name."""
    namespace: str | None = None
    submitted: str | None = None
    """RFC 3339 UTC times."""
    started: str | None = None
    finished: str | None = None
    message: str | None = None
    mlflow_run_id: str | None = None
    latest_checkpoint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Backend-specific extras (RayJob jobStatus / jobDeploymentStatus, Ray job metadata...)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}


class Target(Protocol):
    """A place jobs run. Names are job names (metadata.name), unique per target/namespace."""

    name: str

    def submit_train(self, job: Any, *, restart: bool = False) -> JobStatus:
        """Start training ``job`` (a validated ``GANJob``); returns its first status."""
        ...

    def submit_generate(self, gen: Any) -> JobStatus:
        """Start the generation job ``gen`` (a validated ``GANGeneration``)."""
        ...

    def status(self, name: str) -> JobStatus:
        """The job's current status; ``UserError`` naming the job when there is none."""
        ...

    def list(self) -> list[JobStatus]:
        """All ganops jobs on the target, newest first."""
        ...

    def logs(self, name: str, *, follow: bool = False) -> Iterator[str]:
        """The job driver's output, as chunks of text (until the job ends with ``follow``)."""
        ...

    def cancel(self, name: str) -> JobStatus:
        """Stop the job; the status after the request."""
        ...
