"""``ganops evaluate``: score a trained generator (placeholder until issue 7 lands)."""

from __future__ import annotations

import click

from ganops.errors import UserError


@click.command()
@click.option("--run-id", help="The training run whose generator to score.")
def evaluate(run_id: str | None) -> None:
    """Score a generator with FID, KID, IS and precision/recall."""
    raise UserError("ganops evaluate: not implemented yet")
