"""gunicorn settings for the face API:  gunicorn -c face_api/gunicorn.conf.py face_api.app:app
(or `photo-pipeline serve-face-api`, which runs exactly that from an installed package)

Every value can be overridden by an environment variable (FACE_API_BIND, FACE_API_WORKERS, ...)
and, as always with gunicorn, by GUNICORN_CMD_ARGS / command-line flags, which win over this file.
The app is preloaded: the dlib models are loaded once in the master and shared by the forked
workers (copy-on-write pages).

Workers are gunicorn's `gthread` workers, each accepting a connection only while one of its
`threads` is free (worker_connections = threads), so a photo waits in the kernel's listen backlog
for the first idle worker. ASGI workers (uvicorn's, as the original ran, or gunicorn's `asgi`)
accept every connection at once, busy or not: with every worker computing, one worker queues
photos while another idles (bench/face_api.py measures the throughput lost; the README has it). The FastAPI app reaches gthread workers through a2wsgi (post_worker_init).
FACE_API_WORKER_CLASS=uvicorn.workers.UvicornWorker still serves the same app the original's way.
"""
import os
import sys
import tempfile
from pathlib import Path

# The directory holding the face_api package (a checkout or site-packages): the `gunicorn` script
# does not put the working directory on sys.path before reading this file.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from face_api.settings import settings_or_exit  # noqa: E402

# Invalid PHOTO_* settings end gunicorn here, with one line, before any worker is forked.
settings_or_exit()


def _env(name, default):
    return os.environ.get(name, default)


_log_dir = Path(_env("PHOTO_LOG_DIR", "storage/logs"))   # relative to the working directory

bind = _env("FACE_API_BIND", "127.0.0.1:5000")
workers = int(_env("FACE_API_WORKERS", "16"))
threads = int(_env("FACE_API_THREADS", "2"))  # photos at once per worker (see post_fork)
worker_class = _env("FACE_API_WORKER_CLASS", "gthread")
WSGI_WORKERS = ("gthread", "sync")   # gunicorn's own worker classes: they call a WSGI app
# gthread: stop accepting while every thread is busy. An idle kept-alive connection would hold a
# place too, so keep-alive is off by default (a connection per photo costs next to nothing beside a photo's work).
worker_connections = int(_env("FACE_API_WORKER_CONNECTIONS", str(threads)))
timeout = int(_env("FACE_API_TIMEOUT", "300"))
graceful_timeout = int(_env("FACE_API_GRACEFUL_TIMEOUT", "30"))
keepalive = int(_env("FACE_API_KEEPALIVE", "0" if worker_class in WSGI_WORKERS else "5"))
max_requests = int(_env("FACE_API_MAX_REQUESTS", "2000"))          # recycle: dlib's RSS creeps up
max_requests_jitter = int(_env("FACE_API_MAX_REQUESTS_JITTER", "200"))
preload_app = _env("FACE_API_PRELOAD", "1") not in ("0", "false", "False")
accesslog = _env("FACE_API_ACCESS_LOG", str(_log_dir / "face-api-access.log"))
errorlog = _env("FACE_API_ERROR_LOG", str(_log_dir / "face-api-error.log"))
loglevel = _env("FACE_API_LOG_LEVEL", "info")
umask = int(_env("FACE_API_UMASK", "0o002"), 0)
proc_name = _env("FACE_API_PROC_NAME", "face-api")
# gunicorn 27 opens a control socket in ~/.gunicorn by default; several instances would share it.
control_socket_disable = _env("FACE_API_CONTROL_SOCKET", "0") in ("0", "false", "False")

for _log in (accesslog, errorlog):
    if _log and _log != "-":
        Path(_log).parent.mkdir(parents=True, exist_ok=True)

# Prometheus multiprocess mode: one directory shared by the workers, wiped at start.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="face-api-metrics-")
else:
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)


def on_starting(server):
    d = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    for f in d.glob("*.db"):
        f.unlink()


def post_fork(server, worker):
    # The engine runs `threads` photos at once per worker (dlib releases the GIL), unless
    # PHOTO_FACE_THREADS says otherwise; uvicorn workers ignore `threads` themselves.
    if "PHOTO_FACE_THREADS" not in os.environ:
        from face_api import app

        app.set_engine_slots(server.cfg.threads)


def post_worker_init(worker):
    # WSGI workers (gthread, sync) get the ASGI app through a2wsgi, built here in the forked worker
    # because it starts the thread running the app's event loop. a2wsgi runs no lifespan events.
    if worker.cfg.worker_class_str in WSGI_WORKERS:
        from a2wsgi import ASGIMiddleware

        from face_api import app

        worker.wsgi = ASGIMiddleware(worker.wsgi)
        app.start_loading_models()


def child_exit(server, worker):
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
    except Exception:
        pass
