"""The ganops SDK: typed functions the CLI calls (and users may call from Python).

Nothing heavy is imported at module level: validating a spec or printing help must not
import torch, Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ganops import data as gdata
from ganops import storage
from ganops.errors import DataMissingError, UserError
from ganops.spec import load
from ganops.spec.evaluation import GANEvaluation
from ganops.spec.generation import GANGeneration
from ganops.spec.loader import loads
from ganops.spec.models import ARCH_RESOLUTIONS, DataSpec, GANJob, batchnorm_critic

if TYPE_CHECKING:
    from ganops.data.pack import PackResult
    from ganops.data.shards import Manifest
    from ganops.evaluate.job import EvaluateResult
    from ganops.generate.job import GenerateResult
    from ganops.generate.source import Source
    from ganops.spec.evaluation import GANEvaluationSpec
    from ganops.spec.generation import GANGenerationSpec
    from ganops.targets import JobStatus, Target
    from ganops.train.launch import RunResult


def load_job(path: str | Path, overrides: list[str] | None = None, *, resolve_paths: bool = True) -> GANJob:
    """Read, override and validate a job spec, with local paths made absolute.

    Ray workers do not share the driver's working directory, so the resolved spec that
    travels to them (and is saved with every checkpoint) names absolute paths. A spec
    bound for Kubernetes keeps its paths: they mean the pods' file systems, not this one.
    """
    job = load(path, overrides)
    return _resolve_paths(job) if resolve_paths else job


def load_job_text(text: str, source: str, overrides: list[str] | None = None) -> GANJob:
    """``load_job`` for a spec given inline (a remote driver's entrypoint)."""
    return _resolve_paths(loads(text, source, overrides))


def load_job_b64(b64: str, overrides: list[str] | None = None) -> GANJob:
    """``load_job_text`` for a spec that came base64-encoded (``submit --spec-b64``: what
    a remote driver's entrypoint carries)."""
    from ganops.entrypoint import decode_spec

    return load_job_text(decode_spec(b64), "--spec-b64", overrides)


def load_generation_b64(b64: str) -> GANGeneration:
    """The GANGeneration a remote driver received (``generate --spec-b64``), validated as
    the submitter's was."""
    from ganops.entrypoint import decode_spec
    from ganops.spec.loader import loads_model

    return loads_model(GANGeneration, decode_spec(b64), "--spec-b64")


def _resolve_paths(job: GANJob) -> GANJob:
    spec = job.spec
    if spec.data.root and "://" not in spec.data.root:
        spec.data.root = str(gdata.expand_user(spec.data.root, "spec.data.root").resolve())
    gdata.expand_user(spec.storage, "spec.storage")  # `~nosuchuser`: a UserError, not a RuntimeError
    spec.storage = storage.resolve(spec.storage)
    return job


def preflight(job: GANJob, *, download: bool = True, size: bool = True) -> gdata.ImageInfo | None:
    """Checks of the data (its headers; the whole split where that is cheap: ``gdata.READ_WHOLE``)
    against the job, done before any worker starts.

    ``download=False`` (``validate``, ``--dry-run``: nothing is fetched or created): None
    when the files are not there yet and ``spec.data.download`` will fetch them at submit.
    ``size``: the networks are measured (``ganops.nets.size.check_job``; imports torch).
    """
    spec = job.spec
    data = spec.data if download else spec.data.model_copy(update={"download": False})
    try:
        info = gdata.probe(data)
    except DataMissingError:
        if download or not spec.data.download:
            raise
        return None
    gdata.read_whole(data)  # where cheap: a truncated gzip or a label out of range, before any worker
    sizes = ARCH_RESOLUTIONS[spec.model.arch]
    _c, h, w = info.shape
    if sizes is not None and (h != w or h not in sizes):
        raise UserError(
            f"spec.model.arch: '{spec.model.arch}' builds nets for {', '.join(f'{r}x{r}' for r in sizes)} images, "
            f"but dataset '{spec.data.dataset}' at {spec.data.root} holds {h}x{w} (repack or resize the data to one "
            "of those sizes, or use arch 'mlp', which takes any size)",
            field="spec.model.arch",
        )
    if spec.model.conditional and not info.num_classes:
        raise UserError(
            f"spec.model.conditional: dataset '{spec.data.dataset}' at {spec.data.root} has no labels "
            "(use class sub-folders, or set conditional: false)"
        )
    if spec.train.loss == "wgan_gp" and batchnorm_critic(spec.model, info.shape[1]):
        raise UserError(
            f"spec.model.d_norm: '{spec.model.arch}' uses BatchNorm in D at {info.shape[1]}x{info.shape[1]}, "
            "which wgan_gp cannot train (the gradient penalty is per sample); set spec.model.d_norm: layer or none"
        )
    workers = spec.scaling.num_workers
    per_worker_images = info.num_images // workers
    per_worker_batch = spec.train.batch_size // workers
    if per_worker_images < per_worker_batch:
        raise UserError(
            f"spec.train.batch_size: {spec.train.batch_size} needs {per_worker_batch} images per worker, "
            f"but {info.num_images} images over {workers} workers leave {per_worker_images} each"
        )
    if size:
        from ganops.nets import size as sizing  # torch: only where asked (the dry run)

        sizing.check_job(job, info, address=None)  # every worker here: this machine's memory
    return info


def data_checked(job: GANJob) -> str:
    """How much of the data ``preflight`` read: said by validate and the dry run."""
    data = job.spec.data
    if data.dataset == "fake":
        return "generated"
    if data.dataset in gdata.READ_WHOLE and not (data.root or "").startswith("s3://"):
        return "read whole: sizes, gzip CRCs, labels"
    if (data.root or "").startswith("s3://"):
        return "headers only: the data is on S3"
    return "headers and sizes only"


def preflight_eval_weights(job: GANJob, *, address: str | None, echo: Callable[[str], None] = print) -> None:
    """With evaluation on: the weights the workers will load are there, and the pinned ones.

    With ``spec.eval.inception_weights`` and no ``address``, the file is read and its sha256
    checked here, before any worker starts. Without it, the pinned file is made sure of here,
    on the driver, so that an offline machine fails before any worker starts, with
    the file to put where. Without ``address`` every worker runs on this machine: download
    now, into the cache they will read (under its lock, once). With ``address`` (a cluster
    joined, the remote driver of ``--target ray``/``k8s``) the workers may be on other
    machines with their own caches, where each downloads once under its own lock when it
    loads the network; here only the URL is tried (or a cached copy found), as a full
    download on a head node that evaluates nothing would be wasted. Not in ``preflight``:
    ``validate`` and ``--dry-run`` must not download 90 MB.
    """
    ev = job.spec.eval
    if not ev.enabled:
        return
    if ev.inception_weights:
        if not address:  # the workers will read this very file: check its sha256 before any starts
            from ganops.evaluate.weights import SHA_FIELD, WEIGHTS_FIELD, read_weights

            read_weights(ev.inception_weights, ev.inception_sha256, field=f"spec.{WEIGHTS_FIELD}",
                         sha_field=f"spec.{SHA_FIELD}")  # fmt: skip
        return
    from ganops.evaluate import fetch

    if address:
        fetch.check_reachable(ev.inception_sha256, field=f"spec.{fetch.WEIGHTS_FIELD}")
    else:
        fetch.ensure(ev.inception_sha256, field=f"spec.{fetch.WEIGHTS_FIELD}", notify=echo)


def submit(
    job: GANJob,
    *,
    address: str | None = None,
    restart: bool = False,
    restart_token: str | None = None,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Train ``job`` on Ray: the embedded local Ray, or the cluster at ``address``.

    An existing run of the job resumes; ``restart`` moves it aside and starts over. With a
    ``restart_token`` it starts over once per token: a retry of the same submission (the
    next attempt of a RayJob) resumes what the first attempt began."""
    info = preflight(job, size=False)  # the driver sizes the networks, where it imports torch anyway
    assert info is not None  # downloads allowed: the data is there or this raised
    preflight_eval_weights(job, address=address, echo=echo)
    from ganops.train.launch import run

    return run(job, info, address=address, restart=restart, restart_token=restart_token,
               show_progress=show_progress, echo=echo)  # fmt: skip


# -- jobs on a cluster: the same verbs for every remote target ---------------------------


@dataclass(frozen=True)
class Remote:
    """Where remote jobs live: ``ray`` (a Ray cluster's Jobs API at ``address``, or
    RAY_ADDRESS) or ``k8s`` (GANJob objects in ``namespace``, default the kube config's)."""

    target: Literal["ray", "k8s"]
    address: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    """``list`` only, k8s only: jobs of every namespace."""

    def connect(self) -> Target:
        from ganops import targets

        return targets.get(
            self.target, address=self.address, namespace=self.namespace, all_namespaces=self.all_namespaces
        )


def submit_remote(job: GANJob | GANGeneration, where: Remote, *, restart: bool = False) -> JobStatus:
    """Start ``job`` (training, or a generation) on the cluster; returns once it is accepted
    (its first status). ``restart`` applies to training."""
    target = where.connect()
    if isinstance(job, GANGeneration):
        return target.submit_generate(job)
    return target.submit_train(job, restart=restart)


def remote_request(job: GANJob | GANGeneration, where: Remote, *, restart: bool = False) -> dict[str, Any]:
    """What ``submit_remote`` would send, sending nothing: the object (k8s), or the Ray
    driver's entrypoint and the resolved spec (ray)."""
    if where.target == "k8s":
        from ganops.k8s.objects import custom_object

        return custom_object(job, where.namespace)
    from ganops.entrypoint import generate_command, train_command

    command = generate_command(job) if isinstance(job, GANGeneration) else train_command(job, restart=restart)
    return {"entrypoint": command, "spec": job.to_dict()}


# -- generation ---------------------------------------------------------------------------


def generate(
    gen: GANGeneration,
    *,
    address: str | None = None,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
) -> GenerateResult:
    """Run the generation ``gen`` here (``spec.workers`` > 1: on Ray workers, the embedded
    Ray or the cluster at ``address``). ``spec.tracking.uri`` unset means $MLFLOW_TRACKING_URI."""

    from ganops.generate.job import generate as run
    from ganops.generate.latents import read_z_file

    s = gen.spec
    # `num` unset: one image per --z vector, else 64. The file is read (once) before MLflow is
    # asked anything, so a bad --z file is refused first; the spec kept with the output says
    # what was made.
    z_file = read_z_file(s.z_file) if s.z_file else None
    resolved = gen.model_copy(deep=True)
    if s.num is None:
        resolved.spec.num = len(z_file[0]) if z_file is not None else 64
    source = _model_source(s)
    echo(f"generator: {source.describe()}")
    return run(source, resolved, z_file=z_file, address=address, show_progress=show_progress, echo=echo)


def status(name: str, where: Remote) -> JobStatus:
    """Job ``name``'s phase, times, MLflow run, latest checkpoint and message."""
    return where.connect().status(name)


def list_jobs(where: Remote) -> list[JobStatus]:
    """Every ganops job (training and generation) on the target, newest first."""
    return where.connect().list()


def logs(name: str, where: Remote, *, follow: bool = False) -> Iterator[str]:
    """The output of job ``name``'s driver, in chunks (until the job ends with ``follow``)."""
    return where.connect().logs(name, follow=follow)


def cancel(name: str, where: Remote) -> JobStatus:
    """Stop job ``name``; its checkpoints stay, and submitting the same spec resumes it."""
    return where.connect().cancel(name)


# -- evaluation ---------------------------------------------------------------------------


def evaluate(ev: GANEvaluation, *, show_progress: bool = True, echo: Callable[[str], None] = print) -> EvaluateResult:
    """Score the generator ``ev`` names (a training run or a registered model): FID, KID, IS,
    precision/recall as ``ev.spec`` says (unset fields: the training spec's ``eval``); with
    ``spec.log``, recorded as its own MLflow run. ``spec.tracking.uri`` unset means
    $MLFLOW_TRACKING_URI."""

    from ganops.evaluate.job import evaluate as run

    s = ev.spec
    source = _model_source(s)
    echo(f"generator: {source.describe()}")
    return run(source, s, show_progress=show_progress, echo=echo, spec_doc=ev.to_dict())


# -- datasets -----------------------------------------------------------------------------


def pack_data(
    data: DataSpec, out: str, *, shard_mb: float, force: bool = False, workers: int | None = None,
    pool: str = "threads", show_progress: bool = True, echo: Callable[[str], None] = print,
) -> PackResult:  # fmt: skip
    """Write the dataset ``data`` describes as a pack of Parquet shards at ``out`` (see
    ``ganops.data.pack``); an interrupted pack resumes, a finished one is kept unless ``force``."""
    from ganops.data.pack import pack

    return pack(
        data, out, shard_mb=shard_mb, force=force, workers=workers, pool=pool, show_progress=show_progress, echo=echo
    )


def verify_pack(root: str, *, sha256: bool = True) -> Manifest:
    """The pack at ``root``'s manifest, once every shard is checked: present, of its size,
    and (``sha256``) of its checksum; else a UserError naming the shard."""
    from ganops.data import shards

    m = shards.read_manifest(root)
    (shards.verify_shards if sha256 else shards.check_shards)(root, m)
    return m


# -- tracking and output ------------------------------------------------------------------


def embedded_tracking_uri(storage_root: str) -> str:
    """The MLflow tracking URI of the embedded (SQLite) store of a storage root: where jobs
    without ``spec.tracking.uri`` (and no $MLFLOW_TRACKING_URI) log."""
    from ganops import tracking

    return tracking.embedded_store(storage_root)[0]


def ui_command(storage_root: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], str]:
    """The ``mlflow ui`` command line that serves a storage root's embedded store, and its address."""
    from ganops import tracking

    return tracking.ui_command(storage_root, host, port)


def run_line(run_id: str, hint: str = "") -> str:
    """The MLflow run's line in a command's closing summary (what ``ganops logs`` and the
    SDK's status recognise as the run of a driver's output)."""
    from ganops import tracking

    return tracking.summary_line(run_id, hint)


def render(statuses: list[JobStatus], fmt: str = "table", *, single: bool = False) -> str:
    """Job statuses as ``kubectl get`` prints them: ``table``, ``wide``, ``yaml`` or ``json``
    (``single``: one object rather than a list)."""
    from ganops.targets.output import render as render_rows

    return render_rows(statuses, fmt, single=single)


def _model_source(spec: GANGenerationSpec | GANEvaluationSpec) -> Source:
    """The generator ``spec`` names, looked up in its MLflow ($MLFLOW_TRACKING_URI when unset)."""
    import os

    from ganops.generate.source import resolve

    uri = spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError("spec.tracking.uri: which MLflow holds the model? (or set MLFLOW_TRACKING_URI)",
                        field="spec.tracking.uri")  # fmt: skip
    return resolve(uri, run_id=spec.run_id, model=spec.model)
