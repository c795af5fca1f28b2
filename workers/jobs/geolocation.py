"""GeolocationProcessJob: reverse-geocode an image's GPS coordinates into place columns.

Order of answers: no usable coordinates (missing, (0, 0), out of range) -> "no place"
(place_source 'none'); `geocoder = "offline"` -> GeoNames; else the geocode_cache (coordinates
rounded to `geocode_precision`; those rounded coordinates are also what is sent, so a cached
answer is exactly the answer for its key) -> Nominatim through workers.places.ratelimit: one request at
a time for the whole installation, each at least `nominatim_interval` after the previous answer.
place_source records who answered originally ('nominatim' also for a cache hit).

Failures:
  * 403/429: the limiter pauses every process (60 s, doubled per strike in a row, capped at 1 h,
    or the Retry-After) and this job is released for the remaining pause - no attempt counted.
  * network errors, timeouts, 5xx, other 4xx, unparseable bodies: a bounded in-job retry
    (`nominatim_retries` attempts, 1 s, 2 s ... apart, each through the limiter, all within the
    registry's budget of the queue timeout). If they all fail, `geocode_fallback = "offline"` (default) answers
    from GeoNames; "none" raises NominatimError, an ordinary failure the runtime retries per the
    job's maxTries/backoff.
  * paused for longer than `geocode_fallback_after` (15 min): answered offline too, rather than
    parking jobs for up to an hour. Offline fallbacks are not cached and are recorded as
    place_source 'offline', so they can be re-geocoded later.
"""
from __future__ import annotations

import math
import time

import sqlalchemy as sa

from workers import db
from workers.places.geocoders import Nominatim, NominatimBlocked, NominatimError, columns, offline
from workers.places.ratelimit import Paused, RateLimiter, TooLong
from workers.schema import geocode_cache, images
from workers.jobs import Context, JobReleased, image_id_of, registry

QUEUE = "geolocation"
BUDGET = registry.BY_QUEUE[QUEUE].budget
LIMITER = "nominatim"

_clients: dict[tuple, Nominatim] = {}
_limiters: dict[tuple, RateLimiter] = {}


def handle(ctx: Context, data: dict) -> list:
    image_id = image_id_of(data)
    row = ctx.image(image_id)
    cols = locate(ctx, row.latitude, row.longitude)
    stamp = db.now()
    values = {**cols, "place": sa.null() if cols["place"] is None else cols["place"],
              "geocoded_at": stamp, "updated_at": stamp}
    ctx.db.execute(images.update().where(images.c.id == image_id).values(**values))
    ctx.log.info("image %s geocoded: %s (%s)", image_id, cols["display_name"], cols["place_source"])
    return []


def usable(lat, lon) -> bool:
    """Real coordinates: present, finite, in range, and not (0, 0) (a camera's "no fix")."""
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError):
        return False
    return (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180
            and (lat, lon) != (0.0, 0.0))


def rounded(lat: float, lon: float, precision: int) -> tuple[float, float, str]:
    """Coordinates rounded for the cache and the request, and their cache key."""
    p = max(0, min(7, int(precision)))
    lat, lon = (float(f"{v:.{p}f}") + 0.0 for v in (lat, lon))   # + 0.0: no "-0.0000" keys
    return lat, lon, f"{lat:.{p}f},{lon:.{p}f}"


def locate(ctx: Context, lat, lon) -> dict:
    """The place columns for these coordinates (see the module docstring)."""
    if not usable(lat, lon):
        return columns(None, "none")
    s = ctx.settings
    lat, lon = float(lat), float(lon)
    if s.geocoder == "offline":
        return columns(offline().reverse(lat, lon, s.offline_max_km), "offline")
    lat, lon, key = rounded(lat, lon, s.geocode_precision)
    hit = cache_get(ctx.engine, key)
    if hit is not None:
        return columns(hit.place, hit.source)
    return _ask_nominatim(ctx, lat, lon, key)


