"""The face API under gunicorn with the package's own gunicorn.conf.py, from any directory and
from an installed package alike (`photo-pipeline serve-face-api` runs this command)."""
from __future__ import annotations

import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("gunicorn.conf.py")
APP = "face_api.app:app"


def gunicorn_command(options: list[str]) -> list[str]:
    """argv that runs gunicorn on the app; `options` (gunicorn's own) win over FACE_API_*."""
    return [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), *options, APP]
