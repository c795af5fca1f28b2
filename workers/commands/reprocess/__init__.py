"""`python -m workers reprocess`: publish a job again for rows that already exist.

    targets.py     the four jobs, and which rows each mode selects (as publishable items)
    run.py         the publishing loop (dedup row, confirmed publish, checkpoint) and its report
    gauge.py       backpressure: the queue's depth stays under a setting
    checkpoint.py  how far a stopped run got, so the same command continues there
"""
from __future__ import annotations

import argparse
import logging
import sys

from workers.commands.reprocess.targets import JOBS

log = logging.getLogger("workers.commands.reprocess")
EXIT_INTERRUPTED = 130      # like a shell's Ctrl-C
AGAIN = "jobs the broker confirmed are recorded: run the same command again to continue"

DESCRIPTION = """\
Run a job again for images that already exist, like the ALL / MISSING buttons of Immich's job
panel, through the queues: the real consumers (PHP or ours) do the work.

  --missing (default)      images whose <job>_at column is empty (geolocation: with a position)
  --all                    every image (geolocation: every image with a position)
  --where-source offline   geolocation: images the offline geocoder answered (Nominatim is back)
  --failed                 the job's failed_jobs rows, re-queued as `php artisan queue:retry` would

Each job is the one the app publishes, its dedup row first, so nothing is queued twice. The
queue's ready messages stay under PHOTO_REPROCESS_MAX_QUEUE_DEPTH (it waits for the consumers).
Ctrl-C stops after the current job; the same command then continues where it stopped."""


def cmd_reprocess(args) -> int:
    import pika.exceptions
    import sqlalchemy as sa

    from workers.settings import get_settings
    from workers.commands.reprocess.checkpoint import CheckpointBusy, CheckpointUnreadable
    from workers.commands.reprocess.run import StopRequest, print_report, run
    from workers.commands.reprocess.targets import FailedRows, ImageRows

    job = JOBS[args.job]
    mode = "offline-source" if args.where_source else (args.mode or "missing")
    if mode == "offline-source" and job.queue != "geolocation":
        print("error: --where-source offline applies to geolocation only", file=sys.stderr)
        return 2
    settings = get_settings()
    if mode == "offline-source":
        _warn_if_nominatim_unusable(settings)
    target = (FailedRows(job, args.since, settings) if mode == "failed"
              else ImageRows(job, mode, args.since, settings))
    logging.getLogger("pika").setLevel(logging.CRITICAL)     # its errors are reported below, in one line
    try:
        with StopRequest().installed() as stop:
            report = run(settings, target, dry_run=args.dry_run, limit=args.limit, fresh=args.fresh,
                         progress=not args.no_progress, stop=stop)
    except KeyboardInterrupt:
        print("aborted (second Ctrl-C): the job being sent may or may not have gone out", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CheckpointBusy, CheckpointUnreadable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except pika.exceptions.AMQPConnectionError as exc:
        params = pika.URLParameters(settings.amqp_url)
        print(f"error: RabbitMQ at {params.host}:{params.port} is unreachable or went away "
              f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''}); {AGAIN}", file=sys.stderr)
        return 1
    except sa.exc.OperationalError as exc:
        print(f"error: database: {exc.orig}; {AGAIN}", file=sys.stderr)
        return 1
    except (pika.exceptions.AMQPError, ConnectionError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}; {AGAIN}", file=sys.stderr)
        return 1
    print_report(report, settings)
    return EXIT_INTERRUPTED if report.stopped == "interrupted" else 0


def _warn_if_nominatim_unusable(settings) -> None:
    """Re-geocoding offline answers is pointless while Nominatim cannot answer: say so (the
    operator may still go ahead; the jobs then fall back to offline again)."""
    from workers import db
    from workers.jobs.geolocation import LIMITER
    from workers.places.ratelimit import RateLimiter
    if settings.geocoder == "offline":
        log.warning("warning: PHOTO_GEOCODER=offline here: consumers with this setting answer offline again")
    state = RateLimiter(db.engine_for(settings.database_url), LIMITER).state()
    paused = state.get("paused_until", 0) - state["now"]
    if paused > 0:
        log.warning("warning: Nominatim is paused for the whole installation for another %.0f s (403/429): "
                    "jobs run now wait or are answered offline again", paused)


def _since(text: str):
    from workers.commands.reprocess.run import parse_since
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number >= 1, not {text!r}")
    return value


def add_subcommands(sub) -> None:
    p = sub.add_parser("reprocess", help="publish a job again for existing rows (missing / all / failed)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=list(JOBS))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--missing", dest="mode", action="store_const", const="missing",
                      help="rows whose <job>_at column is empty (the default)")
    mode.add_argument("--all", dest="mode", action="store_const", const="all", help="every row")
    mode.add_argument("--failed", dest="mode", action="store_const", const="failed",
                      help="re-queue the job's failed_jobs rows (as queue:retry, in bulk)")
    mode.add_argument("--where-source", choices=["offline"],
                      help="geolocation: rows the offline geocoder answered")
    p.add_argument("--since", type=_since, metavar="DATE",
                   help="only rows created (--failed: failed) at or after DATE, UTC")
    p.add_argument("--limit", type=_positive, metavar="N", help="publish at most N jobs this time")
    p.add_argument("--dry-run", action="store_true", help="count what would be published; change nothing")
    p.add_argument("--fresh", action="store_true", help="forget where an interrupted run stopped; start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reprocess)
