"""PHOTO_FACE_API_TOKEN: when set, every route but /health and /metrics needs
`Authorization: Bearer <token>` (401 otherwise), for a face API reachable from other boxes.

Fail closed: the open routes are listed, everything else (/encode, /compare, /docs, unknown paths)
is guarded. The token is compared in constant time and never logged or echoed.
"""
from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.responses import JSONResponse

OPEN_PATHS = frozenset({"/health", "/metrics"})


def _digest(value: bytes) -> bytes:
    # Comparing fixed-length digests keeps even the token's length out of the timing.
    return hashlib.sha256(value).digest()


class BearerTokenMiddleware:
    """ASGI middleware: checks the token before the body is read or any work is done."""

    def __init__(self, app, token: SecretStr | str | None):
        if isinstance(token, SecretStr):
            token = token.get_secret_value()
        self.app = app
        self._expected = _digest(token.encode()) if token else None

    async def __call__(self, scope, receive, send):
        if self._expected is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.authorized(scope):
            return await self.app(scope, receive, send)
        response = JSONResponse({"detail": "missing or wrong bearer token (PHOTO_FACE_API_TOKEN)"},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="face_api"'})
        await response(scope, receive, send)

    def authorized(self, scope) -> bool:
        header = next((value for name, value in scope.get("headers", []) if name == b"authorization"), b"")
        scheme, _, presented = header.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(presented.strip()), self._expected)
