"""Finding a run by what ganops tagged it with, for readers that only know the object.

The operator knows a GANJob by its Kubernetes uid; the trainer tags its MLflow run with it
(``ganops.tracking._tags``), so the GANJob's status can point at the run and its newest
checkpoint without the pods reporting back.
"""

from __future__ import annotations

from typing import Any

from ganops.tracking import CHECKPOINT_TAG, HEALTH_TAG, K8S_UID_TAG, mlflow_client


def run_of_k8s_object(tracking_uri: str, uid: str) -> dict[str, Any]:
    """``{mlflowRunId, latestCheckpoint, health}`` of the newest run tagged with ``uid``; {} if none."""
    client = mlflow_client(tracking_uri)
    runs = client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{K8S_UID_TAG}` = '{uid}'", max_results=1, order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    if not runs:
        return {}
    run = runs[0]
    out = {"mlflowRunId": run.info.run_id}
    if run.data.tags.get(CHECKPOINT_TAG):
        out["latestCheckpoint"] = run.data.tags[CHECKPOINT_TAG]
    if run.data.tags.get(HEALTH_TAG):
        out["health"] = run.data.tags[HEALTH_TAG]
    return out