def _ask_nominatim(ctx: Context, lat: float, lon: float, key: str) -> dict:
    s = ctx.settings
    limiter, client = _limiter(ctx), _client(s)
    lease = 3 * s.nominatim_timeout + s.nominatim_interval   # if we die mid-request
    attempts = max(1, int(s.nominatim_retries))
    # Stay inside the job's budget of its timeout: after the timeout the consumer kills the
    # process. A request can take two timeouts (connect + read): stop when that no longer fits.
    deadline = time.monotonic() + BUDGET * s.timeout_for(QUEUE) - 2 * s.nominatim_timeout
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        budget = min(s.nominatim_max_wait, deadline - time.monotonic())
        if budget < 0:
            break
        try:
            slot = limiter.acquire(max_wait=budget, lease=lease)
        except TooLong as busy:
            raise JobReleased(math.ceil(busy.remaining), "Nominatim busy: no free slot soon") from None
        except Paused as paused:
            return _paused(ctx, lat, lon, paused.remaining, str(paused))
        with slot:                                  # released (next slot in 1 s) on any exit
            hit = cache_get(ctx.engine, key)        # another process may have asked meanwhile
            if hit is not None:
                return columns(hit.place, hit.source)
            try:
                place = client.reverse(lat, lon)
            except NominatimBlocked as blocked:
                pause = limiter.pause(blocked.retry_after)
                ctx.log.warning("%s: Nominatim paused for %.0fs for the whole installation",
                                blocked, pause)
                return _paused(ctx, lat, lon, pause, str(blocked))
            except NominatimError as exc:
                last = exc
                ctx.log.warning("Nominatim attempt %d/%d failed: %s", attempt, attempts, exc)
            else:
                limiter.success()
                cache_put(ctx.engine, key, place, "nominatim")
                return columns(place, "nominatim")
        if attempt < attempts:
            time.sleep(min(2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
    if s.geocode_fallback == "offline":
        ctx.log.warning("Nominatim unavailable after %d attempt(s); answering offline", attempt)
        return _offline_answer(ctx, lat, lon)
    raise NominatimError(f"Nominatim unavailable after {attempt} attempts: {last}")


def _paused(ctx: Context, lat: float, lon: float, remaining: float, reason: str) -> dict:
    """A long pause is answered offline (if allowed); otherwise the job waits it out, released."""
    s = ctx.settings
    if s.geocode_fallback == "offline" and remaining > s.geocode_fallback_after:
        return _offline_answer(ctx, lat, lon)
    raise JobReleased(max(1, math.ceil(remaining)), f"Nominatim paused ({reason})")


def _offline_answer(ctx: Context, lat: float, lon: float) -> dict:
    return columns(offline().reverse(lat, lon, ctx.settings.offline_max_km), "offline")


# --- per-process resources ------------------------------------------------------------------------

def _client(s) -> Nominatim:
    key = (s.nominatim_url, s.nominatim_user_agent, s.nominatim_email, s.nominatim_zoom,
           s.nominatim_language, s.nominatim_timeout)
    if key not in _clients:
        _clients[key] = Nominatim(s)
    return _clients[key]


def _limiter(ctx: Context) -> RateLimiter:
    s = ctx.settings
    key = (id(ctx.engine), s.nominatim_interval, s.nominatim_pause, s.nominatim_pause_max)
    if key not in _limiters:
        _limiters[key] = RateLimiter(ctx.engine, LIMITER, interval=s.nominatim_interval,
                                     pause_base=key[2], pause_max=key[3])
    return _limiters[key]


# --- cache ----------------------------------------------------------------------------------------

def cache_get(engine: sa.Engine, key: str) -> sa.Row | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(geocode_cache.c.place, geocode_cache.c.source)
                            .where(geocode_cache.c.coord_key == key)).first()


def cache_put(engine: sa.Engine, key: str, place: dict | None, source: str) -> None:
    """Own transaction, so other processes see it at once; a concurrent insert of the same key
    (same answer) wins harmlessly."""
    try:
        with engine.begin() as conn:
            conn.execute(geocode_cache.insert().values(
                coord_key=key, place=sa.null() if place is None else place, source=source,
                created_at=db.now()))
    except sa.exc.IntegrityError:
        pass
