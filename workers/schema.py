"""The tables, in SQLAlchemy Core so one definition serves MySQL/MariaDB (the box) and SQLite
(the embedded mode). `sql/schema.sql` is this, rendered for MySQL (`python -m workers schema`).

`images` and `faces` are the Laravel app's tables: we only add nullable columns to them.
`queues`, `failed_jobs`, `cache_locks` have Laravel's own shapes so PHP and Python share them."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# Laravel ids are BIGINT UNSIGNED (`$table->id()`): foreign keys to the app's tables must match.
# SQLite autoincrement needs plain INTEGER.
BigId = sa.BigInteger().with_variant(mysql.BIGINT(unsigned=True), "mysql").with_variant(sa.Integer(), "sqlite")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql")
Json = sa.JSON()
FACE_STATUSES = ("process", "unknown", "not_face", "ok")


def _timestamps() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime, nullable=True),
            sa.Column("updated_at", sa.DateTime, nullable=True)]


images = sa.Table(
    "images", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String(1024), nullable=False),
    # metadata job
    sa.Column("taken_at", sa.DateTime), sa.Column("camera_make", sa.String(255)),
    sa.Column("camera_model", sa.String(255)), sa.Column("lens", sa.String(255)),
    sa.Column("width", sa.Integer), sa.Column("height", sa.Integer),
    sa.Column("orientation", sa.SmallInteger),
    sa.Column("latitude", sa.Float(precision=53)), sa.Column("longitude", sa.Float(precision=53)),
    sa.Column("altitude", sa.Float(precision=53)),
    sa.Column("exif", Json), sa.Column("metadata_status", sa.String(32)),
    sa.Column("metadata_error", sa.Text), sa.Column("metadata_at", sa.DateTime),
    # thumbnail job
    sa.Column("thumbnails", Json), sa.Column("thumbnails_at", sa.DateTime),
    # geolocation job
    sa.Column("country", sa.String(255)), sa.Column("country_code", sa.String(8)),
    sa.Column("state", sa.String(255)), sa.Column("county", sa.String(255)),
    sa.Column("city", sa.String(255)), sa.Column("road", sa.String(255)),
    sa.Column("postcode", sa.String(64)), sa.Column("display_name", sa.String(1024)),
    sa.Column("place", Json), sa.Column("place_source", sa.String(16)),
    sa.Column("geocoded_at", sa.DateTime),
    # face job
    sa.Column("faces_count", sa.Integer), sa.Column("faces_at", sa.DateTime),
    *_timestamps(),
)

faces = sa.Table(
    "faces", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("parent_id", BigId, sa.ForeignKey("faces.id", ondelete="SET NULL"), nullable=True),
    sa.Column("image_id", BigId, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False, default=0),
    sa.Column("name", sa.String(255)),
    sa.Column("encoding", Json),                      # 128 floats
    sa.Column("status", sa.Enum(*FACE_STATUSES, name="face_status"), nullable=False,
              server_default="process"),
    sa.Column("location", Json),                      # [top, right, bottom, left]
    sa.Column("distance", sa.Float(precision=53)),    # to parent
    *_timestamps(),
    # Face grouping, ours: the parent our matcher gave (a reviewer clearing parent_id
    # while this is set said "not this person"), why a face was left without one, and the
    # suggested group of an unknown face (the id of the group's representative face).
    sa.Column("matched_parent_id", BigId, sa.ForeignKey("faces.id", ondelete="SET NULL"), nullable=True),
    sa.Column("match_note", sa.String(255), nullable=True),
    sa.Column("suggested_group", BigId, nullable=True),
    sa.Index("faces_image_id_index", "image_id"),
    sa.Index("faces_parent_status_index", "parent_id", "status"),
    sa.Index("faces_suggested_group_index", "suggested_group"),
    # The review page's lists (suggested people, unknown faces) and counts, read from the index
    # alone: status and suggested_group sit behind the encoding in the row.
    sa.Index("faces_review_index", "suggested_group", "status", "parent_id"),
    # Rule 5's pool and the rematch's faces (unknown, no parent or our own filing), from the
    # index alone: matched_parent_id is compared with parent_id.
    sa.Index("faces_unreviewed_index", "status", "parent_id", "matched_parent_id"),
)

# A reviewer's "not this person": the face is never filed under that person (root) again.
face_rejections = sa.Table(
    "face_rejections", metadata,
    sa.Column("face_id", BigId, sa.ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("person_id", BigId, sa.ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", sa.DateTime),
)

# The distance learned from the reviewers' decisions (workers/faces/metric.py): the 128 x 128 map
# applied to dlib's encodings, which stay as they are. One row per distinct fit, the newest last.
face_metrics = sa.Table(
    "face_metrics", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("fitted_at", sa.DateTime),
    sa.Column("people", sa.Integer),
    sa.Column("faces", sa.Integer),
    sa.Column("negatives", sa.Integer),
    sa.Column("weight", sa.Float(precision=53)),     # share of the distance that is learned
    sa.Column("seconds", sa.Float(precision=53)),
    sa.Column("why", sa.String(255)),
    sa.Column("matrix", LongText, nullable=False),   # JSON, 128 rows of 128 floats
)

# Laravel's dedup table: a row means "queued or running".
queues = sa.Table(
    "queues", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("queue_key", sa.String(32), nullable=False, unique=True),
    *_timestamps(),
)

# Laravel's failed_jobs (database-uuids provider), byte-compatible with `queue:retry`.
failed_jobs = sa.Table(
    "failed_jobs", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("uuid", sa.String(255), nullable=False, unique=True),
    sa.Column("connection", sa.Text, nullable=False),
    sa.Column("queue", sa.Text, nullable=False),
    sa.Column("payload", LongText, nullable=False),
    sa.Column("exception", LongText, nullable=False),
    sa.Column("failed_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
)

# Laravel's database cache lock table: `{type}-processing:{id}` locks shared with PHP workers.
cache_locks = sa.Table(
    "cache_locks", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("expiration", sa.Integer, nullable=False, index=True),
)

# One row per limiter (e.g. "nominatim"): the global request schedule and pauses.
rate_limits = sa.Table(
    "rate_limits", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_at", sa.Float(precision=53), nullable=False, default=0.0),   # unix time
    sa.Column("paused_until", sa.Float(precision=53), nullable=False, default=0.0),
    sa.Column("strikes", sa.Integer, nullable=False, default=0),                 # 403/429 in a row
)

# Reverse-geocode results by rounded coordinates ("lat,lon" at the precision setting).
geocode_cache = sa.Table(
    "geocode_cache", metadata,
    sa.Column("coord_key", sa.String(64), primary_key=True),
    sa.Column("place", Json),                   # null = "no place"
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime),
)

schema_migrations = sa.Table(
    "schema_migrations", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("applied_at", sa.DateTime),
)
