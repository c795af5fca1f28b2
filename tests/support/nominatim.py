"""A small Nominatim stand-in on loopback for tests: answers `/reverse` with jsonv2 places and
records every request (arrival time, params, headers).

    with FakeNominatim() as nom:                  # nom.url -> PHOTO_NOMINATIM_URL
        nom.script(429, retry_after=3)            # the next answer(s), in order
        nom.script(500); nom.script("drop")       # 5xx; connection closed without an answer
        nom.unable.add((43.4674, 11.8851))        # these coordinates: "Unable to geocode"
        ...
        nom.requests                              # [Request(at, params, headers, status)]

Unscripted requests get a deterministic place derived from the coordinates. `at` is
`time.monotonic()` when the request line has been read (the same clock for all requests,
whichever process sent them)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    at: float
    path: str
    params: dict
    headers: dict
    status: int | None = None


def place_for(lat: float, lon: float) -> dict:
    """A jsonv2-shaped place whose names encode the coordinates."""
    tag = f"{lat:.4f},{lon:.4f}"
    return {
        "place_id": 1000, "licence": "Data © OpenStreetMap contributors, ODbL 1.0. fake",
        "osm_type": "way", "osm_id": 42, "lat": f"{lat:.7f}", "lon": f"{lon:.7f}",
        "category": "highway", "type": "residential", "place_rank": 26, "importance": 0.1,
        "addresstype": "road", "name": f"Road {tag}",
        "display_name": f"Road {tag}, Town {tag}, Province, Region, Fakeland",
        "address": {"road": f"Road {tag}", "town": f"Town {tag}", "county": "Province",
                    "state": "Region", "ISO3166-2-lvl4": "FK-01", "postcode": "52100",
                    "country": "Fakeland", "country_code": "fk"},
        "boundingbox": [f"{lat - 0.001:.7f}", f"{lat + 0.001:.7f}", f"{lon - 0.001:.7f}", f"{lon + 0.001:.7f}"],
    }


class FakeNominatim:
    def __init__(self, delay: float = 0.0):
        self.requests: list[Request] = []
        self.unable: set[tuple[float, float]] = set()
        self.places: dict[tuple[float, float], dict] = {}   # explicit answers by (lat, lon)
        self.delay = delay                                   # seconds before each answer
        self._script: list[tuple] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server API
                fake._handle(self, time.monotonic())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakeNominatim":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def script(self, answer, times: int = 1, retry_after: str | float | None = None,
               body: str | None = None) -> None:
        """Queue the next answer(s): an HTTP status, or "drop" (close without answering)."""
        with self._lock:
            self._script += [(answer, retry_after, body)] * times

    def times(self, status: int | None = None) -> list[float]:
        with self._lock:
            return [r.at for r in self.requests if status is None or r.status == status]

    # --- serving ----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, at: float) -> None:
        url = urlsplit(h.path)
        req = Request(at, url.path, dict(parse_qsl(url.query)), {k.lower(): v for k, v in h.headers.items()})
        with self._lock:
            self.requests.append(req)
            step = self._script.pop(0) if self._script else None
        if self.delay:
            time.sleep(self.delay)
        if step and step[0] == "drop":
            req.status = 0
            h.close_connection = True
            h.connection.close()
            return
        if step:
            status, retry_after, body = step
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            default = "<html><body>Access blocked</body></html>" if status in (403, 429) else "Server error"
            return self._send(h, req, status, body if body is not None else default, "text/html", headers)
        if url.path not in ("/reverse", "/reverse.php"):
            return self._send(h, req, 404, "not found", "text/plain")
        try:
            lat, lon = float(req.params["lat"]), float(req.params["lon"])
        except (KeyError, ValueError):
            return self._send(h, req, 400, json.dumps(
                {"error": {"code": 400, "message": "Parameter 'lat' missing."}}), "application/json")
        key = (round(lat, 4), round(lon, 4))
        if key in self.unable or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            body = {"error": "Unable to geocode"}
        else:
            body = self.places.get(key) or place_for(lat, lon)
        self._send(h, req, 200, json.dumps(body, ensure_ascii=False), "application/json")

    @staticmethod
    def _send(h, req: Request, status: int, body: str, ctype: str, headers: dict | None = None) -> None:
        req.status = status
        data = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", f"{ctype}; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
