"""HTTP routes of the face API and their errors. All image work is in imaging.py / engine.py.

POST /encode   multipart `image`, or `path` (form field or JSON) under the storage roots
POST /compare  {"encoding": [128], "known_encodings": [[128], ...]} -> {"distances": [...]}
GET  /health   {"status": "ok", "mode": "cpu", ...}; 503 until the models are loaded
GET  /metrics  Prometheus

`create_app(settings)` builds the app. Importing this module does no work: `face_api.app:app`,
the name gunicorn and uvicorn are given, is built when a server first asks for it. Building it
checks the settings (a bad one ends the process with one line and status 2, under any server)
and loads the models (PHOTO_LOAD_MODELS_AT_IMPORT=0: in the background at start-up instead):
under gunicorn's preload that happens once in the master and the forked workers share the pages.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import dlib
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageDraw
from pydantic import BaseModel, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from . import engine, metrics
from .auth import BearerTokenMiddleware
from .detectors import describe as describe_detector
from .errors import FaceApiError, ImageError, PathDenied
from .imaging import read_limited, resolve_under_roots
from .memory import IdleTrimmer
from .settings import Settings, settings_or_exit

log = logging.getLogger("face_api")


class ApiError(Exception):
    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, " ".join(str(reason).split())[:300]


def _status(exc: FaceApiError) -> int | None:
    """The HTTP status a face API error is answered with (None: an internal error)."""
    if isinstance(exc, ImageError):
        return exc.status          # the decoder knows: 413 too large, 415 not an image, ...
    if isinstance(exc, PathDenied):
        return 403
    return None


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"detail": " ".join(str(reason).split())[:300]}, status_code=status)


class BodyLimitMiddleware:
    """Refuse request bodies over max_upload_bytes (413) before they are parsed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes + 64 * 1024  # multipart framing
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await _error(413, f"upload larger than {self.max_bytes} bytes")(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _error(413, f"upload larger than {self.max_bytes} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass




class Service:
    """What the routes share in one app: the settings, the bound on photos computed at once and
    the idle memory trimmer."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.set_engine_slots(settings.face_threads)
        self.idle_trimmer = IdleTrimmer(settings.memory_trim_idle_seconds)

    def set_engine_slots(self, n: int) -> None:
        # Photos processed at once by this worker. The engine is thread-safe (a HOG detector per
        # call, the ResNet behind a lock) and dlib releases the GIL, so each slot uses a core; the
        # bound keeps memory predictable (Starlette's thread pool has 40 threads).
        self.engine_threads = max(1, int(n))
        self.engine_slots = threading.BoundedSemaphore(self.engine_threads)

    def start_loading_models(self) -> None:
        """Load the models in the background if building the app did not; /health answers 503
        "loading" meanwhile."""
        if not engine.models_loaded():
            threading.Thread(target=engine.prepare, args=(self.settings,), daemon=True).start()

    def encode(self, data: bytes, name: str | None) -> dict:
        with self.idle_trimmer:
            return self._encode_photo(data, name)

    def _encode_photo(self, data: bytes, name: str | None) -> dict:
        settings = self.settings
        result = engine.encode_photo(data, settings, name=name, admission=self.engine_slots)
        response = result.as_dict()
        response["debug_image_path"] = None
        if settings.debug_images:
            # SHA-256 runs on the CPU's SHA extensions: a fraction of BLAKE2's cost on a photo
            digest = hashlib.sha256(data).hexdigest()[:20]
            try:
                response["debug_image_path"] = _write_debug_image(settings, digest, result)
            except OSError as exc:
                log.warning("debug image not written: %s", exc)
        metrics.FACES.inc(len(result.locations))
        metrics.PHOTOS.labels("faces" if result.locations else "no_face").inc()
        return response


def create_app(settings: Settings | None = None, load_models: bool | None = None) -> FastAPI:
    """The face API for `settings` (default: the environment's, checked: one line and exit 2).
    `load_models` (default: PHOTO_LOAD_MODELS_AT_IMPORT, on) loads the models now."""
    if settings is None:
        settings = settings_or_exit()
    if load_models is None:
        load_models = os.environ.get("PHOTO_LOAD_MODELS_AT_IMPORT", "1") != "0"
    if load_models:
        engine.prepare(settings)
    # The upload is read whole into memory anyway: spooling it through a temporary file on disk
    # first (Starlette's default above 1 MB, which every camera photo is) only adds a write and
    # a read of it.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes)
    service = Service(settings)
    app = FastAPI(title="face_api", version="2.0")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BearerTokenMiddleware, token=settings.face_api_token)  # outside the body limit
    _add_error_handling(app)
    _add_routes(app, service)
    return app


def _add_error_handling(app: FastAPI) -> None:
    @app.middleware("http")
    async def _metrics_middleware(request: Request, call_next):
        started = time.monotonic()
        endpoint = request.url.path if request.url.path in ("/encode", "/compare", "/health", "/metrics") else "other"
        try:
            response = await call_next(request)
        except Exception:  # never a stack trace to the client
            log.exception("unhandled error on %s", request.url.path)
            response = _error(500, "internal error")
        metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        metrics.LATENCY.labels(endpoint).observe(time.monotonic() - started)
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error(exc.status, exc.reason)

    @app.exception_handler(FaceApiError)
    async def _face_api_error(request, exc: FaceApiError):
        status = _status(exc)
        if status is None:      # e.g. the model files vanished: the operator's log, not the client's
            log.error("error on %s", request.url.path, exc_info=exc)
            return _error(500, "internal error")
        return _error(status, getattr(exc, "reason", None) or str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return _error(exc.status_code, exc.detail)


# ---------------------------------------------------------------- /encode

async def _read_request(request: Request, settings: Settings) -> tuple[bytes, str | None]:
    """Photo bytes and a name, from multipart `image`, or `path` in a form or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    path = None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=2, max_fields=20)
        except _TooLarge:
            raise
        except Exception as exc:
            raise ApiError(400, f"malformed form body: {exc}")
        upload = form.get("image")
        if upload is not None and not isinstance(upload, str):
            data = await upload.read()
            if len(data) > settings.max_upload_bytes:
                raise ApiError(413, f"upload larger than {settings.max_upload_bytes} bytes")
            return data, upload.filename
        if isinstance(upload, str):
            raise ApiError(400, "field `image` must be a file upload")
        path = form.get("path")
    elif ctype == "application/json":
        try:
            body = await request.json()
        except Exception:
            raise ApiError(400, "body is not valid JSON")
        if not isinstance(body, dict):
            raise ApiError(422, "JSON body must be an object with a `path`")
        path = body.get("path")
    else:
        raise ApiError(415, "send multipart/form-data with `image` or `path`, or JSON with `path`")
    if path is None:
        raise ApiError(422, "missing `image` file or `path`")
    if not isinstance(path, str) or not path.strip():
        raise ApiError(422, "`path` must be a non-empty string")
    try:
        real = resolve_under_roots(path, settings.storage_root)   # PathDenied: 403
    except FileNotFoundError as exc:
        raise ApiError(404, str(exc))
    try:
        return read_limited(real, settings.max_upload_bytes), real.name   # ImageError: its status
    except OSError as exc:
        raise ApiError(404, f"cannot read file: {exc.strerror or exc}")


def _write_debug_image(settings: Settings, data_hash: str, result: engine.EncodeResult) -> str | None:
    img = result.detection_image
    if img is None:
        return None
    im = Image.fromarray(img)
    boxes = result.detection_locations
    if max(im.size) > settings.debug_max_side:
        f = settings.debug_max_side / max(im.size)
        boxes = [tuple(round(v * f) for v in b) for b in boxes]
        im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 400))
    for top, right, bottom, left in boxes:
        draw.rectangle([left, top, right, bottom], outline=(255, 0, 0), width=width)
    directory = Path(settings.debug_dir)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"face-debug-{data_hash}.jpg"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            im.save(f, "JPEG", quality=85)
        os.chmod(tmp, 0o664)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return str(final)


