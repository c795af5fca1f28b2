"""Laravel's DatabaseLock algorithm on cache_locks, on MySQL and SQLite."""
import time

import pydantic
import pytest
import sqlalchemy as sa

from workers import db
from workers.queue.locks import DatabaseLock, job_owner, job_token, random_owner
from workers.schema import cache_locks


def test_owner_is_laravel_str_random():
    o = random_owner()
    assert len(o) == 16 and o.isalnum() and o.isascii()


def test_acquire_excludes_others_and_release_only_by_owner(any_db_url):
    eng = db.engine_for(any_db_url)
    a = DatabaseLock(eng, "laravel_cache_faces-processing:42", 60)
    b = DatabaseLock(eng, "laravel_cache_faces-processing:42", 60)
    assert a.acquire()
    assert not b.acquire()
    assert a.acquire()                      # re-acquire by the same owner
    assert not b.release()                  # not the owner: nothing deleted
    assert a.owner_now() == a.owner
    with eng.connect() as c:
        row = c.execute(sa.select(cache_locks)).one()
    assert row.key == "laravel_cache_faces-processing:42"
    assert int(time.time()) + 55 <= row.expiration <= int(time.time()) + 61
    assert a.release()
    assert b.acquire()
    assert b.release()


def test_expired_lock_is_taken_over(any_db_url):
    eng = db.engine_for(any_db_url)
    with eng.begin() as c:   # a PHP worker's lock that expired a second ago
        c.execute(cache_locks.insert().values(key="k", owner="phpOwner0000000", expiration=int(time.time()) - 1))
    ours = DatabaseLock(eng, "k", 60)
    assert ours.acquire()
    assert ours.owner_now() == ours.owner
    assert not DatabaseLock(eng, "k", 60, owner="phpOwner0000000").release()


def test_zero_seconds_means_lock_timeout(any_db_url):
    eng = db.engine_for(any_db_url)
    lock = DatabaseLock(eng, "forever", 0)
    assert lock.acquire()
    with eng.connect() as c:
        exp = c.execute(sa.select(cache_locks.c.expiration)).scalar()
    assert exp >= int(time.time()) + 86400 - 2


# --- leases and job-owned locks ------------------------------------------------------

def _expiration(eng, name):
    with eng.connect() as c:
        return c.execute(sa.select(cache_locks.c.expiration).where(cache_locks.c.key == name)).scalar()


def test_job_owner_names_the_job_and_the_delivery():
    a, b = job_owner("7f9c-uuid"), job_owner("7f9c-uuid")
    assert a != b                                   # two deliveries: two owners
    assert a[:16] == b[:16] == job_token("7f9c-uuid") != job_token("other-uuid")
    assert len(a) == 32 and a.isalnum() and a.isascii()
    for no_uuid in (None, "", 12):                  # no usable uuid: Laravel's Str::random()
        assert len(job_owner(no_uuid)) == 16 and job_token(no_uuid) is None


def test_renew_moves_the_expiration_only_for_the_owner(any_db_url):
    eng = db.engine_for(any_db_url)
    ours = DatabaseLock(eng, "lease", 5)
    assert ours.acquire()
    with eng.begin() as c:              # as if 4 s had passed since the last renewal
        c.execute(cache_locks.update().values(expiration=int(time.time()) + 1))
    assert ours.renew() and ours.renew()            # twice in one second: still ours (found rows)
    assert int(time.time()) + 4 <= _expiration(eng, "lease") <= int(time.time()) + 5
    assert not DatabaseLock(eng, "lease", 5).renew()
    with eng.begin() as c:              # it lapsed and a PHP worker took it
        c.execute(cache_locks.update().values(owner="phpOwner0000000", expiration=int(time.time()) + 60))
    assert not ours.renew()
    assert ours.owner_now() == "phpOwner0000000"


def test_a_redelivery_takes_over_its_own_jobs_lock_only(any_db_url):
    eng = db.engine_for(any_db_url)
    name = "laravel_cache_faces-processing:7"
    dead = DatabaseLock(eng, name, 30, owner=job_owner("job-A"))
    assert dead.acquire()
    other_job = DatabaseLock(eng, name, 30, owner=job_owner("job-B"))
    assert not other_job.acquire(take_over=job_token("job-B"))      # a different job waits
    assert not DatabaseLock(eng, name, 30, owner=job_owner("job-A")).acquire()   # not a redelivery
    heir = DatabaseLock(eng, name, 30, owner=job_owner("job-A"))
    assert heir.acquire(take_over=job_token("job-A"))
    assert heir.owner_now() == heir.owner
    assert not dead.renew() and not dead.release()    # the dead delivery's lease is gone
    with eng.begin() as c:                            # a PHP worker's lock is never taken over
        c.execute(cache_locks.update().values(owner="phpOwner0000000"))
    assert not DatabaseLock(eng, name, 30, owner=job_owner("job-A")).acquire(take_over=job_token("job-A"))


def test_lease_policy(mysql_url, sqlite_url):
    from workers.queue.leases import LeasePolicy
    from workers.settings import Settings
    s = Settings(lock_lease=30, lock_renew_every=10)
    mysql = LeasePolicy.of(s, db.engine_for(mysql_url))
    assert (mysql.seconds(300), mysql.seconds(12)) == (30, 12)   # never longer than the job's timeout
    assert mysql.start(DatabaseLock(None, "k", 30)).every == 10
    assert mysql.start(DatabaseLock(None, "k", 12)).every == 4   # three renewals per lease
    off = LeasePolicy.of(Settings(lock_lease=0), db.engine_for(mysql_url))
    assert off.seconds(300) == 300 and off.start(DatabaseLock(None, "k", 300)).every is None
    assert LeasePolicy.of(s, db.engine_for(sqlite_url)).seconds(300) == 300     # one writer: no lease
    for bad in ({"lock_lease": -1}, {"lock_renew_every": 0}):
        with pytest.raises(pydantic.ValidationError, match=next(iter(bad))):
            Settings(**bad)


def test_lease_tick_renews_when_due_and_notices_a_lost_lock(mysql_url):
    from workers.queue.leases import Lease
    eng = db.engine_for(mysql_url)
    lock = DatabaseLock(eng, "ticked", 3)
    assert lock.acquire()
    lease = Lease(lock, 0.2)
    lease.tick()
    assert lease.renewals == 0                       # not due yet
    time.sleep(0.25)
    lease.tick()
    assert lease.renewals == 1 and not lease.lost
    with eng.begin() as c:
        c.execute(cache_locks.update().values(owner="phpOwner0000000"))
    time.sleep(0.25)
    lease.tick()
    assert lease.lost
