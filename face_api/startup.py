"""Start-up checks: a setting that cannot work ends the process with one line, no traceback.

gunicorn.conf.py calls `settings_or_exit()` before any worker starts, so a typo in
PHOTO_FACE_SCALES or a missing storage root is reported once instead of on every request.
The workers' CLI uses `settings_error_line` for its own settings (workers may import face_api).
"""
from __future__ import annotations

import re
import sys

from pydantic import ValidationError

# Values of these settings are never echoed back: they may carry a password or the API token.
_SECRET = re.compile(r"token|key|password|secret|url", re.IGNORECASE)


def settings_error_line(exc: ValidationError, prefix: str = "PHOTO_") -> str:
    """One line naming each bad environment variable, e.g.
    `PHOTO_FACE_ENGINE='gpu': must be one of http, inprocess`."""
    problems = []
    for error in exc.errors():
        field = "_".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if not field:                     # a rule across fields names its variables itself
            problems.append(message)
            continue
        value = error.get("input")
        shown = "" if _SECRET.search(field) or isinstance(value, dict) else f"={value!r}"
        problems.append(f"{prefix}{field.upper()}{shown}: {message}")
    return "; ".join(problems)


def check_storage_roots(settings) -> None:
    """The roots `POST /encode {"path"}` may read must exist: every request would 404 otherwise."""
    for root in settings.storage_root:
        if not root.is_dir():
            raise ValueError(f"PHOTO_STORAGE_ROOT: {root.resolve()} is not a directory")


def settings_or_exit(check_paths: bool = True, program: str = "face API"):
    """The face API's settings, validated; on error one line on stderr and exit status 2."""
    from .settings import get_settings

    try:
        settings = get_settings()
        if check_paths:
            check_storage_roots(settings)
        return settings
    except ValidationError as exc:
        line = settings_error_line(exc)
    except ValueError as exc:       # e.g. a SettingsError raised by face_api.settings itself
        line = " ".join(str(exc).split())
    print(f"{program}: refusing to start: {line}", file=sys.stderr)
    raise SystemExit(2)
