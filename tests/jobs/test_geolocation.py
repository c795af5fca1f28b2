"""Geolocation job against real MariaDB/SQLite and the fake Nominatim (tests/fake_nominatim.py).

The handler is called directly through a Context (the runtime is tested elsewhere); the
multi-consumer tests run separate OS processes, each calling the handler in a loop, all sharing
one MariaDB database and so one rate limiter."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.geolocation import run
from tests.support.nominatim import FakeNominatim
from workers import db
from workers.places.geocoders import (
    NominatimError, OfflineGeocoder, columns, offline, parse_retry_after,
)
from workers.jobs import Context, JobFailed, JobReleased
from workers.jobs import geolocation
from workers.places.ratelimit import RateLimiter
from workers.schema import geocode_cache, images, rate_limits
from workers.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UA = "photo-pipeline-tests/1.0 (ops@example.org)"
# Measured with `exiftool -n -p '$GPSLatitude $GPSLongitude'` on the shared test photos.
DSCN0010 = (43.4674483333333, 11.8851266666639)    # Arezzo, Tuscany
IMG_5195 = (39.0513444444444, -94.2887722222222)   # Blue Springs, Missouri
# Tolerance on the 1 s spacing as seen by the server. The limiter starts a request only 1 s
# (database clock) after the previous one's answer came back, so the true spacing is >= 1 s; the
# 10 ms are for the fake server's own timestamping (it runs in this process: accept, thread start,
# parse, then stamp - the earlier request's stamp can be late by that much on a loaded box).
JITTER = 0.010


@pytest.fixture
def nom():
    with FakeNominatim() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Per-test option env vars; no HTTP client or limiter carried over between tests."""
    for name in ("NOMINATIM_PAUSE", "NOMINATIM_RETRIES", "GEOCODE_FALLBACK", "GEOCODE_FALLBACK_AFTER",
                 "NOMINATIM_TIMEOUT", "NOMINATIM_MAX_WAIT", "OFFLINE_MAX_KM"):
        monkeypatch.delenv("PHOTO_" + name, raising=False)
    geolocation._clients.clear()
    geolocation._limiters.clear()


def settings_for(url: str, nom: FakeNominatim | None, **kw) -> Settings:
    base = dict(database_url=url, nominatim_url=nom.url if nom else "http://127.0.0.1:9",
                nominatim_user_agent=UA, nominatim_email="ops@example.org", nominatim_zoom=14,
                nominatim_language="it")
    return Settings(**{**base, **kw})


def add_image(engine, lat, lon) -> int:
    with engine.begin() as conn:
        return conn.execute(images.insert().values(path="p.jpg", latitude=lat, longitude=lon)).inserted_primary_key[0]


def row(url: str, image_id: int):
    with db.engine_for(url).connect() as conn:
        return conn.execute(sa.select(images).where(images.c.id == image_id)).one()


def gaps(times: list[float]) -> list[float]:
    times = sorted(times)
    return [b - a for a, b in zip(times, times[1:])]


# --- one process ----------------------------------------------------------------------------------

def test_request_params_and_columns(any_db_url, nom):
    s = settings_for(any_db_url, nom)
    image_id = add_image(db.engine_for(any_db_url), *DSCN0010)
    assert run(s, image_id) == []
    [req] = nom.requests
    assert req.path == "/reverse"
    assert req.params == {"lat": "43.4674000", "lon": "11.8851000", "format": "jsonv2",
                          "addressdetails": "1", "zoom": "14", "accept-language": "it",
                          "email": "ops@example.org"}
    assert req.headers["user-agent"] == UA
    r = row(any_db_url, image_id)
    assert (r.country, r.country_code, r.state, r.county) == ("Fakeland", "fk", "Region", "Province")
    assert r.city == "Town 43.4674,11.8851"            # no `city`: falls back to `town`
    assert (r.road, r.postcode, r.place_source) == ("Road 43.4674,11.8851", "52100", "nominatim")
    assert r.display_name.startswith("Road 43.4674,11.8851, Town")
    assert r.place["osm_id"] == 42 and r.geocoded_at is not None


def test_no_email_param_when_unset(sqlite_url, nom):
    run(settings_for(sqlite_url, nom, nominatim_email=None), add_image(db.engine_for(sqlite_url), 45.1, 7.6))
    assert "email" not in nom.requests[0].params


