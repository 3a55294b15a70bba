"""The ``ganops`` command: parse, call the SDK in ``ganops.client``, print.

Imports no torch, Ray or MLflow at module level so that ``ganops --help`` and
``ganops validate`` answer at once.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from ganops import __version__
from ganops.cli_options import dump_as, err, set_option
from ganops.errors import UserError
from ganops.operator_cli import operator
from ganops.spec.models import DATASETS


def _finite(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    """FloatRange lets nan through (every comparison with it is false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number (got {value})")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ganops")
def cli() -> None:
    """Train GANs data-parallel on Ray Train; track them in MLflow."""


cli.add_command(operator)


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@set_option
def validate(spec_file: str, overrides: tuple[str, ...]) -> None:
    """Validate SPEC (any kind: GANJob, GANGeneration, GANEvaluation, as its `kind:` says) and
    print it resolved (all defaults filled in); a GANJob's data is checked where it is here."""
    from ganops.client import load_job, preflight
    from ganops.spec import dump
    from ganops.spec.loader import load_resource

    resource = load_resource(spec_file, list(overrides))
    kind = getattr(resource, "kind", "GANJob")
    if kind != "GANJob":
        click.echo(dump(resource), nl=False)
        err(f"{spec_file}: valid {kind}")
        return
    job = load_job(spec_file, list(overrides))  # with its local paths resolved, as submit reads it
    click.echo(dump(job), nl=False)
    # The data may live only on the cluster's nodes: check it when it is reachable here.
    data = job.spec.data
    looked = data.dataset == "fake" or data.download or (data.root is not None and os.path.isdir(data.root))
    info = preflight(job, download=False, size=False) if looked else None
    err(f"{spec_file}: valid{_data_checked(job, info, looked)}")


def _data_checked(job: Any, info: Any, looked: bool) -> str:
    """What validate and the dry run found of the data (they download and create nothing)."""
    data = job.spec.data
    if info is not None:
        from ganops.client import data_checked

        return f"; data: {info.num_images} images of {'×'.join(map(str, info.shape))} ({data_checked(job)})"
    if looked and data.download:
        return f"; data not here yet ({data.root}): the submit downloads it (download: true)"
    return f"; data not checked ({data.root} not found here)"


def _target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--address and --namespace: where the ray and k8s targets are."""
    f = click.option(
        "--namespace", "-n", envvar="GANOPS_NAMESPACE", default=None,
        help="Kubernetes namespace (--target k8s; default: the kube config's, else 'default').",
    )(f)  # fmt: skip
    return click.option(
        "--address", envvar="RAY_ADDRESS", default=None,
        help="Ray cluster: http://HEAD:8265 for --target ray (Jobs API); for local runs, a cluster to join.",
    )(f)  # fmt: skip


def _pick_target(target: str | None, address: str | None) -> str:
    """Verbs about running jobs: --target, else $GANOPS_TARGET, else ray when an address is set, else k8s."""
    return target or ("ray" if address else "k8s")


REMOTE = click.Choice(["ray", "k8s"])
OUTPUT = click.Choice(["table", "wide", "yaml", "json"])


def _remote(target: str | None, address: str | None, namespace: str | None, *, all_namespaces: bool = False) -> Any:
    """The SDK's ``Remote`` for the target flags (``--target`` defaulting as ``_pick_target`` says)."""
    from ganops import client

    picked = _pick_target(target, address)
    return client.Remote(picked, address=address, namespace=namespace, all_namespaces=all_namespaces)  # type: ignore[arg-type]


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False), required=False)
@set_option
@click.option(
    "--target", type=click.Choice(["local", "ray", "k8s"]), envvar="GANOPS_TARGET", default="local",
    show_default=True,
    help="local: this machine (embedded Ray, or --address to join one); ray: a Ray cluster's Jobs API; "
    "k8s: a GANJob for the ganops operator.",
)  # fmt: skip
@_target_options
@click.option("--dry-run", is_flag=True, help="Validate and print what would be submitted, then stop.")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["yaml", "json"]),
    help="Print the submitted object (with --target k8s: the GANJob).",
)
@click.option(
    "--restart", is_flag=True, help="Start over even if checkpoints exist; the old run is moved aside, never lost."
)
@click.option("--quiet", "-q", is_flag=True, help="No resolved spec and no live progress line.")
@click.option("--spec-b64", hidden=True, help="The spec inline (the remote driver's entrypoint).")
@click.option("--restart-token", hidden=True, help="--restart once per token (a RayJob's retries resume).")
def submit(
    spec_file: str | None, overrides: tuple[str, ...], target: str, address: str | None, namespace: str | None,
    dry_run: bool, output: str | None, restart: bool, quiet: bool, spec_b64: str | None, restart_token: str | None,
) -> None:  # fmt: skip
    """Train the GAN described by SPEC.

    A job whose name already has checkpoints in its storage resumes from the latest one
    and trains up to spec.train.epochs; --restart starts over. Ctrl-C stops cleanly after
    writing a checkpoint. With --target ray or k8s the job runs on the cluster and this
    command returns once it is accepted: follow it with `ganops logs -f NAME`.
    """
    from ganops.client import load_job, load_job_b64, preflight
    from ganops.client import submit as sdk_submit
    from ganops.spec import dump

    if spec_b64:
        job = load_job_b64(spec_b64, list(overrides))
    elif spec_file:
        job = load_job(spec_file, list(overrides), resolve_paths=target != "k8s")
    else:
        raise click.UsageError("missing argument SPEC (a job spec YAML file)")
    if target != "local":
        _submit_remote(job, target, address, namespace, dry_run, output, restart, quiet)
        return
    if not quiet or dry_run:
        click.echo(dump(job), nl=False)
    if dry_run:
        info = preflight(job, download=False)
        err(f"{spec_file or 'spec'}: valid{_data_checked(job, info, True)} (dry run: nothing submitted)")
        return
    result = sdk_submit(
        job, address=address, restart=restart or bool(restart_token), restart_token=restart_token,
        show_progress=not quiet, echo=err,
    )  # fmt: skip
    if not result.trained:
        return
    _summary(result)


