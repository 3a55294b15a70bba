"""The only package that imports mlflow (import-linter holds the line; see pyproject.toml).

The driver opens (or reopens) one MLflow run per job before any worker starts, so an
unreachable server fails the submit at once and a resumed job continues the same run.
Rank 0 logs through ``RunLogger``: metrics are batched and written by a background
thread that retries, so a tracking outage never stalls training.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ganops import __version__, jobdir, storage
from ganops.errors import UserError
from ganops.spec import dump
from ganops.spec.models import GANJob

RUN_FILE = "mlflow_run.json"
DEFAULT_EXPERIMENT = "ganops"
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"

# The driver's lines that name its MLflow run: printed by `ganops submit` / `generate` /
# `evaluate`, read back from a remote driver's log by the ray target (`ganops status`).
_RUN_LINE = re.compile(
    r"MLflow: (?:logging to|continuing) run ([0-9a-f]{32})\b|^\s*MLflow run\s+([0-9a-f]{32})\b", re.M
)


def opened_line(ref: RunRef) -> str:
    """The driver's first word on tracking: which run it logs to, where."""
    verb = "continuing" if ref.resumed else "logging to"
    return f"MLflow: {verb} run {ref.run_id} in experiment '{ref.experiment}' ({redact(ref.tracking_uri)})"


def summary_line(run_id: str, hint: str = "") -> str:
    """The run's line in a command's closing summary."""
    return f"  MLflow run     {run_id}" + (f"  {hint}" if hint else "")


def run_id_in(log: str) -> str | None:
    """The MLflow run a driver's output names first (``opened_line`` or ``summary_line``)."""
    m = _RUN_LINE.search(log or "")
    return (m.group(1) or m.group(2)) if m else None


# Tags that other packages read back: one spelling each.
CHECKPOINT_TAG = "ganops.checkpoint"  # the newest complete checkpoint of a training run
K8S_UID_TAG = "ganops.k8s_uid"  # the GANJob whose pods trained the run (the operator finds it by this)
K8S_NAMESPACE_TAG = "ganops.k8s_namespace"
# What a training run went through (issue 14): the operator and the MLflow UI read these.
HEALTH_TAG = "ganops.health"  # "ok", or the health signals that hold and why (ganops.train.health)
RESTARTS_TAG = "ganops.restarts"  # worker-group restarts after lost workers
ROLLBACKS_TAG = "ganops.rollbacks"  # rollbacks after a divergence
DIVERGED_TAG = "ganops.diverged"  # why a diverged run stopped
STOPPED_TAG = "ganops.stopped"  # the spec.train.stop_on signal that ended training early

Warn = Callable[[str], None]


def _quiet_mlflow_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # A new embedded store announces its table creation and migrations at INFO on every first
    # run; that is MLflow's business, not the user's (errors still show).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


@contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """Use ``uri`` for MLflow's fluent API inside the block only.

    ``mlflow.set_tracking_uri`` also sets MLFLOW_TRACKING_URI for the whole process, which
    would send every later run of this process to that store; this puts both back.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def redact(uri: str) -> str:
    """A tracking URI without user:password (safe to print, tag and store)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def local_home() -> Path:
    return Path(os.environ.get("GANOPS_HOME", Path.home() / ".ganops"))


def embedded_store(storage_root: str) -> tuple[str, str]:
    """(tracking URI, artifact root) of the embedded store for a storage root.

    SQLite must sit on a local disk: under the storage root when it is local, else under
    ``$GANOPS_HOME``; artifacts go to the storage root either way (S3 included).
    """
    root = storage.resolve(storage_root)
    db_dir = Path(root) if not storage.is_s3(root) else local_home()
    db_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db_dir / EMBEDDED_DB}", storage.join(root, EMBEDDED_ARTIFACTS)


def resolve_uri(job: GANJob) -> tuple[str, str | None]:
    """(tracking URI, artifact root for a new experiment or None when a server decides)."""
    if job.spec.tracking.uri:
        return job.spec.tracking.uri, None
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, None
    return embedded_store(job.spec.storage)


def _git_commit() -> str | None:
    commit = os.environ.get("GANOPS_GIT_COMMIT")
    if commit:
        return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec → {"train.lr": "0.0002", ...}; lists stay whole ("[64, 128]")."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = "null" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