def test_locality_fallback_chain():
    def city(**address):
        return columns({"address": address}, "nominatim")["city"]
    assert city(city="A", town="B", village="C") == "A"
    assert city(village="C", hamlet="D") == "C"
    assert city(hamlet="D", municipality="E") == "D"
    assert city(municipality="E") == "E"
    assert city(suburb="X") is None
    assert columns({"address": {"country_code": "IT"}}, "nominatim")["country_code"] == "it"
    # hostile shapes: wrong types and over-long values do not break the row
    cols = columns({"address": ["x"], "display_name": "x" * 5000}, "nominatim")
    assert cols["city"] is None and len(cols["display_name"]) == 1024
    assert columns({"address": {"city": {"a": 1}, "town": "T" * 300}}, "nominatim")["city"] == "T" * 255


def test_cached_coordinates_make_no_request(any_db_url, nom):
    s, eng = settings_for(any_db_url, nom), db.engine_for(any_db_url)
    first = add_image(eng, 43.46744, 11.88512)
    second = add_image(eng, 43.467436, 11.885124)       # same 4-decimal key
    run(s, first)
    run(s, second)
    assert len(nom.requests) == 1
    assert row(any_db_url, second).place_source == "nominatim"     # the original source
    assert row(any_db_url, second).city == row(any_db_url, first).city
    with eng.connect() as c:
        assert c.execute(sa.select(geocode_cache.c.coord_key, geocode_cache.c.source)).all() == \
            [("43.4674,11.8851", "nominatim")]


@pytest.mark.parametrize("lat,lon", [(None, None), (0.0, 0.0), (45.0, None), (91.0, 10.0),
                                     (10.0, 181.0), (float("nan"), 1.0)])
def test_no_coordinates_is_no_place(sqlite_url, nom, lat, lon):
    eng = db.engine_for(sqlite_url)
    image_id = add_image(eng, None, None)
    if lat is not None or lon is not None:
        with eng.begin() as c:       # NaN cannot pass through a bound float parameter everywhere
            c.execute(images.update().where(images.c.id == image_id).values(latitude=lat, longitude=lon))
    assert run(settings_for(sqlite_url, nom), image_id) == []
    r = row(sqlite_url, image_id)
    assert (r.place_source, r.place, r.city) == ("none", None, None) and r.geocoded_at
    assert nom.requests == []


def test_unable_to_geocode_is_cached_no_place(any_db_url, nom):
    s, eng = settings_for(any_db_url, nom), db.engine_for(any_db_url)
    nom.unable.add((12.0, -30.0))
    a, b = add_image(eng, 12.0, -30.0), add_image(eng, 12.00001, -30.00001)
    run(s, a)
    run(s, b)
    assert len(nom.requests) == 1
    for image_id in (a, b):
        r = row(any_db_url, image_id)
        assert (r.place_source, r.place, r.country) == ("none", None, None)
    with eng.connect() as c:
        place = c.execute(sa.text("SELECT place FROM geocode_cache")).scalar()
    assert place is None                     # SQL NULL, not the JSON text 'null'


def test_missing_image_and_bad_data_fail_permanently(sqlite_url, nom):
    with pytest.raises(JobFailed):
        run(settings_for(sqlite_url, nom), 999)
    eng = db.engine_for(sqlite_url)
    with eng.begin() as conn:
        ctx = Context(settings=settings_for(sqlite_url, nom), db=conn, engine=eng, queue="geolocation")
        for bad in ({}, {"image_id": "x"}, [1], {"image_id": -1}):
            with pytest.raises(JobFailed):
                geolocation.handle(ctx, bad)


# --- blocking: 403 / 429 ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [429, 403])
def test_block_pauses_the_installation_and_doubles(mysql_url, nom, monkeypatch, status):
    monkeypatch.setenv("PHOTO_NOMINATIM_PAUSE", "2")
    s, eng = settings_for(mysql_url, nom), db.engine_for(mysql_url)
    ids = [add_image(eng, 40 + i / 10, 10.0) for i in range(3)]
    nom.script(status)
    with pytest.raises(JobReleased) as exc:
        run(s, ids[0])
    assert exc.value.delay == 2
    # Everyone is paused: another job (another limiter object = another process) asks nothing.
    geolocation._limiters.clear()
    with pytest.raises(JobReleased) as exc:
        run(s, ids[1])
    assert 1 <= exc.value.delay <= 2 and len(nom.requests) == 1
    time.sleep(2.05)
    nom.script(status)                                   # second strike in a row: 4 s
    with pytest.raises(JobReleased) as exc:
        run(s, ids[1])
    assert exc.value.delay == 4
    with eng.connect() as c:
        assert c.execute(sa.select(rate_limits.c.strikes)).scalar() == 2
    time.sleep(4.05)
    run(s, ids[2])                                       # success resets the strikes
    with eng.connect() as c:
        assert c.execute(sa.select(rate_limits.c.strikes)).scalar() == 0
    assert [r.status for r in nom.requests] == [status, status, 200]
    assert row(mysql_url, ids[2]).place_source == "nominatim"
    assert row(mysql_url, ids[0]).place_source is None   # released, not written


