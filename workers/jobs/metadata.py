"""MetadataProcessJob: read a photo's metadata with exiftool into the image row, and chain
GeolocationProcessJob when it has GPS.

    data {"image_id": N} -> images row N: taken_at, camera_make, camera_model, lens, width, height,
    orientation, latitude, longitude, altitude, exif (exiftool's whole `-G -n` JSON),
    metadata_status ('ok' | 'no_metadata'), metadata_error, metadata_at

Outcomes:
  * exiftool read the file: the row is written. 'ok' when it holds EXIF/XMP/IPTC/maker-note
    tags or a capture date, camera or position (videos: QuickTime keys); else 'no_metadata'
    (plain images, text files). exiftool's Error ("File is empty", "Unknown file type",
    truncated files) or Warning ("JPEG format error") goes to metadata_error.
  * the file is missing, not a regular file, unreadable, or outside the storage root: JobFailed,
    row untouched (an operator fixes the file and retries the failed job).
  * exiftool itself broke (died twice in a row, no answer in time): an ordinary exception, so the
    runtime retries it.
Re-running overwrites the same columns (every one, NULLs included): idempotent.

Follow-up: the spec's condition `isset($m['GPSLatitude']) && isset($m['GPSLongitude']) ||
isset($m['GPSPosition'])` (any group) *and* usable coordinates were stored - (0, 0), out of range
or unparsable positions give the geolocation job nothing to look up. Its data is
`{"image_id": N}` only: that is what the app dispatches, so the dedup key
md5(json_encode(['class' => ...] + $data)) matches a Geolocation job the app queued itself.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import re
import stat

from workers import db
from workers.media import exif
from workers.schema import images
from workers.jobs import Context, FollowUp, JobFailed, image_id_of, registry

QUEUE = "metadata"
GEOLOCATION = registry.BY_QUEUE["geolocation"]

# Groups that hold real photo metadata (File/JFIF/ICC/Composite only describe the container).
METADATA_GROUPS = {"EXIF", "XMP", "IPTC", "MakerNotes", "GPS"}
# Capture time, best first (the order Immich uses); the first parsable value wins.
DATE_TAGS = ["SubSecDateTimeOriginal", "DateTimeOriginal", "SubSecCreateDate", "CreationDate",
             "CreateDate", "SubSecMediaCreateDate", "MediaCreateDate", "DateTimeCreated"]
GROUP_ORDER = ["EXIF", "Composite", "XMP", "IPTC", "QuickTime", "MakerNotes"]
HEIF_TYPES = {"HEIC", "HEIF", "AVIF"}
# HEIF `irot` (exiftool Rotation: degrees counter-clockwise) and video track rotation
# (degrees clockwise) as the EXIF Orientation that shows the stored pixels upright.
HEIF_ROTATION = {0: 1, 90: 8, 180: 3, 270: 6}
VIDEO_ROTATION = {0: 1, 90: 6, 180: 3, 270: 8}
MAX_STRING = 65536          # longer tag values (giant XMP/comments) are cut to keep rows storable
DATE_RE = re.compile(r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?")


def handle(ctx: Context, data: dict) -> list[FollowUp]:
    image_id = image_id_of(data)
    row = ctx.image(image_id)
    path = _checked_path(ctx, row.path)
    timeout = max(5, ctx.settings.timeout_for(QUEUE) - 5)   # answer before the runtime gives up
    try:
        result = exif.read(path, timeout=timeout)
    except ValueError as exc:                               # a file name exiftool cannot take
        raise JobFailed(str(exc)) from None
    if result.tags is None:                                 # e.g. deleted since the check
        raise JobFailed(f"exiftool could not read {row.path!r}: {result.stderr or 'no output'}")

    values = normalize(result.tags)
    stamp = db.now()
    ctx.db.execute(images.update().where(images.c.id == image_id)
                   .values(**values, metadata_at=stamp, updated_at=stamp))
    ctx.log.info("image %s metadata: %s%s", image_id, values["metadata_status"],
                 f" ({values['metadata_error']})" if values["metadata_error"] else "")
    if has_gps(result.tags) and values["latitude"] is not None:
        return [FollowUp(GEOLOCATION.class_name, {"image_id": image_id}, GEOLOCATION.queue)]
    return []


def _checked_path(ctx: Context, relative: str):
    """The photo's absolute path, or JobFailed saying why it cannot be read."""
    try:
        path = ctx.photo_path(relative)
        st = os.stat(path)
    except FileNotFoundError:
        raise JobFailed(f"photo file not found: {relative!r}") from None
    except (OSError, ValueError) as exc:          # ValueError: NUL byte in the path
        raise JobFailed(f"photo file cannot be opened: {relative!r}: {exc}") from None
    # Never a directory (exiftool would read every file in it) or a FIFO/device (it would block).
    if not stat.S_ISREG(st.st_mode):
        raise JobFailed(f"photo path is not a regular file: {relative!r}")
    if not os.access(path, os.R_OK):
        raise JobFailed(f"photo file is not readable: {relative!r}")
    return path


