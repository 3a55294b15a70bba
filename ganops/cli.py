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
