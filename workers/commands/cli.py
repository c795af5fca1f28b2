"""`photo-pipeline <command>` (or `python -m workers <command>`): the operator's entry point.

Commands are registered by the module that owns them, so this file stays a table of contents."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pydantic import ValidationError

from workers.settings import SettingsError, error_line

PROG = "photo-pipeline"

# Modules that own sub-commands; each has `add_subcommands(subparsers)`.
COMMAND_MODULES = [
    "workers.laravel.cli",              # inspect, queue-key, payload
    "workers.queue.consumer",           # consume
    "workers.commands.faces",           # faces rematch|suggest|people|stats
    "workers.commands.process",         # process, enqueue
    "workers.commands.render_config",   # render-config
    "workers.commands.monitor",         # monitor
    "workers.commands.reprocess",       # reprocess
    "workers.commands.review",          # review
    "workers.commands.serve_face_api",  # serve-face-api
]


def cmd_migrate(args) -> int:
    from workers import db
    from workers.settings import get_settings
    url = args.db or get_settings().database_url
    applied = db.migrate(db.engine_for(url))
    print("applied: " + ", ".join(applied) if applied else "schema up to date")
    return 0


def cmd_schema(args) -> int:
    from workers import db
    sys.stdout.write(db.mysql_ddl())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    p.add_argument("--db", help="database URL (default: PHOTO_DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)
    sub.add_parser("schema", help="print the schema as MySQL DDL").set_defaults(func=cmd_schema)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    # Commands that hand their options on (serve-face-api -> gunicorn) set `passthrough`.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        if exc.title != "Settings":          # only settings errors are the operator's to fix
            raise
        line = error_line(exc)
    except SettingsError as exc:
        line = str(exc)
    print(f"{PROG} {args.command}: refusing to start: {line}", file=sys.stderr)
    return 2
