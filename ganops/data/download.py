"""Getting a dataset's official files into its root: find them, fetch them when
``spec.data.download`` is set, or tell the user exactly which files to put where.

Never reads a different split than the one asked for: when only the other split is
present the error says so and names the field to change.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ganops.data import root_dir
from ganops.errors import DataMissingError, UserError

if TYPE_CHECKING:
    from ganops.spec.models import DataSpec

# Seconds a connect or a read may stall. Short, so that a cluster without internet fails
# at once instead of hanging; a slow but flowing download is not affected.
TIMEOUT_S = 5.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One official file: its name in root, where to get it (first URL first), its md5."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None


def obtain(
    spec: DataSpec,
    find: Callable[[Path, str], list[Path] | None],
    *,
    expected: Callable[[str], Sequence[str]],
    remotes: Callable[[str], Sequence[Remote]],
    layout_note: str = "",
) -> list[Path]:
    """The files of ``spec.split`` under ``spec.root``, downloaded first if allowed.

    ``find(root, split)`` returns the split's files or None; ``expected(split)`` names them
    for the error message; ``remotes(split)`` are what to download.
    """
    root = root_dir(spec, create=spec.download)
    found = find(root, spec.split)
    if found is not None:
        return found
    if spec.download:
        fetch(remotes(spec.split), root, spec.dataset)
        found = find(root, spec.split)
        if found is None:  # the official files changed layout: nothing the user did
            raise RuntimeError(f"downloaded {spec.dataset} into {root} but still cannot find its {spec.split} split")
        return found

    other = "test" if spec.split == "train" else "train"
    lines = [
        f"spec.data.root: the {spec.dataset} {spec.split} split is not in {root}",
        f"  expected: {', '.join(expected(spec.split))}{layout_note}",
    ]
    other_files = find(root, other)
    if other_files is not None:
        names = ", ".join(_relative(p, root) for p in other_files)
        lines.append(f"  found the {other} split ({names}): set spec.data.split={other}")
    urls = sorted({r.urls[0].rsplit("/", 1)[0] + "/" for r in remotes(spec.split)})
    lines.append(f"  or set spec.data.download=true to fetch them from {', '.join(urls)}")
    raise DataMissingError("\n".join(lines), field="spec.data.root")


def fetch(files: Sequence[Remote], root: Path, dataset: str) -> None:
    """Download the files missing from ``root``; on any network failure, say what to place where."""
    for remote in files:
        dest = root / remote.name
        if dest.is_file():
            continue
        errors = []
        for url in remote.urls:
            try:
                _download(url, dest, remote.md5)
                break
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError, timeouts, DNS failures and refused connections are all OSError.
                errors.append(f"{url}: {_reason(e)}")
        else:
            listing = "\n".join(f"  {r.name}  from {r.urls[0]}" for r in files)
            raise UserError(
                f"could not download {dataset} into {root} ({'; '.join(errors)}).\n"
                f"Place these files in {root} yourself and run again:\n{listing}"
            )


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str | None) -> None:
    # A unique temp name in the same directory, renamed into place only when complete and
    # verified: several workers may download into a shared root at once, and an interrupted
    # download must not leave a truncated file that looks like the real one.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise UserError(
                f"{dest}: downloaded from {url} but its md5 is {digest.hexdigest()}, expected {md5} "
                "(a proxy or a changed mirror?); place the official file there yourself"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)  # URLError wraps the socket error
    return str(reason if reason is not None else e) or type(e).__name__


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