@dataclass(frozen=True)
class RunRef:
    run_id: str
    tracking_uri: str
    experiment_id: str
    experiment: str
    resumed: bool

    def to_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "tracking_uri": redact(self.tracking_uri), "experiment_id": self.experiment_id}


def mlflow_client(uri: str) -> Any:
    _quiet_mlflow_env()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# SQLAlchemy dialects MLflow stores runs in, beside SQLite (whose driver Python ships).
_DATABASES = ("postgresql", "mysql", "mssql")


def check_backend(uri: str, field: str = "spec.tracking.uri") -> None:
    """What MLflow would fail on with a traceback, said first: a database URI whose Python
    driver is not installed here, and the file store MLflow 3 refuses unless opted in."""
    scheme, sep, _ = uri.partition("://")
    if sep and scheme.split("+", 1)[0].lower() in _DATABASES:
        import sqlalchemy  # MLflow's own dependency; create_engine loads the driver, connects nothing

        try:
            sqlalchemy.create_engine(uri)
        except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
            raise UserError(
                f"{field}: {redact(uri)} needs a database driver this Python lacks ({str(e).splitlines()[0][:160]}); "
                "install it (e.g. psycopg2-binary for postgresql, pymysql for mysql+pymysql) or use another store",
                field=field,
            ) from None
        except Exception as e:  # noqa: BLE001 - a malformed URL: say so before any worker starts
            raise UserError(f"{field}: {redact(uri)} is not a database URL ({str(e)[:160]})", field=field) from None
    local_files = scheme == "file" if sep else not uri.startswith("databricks")
    if local_files and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise UserError(
            f"{field}: {redact(uri)} is MLflow's file store, which MLflow 3 refuses (maintenance mode); use "
            "sqlite:///PATH/mlflow.db, unset it for the store under spec.storage, or set "
            "MLFLOW_ALLOW_FILE_STORE=true",
            field=field,
        )


