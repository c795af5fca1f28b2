"""Laravel's DatabaseLock algorithm on cache_locks, on MySQL and SQLite."""
import time

import sqlalchemy as sa

from workers import db
from workers.locks import DatabaseLock, random_owner
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
