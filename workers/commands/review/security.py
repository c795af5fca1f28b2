"""Who may use the review page, and the CSRF guard of its forms.

Without PHOTO_REVIEW_TOKEN the page listens on loopback only (the command refuses anything
else), and requests must name a loopback host or the bound one in `Host`, so a web page that
rebinds its own DNS name to 127.0.0.1 cannot read it. With a token, every request needs it,
whatever the address: `Authorization: Bearer <token>` (scripts, checks), or the session cookie a
browser gets by opening the printed address once (`?token=`, answered with a redirect to the
same page without it, so the token leaves the address bar and the history).

The session cookie is `<id>.<signature>`, HttpOnly and SameSite=Strict; the signature is an
HMAC keyed by the token (or by a key of this process when there is none), so the cookie proves
the token without holding it. Every POST carries a CSRF value derived from the session; requests
authenticated by the Bearer header alone need none (a browser never adds that header by itself)."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

SESSION_COOKIE = "photo_review_session"
TOKEN_PARAM = "token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    token: str | None
    allowed_hosts: frozenset[str] | None = None     # Host headers accepted (None: any)
    _process_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def for_address(cls, token: str | None, host: str, port: int) -> "Guard":
        hosts = None
        if not token:
            names = set(LOOPBACK_NAMES) | {f"[{host}]" if ":" in host else host}
            hosts = frozenset(f"{n}:{port}" for n in names) | frozenset(names if port == 80 else ())
        return cls(token or None, hosts)

    @property
    def _key(self) -> bytes:
        if self.token:
            return hashlib.sha256(b"photo-review-session\0" + self.token.encode()).digest()
        return self._process_key

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    # ---------------------------------------------------------------- checks

    def host_ok(self, host_header: str | None) -> bool:
        return self.allowed_hosts is None or (host_header or "").lower() in self.allowed_hosts

    def token_ok(self, value: str | None) -> bool:
        return bool(self.token) and value is not None and hmac.compare_digest(
            value.encode(), self.token.encode())

    def bearer_ok(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def new_session(self) -> str:
        sid = secrets.token_urlsafe(24)
        return f"{sid}.{self._sign('session:' + sid)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session of a cookie this guard signed, else None."""
        sid, _, sig = (cookie or "").partition(".")
        if sid and sig and hmac.compare_digest(sig, self._sign("session:" + sid)):
            return sid
        return None

    def csrf_for(self, sid: str) -> str:
        return self._sign("csrf:" + sid)

    def csrf_ok(self, sid: str | None, value: str | None) -> bool:
        return bool(sid) and value is not None and hmac.compare_digest(value, self.csrf_for(sid))


def cookie_header(value: str) -> str:
    return f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict"
