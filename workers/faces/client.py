"""The face-API client: (encoding, box) per face of one photo, from the face API over HTTP or from
its engine in-process (the embedded mode), per `face_engine`.

Outcomes: a bad photo (the API's 4xx, an undecodable file) is `JobFailed`; the API down, a 5xx
after retries or a timeout is `FaceApiError`, an ordinary failure the queue retries.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx

from workers.errors import PipelineError
from workers.faces.index import parse_encoding
from workers.jobs import JobFailed
from workers.settings import Settings

RETRY_BACKOFF = 0.5                       # seconds, doubled per retry, capped at MAX_BACKOFF
MAX_BACKOFF = 8.0

log = logging.getLogger("workers.faces")


class FaceApiError(PipelineError, RuntimeError):
    """The face API is unreachable or failing: an ordinary (retryable) job failure."""


def detect(settings: Settings, path: Path) -> list[tuple[list[float], list[int] | None]]:
    """(encoding, location) per face, from the API or in-process per settings.face_engine."""
    if settings.face_engine == "inprocess":
        result = _encode_inprocess(path)
    elif settings.face_engine == "http":
        result = _encode_http(settings, path)
    else:   # a configuration error: an ordinary failure, so the jobs retry once it is fixed
        raise RuntimeError(f"unknown face_engine {settings.face_engine!r} (http or inprocess)")
    return _validated(result)


def _validated(result) -> list[tuple[list[float], list[int] | None]]:
    """Check the /encode answer; `locations` is optional (the original server sent none)."""
    if not isinstance(result, dict) or not isinstance(result.get("encodings"), list):
        raise FaceApiError("face API answer has no `encodings` list")
    encodings = result["encodings"]
    locations = result.get("locations")
    if not isinstance(locations, list) or len(locations) != len(encodings):
        locations = [None] * len(encodings)
    out = []
    for enc, loc in zip(encodings, locations):
        vec = parse_encoding(enc)
        if vec is None:
            raise FaceApiError("face API answered an encoding that is not 128 finite numbers")
        box = None
        if isinstance(loc, list) and len(loc) == 4 and all(isinstance(v, (int, float)) for v in loc):
            box = [int(v) for v in loc]
        out.append(([float(v) for v in vec], box))
    return out


_client: tuple[int, httpx.Client] | None = None


def _http_client(settings: Settings) -> httpx.Client:
    """One keep-alive client per process (re-created after a fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        timeout = httpx.Timeout(settings.face_api_timeout, connect=min(10.0, settings.face_api_timeout))
        _client = (os.getpid(), httpx.Client(timeout=timeout))
    return _client[1]


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except Exception:
        detail = None
    return " ".join(str(detail or response.text or response.reason_phrase).split())[:300]


def _encode_http(settings: Settings, path: Path) -> dict:
    if settings.face_api_send not in ("path", "bytes"):
        raise RuntimeError(f"unknown face_api_send {settings.face_api_send!r} (path or bytes)")
    url = settings.face_api_url.rstrip("/") + "/encode"
    client = _http_client(settings)
    attempts = max(0, settings.face_api_retries) + 1
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(MAX_BACKOFF, RETRY_BACKOFF * 2 ** (attempt - 1)))
        try:
            if settings.face_api_send == "bytes":
                try:
                    fh = open(path, "rb")     # streamed, never read whole into memory
                except OSError as exc:
                    raise JobFailed(f"cannot read photo {path}: {exc.strerror or exc}") from None
                with fh:
                    response = client.post(url, files={"image": (path.name, fh, "application/octet-stream")},
                                           headers=settings.face_api_headers)
            else:
                # The API resolves the absolute path under its own storage roots.
                response = client.post(url, json={"path": str(path)}, headers=settings.face_api_headers)
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            # The API is busy with this photo; retrying here would exceed the job's timeout.
            raise FaceApiError(f"face API timed out after {settings.face_api_timeout}s: {exc!r}") from exc
        except httpx.TransportError as exc:   # refused, reset, connect timeout: retry
            problem = f"face API unreachable at {url}: {exc!r}"
            log.warning("%s (attempt %d/%d)", problem, attempt + 1, attempts)
            continue
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise FaceApiError("face API answered 200 with a body that is not JSON") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            problem = f"face API answered {response.status_code}: {_detail(response)}"
            log.warning("%s (attempt %d/%d)", problem, attempt + 1, attempts)
            continue
        raise JobFailed(f"face API rejected the photo ({response.status_code}): {_detail(response)}")
    raise FaceApiError(problem)


def _encode_inprocess(path: Path) -> dict:
    """Embedded mode: the face API's own pipeline, models loaded once per process."""
    from face_api import engine

    engine.load_models()
    try:
        return engine.encode_photo(path).as_dict()
    except engine.ImageError as exc:
        raise JobFailed(f"bad photo: {exc.reason}") from None
    except OSError as exc:
        raise JobFailed(f"cannot read photo {path}: {exc.strerror or exc}") from None
    except MemoryError:
        raise JobFailed("bad photo: image too large to process") from None
