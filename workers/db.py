"""Database access: one engine per process, numbered idempotent migrations, small helpers.

Migrations only ever create missing tables and add missing columns, so they run safely against
the Laravel app's existing `images`/`faces`/`failed_jobs` tables and can be re-run at will."""
from __future__ import annotations

import datetime as dt
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from workers import schema


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        eng = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(eng, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # WAL: readers never block the writer; the process pool of the embedded mode shares it.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return eng
    # pool_pre_ping + recycle: survive MariaDB restarts and wait_timeout between jobs.
    return sa.create_engine(url, pool_pre_ping=True, pool_recycle=280, pool_size=5, max_overflow=5)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


# --- migrations ---------------------------------------------------------------------------------

def _ensure_tables(conn: sa.Connection, *tables: sa.Table) -> None:
    """Create each table if missing, else add the columns it lacks (never drop or alter)."""
    insp = sa.inspect(conn)
    for table in tables:
        if not insp.has_table(table.name):
            table.create(conn)
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have:
                coltype = col.type.compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {coltype} NULL"))


def _m0001_initial(conn: sa.Connection) -> None:
    s = schema
    _ensure_tables(conn, s.images, s.faces, s.queues, s.failed_jobs, s.cache_locks,
                   s.rate_limits, s.geocode_cache)


def _ensure_face_indexes(conn: sa.Connection) -> None:
    """Create the indexes of `faces` it lacks (never drop one)."""
    have = {ix["name"] for ix in sa.inspect(conn).get_indexes("faces")}
    for ix in schema.faces.indexes:
        if ix.name not in have:
            ix.create(conn)


def _m0002_face_grouping(conn: sa.Connection) -> None:
    """Issue 10: faces.matched_parent_id / match_note / suggested_group, face_rejections."""
    _ensure_tables(conn, schema.faces, schema.face_rejections)
    _ensure_face_indexes(conn)


def _m0003_face_review_index(conn: sa.Connection) -> None:
    """faces_review_index: the review page's lists without reading a face's row."""
    _ensure_face_indexes(conn)


def _m0004_face_metrics(conn: sa.Connection) -> None:
    """The learned face distance, stored beside the encodings."""
    _ensure_tables(conn, schema.face_metrics)


def _m0005_face_unreviewed_index(conn: sa.Connection) -> None:
    """faces_unreviewed_index: the unknown faces no reviewer decided, without reading a face's row."""
    _ensure_face_indexes(conn)


MIGRATIONS = [(1, "initial", _m0001_initial), (2, "face_grouping", _m0002_face_grouping),
              (3, "face_review_index", _m0003_face_review_index), (4, "face_metrics", _m0004_face_metrics),
              (5, "face_unreviewed_index", _m0005_face_unreviewed_index)]


def migrate(engine: Engine) -> list[str]:
    """Apply pending migrations in order; returns the names applied."""
    applied = []
    with engine.begin() as conn:
        schema.schema_migrations.create(conn, checkfirst=True)
    for version, name, fn in MIGRATIONS:
        with engine.begin() as conn:
            done = conn.execute(sa.select(schema.schema_migrations.c.version)
                                .where(schema.schema_migrations.c.version == version)).first()
            if done:
                continue
            fn(conn)
            conn.execute(schema.schema_migrations.insert().values(version=version, name=name,
                                                                  applied_at=now()))
            applied.append(f"{version:04d}_{name}")
    return applied


def mysql_ddl() -> str:
    """The schema as MySQL DDL (what sql/schema.sql holds)."""
    from sqlalchemy.dialects import mysql
    from sqlalchemy.schema import CreateIndex, CreateTable
    out = []
    for table in schema.metadata.sorted_tables:
        out.append(str(CreateTable(table).compile(dialect=mysql.dialect())).strip() + ";")
        out += [str(CreateIndex(ix).compile(dialect=mysql.dialect())).strip() + ";"
                for ix in sorted(table.indexes, key=lambda ix: ix.name)]
    return "\n\n".join(out) + "\n"
