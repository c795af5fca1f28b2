"""`photo-pipeline render-config`: the supervisor programs and the face-api systemd unit,
rendered from the jinja2 templates in etc/ (package data, so an installed
package renders them too) and the settings (queue timeouts and process counts).

The programs run the venv's `photo-pipeline` console script (`consume --queue Q`,
`serve-face-api`), so nothing depends on a checkout once the package is installed; the working
directory only anchors relative settings (`storage`, the app's `.env`).
install.sh calls this and copies the result to /etc/supervisor/conf.d and /etc/systemd/system."""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import jinja2

from workers.errors import PipelineError
from workers.jobs import registry
from workers.settings import QUEUE_NUMPROCS, Settings, get_settings

QUEUES = registry.QUEUES
STOP_MARGIN = 30        # seconds past the job timeout before supervisor sends SIGKILL
FACE_API = {"bind": "127.0.0.1:5000", "workers": 16, "threads": 2, "timeout": 300}


def _templates() -> Path:
    """The top-level etc/ of a checkout, installed as the package data `workers.etc`."""
    spec = importlib.util.find_spec("workers.etc")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "etc"


TEMPLATES = _templates()


class ConfigError(PipelineError, ValueError):
    """A value that cannot be written safely into the rendered file."""


def _sv(value) -> str:
    """A value for a supervisor .ini line: '%' is its expansion character, newlines end the value
    and ' ;' / ' #' start an inline comment."""
    text = str(value)
    if "\n" in text or "\r" in text or re.search(r"\s[;#]", text):
        raise ConfigError(f"value cannot be written to a supervisor config: {text!r}")
    return text.replace("%", "%%")


def _sv_env(env: dict) -> str:
    """supervisor's `environment=` (KEY="v",...): non-POSIX shlex, so no escapes: quote each value
    with a quote character it does not contain."""
    parts = []
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"bad environment variable name: {key!r}")
        value = _sv(value)
        quote = '"' if '"' not in value else "'"
        if quote in value or value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            raise ConfigError(f"environment value cannot be quoted for supervisor: {key}={value!r}")
        parts.append(f"{key}={quote}{value}{quote}")
    return ",".join(parts)


