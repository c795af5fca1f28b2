"""Benchmark: metadata extraction, one long-lived exiftool vs one exiftool process per photo.

    .venv/bin/python bench/metadata.py [--count 200]

Same photos for every row (all JPEGs under testdata/exif, repeated to --count), same run; the
first and third rows alternate photo by photo, so machine load hits both alike:

  persistent       workers.media.exif.read: the per-process `exiftool -stay_open` (its start included)
  persistent+job   the whole MetadataProcessJob.handle per photo: read, normalize, UPDATE the
                   images row in SQLite, one transaction each (what a consumer does minus AMQP)
  spawn/python     `exiftool -j -G -n -m FILE` started per photo (subprocess.run) + json.loads
  spawn/php        the same from PHP: exec() per photo + json_decode, as PHP exiftool wrappers do

Every photo's tags are checked equal between the persistent and per-photo runs. Single process.
Not a test; run it by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TESTDATA = Path(os.environ.get("PHOTO_TESTDATA", ROOT.parent / "shared" / "testdata"))
VOLATILE = {"File:FileAccessDate", "File:FileInodeChangeDate", "File:FileModifyDate"}

PHP_LOOP = r"""
$files = json_decode(stream_get_contents(STDIN), true);
$n = 0;
foreach ($files as $f) {
    $out = [];
    exec('exiftool -j -G -n -m ' . escapeshellarg($f), $out, $rc);
    $m = json_decode(implode("\n", $out), true);
    if (isset($m[0]['SourceFile'])) { $n++; }
}
echo $n;
"""


def photos(count: int) -> list[Path]:
    jpegs = sorted(p for p in (TESTDATA / "exif").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    return (jpegs * (count // len(jpegs) + 1))[:count]


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} photos/s  ({seconds * 1000 / n:6.2f} ms/photo)"


def spawn_read(f: Path) -> dict:
    out = subprocess.run(["exiftool", "-j", "-G", "-n", "-m", str(f)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]


def bench_interleaved(files: list[Path]) -> tuple[float, float, float]:
    """Persistent read and per-photo spawn of the same photo back to back, so both see the same
    machine load; returns (exiftool start-up, persistent total, spawn total) in seconds."""
    from workers.media import exif
    reader = exif.Reader()
    t0 = time.perf_counter()
    reader.read(files[0])                       # start-up (+ one read), charged once
    startup = time.perf_counter() - t0
    t_persist = t_spawn = 0.0
    for f in files:
        t0 = time.perf_counter()
        a = reader.read(f).tags
        t1 = time.perf_counter()
        b = spawn_read(f)
        t2 = time.perf_counter()
        t_persist, t_spawn = t_persist + (t1 - t0), t_spawn + (t2 - t1)
        strip = lambda d: {k: v for k, v in d.items() if k not in VOLATILE}   # noqa: E731
        assert strip(a) == strip(b), f           # same answers both ways
    reader.close()
    return startup, t_persist, t_spawn


def bench_job(files: list[Path], tmp: Path) -> float:
    import sqlalchemy as sa
    from workers import db
    from workers.jobs import Context, metadata
    from workers.schema import images
    from workers.settings import Settings
    url = f"sqlite:///{tmp / 'bench.db'}"
    engine = db.engine_for(url)
    db.migrate(engine)
    settings = Settings(storage_root=TESTDATA, database_url=url)
    with engine.begin() as conn:
        ids = [conn.execute(images.insert().values(path=str(f.relative_to(TESTDATA)))).inserted_primary_key[0]
               for f in files]
    metadata.exif.read(files[0])                # the consumer's exiftool is already up
    t0 = time.perf_counter()
    for image_id in ids:
        with engine.begin() as conn:
            metadata.handle(Context(settings=settings, db=conn, engine=engine, queue="metadata"),
                            {"image_id": image_id})
    elapsed = time.perf_counter() - t0
    with engine.connect() as conn:
        done = conn.execute(sa.select(sa.func.count()).where(images.c.metadata_at.isnot(None))).scalar()
    assert done == len(files), done
    return elapsed


def bench_spawn(files: list[Path]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    tags = {}
    for f in files:
        out = subprocess.run(["exiftool", "-j", "-G", "-n", "-m", str(f)], capture_output=True, check=True)
        tags[str(f)] = json.loads(out.stdout)[0]
    return time.perf_counter() - t0, tags


def bench_php(files: list[Path]) -> float | None:
    if not shutil.which("php"):
        return None
    t0 = time.perf_counter()
    out = subprocess.run(["php", "-r", PHP_LOOP], input=json.dumps([str(f) for f in files]),
                         capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    assert int(out.stdout) == len(files), out.stdout
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200, help="photos per row (>= 100)")
    args = ap.parse_args()
    files = photos(max(100, args.count))
    version = subprocess.run(["exiftool", "-ver"], capture_output=True, text=True).stdout.strip()
    print(f"{len(files)} photos ({len(set(files))} distinct JPEGs from {TESTDATA / 'exif'}), "
          f"exiftool {version}, cpus {os.cpu_count()}")

    startup, t_read, t_spawn = bench_interleaved(files)
    t_persist = startup + t_read
    with tempfile.TemporaryDirectory() as tmp:
        t_job = bench_job(files, Path(tmp))
    t_php = bench_php(files)

    n = len(files)
    print(f"{'persistent exiftool':26}{rate(n, t_persist)}  (start-up {startup * 1000:.0f} ms included)")
    print(f"{'persistent + job (SQLite)':26}{rate(n, t_job)}")
    print(f"{'exiftool per photo (py)':26}{rate(n, t_spawn)}")
    if t_php is not None:
        print(f"{'exiftool per photo (php)':26}{rate(n, t_php)}")
    print(f"speed-up persistent vs per-photo: {t_spawn / t_persist:.1f}x (python spawn)"
          + (f", {t_php / t_persist:.1f}x (php exec)" if t_php is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
