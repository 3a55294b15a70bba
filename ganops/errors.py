"""Error types that decide how a failure is shown.

A ``UserError`` is something the user can fix (a spec field, a flag, a file): the CLI
prints its message and exits non-zero without a traceback. Everything else is a bug or
an infrastructure failure and keeps its traceback.
"""

from __future__ import annotations

import reprlib
from typing import Any

# Echoed values are cut to this many characters: a message must stay readable (and
# small) whatever the user passed, be it a 1 MB string or a 4,000-digit number.
SHOW_CHARS = 80
# A spec with thousands of problems (a long list of bad items) lists this many.
MAX_PROBLEMS = 20


def short(value: Any, limit: int = SHOW_CHARS) -> str:
    """``repr(value)``, bounded: at most ``limit`` characters, a few levels and items deep.

    Never fails: a huge int (``repr`` refuses those over 4,300 digits) or a deeply
    nested value still gives a short description.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    r = reprlib.Repr()
    r.maxstring = r.maxother = r.maxlong = limit
    r.maxlevel, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 3, 6, 6, 6, 6
    try:
        text = r.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = SHOW_CHARS) -> str:
    """``text`` cut to ``limit`` characters (a field name or path taken from the input)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class UserError(Exception):
    """A problem the user can fix; the message names the field, flag or file.

    ``field`` is what it is about, when one thing is: a spec field path
    (``spec.train.lr``) or a CLI flag (``--out``), for code that reacts to the field
    without reading the message.
    """

    exit_code = 2

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> Any:
        # Errors cross process boundaries (Ray workers): keep ``field`` and the subclass's
        # own attributes without calling a subclass's differently shaped __init__.
        return (_restore, (type(self), self.args, self.__dict__))


class DataMissingError(UserError):
    """A downloadable dataset's files are not where the spec says (yet): what a dry run,
    which downloads nothing, reports as "to be downloaded" when `download: true`."""


class SpecError(UserError):
    """The job spec failed validation; ``problems`` are ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        shown = problems[:MAX_PROBLEMS]
        lines = [f"invalid job spec{where}:"] + [f"  {p}: {m}" if p else f"  {m}" for p, m in shown]
        if len(problems) > len(shown):
            lines.append(f"  ... and {len(problems) - len(shown)} more")
        super().__init__("\n".join(lines), field=next((p for p, _ in problems if p), None))

    @property
    def fields(self) -> list[str]:
        """The field paths of the problems, in order (a problem without one is left out)."""
        return [p for p, _ in self.problems if p]


class ResourceError(UserError):
    """The cluster cannot hold the requested workers (Ray alone would wait forever)."""

    exit_code = 3


class JobFailedError(UserError):
    """The job stopped for a reason its message explains, with its checkpoints kept: a run
    that diverged, workers lost more often than ``spec.scaling.max_failures`` allows.
    Shown without a traceback; the settings it names are the user's to change."""

    exit_code = 1


class FieldValueError(ValueError):
    """A model validator's complaint about one of the model's fields (``field`` is its
    path relative to the model, e.g. ``root`` or ``train.batch_size``).

    Pydantic keeps the exception in the validation error, so the loader reads the path
    from ``field`` instead of parsing it back out of the message.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def user_error_in(exc: BaseException) -> UserError | None:
    """The ``UserError`` somewhere inside ``exc``, as Ray wraps one on its way from a worker
    or a task: through ``__cause__``/``__context__``, a RayTaskError's ``cause``, and the
    per-worker failures of Ray Train's errors (``worker_failures``, ``errors``)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        stack += [x for x in (getattr(e, "cause", None), e.__cause__, e.__context__) if isinstance(x, BaseException)]
        for attr in ("worker_failures", "errors"):
            more = getattr(e, attr, None)
            values = more.values() if isinstance(more, dict) else more if isinstance(more, list) else ()
            stack += [v for v in values if isinstance(v, BaseException)]
    return None