def check_reachable(uri: str, field: str = "spec.tracking.uri") -> None:
    """Fail before any worker starts when the tracking store cannot be used or reached."""
    check_backend(uri, field)
    if not uri.startswith(("http://", "https://")):
        return
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot track"
        reason = str(e).splitlines()[0][:200]
        raise UserError(
            f"spec.tracking.uri: cannot reach the MLflow tracking server at {redact(uri)} ({reason}). "
            "Start it, fix spec.tracking.uri / MLFLOW_TRACKING_URI, or unset both to use the local store."
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _experiment_id(client: Any, name: str, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _tags(job: GANJob, world_size: int) -> dict[str, str]:
    spec = job.spec
    tags = {
        # train; the runs of generate and evaluate say generate and evaluate: a filter finds each kind.
        "ganops.kind": "train",
        "ganops.job": job.name,
        "ganops.version": __version__,
        "ganops.dataset": spec.data.dataset,
        "ganops.network": spec.model.arch + ("-conditional" if spec.model.conditional else ""),
        "ganops.loss": spec.train.loss,
        "ganops.world_size": str(world_size),
        "ganops.storage": storage.resolve(spec.storage),
    }
    commit = _git_commit()
    if commit:
        tags["ganops.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    tags.update({f"label.{k}": v for k, v in job.metadata.labels.items()})
    # Set by the operator on the pods of a GANJob: lets it find this run by the object's uid.
    for env, tag in (("GANOPS_K8S_UID", K8S_UID_TAG), ("GANOPS_K8S_NAMESPACE", K8S_NAMESPACE_TAG)):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def open_run(job: GANJob, jd: jobdir.JobDir, warn: Warn) -> RunRef:
    """Create the job's MLflow run, or reopen the one a previous submit created."""
    from mlflow.entities import Param, RunStatus

    uri, artifact_root = resolve_uri(job)
    check_reachable(uri)
    client = mlflow_client(uri)
    experiment = job.spec.tracking.experiment or DEFAULT_EXPERIMENT
    exp_id = _experiment_id(client, experiment, artifact_root)
    params = flatten(job.to_dict()["spec"])
    tags = _tags(job, job.spec.scaling.num_workers)

    previous = _read_run_file(jd)
    run = None
    if previous and previous.get("tracking_uri") == redact(uri):
        try:
            run = client.get_run(previous["run_id"])
        except Exception:  # noqa: BLE001 - deleted, or another store
            warn(f"MLflow run {previous['run_id']} was not found in {redact(uri)}; starting a new run")
    elif previous:
        warn(
            f"the job's earlier MLflow run lives in {previous.get('tracking_uri')}; starting a new run in {redact(uri)}"
        )

    if run is not None:
        run_id = run.info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        logged = run.data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
        new = {k: v for k, v in params.items() if k not in logged}
        # MLflow params are immutable: a resumed job records what changed as tags.
        for k, v in changed.items():
            client.set_tag(run_id, f"ganops.resumed.{k}", f"{logged[k]} -> {v}"[:5000])
        _log_params(client, run_id, new, Param)
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        resumed = True
    else:
        run_id = client.create_run(exp_id, run_name=job.name, tags=tags).info.run_id
        _log_params(client, run_id, params, Param)
        resumed = False
    client.log_text(run_id, dump(job), "spec.yaml")
    ref = RunRef(run_id, uri, exp_id, experiment, resumed)
    storage.write_bytes(jd.root.child(RUN_FILE), json.dumps(ref.to_dict()).encode())
    return ref


def _log_params(client: Any, run_id: str, params: dict[str, str], param_cls: Any) -> None:
    items = [param_cls(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow's batch limit for params
        client.log_batch(run_id, params=items[i : i + 100])


def _read_run_file(jd: jobdir.JobDir) -> dict[str, str] | None:
    loc = jd.root.child(RUN_FILE)
    try:
        return json.loads(storage.read_bytes(loc))
    except (FileNotFoundError, OSError, ValueError):
        return None


def close_run(ref: RunRef, status: str) -> None:
    """``status``: FINISHED, KILLED (stopped early, resumable) or FAILED."""
    mlflow_client(ref.tracking_uri).set_terminated(ref.run_id, status=status)


# -- the run's page: description and the artifacts it shows (see ganops.run_note) --------


def run_tags(ref: RunRef) -> dict[str, str]:
    return dict(mlflow_client(ref.tracking_uri).get_run(ref.run_id).data.tags)


def list_artifacts(ref: RunRef, folder: str) -> list[str]:
    return [a.path for a in mlflow_client(ref.tracking_uri).list_artifacts(ref.run_id, folder)]


def log_artifact_bytes(ref: RunRef, data: bytes, artifact_file: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / Path(artifact_file).name
        local.write_bytes(data)
        parent = str(Path(artifact_file).parent)
        mlflow_client(ref.tracking_uri).log_artifact(ref.run_id, str(local), None if parent == "." else parent)


def set_note(ref: RunRef, markdown: str) -> None:
    """The run's description in the MLflow UI (the ``mlflow.note.content`` tag)."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    mlflow_client(ref.tracking_uri).set_tag(ref.run_id, MLFLOW_RUN_NOTE, markdown)


def ui_address_hint(ref: RunRef, storage_root: str) -> str:
    """Where to look at the run: its page on a server, or the command that serves the local store."""
    if ref.tracking_uri.startswith(("http://", "https://")):
        base = redact(ref.tracking_uri).rstrip("/")
        return f"{base}/#/experiments/{ref.experiment_id}/runs/{ref.run_id}"
    if ref.tracking_uri == embedded_store(storage_root)[0]:
        return f"view it with: ganops ui --storage {storage.resolve(storage_root)}"
    return f"store: {redact(ref.tracking_uri)}"


def ui_command(storage_root: str, host: str, port: int) -> tuple[list[str], str]:
    """The ``mlflow ui`` command line serving a storage root's embedded store, and its address."""
    import sys

    uri, artifacts = embedded_store(storage_root)
    db = uri[len("sqlite:///") :]
    if not Path(db).exists():
        raise UserError(f"--storage: no MLflow store at {db} (submit a job with this storage first)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", artifacts,
           "--host", host, "--port", str(port)]  # fmt: skip
    return cmd, f"http://{host}:{port}"


# -- rank 0: buffered, retrying writes --------------------------------------------------


class RunLogger:
    """Writes metrics, images and artifacts of one run from rank 0 without blocking it.

    Metrics are queued and sent in batches by a background thread; a failed write is kept
    and retried with back-off, and a warning says so once per outage.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        warn: Warn,
        flush_interval_s: float = 5.0,
        max_buffered: int = 200_000,
    ) -> None:
        # Each attempt fails fast; retrying is this class's job, off the training thread.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.client = mlflow_client(tracking_uri)
        self.uri = tracking_uri
        self.run_id = run_id
        self.warn = warn
        self.flush_interval_s = flush_interval_s
        self._metrics: deque[Any] = deque(maxlen=max_buffered)
        self._tasks: deque[tuple[str, Callable[[], None]]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="ganops-mlflow", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        with self._lock:
            self._metrics.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())

    def log_image(self, png: bytes, key: str, step: int) -> None:
        def task() -> None:
            from PIL import Image

            self.client.log_image(self.run_id, Image.open(io.BytesIO(png)), key=key, step=step)

        self._enqueue(f"image {key}@{step}", task)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        def task() -> None:
            import tempfile

            with tempfile.TemporaryDirectory() as d:
                local = Path(d) / Path(artifact_file).name
                local.write_bytes(data)
                parent = str(Path(artifact_file).parent)
                self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)

        self._enqueue(artifact_file, task)

    def set_tag(self, key: str, value: str) -> None:
        self._enqueue(f"tag {key}", lambda: self.client.set_tag(self.run_id, key, value))

    def log_param(self, key: str, value: str) -> None:
        """A param the run does not have yet. MLflow params never change: a resumed run keeps
        its first attempt's value (its tags say what a later attempt did)."""

        def task() -> None:
            if key not in self.client.get_run(self.run_id).data.params:
                self.client.log_param(self.run_id, key, value)

        self._enqueue(f"param {key}", task)

    def _enqueue(self, what: str, task: Callable[[], None]) -> None:
        with self._lock:
            self._tasks.append((what, task))
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._metrics) + len(self._tasks)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued now, waiting at most ``timeout_s``; False: some is still queued
        (MLflow slow or down: it stays queued and is retried as usual).

        Called before each checkpoint: a worker lost after it resumes from that checkpoint,
        so the metric points up to it must be in MLflow already (those after it are logged
        again by the resumed run), or a SIGKILLed rank 0 leaves a hole in the curves."""
        if self._failing_since is not None:
            return False  # an outage: do not hold training up; the retries go on
        self._wake.set()
        deadline = time.time() + timeout_s
        while self.pending() and time.time() < deadline and self._failing_since is None:
            time.sleep(0.02)
            self._wake.set()
        return not self.pending()

    def _flush(self) -> None:
        """Send everything queued; raises on the first failure, keeping what is unsent."""
        while True:
            with self._lock:
                batch = [self._metrics[i] for i in range(min(1000, len(self._metrics)))]
            if not batch:
                break
            self.client.log_batch(self.run_id, metrics=batch)
            with self._lock:
                for _ in batch:
                    self._metrics.popleft()
        while True:
            with self._lock:
                if not self._tasks:
                    return
                _, task = self._tasks[0]
            task()
            with self._lock:
                self._tasks.popleft()

    def _attempt(self) -> bool:
        try:
            self._flush()
        except Exception as e:  # noqa: BLE001 - any write failure is retried later
            if self._failing_since is None:
                self._failing_since = time.time()
                self.warn(
                    f"MLflow tracking at {redact(self.uri)} is unreachable ({str(e).splitlines()[0][:160]}); "
                    "training continues and metric writes are retried"
                )
            return False
        if self._failing_since is not None:
            self.warn(f"MLflow tracking reachable again after {time.time() - self._failing_since:.0f}s; caught up")
            self._failing_since = None
        return True

    def _run(self) -> None:
        backoff = self.flush_interval_s
        while not self._stop.is_set():
            self._wake.wait(timeout=backoff)
            self._wake.clear()
            if self._stop.is_set():
                break
            ok = self._attempt()
            backoff = self.flush_interval_s if ok else min(backoff * 2, 60.0)

    def close(self, timeout_s: float = 120.0) -> bool:
        """Stop the thread and write what is left, retrying until ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        deadline = time.time() + timeout_s
        delay = 1.0
        while not self._attempt():
            if time.time() + delay > deadline:
                self.warn(f"{self.pending()} MLflow writes could not be made before the deadline and are lost")
                return False
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
        return True


def log_generator(
    tracking_uri: str,
    run_id: str,
    generator: Any,
    register_as: str | None,
    warn: Warn,
    attempts: int = 3,
) -> str | None:
    """Log G as an MLflow PyTorch model (signature + input example); register it if asked.

    Returns the model URI, or None when every attempt failed (the checkpoint still holds G).
    """
    info = _log_generator(tracking_uri, run_id, generator, register_as, warn, attempts)
    if info is None:
        return None
    if register_as and info.registered_model_version is not None:
        # The run's description names the version; MLflow keeps it only on the model's side.
        try:
            mlflow_client(tracking_uri).set_tag(run_id, REGISTERED_TAG, str(info.registered_model_version))
        except Exception as e:  # noqa: BLE001 - the model is registered; only the tag is missing
            warn(f"could not tag run {run_id} with its registered version ({str(e).splitlines()[0][:200]})")
    return info.model_uri


def _log_generator(
    tracking_uri: str,
    run_id: str,
    generator: Any,
    register_as: str | None,
    warn: Warn,
    attempts: int = 3,
    step: int = 0,
    tags: dict[str, str] | None = None,
) -> Any:
    """``log_generator``, returning MLflow's ModelInfo (with the registered version) or None."""
    _quiet_mlflow_env()
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from ganops.nets.export import GeneratorExport

    export = GeneratorExport(generator)
    example = export.example_input(4, seed=0)
    with torch.no_grad():
        output = export(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output.astype(np.float32))
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with scoped_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(
                    pytorch_model=export,
                    name="generator",
                    signature=signature,
                    input_example=example,
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                    registered_model_name=register_as,
                    metadata=export.metadata(),
                    step=step,
                    tags=tags,
                )
            return info
        except Exception as e:  # noqa: BLE001 - retried, then reported
            last = e
            time.sleep(2 * (attempt + 1))
    warn(f"could not log the generator to MLflow ({str(last).splitlines()[0][:200]}); it is in the checkpoint")
    return None


# -- the registered model's champion: the version with the best FID -----------------------

CHAMPION = "champion"
REGISTERED_TAG = "ganops.registered_version"  # the version the final generator was registered as
FID_TAG = "ganops.eval.fid"
SETUP_TAG = "ganops.eval.setup"
STEP_TAG = "ganops.eval.step"


@dataclass(frozen=True)
class Promotion:
    model_uri: str
    version: str


def champion_fid(tracking_uri: str, name: str, setup: str) -> float | None:
    """FID of the version the ``champion`` alias points at, when it was scored the same way.

    None when there is no champion, or its score came from another evaluation setup
    (reference data, sample count or network), which a new score cannot be compared with.
    """
    client = mlflow_client(tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception for "no such alias/model"
        return None
    tags = version.tags or {}
    if tags.get(SETUP_TAG) != setup or FID_TAG not in tags:
        return None
    try:
        return float(tags[FID_TAG])
    except ValueError:
        return None


def promote_if_better(
    tracking_uri: str,
    run_id: str,
    generator: Any,
    register_as: str,
    fid: float,
    setup: str,
    step: int,
    warn: Warn,
) -> Promotion | None:
    """Register G and move ``champion`` to it, when ``fid`` beats the current champion's.

    Called when a job's FID improved on its own best; a champion from elsewhere (another
    job, an earlier run) that scored better under the same setup keeps the alias, and then
    nothing is registered. Returns the new champion, or None.
    """
    current = champion_fid(tracking_uri, register_as, setup)
    if current is not None and not fid < current:
        return None
    tags = {FID_TAG: repr(float(fid)), SETUP_TAG: setup, STEP_TAG: str(step)}
    info = _log_generator(tracking_uri, run_id, generator, register_as, warn, step=step, tags=tags)
    if info is None or info.registered_model_version is None:
        return None
    version = str(info.registered_model_version)
    client = mlflow_client(tracking_uri)
    try:
        for k, v in tags.items():
            client.set_model_version_tag(register_as, version, k, v)
        client.set_registered_model_alias(register_as, CHAMPION, version)
    except Exception as e:  # noqa: BLE001 - training goes on; the next improvement tries again
        warn(f"could not move the '{CHAMPION}' alias of {register_as} to version {version} ({str(e)[:200]})")
        return None
    return Promotion(info.model_uri, version)
