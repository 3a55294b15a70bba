"""``ganops operator``: run the Kubernetes operator, or print what it would create.

Kept apart from the user commands (``ganops.cli``), which reach ganops only through the
SDK (``ganops.client``); these run the operator itself (``ganops.k8s``).
"""

from __future__ import annotations

import click

from ganops.cli_options import dump_as, err, set_option


@click.group()
def operator() -> None:
    """The Kubernetes operator: run it, or see what it would create."""


@operator.command(name="run")
@click.option("--namespace", "-n", "namespaces", multiple=True, help="Watch this namespace (repeatable).")
@click.option("--all-namespaces", "-A", is_flag=True, help="Watch every namespace (needs the cluster-wide RBAC).")
@click.option("--liveness", metavar="URL", help="Serve a health endpoint, e.g. http://0.0.0.0:8080/healthz.")
@click.option("--kubeconfig", envvar="KUBECONFIG", help="Kube config (default: in-cluster, else ~/.kube/config).")
def operator_run(
    namespaces: tuple[str, ...], all_namespaces: bool, liveness: str | None, kubeconfig: str | None
) -> None:
    """Run the operator until SIGINT/SIGTERM: GANJobs and GANGenerations become RayJobs."""
    if bool(namespaces) == all_namespaces:
        raise click.UsageError("give --namespace NS (repeatable) or --all-namespaces")
    from ganops.k8s import operator as op

    # A bad GANOPS_* value fails here, not per job.
    config = op.OperatorConfig.from_env(namespaces=namespaces, all_namespaces=all_namespaces, kubeconfig=kubeconfig)
    op.run(config, liveness=liveness)


@operator.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@set_option
@click.option("--namespace", "-n", default="default", show_default=True)
def render(spec_file: str, overrides: tuple[str, ...], namespace: str) -> None:
    """Print the RayJob the operator would create for the GANJob of SPEC.

    Defaults come from the same GANOPS_* environment variables as the operator's.
    """
    from ganops.client import load_job
    from ganops.k8s.objects import custom_object
    from ganops.k8s.render import Defaults
    from ganops.k8s.render import render as render_rayjob

    job = load_job(spec_file, list(overrides), resolve_paths=False)
    obj = custom_object(job, namespace)
    obj["metadata"]["uid"] = "<GANJob uid>"
    click.echo(dump_as(render_rayjob(obj, Defaults.from_env()), "yaml"), nl=False)


@operator.command()
@click.option("--out-dir", type=click.Path(file_okay=False), help="Write one file per CRD here (default: print).")
def crd(out_dir: str | None) -> None:
    """The GANJob and GANGeneration CRDs, generated from the spec models."""
    from ganops.k8s import crd as crds

    if out_dir:
        for path in crds.write(out_dir):
            err(f"wrote {path}")
    else:
        click.echo("---\n".join(crds.crd_files().values()), nl=False)
