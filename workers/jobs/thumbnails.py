"""App\\Jobs\\ThumbnailProcessJob: thumbnails with Intervention Image v3's geometry.

Job data (`$data` of the Laravel job), all optional except image_id:
    {"image_id": 7, "method": "cover", "width": 300, "height": 300}      one size, or
    {"image_id": 7, "sizes": [{"method": "cover", "width": 300, "height": 300}, ...]}
    {"image_id": 7}                               -> Settings.thumbnail_sizes
Methods are exactly cover, scale, resize, contain (the PHP job's validation); cover/contain need
both sides, scale/resize at least one (v3 keeps the original side for a missing one).

Each size is written atomically to <thumbnails_dir>/<image_id>/<method>-<w>x<h>.<jpg|webp> and
recorded in images.thumbnails as {"cover-300x300": "thumbnails/7/cover-300x300.jpg", ...}
(paths relative to the storage root, merged with what the row already has).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from workers.media import imaging
from workers.db import now
from workers.schema import images
from workers.settings import Settings
from workers.jobs import Context, FollowUp, JobFailed, image_id_of

QUEUE = "thumbnails"
MAX_SIDE = 10_000
FORMATS = {"jpeg": "jpg", "jpg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class Size:
    method: str
    width: int | None
    height: int | None

    @property
    def key(self) -> str:
        # PHP "{$method}-{$width}x{$height}": a null side interpolates as "".
        return f"{self.method}-{self.width or ''}x{self.height or ''}"


def _side(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_SIDE:
        raise JobFailed(f"invalid thumbnail {name} {value!r}: must be an integer from 1 to {MAX_SIDE}")
    return value


def parse_size(spec) -> Size:
    if not isinstance(spec, dict):
        raise JobFailed(f"invalid thumbnail size {spec!r}")
    method = spec.get("method")
    if method not in imaging.METHODS:
        raise JobFailed(f"unsupported thumbnail method {method!r} "
                        f"(allowed: {', '.join(imaging.METHODS)})")
    size = Size(method, _side(spec.get("width"), "width"), _side(spec.get("height"), "height"))
    if method in ("cover", "contain") and (size.width is None or size.height is None):
        raise JobFailed(f"thumbnail method {method} needs width and height")
    if size.width is None and size.height is None:
        raise JobFailed(f"thumbnail method {method} needs width or height")
    return size


def sizes_of(data: dict, settings: Settings) -> list[Size]:
    """The sizes a job asks for, validated before any work; duplicates dropped."""
    if "sizes" in data:
        specs = data["sizes"]
        if isinstance(specs, dict):           # a PHP array with non-sequential keys
            specs = list(specs.values())
        if not isinstance(specs, list) or not specs:
            raise JobFailed(f"invalid thumbnail sizes {specs!r}")
    elif any(k in data for k in ("method", "width", "height")):
        specs = [data]
    else:
        specs = settings.thumbnail_sizes
    return list(dict.fromkeys(parse_size(s) for s in specs))


def _mkdirs(path: Path) -> None:
    """Create missing directories with mode 775 whatever the umask (group www-data:web)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        os.chmod(d, 0o775)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory + rename: readers never see a partial thumbnail."""
    _mkdirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o664)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def render_files(source: Path, sizes: list[Size], settings: Settings, out_dir: Path) -> dict[str, Path]:
    """Decode `source` once and write every size into `out_dir`; returns key -> written path.
    Raises imaging.ImageError for photos that cannot be used."""
    fmt = settings.thumbnail_format.lower()
    if fmt not in FORMATS:
        raise ValueError(f"PHOTO_THUMBNAIL_FORMAT must be jpeg or webp, not {fmt!r}")
    src = imaging.open_source(source, settings.max_pixels)
    with src.image:                       # closes the file (animations keep it open otherwise)
        plans = {s: imaging.plan(s.method, src.width, src.height, s.width, s.height) for s in sizes}
        for s, p in plans.items():
            if p.canvas[0] * p.canvas[1] > settings.max_pixels:
                raise imaging.ImageError(f"thumbnail {s.key} would be {p.canvas[0]}x{p.canvas[1]} "
                                         f"pixels, over the budget of {settings.max_pixels}")
        # One decode serves all sizes: the least reduction any of them tolerates.
        stored = src.image.size
        requests = [imaging.draft_request(p, stored) for p in plans.values()]
        draft = None if None in requests else max(requests)
        decoded = imaging.decode(src, draft)
        exif = src.exif if settings.thumbnail_keep_exif else None
        written = {}
        for s, p in plans.items():
            data = imaging.encode(imaging.render(src, decoded, p),
                                  "webp" if fmt == "webp" else "jpeg", settings.thumbnail_quality, exif)
            path = out_dir / f"{s.key}.{FORMATS[fmt]}"
            write_atomic(path, data)
            written[s.key] = path
    return written


def _relative(path: Path, root: Path) -> str:
    root = root.resolve()
    path = path.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _existing(value) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, dict) else {}


def handle(ctx: Context, data: dict) -> list[FollowUp]:
    image_id = image_id_of(data)
    sizes = sizes_of(data, ctx.settings)
    row = ctx.image(image_id)
    source = ctx.photo_path(row.path)
    out_dir = Path(ctx.settings.thumbnails_dir) / str(image_id)
    try:
        written = render_files(source, sizes, ctx.settings, out_dir)
    except imaging.ImageError as exc:
        raise JobFailed(f"image {image_id} ({row.path}): {exc}") from exc
    thumbs = _existing(row.thumbnails)
    root = Path(ctx.settings.storage_root)
    thumbs.update({key: _relative(path, root) for key, path in written.items()})
    stamp = now()
    ctx.db.execute(images.update().where(images.c.id == image_id)
                   .values(thumbnails=thumbs, thumbnails_at=stamp, updated_at=stamp))
    ctx.log.info("image %s: %d thumbnail(s) %s", image_id, len(written), ", ".join(written))
    return []