def test_retry_after_is_honoured(sqlite_url, nom, monkeypatch):
    monkeypatch.setenv("PHOTO_NOMINATIM_PAUSE", "60")
    s = settings_for(sqlite_url, nom)
    nom.script(429, retry_after=3)
    with pytest.raises(JobReleased) as exc:
        run(s, add_image(db.engine_for(sqlite_url), 1.5, 2.5))
    assert exc.value.delay == 3


def test_retry_after_parsing():
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    from email.utils import formatdate
    assert 50 < parse_retry_after(formatdate(time.time() + 60, usegmt=True)) <= 60
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0


def test_long_pause_answers_offline(sqlite_url, nom):
    s = settings_for(sqlite_url, nom)
    nom.script(429, retry_after=7200)                 # beyond geocode_fallback_after (900 s)
    image_id = add_image(db.engine_for(sqlite_url), *DSCN0010)
    run(s, image_id)
    r = row(sqlite_url, image_id)
    assert (r.place_source, r.city, r.country_code) == ("offline", "Arezzo", "it")
    with db.engine_for(sqlite_url).connect() as c:    # a fallback answer is not cached
        assert c.execute(sa.select(sa.func.count()).select_from(geocode_cache)).scalar() == 0


def test_long_pause_without_fallback_releases(sqlite_url, nom, monkeypatch):
    monkeypatch.setenv("PHOTO_GEOCODE_FALLBACK", "none")
    nom.script(429, retry_after=7200)
    with pytest.raises(JobReleased) as exc:
        run(settings_for(sqlite_url, nom), add_image(db.engine_for(sqlite_url), *DSCN0010))
    assert exc.value.delay == 7200


# --- transient errors: 5xx, network ----------------------------------------------------------------

@pytest.mark.parametrize("failure", [500, 503, "drop", 404])
def test_transient_errors_are_retried(mysql_url, nom, failure):
    s = settings_for(mysql_url, nom)
    nom.script(failure)
    image_id = add_image(db.engine_for(mysql_url), 48.85, 2.35)
    run(s, image_id)
    assert len(nom.requests) == 2 and nom.requests[1].status == 200
    assert min(gaps(nom.times())) >= 1.0 - JITTER
    assert row(mysql_url, image_id).place_source == "nominatim"


def test_garbage_body_is_transient(sqlite_url, nom):
    nom.script(200, body="<html>maintenance</html>")
    nom.script(200, body='{"error": "something else"}')
    image_id = add_image(db.engine_for(sqlite_url), 48.85, 2.35)
    run(settings_for(sqlite_url, nom), image_id)
    assert len(nom.requests) == 3 and row(sqlite_url, image_id).place_source == "nominatim"


def test_huge_or_hostile_answers_are_transient(sqlite_url, nom):
    nom.script(200, body="[" * 100_000)                       # deep nesting
    nom.script(200, body='{"a": "' + "x" * (2 << 20) + '"}')  # 2 MB
    nom.script(200, body='"just a string"')
    image_id = add_image(db.engine_for(sqlite_url), 48.85, 2.35)
    run(settings_for(sqlite_url, nom), image_id)               # 3 attempts fail -> offline
    assert row(sqlite_url, image_id).place_source == "offline"
    assert row(sqlite_url, image_id).city == "Paris"


def test_unreachable_server_falls_back_offline(sqlite_url, monkeypatch):
    monkeypatch.setenv("PHOTO_NOMINATIM_RETRIES", "2")
    s = settings_for(sqlite_url, None)                 # port 9: connection refused
    image_id = add_image(db.engine_for(sqlite_url), *IMG_5195)
    run(s, image_id)
    r = row(sqlite_url, image_id)
    assert (r.place_source, r.city, r.state, r.country, r.country_code) == \
        ("offline", "Blue Springs", "Missouri", "United States", "us")


