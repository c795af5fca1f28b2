"""Operator sub-commands: ``inspect``, ``queue-key``, ``payload`` (wired into ``python -m workers``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import crypto
from .payload import PROFILES, PayloadError, build_payload, decode_payload, describe
from .php_json import PhpJsonError, queue_key
from .php_serialize import PhpSerializeError

__all__ = ["inspect_cmd", "queue_key_cmd", "payload_cmd", "add_subcommands"]


def _app_key() -> str | None:
    return os.environ.get("PHOTO_APP_KEY") or os.environ.get("APP_KEY") or None


def _previous_keys() -> list[str]:
    raw = os.environ.get("PHOTO_APP_PREVIOUS_KEYS") or os.environ.get("APP_PREVIOUS_KEYS") or ""
    return [k for k in raw.split(",") if k.strip()]


def _read(path_or_dash: str | None) -> bytes:
    if not path_or_dash or path_or_dash == "-":
        return sys.stdin.buffer.read()
    with open(path_or_dash, "rb") as f:
        return f.read()


def _unwrap(body: bytes) -> bytes:
    """Accept a failed_jobs row exported as JSON ({"payload": "<body>", ...}) as well as a raw body."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if isinstance(obj, dict) and "data" not in obj and isinstance(obj.get("payload"), str):
        return obj["payload"].encode("utf-8")
    return body


def _json_data(text: str) -> Any:
    try:
        # object_pairs_hook keeps duplicate/ordered keys like PHP's json_decode(assoc)
        return json.loads(text)
    except ValueError as e:
        raise SystemExit(f"error: JSON-DATA is not valid JSON: {e}")


def inspect_cmd(path_or_dash: str | None = "-", data_property: str = "data") -> int:
    """Print a message body (or failed_jobs payload) decoded as one JSON object."""
    try:
        body = _unwrap(_read(path_or_dash).strip())
        job = decode_payload(body, app_key=_app_key(), previous_keys=_previous_keys(), data_property=data_property)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (PayloadError, PhpSerializeError, crypto.DecryptError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(describe(job), ensure_ascii=False, indent=2))
    return 0


def queue_key_cmd(cls: str, json_data: str) -> int:
    """Print md5(json_encode(['class' => CLASS] + DATA)) only."""
    data = _json_data(json_data)
    if not isinstance(data, (dict, list)):
        print("error: JSON-DATA must be a JSON object or array", file=sys.stderr)
        return 2
    try:
        print(queue_key(cls, data))
    except PhpJsonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def payload_cmd(cls: str, json_data: str, queue: str | None = None, profile: str | None = None) -> int:
    """Print the message body we would publish for ``new CLASS($data)``."""
    data = _json_data(json_data)
    try:
        msg = build_payload(cls, data, queue=queue, profile=profile)
    except (PayloadError, PhpSerializeError, PhpJsonError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(msg.body + b"\n")
    sys.stdout.flush()
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``inspect``, ``queue-key`` and ``payload``; each sets ``args.func(args) -> int``."""
    p = subparsers.add_parser("inspect", help="decode a Laravel job message body or failed_jobs payload")
    p.add_argument("file", nargs="?", default="-", help="file with the body, or - for stdin (default)")
    p.add_argument("--data-property", default="data", help="the job's data property name (default: data)")
    p.set_defaults(func=lambda a: inspect_cmd(a.file, a.data_property))

    p = subparsers.add_parser("queue-key", help="md5(json_encode(['class' => CLASS] + DATA)), as PHP computes it")
    p.add_argument("cls", metavar="CLASS")
    p.add_argument("json_data", metavar="JSON-DATA")
    p.set_defaults(func=lambda a: queue_key_cmd(a.cls, a.json_data))

    p = subparsers.add_parser("payload", help="the message body Laravel would publish for new CLASS(DATA)")
    p.add_argument("cls", metavar="CLASS")
    p.add_argument("json_data", metavar="JSON-DATA")
    p.add_argument("--queue", default=None, help="onQueue(QUEUE)")
    p.add_argument("--profile", default=None, choices=sorted(PROFILES), help="Laravel layout (default laravel11)")
    p.set_defaults(func=lambda a: payload_cmd(a.cls, a.json_data, a.queue, a.profile))


def main(argv: list[str] | None = None) -> int:  # handy for tests: python -m workers.laravel.cli
    ap = argparse.ArgumentParser(prog="workers.laravel")
    add_subcommands(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
