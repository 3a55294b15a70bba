"""The MLflow runs beside training's, and the logged generator read back.

``ganops generate`` and ``ganops evaluate`` each record their own run (options as params,
counts or scores as metrics, a JSON record as an artifact) next to the training run whose
model they used; both read that model's metadata and weights. Only this package speaks to
MLflow (import-linter holds the line), so they come here for it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from ganops.errors import UserError
from ganops.tracking import mlflow_client, scoped_tracking_uri

# MLflow's limit for a param value is 6,000 characters.
_PARAM_MAX = 6000


def open_run(uri: str, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create a run with ``tags`` and ``params`` (values as strings); returns its id."""
    from mlflow.entities import Param

    client = mlflow_client(uri)
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()])
    return str(run_id)


def log_metrics(uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """One batch of metrics, all at step 0 and now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow_client(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_files(uri: str, run_id: str, files: dict[str, bytes]) -> None:
    """Artifacts at the run's root, by file name."""
    client = mlflow_client(uri)
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            client.log_artifact(run_id, path)


def json_bytes(record: Any) -> bytes:
    """A record as the indented, key-sorted JSON the artifacts use."""
    return json.dumps(record, indent=1, sort_keys=True, default=str).encode()


def close_run(uri: str, run_id: str, status: str) -> None:
    mlflow_client(uri).set_terminated(run_id, status=status)


def model_metadata(uri: str, model_uri: str) -> dict[str, Any]:
    """The metadata a logged model carries; a UserError naming it when it cannot be read."""
    import mlflow

    try:
        with scoped_tracking_uri(uri):
            return dict(mlflow.models.get_model_info(model_uri).metadata or {})
    except Exception as e:  # noqa: BLE001 - any MLflow failure is "cannot read" to the user
        raise UserError(f"cannot read the model {model_uri} ({str(e).splitlines()[0][:160]})") from None


def load_pytorch_model(uri: str, model_uri: str) -> Any:
    """A logged PyTorch model on the CPU."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with scoped_tracking_uri(uri):
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")
