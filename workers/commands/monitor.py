"""`python -m workers monitor [--json]`: one look at the pipeline's health.

* Queues (the four and their `{queue}.delay.{ms}` retry queues): ready, unacked, consumers.
  `rabbitmqctl list_queues` gives all three (it needs the local node and its cookie: run as root
  or as the rabbitmq user); without it a passive `queue_declare` over AMQP gives ready and
  consumers only, and unacked is "n/a" (the management plugin may not be enabled).
* failed_jobs by queue, job class (payload displayName) and reason (first line of the exception).
* Dedup rows still in `queues` (queued or running jobs; old ones point at a leak).
* Throughput: images finished per queue in the last minute / hour, from the *_at columns.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from urllib.parse import unquote, urlparse

import sqlalchemy as sa

from workers import db
from workers.jobs import registry
from workers.schema import failed_jobs, images, queues
from workers.settings import Settings, get_settings

QUEUES = registry.QUEUES
DONE_COLUMNS = {"thumbnails": "thumbnails_at", "metadata": "metadata_at",
                "geolocation": "geocoded_at", "faces": "faces_at"}
DELAY_RE = re.compile(r"^(?P<queue>.+)\.delay\.\d+$")
_DISPLAY_NAME = re.compile(r'"displayName"\s*:\s*("(?:[^"\\]|\\.)*")')


# --- broker -------------------------------------------------------------------------------------

def _vhost(amqp_url: str) -> str:
    path = urlparse(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def rabbitmqctl_stats(command: list[str], vhost: str = "/", env: dict | None = None,
                      timeout: float = 30) -> dict[str, dict]:
    """Every queue of the vhost -> {ready, unacked, consumers}. Raises on any failure."""
    out = subprocess.run([*command, "list_queues", "-q", "--formatter", "json", "-p", vhost,
                          "name", "messages_ready", "messages_unacknowledged", "consumers"],
                         capture_output=True, text=True, timeout=timeout, env=env, check=True).stdout
    return {q["name"]: {"ready": int(q["messages_ready"] or 0),
                        "unacked": int(q["messages_unacknowledged"] or 0),
                        "consumers": int(q["consumers"] or 0)} for q in json.loads(out or "[]")}


def amqp_stats(amqp_url: str, names: list[str]) -> dict[str, dict]:
    """Passive queue_declare per name: ready and consumers; queues that do not exist are left out."""
    import pika
    from pika.exceptions import ChannelClosedByBroker
    found = {}
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        for name in names:
            try:
                ok = channel.queue_declare(name, passive=True).method
            except ChannelClosedByBroker:        # 404: no such queue; the broker closed the channel
                channel = conn.channel()
                continue
            found[name] = {"ready": ok.message_count, "unacked": None, "consumers": ok.consumer_count}
    finally:
        conn.close()
    return found


def default_rabbitmqctl() -> list[str] | None:
    path = shutil.which("rabbitmqctl")
    return [path] if path else None


def queue_report(settings: Settings, amqp_url: str, rabbitmqctl: list[str] | None,
                 rabbitmqctl_env: dict | None = None) -> dict:
    """{"source": "rabbitmqctl"|"amqp", "queues": {name: {...}}, "note": str|None}."""
    note = None
    if rabbitmqctl:
        try:
            every = rabbitmqctl_stats(rabbitmqctl, _vhost(amqp_url), rabbitmqctl_env)
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            detail = [ln.strip() for ln in (getattr(exc, "stderr", "") or str(exc) or repr(exc)).splitlines()
                      if ln.strip()]
            line = next((ln for ln in detail if "rror" in ln), detail[0] if detail else repr(exc))
            note = f"rabbitmqctl failed: {line}"
        else:
            mine = {name: stats for name, stats in every.items()
                    if name in QUEUES or (DELAY_RE.match(name) and DELAY_RE.match(name)["queue"] in QUEUES)}
            for name in QUEUES:
                mine.setdefault(name, None)          # None: the queue does not exist (yet)
            return {"source": "rabbitmqctl", "queues": _with_depth(mine), "note": None}
    # Over AMQP delay queues cannot be listed: probe the ones our own releases use.
    delays = {settings.lock_release_delay, settings.backoff} - {0}
    names = [*QUEUES, *(f"{q}.delay.{d * 1000}" for q in QUEUES for d in sorted(delays))]
    try:
        found = amqp_stats(amqp_url, names)
    except Exception as exc:  # noqa: BLE001 - pika's connection errors often have empty messages
        where = urlparse(amqp_url)
        raise RuntimeError(f"AMQP {where.hostname}:{where.port or 5672}: {type(exc).__name__} {exc}".strip()
                           + (f"; {note}" if note else "")) from exc
    stats = {name: found.get(name) for name in QUEUES}
    stats.update({name: found[name] for name in names[len(QUEUES):] if name in found})
    return {"source": "amqp", "queues": _with_depth(stats),
            "note": note or "unacked needs rabbitmqctl (not available): n/a; only known delay queues probed"}


def _with_depth(stats: dict) -> dict:
    out = {}
    for name in sorted(stats, key=lambda n: (QUEUES.index(n.split(".")[0]) if n.split(".")[0] in QUEUES else 9, n)):
        s = stats[name]
        out[name] = None if s is None else {**s, "depth": s["ready"] + (s["unacked"] or 0)}
    return out


# --- database -----------------------------------------------------------------------------------

def display_name(payload_head: str) -> str:
    """The job class from the start of a Laravel payload (displayName is near the beginning)."""
    m = _DISPLAY_NAME.search(payload_head or "")
    if not m:
        return "(unknown)"
    try:
        return json.loads(m.group(1))
    except ValueError:
        return "(unknown)"


def first_line(exception: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in (exception or "").splitlines() if ln.strip()), "(empty)")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def failed_report(conn: sa.Connection) -> list[dict]:
    """failed_jobs grouped by queue, class and reason, most frequent first."""
    # Only the heads of payload/exception: both can be megabytes (LONGTEXT).
    rows = conn.execute(sa.select(failed_jobs.c.queue,
                                  sa.func.substr(failed_jobs.c.payload, 1, 2000),
                                  sa.func.substr(failed_jobs.c.exception, 1, 2000),
                                  failed_jobs.c.failed_at))
    counts: Counter = Counter()
    last: dict = {}
    for queue, payload, exception, failed_at in rows:
        key = (queue, display_name(payload), first_line(exception))
        counts[key] += 1
        if failed_at and (key not in last or failed_at > last[key]):
            last[key] = failed_at
    return [{"queue": q, "class": c, "reason": r, "count": n,
             "last_failed_at": last[(q, c, r)].isoformat(sep=" ") if (q, c, r) in last else None}
            for (q, c, r), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def dedup_report(conn: sa.Connection) -> dict:
    count, oldest = conn.execute(sa.select(sa.func.count(), sa.func.min(queues.c.created_at))).one()
    return {"pending": int(count), "oldest": oldest.isoformat(sep=" ") if oldest else None}


def throughput_report(conn: sa.Connection, now: dt.datetime | None = None) -> dict:
    """Per queue: images finished in the last minute and hour (timestamps are UTC, as db.now())."""
    now = now or db.now()
    minute, hour = now - dt.timedelta(minutes=1), now - dt.timedelta(hours=1)
    out = {}
    for queue, column in DONE_COLUMNS.items():
        col = images.c[column]
        m, h = conn.execute(sa.select(sa.func.sum(sa.case((col >= minute, 1), else_=0)),
                                      sa.func.count()).where(col >= hour)).one()
        out[queue] = {"last_minute": int(m or 0), "last_hour": int(h or 0),
                      "per_minute_hour_avg": round((h or 0) / 60, 2)}
    return out


# --- report -------------------------------------------------------------------------------------

def collect(settings: Settings | None = None, *, database_url: str | None = None,
            amqp_url: str | None = None, rabbitmqctl: list[str] | None = None,
            rabbitmqctl_env: dict | None = None) -> dict:
    """The whole report; a section that cannot be read carries {"error": ...} instead."""
    settings = settings or get_settings()
    report: dict = {"generated_at": db.now().isoformat(sep=" ")}
    try:
        report["broker"] = queue_report(settings, amqp_url or settings.amqp_url, rabbitmqctl, rabbitmqctl_env)
    except Exception as exc:  # noqa: BLE001 - report it, still show the database part
        report["broker"] = {"error": str(exc) or type(exc).__name__}
    try:
        with db.engine_for(database_url or settings.database_url).connect() as conn:
            report["failed_jobs"] = failed_report(conn)
            report["dedup"] = dedup_report(conn)
            report["throughput"] = throughput_report(conn)
    except Exception as exc:  # noqa: BLE001
        report["database"] = {"error": f"{type(exc).__name__}: {exc}"}
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else str(value)


def format_text(report: dict) -> str:
    lines = [f"photo-pipeline monitor  {report['generated_at']} UTC", ""]
    broker = report["broker"]
    if "error" in broker:
        lines.append(f"broker: ERROR {broker['error']}")
    else:
        lines.append(f"{'queue':<32}{'depth':>8}{'ready':>8}{'unacked':>9}{'consumers':>11}   (via {broker['source']})")
        for name, s in broker["queues"].items():
            if s is None:
                lines.append(f"{name:<32}{'(no such queue)':>36}")
            else:
                lines.append(f"{name:<32}{s['depth']:>8}{s['ready']:>8}{_fmt(s['unacked']):>9}{s['consumers']:>11}")
        if broker.get("note"):
            lines.append(f"note: {broker['note']}")
    lines.append("")
    if "database" in report:
        lines.append(f"database: ERROR {report['database']['error']}")
        return "\n".join(lines) + "\n"
    t = report["throughput"]
    lines.append(f"{'done':<32}{'last min':>9}{'last hour':>11}{'avg/min':>9}")
    for queue, s in t.items():
        lines.append(f"{queue:<32}{s['last_minute']:>9}{s['last_hour']:>11}{s['per_minute_hour_avg']:>9}")
    d = report["dedup"]
    lines += ["", f"dedup rows pending (queued or running): {d['pending']}"
              + (f", oldest {d['oldest']}" if d["oldest"] else ""), ""]
    failed = report["failed_jobs"]
    lines.append(f"failed jobs: {sum(f['count'] for f in failed)}")
    for f in failed:
        lines.append(f"  {f['count']:>6}  {f['queue']:<12} {f['class']}: {f['reason']}")
    return "\n".join(lines) + "\n"


def cmd_monitor(args) -> int:
    import logging
    logging.getLogger("pika").setLevel(logging.CRITICAL)     # its connect failures are reported below
    if args.rabbitmqctl is None:
        ctl = default_rabbitmqctl()
    else:
        ctl = shlex.split(args.rabbitmqctl) if args.rabbitmqctl not in ("", "none") else None
    report = collect(database_url=args.db, amqp_url=args.amqp, rabbitmqctl=ctl)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_text(report))
    return 1 if "error" in report["broker"] or "database" in report else 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="queue depths, consumers, failures, dedup rows, throughput",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--db", help="database URL (default: PHOTO_DATABASE_URL)")
    p.add_argument("--amqp", help="AMQP URL (default: PHOTO_AMQP_URL)")
    p.add_argument("--rabbitmqctl", help='rabbitmqctl command, e.g. "rabbitmqctl -n rabbit@box"; '
                                         '"none" to use AMQP only (default: rabbitmqctl if on PATH)')
    p.set_defaults(func=cmd_monitor)