# --- exiftool JSON -> columns (pure) ------------------------------------------------------------

def normalize(tags: dict) -> dict:
    """The image columns for exiftool's `-G -n` JSON of one file."""
    lat, lon = position(tags)
    values = {
        "taken_at": taken_at(tags),
        "camera_make": text(first(tags, "Make")),
        "camera_model": text(first(tags, "Model")),
        "lens": lens(tags),
        "orientation": orientation(tags),
        "latitude": lat, "longitude": lon, "altitude": altitude(tags),
    }
    # Pixel dimensions as stored in the file, before any rotation: with orientation 5-8 (or a
    # rotated HEIF/video) the upright photo is height x width.
    values["width"], values["height"] = dimensions(tags)
    meaningful = any(k.split(":", 1)[0] in METADATA_GROUPS for k in tags) or any(
        values[k] is not None for k in ("taken_at", "camera_make", "camera_model", "latitude"))
    values["metadata_status"] = "ok" if meaningful else "no_metadata"
    problem = tags.get("ExifTool:Error") or tags.get("ExifTool:Warning")
    values["metadata_error"] = str(problem)[:1000] if problem else None
    values["exif"] = _storable(tags)
    return values


def values_of(tags: dict, name: str) -> list:
    """Values of tag `name` from any group, best group first; None values skipped."""
    found = [(k.split(":", 1)[0], v) for k, v in tags.items()
             if v is not None and (k == name or k.endswith(":" + name))]
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    return [v for _, v in sorted(found, key=lambda gv: rank.get(gv[0], len(rank)))]


def first(tags: dict, name: str):
    vals = values_of(tags, name)
    return vals[0] if vals else None


def text(value, limit: int = 255) -> str | None:
    if value is None or isinstance(value, (list, dict)):
        return None
    s = str(value).replace("\x00", "").strip()
    return s[:limit] or None


def number(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_date(value) -> dt.datetime | None:
    """Wall-clock time of an exiftool date ("2008:05:30 15:56:01[.00][+02:00]"); the offset is
    dropped so EXIF (local, no zone) and XMP (with zone) dates mean the same thing. Zero or
    impossible dates ("0000:00:00 00:00:00") are None."""
    if not isinstance(value, str):
        return None
    m = DATE_RE.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(x) if x else 0 for x in m.groups())
    if y < 1800:
        return None
    try:
        return dt.datetime(y, mo, d, h, mi, s)
    except ValueError:
        return None


def taken_at(tags: dict) -> dt.datetime | None:
    for name in DATE_TAGS:
        for value in values_of(tags, name):
            parsed = parse_date(value)
            if parsed is not None:
                return parsed
    return None


def lens(tags: dict) -> str | None:
    # With -n, Composite:LensID may be a bare maker lens number ("137"): only names count.
    for name in ("LensModel", "Lens", "LensID"):
        for value in values_of(tags, name):
            s = text(value)
            if s and re.search(r"[A-Za-z]", s):
                return s
    return None