def _submit_remote(
    job: Any, target: str, address: str | None, namespace: str | None, dry_run: bool, output: str | None,
    restart: bool, quiet: bool,
) -> None:  # fmt: skip
    from ganops import client

    if "://" not in job.spec.storage:
        err(
            f"warning: spec.storage is the path {job.spec.storage}; on the cluster that is each pod's own disk "
            "unless it is shared (set s3://bucket/prefix to keep checkpoints)"
        )
    where = client.Remote(target, address=address, namespace=namespace)  # type: ignore[arg-type]
    if dry_run:
        click.echo(dump_as(client.remote_request(job, where, restart=restart), output or "yaml"), nl=False)
        err("dry run: nothing submitted")
        return
    status = client.submit_remote(job, where, restart=restart)
    if output:
        click.echo(client.render([status], output, single=True), nl=False)
    elif not quiet:
        click.echo(client.render([status], "table"), nl=False)
    where_ns = f" in namespace {status.namespace}" if status.namespace else ""
    err(f"submitted {job.name}{where_ns}: follow it with `ganops logs -f {job.name} --target {target}`")


@cli.command()
@click.argument("name")
@click.option(
    "--target", type=REMOTE, envvar="GANOPS_TARGET", help="ray or k8s [default: ray when --address is set, else k8s]"
)
@_target_options
@click.option("--output", "-o", type=OUTPUT, default="table", show_default=True)
def status(name: str, target: str | None, address: str | None, namespace: str | None, output: str) -> None:
    """Show the job NAME: phase, times, MLflow run, latest checkpoint, message."""
    from ganops import client

    st = client.status(name, _remote(target, address, namespace))
    click.echo(client.render([st], "wide" if output == "table" else output, single=True), nl=False)


@cli.command(name="list")
@click.option(
    "--target", type=REMOTE, envvar="GANOPS_TARGET", help="ray or k8s [default: ray when --address is set, else k8s]"
)
@_target_options
@click.option("--all-namespaces", "-A", is_flag=True, help="Jobs of every namespace (--target k8s).")
@click.option("--output", "-o", type=OUTPUT, default="table", show_default=True)
def list_jobs(
    target: str | None, address: str | None, namespace: str | None, all_namespaces: bool, output: str
) -> None:
    """List ganops jobs (training and generation), newest first."""
    from ganops import client

    rows = client.list_jobs(_remote(target, address, namespace, all_namespaces=all_namespaces))
    click.echo(client.render(rows, output), nl=False)


