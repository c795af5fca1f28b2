"""`photo-pipeline review DIR` / `photo-pipeline review --db URL`: the face review page.

    photo-pipeline review ~/Pictures             # the library `process ~/Pictures` made
    photo-pipeline review --db mysql+pymysql://… # the queue mode's database, beside the Laravel app

Serves the page (app.py) with uvicorn on 127.0.0.1 by default. Any other address needs
PHOTO_REVIEW_TOKEN, else the command refuses to start (one line, exit 2). The first line on
stdout is the address to open, `review: http://HOST:PORT/` (with `?token=…` when a token is set).

The library's automatic rematch (the face workers' idle task) files faces by the new approvals:
in the embedded mode no worker runs, so this command runs it in a thread; with --db the faces
consumers do it, unless --rematch asks for it here too."""
from __future__ import annotations

import logging
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import quote

from workers.errors import PipelineError

PROG = "photo-pipeline review"
MIN_TOKEN = 16
log = logging.getLogger("workers.review")


class Refused(PipelineError):
    """The command cannot start: one line for the operator."""


def library_for(args):
    """(Library, settings) for DIR (its embedded library) or --db URL (storage root from the settings)."""
    import sqlalchemy as sa

    from workers import db
    from workers.commands.process import LIBRARY_DIR, FolderError, check_folder, embedded_settings
    from workers.commands.review.app import Library
    from workers.commands.review.crops import Photos
    from workers.settings import Settings

    if args.dir:
        try:
            folder = check_folder(Path(args.dir).expanduser())
        except FolderError as exc:
            raise Refused(str(exc)) from None
        settings = embedded_settings(folder, args.db)
        url = settings.database_url
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            raise Refused(f"{folder}: no library here (no {LIBRARY_DIR}/photo.db): "
                          f"run `photo-pipeline process {args.dir}` first")
        title = folder.name
    elif args.db:
        settings = Settings(database_url=args.db)
        title = "library"
    else:
        raise Refused("name the library: review DIR (a processed folder) or review --db URL")
    if not Path(settings.storage_root).is_dir():
        raise Refused(f"PHOTO_STORAGE_ROOT: {Path(settings.storage_root).resolve()} is not a directory")
    engine = db.engine_for(settings.database_url)
    try:
        if args.dir:
            db.migrate(engine)            # the library's own database, as `process` does
        elif not sa.inspect(engine).has_table("face_rejections"):
            raise Refused("the database lacks the face grouping tables: run `photo-pipeline migrate` first")
    except sa.exc.OperationalError as exc:
        raise Refused(f"cannot open the database: {str(exc.orig).splitlines()[0]}") from None
    photos = Photos(Path(settings.storage_root), Path(settings.thumbnails_dir) / "faces", settings.max_pixels)
    return Library(engine, photos, title), settings


def check_address(host: str, token: str | None) -> None:
    from workers.commands.review.security import is_loopback
    if token is not None and len(token) < MIN_TOKEN:
        raise Refused(f"PHOTO_REVIEW_TOKEN: must have at least {MIN_TOKEN} characters")
    if not is_loopback(host) and not token:
        raise Refused(f"--host {host} is not loopback: set PHOTO_REVIEW_TOKEN (e.g. `openssl rand -hex 32`) "
                      "so only you can use the page")


def address(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


def rematch_forever(engine, settings, stop: threading.Event, interval: float) -> None:
    """The face workers' idle task, step after step while it has work, then every `interval`."""
    from workers.faces import filing
    while not stop.is_set():
        try:
            with engine.begin() as conn:
                more = filing.idle_rematch(conn, engine, settings)
        except Exception as exc:  # noqa: BLE001 - a busy database or a race: the next step retries
            log.warning("automatic rematch: %s", str(exc).splitlines()[0])
            more = False
        stop.wait(0.05 if more else interval)


def cmd_review(args) -> int:
    try:
        library, settings = library_for(args)
        token = settings.review_token.get_secret_value() if settings.review_token else None
        check_address(args.host, token)
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
        except OSError as exc:
            raise Refused(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    except Refused as exc:
        print(f"{PROG}: refusing to start: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from workers.commands.review.app import create_app
    from workers.commands.review.security import Guard

    sock.listen(128)
    port = sock.getsockname()[1]
    print(f"review: {address(args.host, port, token)}", flush=True)
    print(f"  {library.title}: open the address above in a browser; Ctrl-C stops", flush=True)
    rematch = args.rematch if args.rematch is not None else bool(args.dir)
    stop = threading.Event()
    if rematch and settings.face_grouping != "roots":
        threading.Thread(target=rematch_forever, name="rematch", daemon=True,
                         args=(library.engine, settings, stop, max(settings.idle_interval, 1.0))).start()
    app = create_app(library, Guard.for_address(token, args.host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("review", help="the face review page: name suggested people, confirm or reject "
                                      "filed faces, merge and rename people (in a browser)")
    p.add_argument("dir", nargs="?", help="a folder processed by `photo-pipeline process DIR`")
    p.add_argument("--db", help="database URL (the queue mode's MySQL; with DIR: the library's database)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs PHOTO_REVIEW_TOKEN)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rematch", dest="rematch", action="store_true", default=None,
                       help="run the automatic rematch here (default with DIR: no face worker runs)")
    group.add_argument("--no-rematch", dest="rematch", action="store_false",
                       help="leave the automatic rematch to the face workers (default with --db)")
    p.set_defaults(func=cmd_review)