def test_unreachable_server_without_fallback_is_an_ordinary_failure(sqlite_url, monkeypatch):
    monkeypatch.setenv("PHOTO_NOMINATIM_RETRIES", "2")
    monkeypatch.setenv("PHOTO_GEOCODE_FALLBACK", "none")
    image_id = add_image(db.engine_for(sqlite_url), *IMG_5195)
    with pytest.raises(NominatimError, match="after 2 attempts"):
        run(settings_for(sqlite_url, None), image_id)
    assert row(sqlite_url, image_id).geocoded_at is None


def test_timeout_is_transient(sqlite_url, monkeypatch):
    monkeypatch.setenv("PHOTO_NOMINATIM_TIMEOUT", "0.3")
    monkeypatch.setenv("PHOTO_NOMINATIM_RETRIES", "2")
    monkeypatch.setenv("PHOTO_GEOCODE_FALLBACK", "none")
    with FakeNominatim(delay=1.0) as slow:
        with pytest.raises(NominatimError, match="ReadTimeout"):
            run(settings_for(sqlite_url, slow), add_image(db.engine_for(sqlite_url), 1.0, 1.0))
        assert len(slow.requests) == 2


# --- offline geocoder ------------------------------------------------------------------------------

def test_offline_geocoder_known_places():
    g = offline()
    assert g is offline()                                           # loaded once per process
    arezzo = g.reverse(*DSCN0010)
    assert (arezzo["name"], arezzo["admin1"], arezzo["admin2"], arezzo["cc"], arezzo["country"]) == \
        ("Arezzo", "Tuscany", "Province of Arezzo", "IT", "Italy")
    assert 2 < arezzo["distance_km"] < 3
    assert g.reverse(*IMG_5195)["name"] == "Blue Springs"
    assert g.reverse(0.0, 0.0) is None                              # Takoradi is ~550 km away
    assert g.reverse(0.0, 0.0, max_km=1000)["name"] == "Takoradi"
    assert g.reverse(30.0, -40.0) is None                           # mid-Atlantic
    # across the antimeridian: Egvekinot (66.32, -179.12) is ~44 km from (66.3, 179.9), while
    # a degree-space tree (reverse_geocoder.search) answers Beringovskiy, ~360 km away.
    assert g.reverse(66.3, 179.9)["name"] == "Egvekinot"


def test_reverse_geocoder_package_works_offline_single_process():
    import reverse_geocoder
    [hit] = reverse_geocoder.search([DSCN0010], mode=1, verbose=False)
    assert (hit["name"], hit["cc"]) == ("Arezzo", "IT")


def test_offline_geocoder_rejects_bad_data_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("lat,lon,name,admin1,admin2,cc\n")
    with pytest.raises(RuntimeError, match="no towns"):
        OfflineGeocoder(empty)


@pytest.mark.parametrize("coords", [DSCN0010, IMG_5195])
def test_offline_mode_on_testdata_photos(any_db_url, nom, shared_testdata, coords):
    s = settings_for(any_db_url, nom, geocoder="offline")
    image_id = add_image(db.engine_for(any_db_url), *coords)
    run(s, image_id)
    r = row(any_db_url, image_id)
    assert r.place_source == "offline" and nom.requests == []
    assert r.display_name in ("Arezzo, Province of Arezzo, Tuscany, Italy",
                              "Blue Springs, Jackson County, Missouri, United States")
    assert r.road is None and r.place["licence"].startswith("GeoNames")


def test_testdata_coordinates_match_exiftool(shared_testdata):
    """The hardcoded coordinates are the photos' own (guards against testdata changes)."""
    exiftool = "/usr/bin/exiftool"
    if not os.path.exists(exiftool):
        pytest.skip("exiftool missing")
    out = subprocess.run([exiftool, "-n", "-q", "-r", "-p", "$FileName $GPSLatitude $GPSLongitude",
                          str(shared_testdata)], capture_output=True, text=True).stdout
    found = {line.split()[0]: tuple(map(float, line.split()[1:])) for line in out.splitlines()
             if len(line.split()) == 3}
    assert found["DSCN0010.jpg"] == pytest.approx(DSCN0010)
    assert found["IMG_5195.HEIC"] == pytest.approx(IMG_5195)