@cli.command()
@click.argument("name")
@click.option(
    "--target", type=REMOTE, envvar="GANOPS_TARGET", help="ray or k8s [default: ray when --address is set, else k8s]"
)
@_target_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(name: str, target: str | None, address: str | None, namespace: str | None, follow: bool) -> None:
    """Print the output of job NAME's driver (progress lines, warnings, errors)."""
    from ganops import client

    for chunk in client.logs(name, _remote(target, address, namespace), follow=follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@cli.command()
@click.argument("name")
@click.option(
    "--target", type=REMOTE, envvar="GANOPS_TARGET", help="ray or k8s [default: ray when --address is set, else k8s]"
)
@_target_options
def cancel(name: str, target: str | None, address: str | None, namespace: str | None) -> None:
    """Stop job NAME. Its checkpoints stay: submitting the same spec again resumes it."""
    from ganops import client

    st = client.cancel(name, _remote(target, address, namespace))
    err(f"{name}: {st.phase}" + (f" ({st.message})" if st.message else ""))


@cli.command()
@click.option("--run-id", help="The training run whose generator to use.")
@click.option(
    "--model", "model_uri", metavar="URI", help="A registered generator: models:/NAME@ALIAS or models:/NAME/VERSION."
)
@click.option("--num", type=int, default=None, help="Images to make (with --interpolate: walks). [default: 64]")
@click.option("--out", "-o", help="Output directory or s3://bucket/prefix (must not hold a finished job).  [required]")
@click.option("--format", "fmt", type=click.Choice(["png", "npz", "both"]), default="png", show_default=True,
              help="PNG files, uint8 .npz shards, or both.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same options: byte-identical images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--truncation", type=float, help="Resample latent entries whose magnitude exceeds this (e.g. 1.5).")
@click.option("--class", "class_index", type=int, help="Only this class (conditional models).")
@click.option("--best-of", type=int, default=1, show_default=True,
              help="K candidates per image; keep the one that the discriminator saved with G rates most real.")  # fmt: skip
@click.option("--interpolate", type=int, metavar="STEPS", help="Walk between seeds in STEPS steps: a grid and a GIF.")
@click.option("--z", "z_file", metavar="FILE", help="Latent vectors (.npy [N, latent] or .npz with z, labels).")
@click.option("--save-z", is_flag=True, help="Store the latent vector of every image with it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ray workers (1: in this process).")  # fmt: skip
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True, callback=_finite)
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Images per shard (a multiple of --batch-size wastes no G rows).")  # fmt: skip
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store of --storage).")  # fmt: skip
@click.option("--storage", default="./runs", show_default=True, help="Storage root whose embedded MLflow store to use.")
@click.option(
    "--target", type=click.Choice(["local", "ray", "k8s"]), envvar="GANOPS_TARGET", default="local", show_default=True,
    help="local: here (--workers on the embedded Ray, or --address); ray / k8s: a job on the cluster.",
)  # fmt: skip
@click.option("--name", help="Job name on the ray / k8s target [default: gen-RUN-SEED].")
@_target_options
@click.option("--dry-run", is_flag=True, help="With --target ray / k8s: print the job, submit nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
@click.option("--spec-b64", hidden=True, help="The GANGeneration inline (the remote driver's entrypoint).")
def generate(
    run_id: str | None, model_uri: str | None, num: int | None, out: str | None, fmt: str, seed: int, batch_size: int,
    truncation: float | None, class_index: int | None, best_of: int, interpolate: int | None, z_file: str | None,
    save_z: bool, workers: int, gpus_per_worker: float, shard_size: int, tracking_uri: str | None, storage: str,
    target: str, name: str | None, address: str | None, namespace: str | None, dry_run: bool, quiet: bool,
    spec_b64: str | None,
) -> None:  # fmt: skip
    """Generate images from a trained generator (--run-id or --model).

    Writes PNG files and/or .npz shards, a preview grid and manifest.json (last: an
    interrupted job never looks complete), and records the job as its own MLflow run.
    With --target ray or k8s it runs as a job on the cluster (a GANGeneration on k8s).
    """
    from ganops import client

    if spec_b64:  # a remote driver: the GANGeneration itself, validated as the submitter's was
        gen = client.load_generation_b64(spec_b64)
    else:
        if out is None:
            raise click.UsageError("missing option '--out' / '-o'")
        if not out.strip():  # '' would resolve to the current directory
            raise UserError("--out: must not be empty (a directory or s3://bucket/prefix)", field="--out")
        source = run_id or (model_uri or "").rsplit("/", 1)[-1].replace("@", "-")
        spec = {
            "run_id": run_id, "model": model_uri, "out": out, "num": num, "format": fmt, "seed": seed,
            "batch_size": batch_size, "truncation": truncation, "class_index": class_index, "best_of": best_of,
            "interpolate": interpolate, "z_file": z_file, "save_z": save_z, "shard_size": shard_size,
            "workers": workers, "gpus_per_worker": gpus_per_worker,
            # On a Ray cluster the driver is another process, maybe another machine: give it
            # the store this command would use. On k8s the cluster's own MLflow (the pods'
            # MLFLOW_TRACKING_URI, from the chart) is the default: this machine's
            # $MLFLOW_TRACKING_URI (often a port-forward to 127.0.0.1) means nothing in a pod.
            "tracking": {"uri": _tracking_for(target, tracking_uri, storage)},
        }  # fmt: skip
        # A DNS label whatever the model is called (dots, underscores, capitals in a model name).
        name = name or re.sub(r"[^a-z0-9-]+", "-", f"gen-{source[:12]}-{seed}".lower())
        gen = _spec_from_flags("GANGeneration", {"metadata": {"name": name}, "spec": spec}, _GENERATE_FLAGS)
    if target != "local":
        where = _remote(target, address, namespace)
        if dry_run:
            click.echo(dump_as(client.remote_request(gen, where), "yaml"), nl=False)
            err("dry run: nothing submitted")
            return
        st = client.submit_remote(gen, where)
        click.echo(client.render([st], "table"), nl=False)
        err(f"submitted {gen.name}: follow it with `ganops logs -f {gen.name} --target {target}`")
        return
    if gen.spec.tracking.uri is None:
        gen.spec.tracking.uri = os.environ.get("MLFLOW_TRACKING_URI") or client.embedded_tracking_uri(storage)
    r = client.generate(gen, address=address, show_progress=not quiet, echo=err)
    err(
        f"done: {r.count} images in {r.shards} shards, {r.elapsed_s:.1f}s ({r.images_per_s:.0f} img/s)\n"
        f"  output       {r.out_uri}\n  manifest     {r.manifest_uri}\n"
        + (f"  preview      {r.preview_uri}\n" if r.preview_uri else "")
        + client.run_line(r.generation_run_id or "-")
    )


def _tracking_for(target: str, tracking_uri: str | None, storage: str) -> str | None:
    """The tracking URI a generation job takes along (see ``generate``)."""
    from click.core import ParameterSource

    from ganops import client

    if target == "k8s":
        given = click.get_current_context().get_parameter_source("tracking_uri") == ParameterSource.COMMANDLINE
        return tracking_uri if given else None
    return tracking_uri or client.embedded_tracking_uri(storage)


# The flag each GANGeneration field comes from: errors name what the user typed.
_GENERATE_FLAGS = {
    "metadata.name": "--name", "spec.run_id": "--run-id", "spec.model": "--model", "spec.out": "--out",
    "spec.num": "--num", "spec.format": "--format", "spec.seed": "--seed", "spec.batch_size": "--batch-size",
    "spec.truncation": "--truncation", "spec.class_index": "--class", "spec.best_of": "--best-of",
    "spec.interpolate": "--interpolate", "spec.z_file": "--z", "spec.save_z": "--save-z",
    "spec.shard_size": "--shard-size", "spec.workers": "--workers", "spec.gpus_per_worker": "--gpus-per-worker",
    "spec.tracking.uri": "--tracking-uri",
}  # fmt: skip


def _spec_from_flags(kind: str, doc: dict[str, Any], flags: dict[str, str]) -> Any:
    """The ``kind`` spec (GANGeneration, GANEvaluation) the flags stand for, validated as
    every target validates it; errors name the flag (``flags``: field path → flag)."""
    from ganops.errors import SpecError
    from ganops.spec.evaluation import GANEvaluation
    from ganops.spec.generation import GANGeneration
    from ganops.spec.loader import validate_model

    model = {"GANGeneration": GANGeneration, "GANEvaluation": GANEvaluation}[kind]
    try:
        return validate_model(model, doc, f"ganops {kind.removeprefix('GAN').lower()}")
    except SpecError as e:
        # A list item (spec.metrics[1]) belongs to its list's flag.
        def flag(path: str) -> str:
            return flags.get(re.sub(r"(\.\d+|\[\d+\])$", "", path), path)

        lines = [f"{flag(path)}: {message}" for path, message in e.problems]
        raise UserError("\n".join(lines), field=flag(e.field or "")) from None


@cli.command()
@click.option(
    "--storage", default="./runs", show_default=True, help="Storage root of the jobs to show (their spec.storage)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to serve on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to serve on.")
def ui(storage: str, host: str, port: int) -> None:
    """Serve the MLflow UI for the embedded tracking store of a storage root.

    Jobs without spec.tracking.uri (and no MLFLOW_TRACKING_URI) log to a local SQLite
    store under their storage root; this shows it. Ctrl-C stops the UI.
    """
    from ganops import client

    cmd, address = client.ui_command(storage, host, port)
    err(f"MLflow UI for {storage}: {address}  (Ctrl-C to stop)")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    sys.stderr.flush()
    # Become the server: Ctrl-C and SIGTERM reach it directly, and no child outlives us.
    os.execve(cmd[0], cmd, env)


@cli.command()
@click.option("--run-id", help="The training run whose generator to score.")
@click.option("--model", "model_uri", metavar="URI",
              help="A registered generator: models:/NAME@ALIAS or models:/NAME/VERSION.")  # fmt: skip
@click.option("--num-samples", "-n", type=int, default=None,
              help="Generated (and reference) images. [default: the run's spec.eval.num_samples]")  # fmt: skip
@click.option("--metrics", "metrics", metavar="LIST", default=None,
              help="Comma-separated: fid,kid,is,pr. [default: the run's spec.eval.metrics]")  # fmt: skip
@click.option("--inception-weights", metavar="PATH|S3", default=None,
              help="pt_inception-2015-12-05-6726825d.pth, local or s3://. "
                   "[default: the run's spec.eval.inception_weights, else the published file, downloaded once into "
                   "$GANOPS_CACHE]")  # fmt: skip
@click.option("--inception-sha256", metavar="HEX", default=None,
              help="Expected sha256 of the weights. [default: the pinned pytorch-fid file's]")  # fmt: skip
@click.option("--reference-split", type=click.Choice(["train", "test"]), default=None,
              help="Real split to compare against. "
                   "[default: the run's spec.eval.reference_split, else data.split]")  # fmt: skip
@click.option("--data-root", default=None,
              help="Where the dataset's files are here. [default: the run's spec.data.root]")  # fmt: skip
@click.option("--batch-size", type=int, default=None, help="Images per Inception pass. [default: spec.eval.batch_size]")
@click.option("--seed", type=int, default=None, help="Seed of the latents. [default: the run's spec.train.seed]")
@click.option("--device", default=None,
              help="Where Inception runs: cpu, cuda, cuda:1. [default: cuda when available]")  # fmt: skip
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store of --storage).")  # fmt: skip
@click.option("--storage", default="./runs", show_default=True, help="Storage root whose embedded MLflow store to use.")
@click.option("--log/--no-log", default=True, show_default=True, help="Record the scores as an MLflow evaluation run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def evaluate(
    run_id: str | None, model_uri: str | None, num_samples: int | None, metrics: str | None,
    inception_weights: str | None, inception_sha256: str | None, reference_split: str | None,
    data_root: str | None, batch_size: int | None, seed: int | None, device: str | None,
    tracking_uri: str | None, storage: str, log: bool, quiet: bool,
) -> None:  # fmt: skip
    """Score a generator (--run-id or --model) with FID, KID, IS and precision/recall.

    Features come from the FID Inception-v3 (weights checked against a pinned sha256);
    the real-data statistics are computed once and cached under the run's storage. Prints
    the scores and records them as an MLflow run tagged with the training run.
    """
    from ganops import client

    source = run_id or (model_uri or "").rsplit("/", 1)[-1].replace("@", "-")
    spec = {
        "run_id": run_id, "model": model_uri, "num_samples": num_samples,
        "metrics": [m.strip().lower() for m in metrics.split(",") if m.strip()] if metrics is not None else None,
        "inception_weights": inception_weights, "inception_sha256": inception_sha256,
        "reference_split": reference_split, "data_root": data_root, "batch_size": batch_size, "seed": seed,
        "device": device, "log": log, "tracking": {"uri": tracking_uri or client.embedded_tracking_uri(storage)},
    }  # fmt: skip
    name = re.sub(r"[^a-z0-9-]+", "-", f"eval-{source[:12]}".lower()).strip("-")
    ev = _spec_from_flags("GANEvaluation", {"metadata": {"name": name}, "spec": spec}, _EVALUATE_FLAGS)
    result = client.evaluate(ev, show_progress=not quiet, echo=err)
    click.echo(result.scores.table())
    err(f"done in {result.elapsed_s:.1f}s")
    if result.evaluation_run_id:
        err(client.run_line(result.evaluation_run_id))