# ---------------------------------------------------------------- /compare

class CompareRequest(BaseModel):
    encoding: list[float]
    known_encodings: list[list[float]]

    @field_validator("encoding")
    @classmethod
    def _check_one(cls, v):
        return _check_vector(v, "encoding")

    @field_validator("known_encodings")
    @classmethod
    def _check_many(cls, v):
        return [_check_vector(e, f"known_encodings[{i}]") for i, e in enumerate(v)]


def _check_vector(v: list[float], what: str) -> list[float]:
    if len(v) != 128:
        raise ValueError(f"{what} must have 128 values, got {len(v)}")
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"{what} contains a non-finite value")
    return v



# ---------------------------------------------------------------- the routes

def _add_routes(app: FastAPI, service: Service) -> None:
    settings = service.settings

    @app.post("/encode")
    async def encode(request: Request):
        if not engine.models_loaded():
            raise ApiError(503, "models are not loaded yet")
        data, name = await _read_request(request, settings)
        try:
            return await run_in_threadpool(service.encode, data, name)
        except MemoryError:
            raise ApiError(413, "image too large to process")

    @app.post("/compare")
    async def compare(body: CompareRequest):
        distances = engine.face_distance(body.known_encodings, body.encoding)
        return {"distances": [float(d) for d in distances]}

    @app.get("/health")
    async def health():
        if not engine.models_loaded():
            return JSONResponse({"status": "loading", "mode": "cpu"}, status_code=503)
        models = engine.load_models()
        return {
            "status": "ok",
            "mode": "cpu",
            "pid": os.getpid(),
            **describe_detector(settings.face_detector),  # detector, detector_package, _version
            "upsample": settings.face_upsample,
            "scales": settings.face_scales,
            "jitters": settings.face_jitters,
            "rescan": "every level" if settings.face_full_rescan else f"new levels + {settings.face_rescan_overlap}",
            "skip_covered_scales": settings.face_skip_covered_scales,
            "draft_decode": settings.face_draft_decode,
            "threads": service.engine_threads,
            "landmarks": "5-point",
            **_runtimes(settings, models),
            "models": models.files.describe(),
            "versions": {"dlib": dlib.__version__, "numpy": np.__version__, "pillow": Image.__version__},
            "dlib_cuda": bool(getattr(dlib, "DLIB_USE_CUDA", False)),
        }

    @app.get("/metrics")
    async def metrics_endpoint():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.on_event("startup")
    async def _load_on_startup():
        service.start_loading_models()