# --- the limiter on its own -----------------------------------------------------------------------

def test_limiter_spacing_single_process(any_db_url):
    lim = RateLimiter(db.engine_for(any_db_url), "t", interval=0.2)
    stamps = []
    for _ in range(6):
        with lim.acquire():
            stamps.append(time.monotonic())
    assert min(gaps(stamps)) >= 0.2 - JITTER


def test_limiter_refuses_far_slots_without_reserving(sqlite_url):
    from workers.places.ratelimit import TooLong
    lim = RateLimiter(db.engine_for(sqlite_url), "t", interval=5)
    lim.acquire().release()
    before = lim.state()["next_at"]
    with pytest.raises(TooLong):
        lim.acquire(max_wait=1)
    assert lim.state()["next_at"] == before


def test_pause_caps_and_never_shortens(sqlite_url):
    lim = RateLimiter(db.engine_for(sqlite_url), "t", pause_base=10, pause_max=25)
    assert [round(lim.pause()) for _ in range(3)] == [10, 20, 25]
    assert round(lim.pause(retry_after=1)) == 25          # an earlier, longer pause stands


# --- several consumer processes --------------------------------------------------------------------

CONSUMER = """
import sys, time
from workers.jobs import JobReleased
from tests.support.geolocation import run, Settings
s = Settings()
for image_id in map(int, sys.argv[1:]):
    while True:
        try:
            run(s, image_id)
            break
        except JobReleased as r:
            time.sleep(r.delay)
"""


def start_consumers(url: str, nom: FakeNominatim, ids: list[int], n: int, **env) -> list[subprocess.Popen]:
    environ = {**os.environ, "PHOTO_DATABASE_URL": url, "PHOTO_NOMINATIM_URL": nom.url,
               "PHOTO_NOMINATIM_USER_AGENT": UA, "PYTHONPATH": str(PROJECT_ROOT),
               **{f"PHOTO_{k.upper()}": str(v) for k, v in env.items()}}
    return [subprocess.Popen([sys.executable, "-c", CONSUMER, *map(str, ids[i::n])],
                             cwd=PROJECT_ROOT, env=environ) for i in range(n)]


def wait_all(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        assert p.wait(timeout=max(1, deadline - time.monotonic())) == 0


def grid(n: int) -> list[tuple[float, float]]:
    return [(44.0 + i * 0.01, 11.0 + i * 0.013) for i in range(n)]


@pytest.mark.timeout(180)
def test_four_processes_share_one_request_per_second(mysql_url, nom):
    eng = db.engine_for(mysql_url)
    coords = grid(20)
    ids = [add_image(eng, *c) for c in coords]
    ids += [add_image(eng, lat + 0.00001, lon) for lat, lon in coords[:4]]   # cached duplicates
    wait_all(start_consumers(mysql_url, nom, ids, 4), 120)
    assert len(nom.requests) == 20                         # one per distinct rounded coordinate
    assert len({(r.params["lat"], r.params["lon"]) for r in nom.requests}) == 20
    print("gaps at the server:", [round(g, 3) for g in gaps(nom.times())])
    assert min(gaps(nom.times())) >= 1.0 - JITTER, sorted(gaps(nom.times()))[:3]
    with eng.connect() as c:
        sources = c.execute(sa.select(images.c.place_source, sa.func.count())
                            .group_by(images.c.place_source)).all()
    assert sources == [("nominatim", 24)]


@pytest.mark.timeout(120)
def test_processes_share_the_limit_on_sqlite(sqlite_url, nom):
    """The embedded mode's database: the write lock plays the row lock's part."""
    eng = db.engine_for(sqlite_url)
    ids = [add_image(eng, *c) for c in grid(6)]
    wait_all(start_consumers(sqlite_url, nom, ids, 3), 90)
    assert len(nom.requests) == 6
    assert min(gaps(nom.times())) >= 1.0 - JITTER


@pytest.mark.timeout(180)
@pytest.mark.parametrize("status", [429, 403])
def test_a_block_pauses_every_process(mysql_url, nom, status):
    eng = db.engine_for(mysql_url)
    ids = [add_image(eng, *c) for c in grid(8)]
    procs = start_consumers(mysql_url, nom, ids, 4, nominatim_pause=3)
    while len(nom.requests) < 3:
        time.sleep(0.05)
    nom.script(status)
    wait_all(procs, 120)
    statuses = [r.status for r in sorted(nom.requests, key=lambda r: r.at)]
    assert statuses.count(status) == 1 and statuses.count(200) == 8, statuses
    blocked = nom.times(status)[0]
    after = [t for t in nom.times() if t > blocked]
    assert after and min(after) - blocked >= 3.0 - JITTER       # nobody asked during the pause
    assert min(gaps(nom.times())) >= 1.0 - JITTER
    with eng.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(images)
                         .where(images.c.place_source == "nominatim")).scalar() == 8
        assert c.execute(sa.select(rate_limits.c.strikes)).scalar() == 0