# The flag each GANEvaluation field comes from: errors name what the user typed.
_EVALUATE_FLAGS = {
    "spec.run_id": "--run-id", "spec.model": "--model", "spec.num_samples": "--num-samples",
    "spec.metrics": "--metrics", "spec.inception_weights": "--inception-weights",
    "spec.inception_sha256": "--inception-sha256", "spec.reference_split": "--reference-split",
    "spec.data_root": "--data-root", "spec.batch_size": "--batch-size", "spec.seed": "--seed",
    "spec.device": "--device", "spec.tracking.uri": "--tracking-uri",
}  # fmt: skip


@cli.group()
def data() -> None:
    """Datasets: pack one into Parquet shards to stream from, check a pack."""


# Packable: every dataset ganops reads but a pack itself.
_PACKABLE = [d for d in DATASETS if d != "shards"]


@data.command(name="pack")
@click.argument("out")
@click.option("--dataset", type=click.Choice(_PACKABLE), required=True, help="The reader (spec.data.dataset).")
@click.option("--root", help="Directory (or s3://) holding the dataset's files (spec.data.root; not for fake).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Official split; a folder with train/ and test/ sub-folders is split by them.")  # fmt: skip
@click.option("--image-size", type=int, help="folder, fake: square size; folder images are centre-cropped and "
              "resized (LANCZOS) as training on the folder would. [default: the first image's short side]")  # fmt: skip
