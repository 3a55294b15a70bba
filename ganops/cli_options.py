"""Click options and output helpers shared by the command modules (``cli``,
``operator_cli``): no ganops imports, so either may use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

SET_HELP = "Override a spec field, e.g. --set spec.train.epochs=3 (repeatable; YAML values)."


def set_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--set PATH=VALUE`` (repeatable), passed to the command as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=SET_HELP)(f)


def err(msg: str) -> None:
    """A line for the person at the terminal (stderr): stdout is kept for results."""
    click.echo(msg, err=True)


def dump_as(obj: Any, fmt: str) -> str:
    """``obj`` as ``json`` (indented) or YAML (any other ``fmt``), as -o/--output asks."""
    import json

    import yaml

    return json.dumps(obj, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(obj, sort_keys=False)