def _runtimes(settings: Settings, models) -> dict:
    """What computes the networks (PHOTO_FACE_RUNTIME), and why not onnxruntime where it fell back."""
    networks = {"encoder": (models.onnx_encoder, "dlib")}
    if settings.face_detector == "yunet":
        from .detectors import yunet

        networks["detector"] = (yunet.onnx, "yuface")
    out = {"runtime": settings.face_runtime}
    for name, (rebuilt, native) in networks.items():
        out[f"{name}_runtime"] = rebuilt.runtime(settings.face_runtime, native) if rebuilt else native
        if rebuilt is not None and rebuilt.problem:
            out[f"{name}_fallback_reason"] = rebuilt.problem
    return out


# ---------------------------------------------------------------- the servers' entry point

_app: FastAPI | None = None
_app_lock = threading.Lock()


def get_app() -> FastAPI:
    """The app of `face_api.app:app`, built once per process from the environment's settings."""
    global _app
    with _app_lock:
        if _app is None:
            _app = create_app()
        return _app


def __getattr__(name: str):
    if name == "app":      # `face_api.app:app`: gunicorn and uvicorn look the name up here
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def set_engine_slots(n: int) -> None:
    """gunicorn.conf.py's post_fork: photos at once in this worker (gunicorn's `threads`)."""
    get_app().state.service.set_engine_slots(n)


def start_loading_models() -> None:
    """gunicorn.conf.py's post_worker_init: WSGI workers run no lifespan start-up event."""
    get_app().state.service.start_loading_models()
