"""`photo-pipeline serve-face-api [GUNICORN OPTIONS]`: the face API under gunicorn with the
package's own gunicorn.conf.py, from any directory and from an installed package alike.

Options after the command go to gunicorn (e.g. `--bind 0.0.0.0:5000 --workers 4`); they win over
the FACE_API_* environment variables, as on gunicorn's own command line."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("gunicorn.conf.py")
APP = "face_api.app:app"


def gunicorn_command(options: list[str]) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), *options, APP]


def cmd_serve(args) -> int:
    options = [o for o in args.extra if o != "--"]
    os.execv(sys.executable, gunicorn_command(options))   # gunicorn becomes this process (signals, pid)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-face-api", help="run the face API under gunicorn (FACE_API_* settings)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_serve, passthrough=True)   # every other option goes to gunicorn