def test_waiters_take_the_slot_soon_after_release_not_at_lease_end(any_db_url):
    """Driven by the limiter's own (database) clock, not by timing the waiter."""
    from workers.places.ratelimit import LEASE_POLL, Slot
    eng = db.engine_for(any_db_url)
    holder, waiter = RateLimiter(eng, "t", interval=0.2), RateLimiter(eng, "t", interval=0.2)
    slot = holder.acquire(lease=30)
    # a slot held on a lease: the waiter looks again shortly instead of sleeping the lease out
    wait = waiter.try_acquire(lease=30)
    assert not isinstance(wait, Slot) and 0 < wait <= LEASE_POLL
    assert holder.state()["next_at"] - holder.state()["now"] > 20
    slot.release()
    # released: the slot frees one interval after the release, not at the lease's end
    state = holder.state()
    assert 0 < state["next_at"] - state["now"] <= 0.2
    wait = waiter.try_acquire(lease=30)
    assert isinstance(wait, Slot) or 0 < wait <= 0.2
    if not isinstance(wait, Slot):
        waiter.acquire(lease=30).release()


def test_a_dead_holders_lease_expires_and_its_late_release_harms_nobody(sqlite_url):
    eng = db.engine_for(sqlite_url)
    dead, alive = RateLimiter(eng, "t", interval=0.2), RateLimiter(eng, "t", interval=0.2)
    stale = dead.acquire(lease=0.5)              # never released in time
    start = time.monotonic()
    fresh = alive.acquire(lease=30)
    assert time.monotonic() - start >= 0.5 - JITTER
    stale.release()                              # must not cut the new holder's lease short
    assert alive.state()["next_at"] - alive.state()["now"] > 20
    fresh.release()
    assert alive.state()["next_at"] - alive.state()["now"] <= 0.2


@pytest.mark.timeout(240)
def test_real_consumers_share_the_limit_and_a_429_pauses_them_all(mysql_url, rabbitmq, nom, tmp_path):
    """Four `python -m workers consume --queue geolocation` processes, jobs published like Laravel."""
    from tests.support.consumers import (
        consumer_env, publish_job, start_consumer, stop_consumer, wait_for,
    )
    eng = db.engine_for(mysql_url)
    coords = grid(12)
    ids = [add_image(eng, *c) for c in coords] + [add_image(eng, lat, lon + 0.00002) for lat, lon in coords[:2]]
    env = consumer_env(mysql_url, rabbitmq.url, nominatim_url=nom.url, nominatim_user_agent=UA,
                       nominatim_pause=2)
    procs = [start_consumer("geolocation", env, tmp_path / "logs") for _ in range(4)]
    try:
        for image_id in ids:
            publish_job(rabbitmq.url, "App\\Jobs\\GeolocationProcessJob", {"image_id": image_id}, "geolocation")
        wait_for(lambda: len(nom.requests) >= 4, 60, "first requests", procs[0])
        nom.script(429)

        def done() -> bool:
            with eng.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(images)
                                    .where(images.c.geocoded_at.isnot(None))).scalar() == len(ids)
        wait_for(done, 150, "all images geocoded", procs[0])
    finally:
        codes = [stop_consumer(p) for p in procs]
    assert codes == [0, 0, 0, 0]
    statuses = [r.status for r in sorted(nom.requests, key=lambda r: r.at)]
    assert statuses.count(429) == 1 and statuses.count(200) == 12, statuses
    blocked = nom.times(429)[0]
    assert min(t for t in nom.times() if t > blocked) - blocked >= 2.0 - JITTER
    assert min(gaps(nom.times())) >= 1.0 - JITTER
    with eng.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(images)
                            .where(images.c.place_source == "nominatim")).scalar() == len(ids)
        assert conn.execute(sa.text("SELECT COUNT(*) FROM failed_jobs")).scalar() == 0
