"""`photo-pipeline serve-face-api [GUNICORN OPTIONS]`: the face API under gunicorn.

Options after the command go to gunicorn (e.g. `--bind 0.0.0.0:5000 --workers 4`); they win over
the FACE_API_* environment variables, as on gunicorn's own command line."""
from __future__ import annotations

import argparse
import os
import sys

from face_api import engine as face_engine


def cmd_serve(args) -> int:
    options = [o for o in args.extra if o != "--"]
    command = face_engine.gunicorn_command(options)
    os.execv(sys.executable, command)   # gunicorn becomes this process (signals, pid)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-face-api", help="run the face API under gunicorn (FACE_API_* settings)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_serve, passthrough=True)   # every other option goes to gunicorn
