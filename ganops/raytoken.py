"""The Ray cluster's auth token, found the way Ray documents it (one place for every client:
the Jobs API target and the operator's dashboard calls).

``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``;
``RAY_AUTH_MODE=disabled`` means none. The token is never printed or logged; errors name
where it came from, not what it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from ganops.errors import UserError

__all__ = ["auth_token"]


def auth_token() -> tuple[str | None, str]:
    """``(token, where it came from)`` by Ray's precedence; ``(None, ...)`` when there is none."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        # Ray treats an unreadable or empty RAY_AUTH_TOKEN_PATH as a misconfiguration, not a fallback.
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise UserError(f"RAY_AUTH_TOKEN_PATH: cannot read {path} ({e.strerror or e})") from None
        if not token:
            raise UserError(f"RAY_AUTH_TOKEN_PATH: {path} is empty")
        return token, f"RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None, "none found"
    return (token, str(default)) if token else (None, f"{default} is empty")
