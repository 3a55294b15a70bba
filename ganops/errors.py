"""Error types that decide how a failure is shown.

A ``UserError`` is something the user can fix (a spec field, a flag, a file): the CLI
prints its message and exits non-zero without a traceback. Everything else is a bug or
an infrastructure failure and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the field, flag or file."""

    exit_code = 2


class SpecError(UserError):
    """The job spec failed validation; ``problems`` are ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid job spec{where}:"] + [f"  {p}: {m}" if p else f"  {m}" for p, m in problems]
        super().__init__("\n".join(lines))


class ResourceError(UserError):
    """The cluster cannot hold the requested workers (Ray alone would wait forever)."""

    exit_code = 3
