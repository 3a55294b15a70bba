"""``ganops evaluate``: score a trained generator with FID, KID, IS and precision/recall.

Imports only click at load time (the CLI answers ``--help`` without torch or MLflow).
"""

from __future__ import annotations

import click


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
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
    from ganops.evaluate.job import EvaluateOptions, check_options, parse_metrics, table
    from ganops.evaluate.job import evaluate as run_evaluate
    from ganops.generate.source import resolve
    from ganops.tracking import embedded_store

    opts = EvaluateOptions(
        num_samples=num_samples, metrics=parse_metrics(metrics), inception_weights=inception_weights,
        inception_sha256=inception_sha256, reference_split=reference_split, data_root=data_root,
        batch_size=batch_size, seed=seed, device=device,
    )  # fmt: skip
    check_options(opts)  # before MLflow is asked anything
    uri = tracking_uri or embedded_store(storage)[0]
    source = resolve(uri, run_id=run_id, model=model_uri)
    _err(f"generator: {source.describe()}")
    result = run_evaluate(source, opts, log=log, show_progress=not quiet, echo=_err)
    click.echo(table(result.scores))
    where = f"  MLflow run {result.evaluation_run_id}" if result.evaluation_run_id else ""
    _err(f"done in {result.elapsed_s:.1f}s{where}")