def _file_type(tags: dict) -> str:
    return str(tags.get("File:FileType") or "").upper()


def orientation(tags: dict) -> int | None:
    """EXIF Orientation 1-8 that shows the stored pixels upright.

    HEIF: the container's irot is what decoders apply (libheif, pillow-heif) and its EXIF
    Orientation is informational, so it comes from irot (mirroring, imir, is not considered).
    Videos: the track's rotation. Everything else: EXIF, then XMP Orientation."""
    if _file_type(tags) in HEIF_TYPES:
        rot = number(first(tags, "Rotation"))
        return HEIF_ROTATION.get(int(rot) % 360 if rot is not None else 0)
    if str(tags.get("File:MIMEType", "")).startswith("video/"):
        rot = number(first(tags, "Rotation"))
        return VIDEO_ROTATION.get(int(rot) % 360) if rot is not None else None
    for value in values_of(tags, "Orientation"):
        n = number(value)
        if n is not None and n == int(n) and 1 <= n <= 8:
            return int(n)
    return None


def _signed(tags: dict, name: str, negative_ref: str) -> float | None:
    """A signed coordinate: Composite is signed by exiftool; EXIF carries the sign in its Ref
    tag; XMP and QuickTime values are signed already."""
    composite = number(tags.get(f"Composite:{name}"))
    if composite is not None:
        return composite
    exif_value = number(tags.get(f"EXIF:{name}"))
    if exif_value is not None:
        ref = str(tags.get(f"EXIF:{name}Ref") or "").strip().upper()
        return -abs(exif_value) if ref.startswith(negative_ref) else abs(exif_value)
    for value in values_of(tags, name):
        if number(value) is not None:
            return number(value)
    return None


def position(tags: dict) -> tuple[float | None, float | None]:
    """Signed decimal (latitude, longitude), or (None, None) for none, (0, 0) or out of range."""
    lat, lon = _signed(tags, "GPSLatitude", "S"), _signed(tags, "GPSLongitude", "W")
    if lat is None or lon is None:
        parts = str(first(tags, "GPSPosition") or "").replace(",", " ").split()
        if len(parts) == 2:
            lat, lon = number(parts[0]), number(parts[1])
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat, lon) == (0, 0):
        return None, None
    return lat, lon


def altitude(tags: dict) -> float | None:
    """Metres, negative below sea level (GPSAltitudeRef 1)."""
    composite = number(tags.get("Composite:GPSAltitude"))
    if composite is not None:
        return composite
    for group in ("EXIF", "XMP"):
        value = number(tags.get(f"{group}:GPSAltitude"))
        if value is not None:
            below = number(tags.get(f"{group}:GPSAltitudeRef")) == 1
            return -abs(value) if below else value
    return None


def has_gps(tags: dict) -> bool:
    """The spec's PHP condition, with exiftool's group prefixes ignored (isset: not null)."""
    def isset(name: str) -> bool:
        return bool(values_of(tags, name))
    return isset("GPSLatitude") and isset("GPSLongitude") or isset("GPSPosition")


def dimensions(tags: dict) -> tuple[int | None, int | None]:
    candidates = [(tags.get("File:ImageWidth"), tags.get("File:ImageHeight"))]
    size = str(tags.get("Composite:ImageSize") or "").replace("x", " ").split()
    if len(size) == 2:
        candidates.append((size[0], size[1]))
    candidates.append((first(tags, "ImageWidth"), first(tags, "ImageHeight")))
    for w, h in candidates:
        w, h = number(w), number(h)
        if w and h and 0 < w < 2**31 and 0 < h < 2**31:
            return int(w), int(h)
    return None, None


def _storable(value):
    """exiftool's JSON with very long strings cut (MySQL packet size; nobody reads 10 MB XMP)."""
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, str) and len(value) > MAX_STRING:
        return value[:MAX_STRING] + f"... ({len(value)} characters, cut)"
    return value