def _sd_quote(text: str) -> str:
    """One systemd Environment= assignment, double-quoted with C-style escapes."""
    if "\n" in text:
        raise ConfigError(f"value cannot be written to a systemd unit: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(sv=_sv, sv_env=_sv_env, sd_quote=_sd_quote)
    return env


def numprocs_for(settings: Settings, queue: str, override: dict[str, int] | None = None) -> int:
    """Process count: --numprocs, else settings.queue_numprocs (PHOTO_QUEUE_NUMPROCS), else the spec's."""
    table = {**QUEUE_NUMPROCS, **(getattr(settings, "queue_numprocs", None) or {}), **(override or {})}
    n = int(table.get(queue, 1))
    if n < 1:
        raise ConfigError(f"numprocs for {queue} must be >= 1, got {n}")
    return n


def render(settings: Settings | None = None, *, prefix: str = "/var/www/photo", venv: str | None = None,
           user: str = "www-data", group: str = "web", workdir: str | None = None,
           numprocs: dict[str, int] | None = None, environment: dict[str, str] | None = None,
           env_file: str = "/etc/default/face-api", face_api: dict | None = None,
           setpriv: bool = True) -> dict[str, str]:
    """File name -> content for the four supervisor programs and face-api.service.

    setpriv=True (supervisord runs as root, as on the box): the worker runs as user:group via
    setpriv. False: supervisor's own `user=` (group = that user's primary group); for a
    supervisord that is not root and so can only run programs as itself."""
    settings = settings or get_settings()
    prefix = prefix.rstrip("/") or "/"
    venv = venv or f"{prefix}/face-api-venv"
    workdir = str(workdir or prefix)       # relative settings (`storage`, `.env`) resolve against it
    cli = f"{venv}/bin/photo-pipeline"     # the installed console script, never a checkout
    for name, value in (("user", user), ("group", group)):
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", value):
            raise ConfigError(f"bad {name} name: {value!r}")
    log_dir = f"{prefix}/storage/logs"
    env = {"PHOTO_LOG_DIR": log_dir, "PYTHONUNBUFFERED": "1", **(environment or {})}
    jinja = _jinja()
    files = {}
    worker = jinja.get_template("supervisor/photo-worker.conf.j2")
    for queue in QUEUES:
        files[f"photo-{queue}-worker.conf"] = worker.render(
            queue=queue, timeout=settings.timeout_for(queue), margin=STOP_MARGIN,
            numprocs=numprocs_for(settings, queue, numprocs),
            command=f"{cli} consume --queue {queue}",
            workdir=workdir, environment=env, user=user, group=group, setpriv=setpriv,
            log_file=f"{log_dir}/supervisor-photo-{queue}.log")
    files["face-api.service"] = jinja.get_template("systemd/face-api.service.j2").render(
        user=user, group=group, workdir=workdir, command=f"{cli} serve-face-api",
        environment=env, env_file=env_file, face_api={**FACE_API, **(face_api or {})})
    return files


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _numprocs_arg(values: list[str]) -> dict[str, int]:
    """`--numprocs 1` (every queue) or `--numprocs faces=12` (one queue)."""
    out: dict[str, int] = {}
    for item in values or []:
        queue, sep, n = item.rpartition("=")
        try:
            count = int(n)
        except ValueError:
            raise SystemExit(f"--numprocs expects N or QUEUE=N, got {item!r}") from None
        if sep and queue not in QUEUES:
            raise SystemExit(f"--numprocs: unknown queue {queue!r} (one of {', '.join(QUEUES)})")
        out.update({queue: count} if sep else dict.fromkeys(QUEUES, count))
    return out


def cmd_render_config(args) -> int:
    try:
        files = render(prefix=args.prefix, venv=args.venv, user=args.user, group=args.group,
                       workdir=args.workdir, numprocs=_numprocs_arg(args.numprocs),
                       environment=_pairs(args.env, "--env"), env_file=args.env_file,
                       setpriv=not args.no_setpriv)
    except ConfigError as exc:
        print(f"render-config: {exc}", file=sys.stderr)
        return 2
    if not args.out:
        for name, text in files.items():
            sys.stdout.write(f"# ==> {name} <==\n{text}\n")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = out / name
        if not path.exists() or path.read_text() != text:    # unchanged files keep their mtime
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        print(path)
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render-config", help="render the supervisor programs and face-api.service",
                       description="Render etc/: photo-{queue}-worker.conf (supervisor) "
                                   "and face-api.service (systemd). Without --out, print them.")
    p.add_argument("--out", help="directory to write the files to (default: print)")
    p.add_argument("--prefix", default="/var/www/photo", help="Laravel app root (logs in <prefix>/storage/logs)")
    p.add_argument("--venv", help="virtualenv (default: <prefix>/face-api-venv)")
    p.add_argument("--workdir", "--app-dir", dest="workdir",
                   help="working directory of the programs, where relative settings such as `storage` "
                        "resolve (default: the prefix; the code itself is the venv's installed package)")
    p.add_argument("--user", default="www-data")
    p.add_argument("--group", default="web")
    p.add_argument("--numprocs", action="append", metavar="N|QUEUE=N",
                   help="process count for every queue or one queue (repeatable; "
                        "default: PHOTO_QUEUE_NUMPROCS, else thumbnails 2, metadata 1, geolocation 1, faces 8)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="extra environment variable for the workers and the face API (repeatable)")
    p.add_argument("--env-file", default="/etc/default/face-api",
                   help="optional EnvironmentFile of face-api.service")
    p.add_argument("--no-setpriv", action="store_true",
                   help="use supervisor's user= instead of setpriv (group = the user's primary group); "
                        "for a supervisord not running as root")
    p.set_defaults(func=cmd_render_config)
