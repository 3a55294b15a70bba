"""The ``ganops`` command: parse, call the SDK in ``ganops.client``, print.

Imports no torch, Ray or MLflow at module level so that ``ganops --help`` and
``ganops validate`` answer at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ganops import __version__
from ganops.errors import UserError

SET_HELP = "Override a spec field, e.g. --set spec.train.epochs=3 (repeatable; YAML values)."


def _set_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=SET_HELP)(f)


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ganops")
def cli() -> None:
    """Train GANs data-parallel on Ray Train; track them in MLflow."""


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@_set_option
def validate(spec_file: str, overrides: tuple[str, ...]) -> None:
    """Validate SPEC and print the resolved spec (all defaults filled in)."""
    from ganops.client import load_job, preflight
    from ganops.spec import dump

    job = load_job(spec_file, list(overrides))
    click.echo(dump(job), nl=False)
    # The data may live only on the cluster's nodes: check it when it is reachable here.
    data = job.spec.data
    reachable = data.dataset == "fake" or (data.root is not None and os.path.isdir(data.root))
    info = preflight(job) if reachable else None
    shape = "×".join(map(str, info.shape)) if info else ""
    where = f"; data: {info.num_images} images of {shape}" if info else f"; data not checked ({data.root} not found here)"
    _err(f"{spec_file}: valid{where}")


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@_set_option
@click.option("--dry-run", is_flag=True, help="Validate and print the resolved spec, then stop.")
@click.option(
    "--restart", is_flag=True, help="Start over even if checkpoints exist; the old run is moved aside, never lost."
)
@click.option(
    "--address",
    envvar="RAY_ADDRESS",
    default=None,
    help="Ray cluster to run on (default: an embedded local Ray). Also read from RAY_ADDRESS.",
)
@click.option("--quiet", "-q", is_flag=True, help="No resolved spec and no live progress line.")
def submit(
    spec_file: str, overrides: tuple[str, ...], dry_run: bool, restart: bool, address: str | None, quiet: bool
) -> None:
    """Train the GAN described by SPEC.

    A job whose name already has checkpoints in its storage resumes from the latest one
    and trains up to spec.train.epochs; --restart starts over. Ctrl-C stops cleanly after
    writing a checkpoint.
    """
    from ganops.client import load_job, preflight, submit as sdk_submit
    from ganops.spec import dump

    job = load_job(spec_file, list(overrides))
    if not quiet or dry_run:
        click.echo(dump(job), nl=False)
    if dry_run:
        preflight(job)
        _err(f"{spec_file}: valid (dry run: nothing submitted)")
        return
    result = sdk_submit(job, address=address, restart=restart, show_progress=not quiet, echo=_err)
    if not result.trained:
        return
    _summary(result)


@cli.command()
@click.option("--run-id", help="The training run whose generator to use.")
@click.option("--model", "model_uri", metavar="URI", help="A registered generator: models:/NAME@ALIAS or models:/NAME/VERSION.")
@click.option("--num", "-n", type=int, default=None, help="Images to make (with --interpolate: walks). [default: 64]")
@click.option("--out", "-o", required=True, help="Output directory or s3://bucket/prefix (must not hold a finished job).")
@click.option("--format", "fmt", type=click.Choice(["png", "npz", "both"]), default="png", show_default=True,
              help="PNG files, uint8 .npz shards, or both.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same options: byte-identical images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--truncation", type=float, help="Resample latent entries whose magnitude exceeds this (e.g. 1.5).")
@click.option("--class", "class_index", type=int, help="Only this class (conditional models).")
@click.option("--best-of", type=int, default=1, show_default=True,
              help="Make K× the images and keep those the run's discriminator rates most real.")  # fmt: skip
@click.option("--interpolate", type=int, metavar="STEPS", help="Walk between seeds in STEPS steps: a grid and a GIF.")
@click.option("--z", "z_file", metavar="FILE", help="Latent vectors (.npy [N, latent] or .npz with z, labels).")
@click.option("--save-z", is_flag=True, help="Store the latent vector of every image with it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ray workers (1: in this process).")  # fmt: skip
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Images per shard.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store of --storage).")  # fmt: skip
@click.option("--storage", default="./runs", show_default=True, help="Storage root whose embedded MLflow store to use.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster for --workers > 1 (default: embedded).")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
def generate(
    run_id: str | None, model_uri: str | None, num: int | None, out: str, fmt: str, seed: int, batch_size: int,
    truncation: float | None, class_index: int | None, best_of: int, interpolate: int | None, z_file: str | None,
    save_z: bool, workers: int, gpus_per_worker: float, shard_size: int, tracking_uri: str | None, storage: str,
    address: str | None, quiet: bool,
) -> None:  # fmt: skip
    """Generate images from a trained generator (--run-id or --model).

    Writes PNG files and/or .npz shards, a preview grid and manifest.json (last: an
    interrupted job never looks complete), and records the job as its own MLflow run.
    """
    from ganops.generate.job import generate as run_generate
    from ganops.generate.options import GenerateOptions
    from ganops.generate.source import resolve
    from ganops.tracking import embedded_store

    if num is None:
        num = _count_z(z_file) if z_file else 64
    uri = tracking_uri or embedded_store(storage)[0]
    source = resolve(uri, run_id=run_id, model=model_uri)
    opts = GenerateOptions(
        num=num, seed=seed, batch_size=batch_size, truncation=truncation, class_index=class_index, best_of=best_of,
        interpolate=interpolate, z_file=z_file, save_z=save_z,
        formats=("png", "npz") if fmt == "both" else (fmt,), shard_size=shard_size,
    )  # fmt: skip
    _err(f"generator: {source.describe()}")
    r = run_generate(
        source, opts, out, workers=workers, gpus_per_worker=gpus_per_worker, address=address,
        show_progress=not quiet, echo=_err,
    )  # fmt: skip
    _err(
        f"done: {r.count} images in {r.shards} shards, {r.elapsed_s:.1f}s ({r.images_per_s:.0f} img/s)\n"
        f"  output       {r.out_uri}\n  manifest     {r.manifest_uri}\n"
        + (f"  preview      {r.preview_uri}\n" if r.preview_uri else "")
        + f"  MLflow run   {r.generation_run_id}"
    )


def _count_z(path: str) -> int:
    """--num defaults to the number of vectors in --z."""
    import io

    import numpy as np

    from ganops import storage

    try:
        data = np.load(io.BytesIO(storage.read_bytes(storage.locate(path))))
        z = data["z"] if hasattr(data, "files") else data
        return int(len(z))
    except FileNotFoundError:
        raise UserError(f"--z: no such file {path}") from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--z: cannot read {path} ({e})") from None


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
    from ganops import tracking

    cmd, address = tracking.ui_command(storage, host, port)
    _err(f"MLflow UI for {storage}: {address}  (Ctrl-C to stop)")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    sys.stderr.flush()
    # Become the server: Ctrl-C and SIGTERM reach it directly, and no child outlives us.
    os.execve(cmd[0], cmd, env)


# Commands that live with their subsystem; each module imports only click at load time.
from ganops.evaluate.command import evaluate  # noqa: E402

cli.add_command(evaluate)


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
    if r.mlflow_run_id:
        lines.append(f"  MLflow run     {r.mlflow_run_id}  {r.mlflow_hint}")
    if r.stopped_early:
        lines.append("  resume with the same command")
    _err("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print as one message (a traceback only with GANOPS_DEBUG=1)."""
    debug = os.environ.get("GANOPS_DEBUG", "") not in ("", "0", "false")
    try:
        cli.main(args=argv, prog_name="ganops", standalone_mode=False)
    except click.exceptions.Abort:
        _err("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        _err(f"error: {e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