@click.option("--channels", type=int, help="folder, fake: 1 (grey) or 3 (RGB). [default: 3]")
@click.option("--limit", type=int, help="Only the first N images.")
@click.option("--num-classes", type=int, help="fake only: its number of classes.")
@click.option("--download", is_flag=True, help="Fetch the official files into --root when missing (internet).")
@click.option("--shard-mb", type=float, default=256.0, show_default=True,
              help="Size of a shard's images in MiB (the last one is smaller); at most 1024.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), help="Decoders of folder images. [default: one per CPU]")
@click.option("--pool", type=click.Choice(["threads", "processes"]), default="threads", show_default=True,
              help="What the decoders are; processes may scale further on many cores.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace a finished pack at OUT (its manifest is deleted first).")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
def data_pack(
    out: str, dataset: str, root: str | None, split: str, image_size: int | None, channels: int | None,
    limit: int | None, num_classes: int | None, download: bool, shard_mb: float, workers: int | None, pool: str,
    force: bool, quiet: bool,
) -> None:  # fmt: skip
    """Write a dataset as a pack at OUT (a directory or s3://bucket/prefix) for spec.data.dataset: shards.

    Parquet shards of raw uint8 CHW images (with their labels when the dataset has
    classes), then manifest.json, last. Run again, the same command resumes an
    interrupted pack after re-checking the shards it wrote (sha256); a finished pack is
    never overwritten without --force.
    """
    from ganops import client

    doc = {
        "dataset": dataset, "root": root, "split": split, "image_size": image_size, "channels": channels,
        "limit": limit, "num_classes": num_classes, "download": download,
    }  # fmt: skip
    spec = _data_from_flags({k: v for k, v in doc.items() if v is not None})
    try:
        r = client.pack_data(
            spec, out, shard_mb=shard_mb, force=force, workers=workers, pool=pool, show_progress=not quiet, echo=err
        )
    except UserError as e:
        raise _as_flags(e) from None
    m = r.manifest
    classes = f", {m.num_classes} classes" if m.num_classes else ", unlabelled"
    reused = f" ({r.reused_shards} kept from the interrupted run)" if r.reused_shards else ""
    size = sum(s.bytes for s in m.shards)
    err(
        f"packed {m.num_images:,} images of {'x'.join(map(str, m.shape))}{classes} into {len(m.shards)} shards"
        f"{reused}, {size / 2**20:.1f} MiB, in {r.elapsed_s:.1f}s ({r.images_per_s:.0f} img/s)\n"
        f"  pack  {r.uri}\n  train from it with spec.data: {{dataset: shards, root: {r.uri}}}"
    )


@data.command(name="verify")
@click.argument("root")
@click.option("--quick", is_flag=True, help="Sizes and Parquet footers only, no sha256 (reads no pixels).")
def data_verify(root: str, quick: bool) -> None:
    """Check the pack at ROOT: every shard present, of its size and sha256 (--quick: sizes and footers)."""
    from ganops import client

    try:
        m = client.verify_pack(root, sha256=not quick)
    except UserError as e:
        raise _as_flags(e, root_flag="ROOT") from None
    classes = f"{m.num_classes} classes" if m.num_classes else "unlabelled"
    click.echo(f"{m.num_images}\t{len(m.shards)}\t{'x'.join(map(str, m.shape))}\t{classes}")
    err(f"{root}: ok, {m.num_images:,} images in {len(m.shards)} shards ({'sizes' if quick else 'sha256'} checked)")


def _data_from_flags(doc: dict[str, Any]) -> Any:
    """The DataSpec the ``data pack`` flags stand for; errors name the flag."""
    from ganops.errors import SpecError
    from ganops.spec.loader import validate_model
    from ganops.spec.models import DataSpec

    try:
        return validate_model(DataSpec, doc, "ganops data pack")
    except SpecError as e:
        lines = [f"{_flag(p) if p else ''}: {m}" if p else m for p, m in e.problems]
        raise UserError("\n".join(lines), field=_flag(e.field or "")) from None


def _flag(field: str) -> str:
    """spec.data.image_size (or image_size) -> --image-size."""
    return "--" + field.removeprefix("spec.data.").replace("_", "-")


def _as_flags(e: UserError, root_flag: str | None = None) -> UserError:
    """A reader's error about spec.data.X, told as the flag --X (or ``root_flag`` for the root)."""

    def flag(m: re.Match[str]) -> str:
        return root_flag if root_flag and m.group(1) == "root" else _flag(m.group(1))

    text = re.sub(r"spec\.data\.([a-z_]+)", flag, str(e))
    field = re.sub(r"spec\.data\.([a-z_]+)", flag, e.field) if e.field else None
    if text == str(e):
        return e
    err_type = type(e) if type(e) is UserError else UserError
    return err_type(text, field=field)


def _summary(r: Any) -> None:
    state = "stopped early" if r.stopped_early else "done"
    minutes, seconds = divmod(int(r.elapsed_s), 60)
    lines = [
        f"{state}: {r.epochs_done}/{r.epochs_requested} epochs, {r.step} steps in {minutes}m{seconds:02d}s",
        f"  job directory  {r.job_uri}",
        f"  checkpoint     {r.latest_checkpoint or '-'}",
        f"  sample grids   {r.samples_uri}",
    ]
    if r.gif_uri:
        lines.append(f"  training GIF   {r.gif_uri}")
    if r.restarts:
        lines.append(f"  recovered      {r.restarts} time(s) from lost workers (spec.scaling.max_failures)")
    if r.mlflow_run_id:
        from ganops import client

        lines.append(client.run_line(r.mlflow_run_id, r.mlflow_hint or ""))
    if r.stopped_early:
        lines.append("  resume with the same command")
    err("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print as one message (a traceback only with GANOPS_DEBUG=1)."""
    debug = os.environ.get("GANOPS_DEBUG", "") not in ("", "0", "false")
    try:
        cli.main(args=argv, prog_name="ganops", standalone_mode=False)
    except click.exceptions.Abort:
        err("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        err(f"error: {e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
