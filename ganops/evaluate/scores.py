"""The requested scores of a generated feature set against a reference, with what they depend on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ganops.evaluate import inception_score as isc
from ganops.evaluate import kid, precision_recall
from ganops.evaluate.features import Features
from ganops.evaluate.frechet import frechet_distance_features
from ganops.evaluate.reference import Reference

# spec.eval.metrics entry → the values it produces (logged to MLflow as eval/<value>).
METRIC_VALUES: dict[str, tuple[str, ...]] = {
    "fid": ("fid",),
    "kid": ("kid_mean", "kid_std"),
    "is": ("is_mean", "is_std"),
    "pr": ("precision", "recall"),
}
MLFLOW_PREFIX = "eval/"


@dataclass
class Scores:
    values: dict[str, float]
    """fid, kid_mean, kid_std, is_mean, is_std, precision, recall (those requested)."""
    record: dict[str, Any] = field(default_factory=dict)
    """The values plus what they were computed from: sample count, reference, settings."""

    @property
    def fid(self) -> float | None:
        return self.values.get("fid")

    def mlflow_metrics(self) -> dict[str, float]:
        return {MLFLOW_PREFIX + k: v for k, v in self.values.items()}

    def table(self) -> str:
        """The scores as a small aligned table, with what they were computed from."""
        rows = [(k, f"{v:.6g}") for k, v in self.values.items()]
        width = max(len(k) for k, _ in rows)
        lines = [f"{'metric':<{width}}  value"] + [f"{k:<{width}}  {v}" for k, v in rows]
        r = self.record
        ref = r["reference"]
        lines.append(
            f"({r['num_samples']} generated vs {ref['num_images']} {ref['dataset']} {ref['split']} images; "
            f"Inception {str(r.get('inception_sha256'))[:8]})"
        )
        return "\n".join(lines)


def compute(fake: Features, ref: Reference, metrics: Sequence[str]) -> Scores:
    unknown = [m for m in metrics if m not in METRIC_VALUES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRIC_VALUES)}")
    if len(fake) < 2:
        raise ValueError(f"need at least 2 generated samples (got {len(fake)})")
    t0 = time.perf_counter()
    values: dict[str, float] = {}
    settings: dict[str, Any] = {}
    if "fid" in metrics:
        values["fid"] = frechet_distance_features(ref.pool3, fake.pool3, (ref.mu, ref.sigma))
    if "kid" in metrics:
        values["kid_mean"], values["kid_std"] = kid.kernel_inception_distance(ref.pool3, fake.pool3)
        size = kid.subset_size_for(len(ref.pool3), len(fake))
        settings["kid"] = {"subsets": kid.SUBSETS, "subset_size": size, "kernel": "(x.y/d+1)^3",
                           "estimator": "unbiased"}  # fmt: skip
    if "is" in metrics:
        values["is_mean"], values["is_std"] = isc.inception_score(fake.logits)
        settings["is"] = {"splits": min(isc.SPLITS, len(fake)), "logits": "bias-free, 1008 classes"}
    if "pr" in metrics:
        values["precision"], values["recall"] = precision_recall.precision_recall(ref.pool3, fake.pool3)
        settings["pr"] = {"k": precision_recall.neighbourhood_size(len(ref.pool3), len(fake))}
    meta = ref.meta
    record = {
        **values,
        "num_samples": len(fake),
        "reference": {
            "dataset": meta.get("dataset"), "root": meta.get("root"), "split": meta.get("split"),
            "num_images": ref.num_images, "available": meta.get("available"), "key": meta.get("key"),
            "cached": ref.cached,
        },
        "inception_sha256": meta.get("inception_sha256"),
        "features": "Inception-v3 pool3 (2048), images resized to 299x299 bilinear, scaled to [-1, 1]",
        **settings,
        "score_time_s": round(time.perf_counter() - t0, 3),
    }  # fmt: skip
    return Scores(values, record)
