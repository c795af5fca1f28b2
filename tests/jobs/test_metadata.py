"""Metadata job with the real exiftool and real MariaDB/SQLite: every shared test file, known
values (checked against exiftool's own output), hostile input, the per-process exiftool's
restarts, and (once the runtime exists) PHP -> RabbitMQ -> `python -m workers consume`."""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from workers import db
from workers.media import exif
from workers.jobs import Context, FollowUp, JobFailed
from workers.jobs import metadata
from workers.schema import images
from workers.settings import Settings

EXIFTOOL = shutil.which("exiftool") or "/usr/bin/exiftool"
GEO = "App\\Jobs\\GeolocationProcessJob"
pytestmark = pytest.mark.skipif(not os.path.exists(EXIFTOOL), reason="exiftool missing")


# --- helpers ------------------------------------------------------------------------------------

def add_image(url: str, rel: str) -> int:
    with db.engine_for(url).begin() as conn:
        return conn.execute(images.insert().values(path=rel, created_at=db.now())).inserted_primary_key[0]


def run_job(url: str, root: Path, data: dict):
    """handle() the way the runtime runs it: one transaction, committed after it returns."""
    engine = db.engine_for(url)
    settings = Settings(storage_root=root, database_url=url)
    with engine.begin() as conn:
        ctx = Context(settings=settings, db=conn, engine=engine, queue="metadata")
        return metadata.handle(ctx, data)


def get_row(url: str, image_id: int):
    with db.engine_for(url).connect() as conn:
        return conn.execute(sa.select(images).where(images.c.id == image_id)).mappings().one()


def process(url: str, root: Path, rel: str):
    """Insert an image row for root/rel, run the job; (row, follow-ups)."""
    image_id = add_image(url, rel)
    follow = run_job(url, root, {"image_id": image_id})
    return get_row(url, image_id), follow, image_id


def exiftool_says(path: Path, fmt: str) -> str:
    """exiftool's own answer, one process, for comparison."""
    return subprocess.run([EXIFTOOL, "-n", "-p", fmt, str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def all_testdata_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "exif").rglob("*") if p.is_file())


def exif_json(row) -> dict:
    value = row["exif"]
    return json.loads(value) if isinstance(value, str) else value


# --- every shared file ----------------------------------------------------------------------------

def test_every_testdata_file_has_a_clear_outcome(any_db_url, shared_testdata):
    files = all_testdata_files(shared_testdata)
    assert any("invalid/" in f for f in files) and any(f.endswith(".HEIC") for f in files)
    with_follow_up = set()
    for rel in files:
        row, follow, image_id = process(any_db_url, shared_testdata, rel)
        assert row["metadata_status"] in ("ok", "no_metadata"), rel
        assert row["metadata_at"] is not None and exif_json(row)["File:FileName"] == Path(rel).name
        if follow:
            assert follow == [FollowUp(GEO, {"image_id": image_id}, "geolocation")], rel
            with_follow_up.add(rel)
    gps = {f for f in files if "/gps/" in f} | {"exif/heic/IMG_5195.HEIC"}
    assert with_follow_up == gps


@pytest.mark.parametrize("rel", ['exif/tiff/"quoted dir"/empty.tiff"', "exif/tiff/$(touch x); ü/empty.tiff"])
def test_empty_tiff_in_odd_directory(sqlite_url, tmp_path, rel):
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).touch()
    row, follow, _ = process(sqlite_url, tmp_path, rel)
    assert (row["metadata_status"], row["metadata_error"], follow) == ("no_metadata", "File is empty", [])


# --- known values ---------------------------------------------------------------------------------

def test_gps_photos_signed_like_exiftool(any_db_url, shared_testdata):
    photos = sorted((shared_testdata / "exif/jpg/gps").glob("*.jpg")) + [shared_testdata / "exif/heic/IMG_5195.HEIC"]
    for photo in photos:
        row, follow, image_id = process(any_db_url, shared_testdata, str(photo.relative_to(shared_testdata)))
        lat, lon = map(float, exiftool_says(photo, "$GPSLatitude $GPSLongitude").split())
        assert (row["latitude"], row["longitude"]) == pytest.approx((lat, lon), abs=1e-12)
        assert follow == [FollowUp(GEO, {"image_id": image_id}, "geolocation")]
    # West longitude comes out negative (EXIF stores 94.28... with Ref W).
    assert (row["latitude"], row["longitude"]) == pytest.approx((39.0513444444444, -94.2887722222222))
    assert row["altitude"] == pytest.approx(260.5606383)


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_orientation_photos(sqlite_url, shared_testdata, kind):
    for n in range(1, 9):
        row, follow, _ = process(sqlite_url, shared_testdata, f"exif/jpg/orientation/{kind}_{n}.jpg")
        assert row["orientation"] == n and follow == []
        # Stored pixel size: rotated (5-8) files hold the other shape.
        upright = (600, 450) if kind == "landscape" else (450, 600)
        assert (row["width"], row["height"]) == (upright if n <= 4 else upright[::-1])


def test_canon_40d(any_db_url, shared_testdata):
    row, follow, _ = process(any_db_url, shared_testdata, "exif/jpg/Canon_40D.jpg")
    assert (row["camera_make"], row["camera_model"]) == ("Canon", "Canon EOS 40D")
    assert row["taken_at"] == dt.datetime(2008, 5, 30, 15, 56, 1)
    assert (row["width"], row["height"], row["orientation"]) == (100, 68, 1)
    assert row["latitude"] is None and row["metadata_status"] == "ok"
    assert follow == []          # GPSVersionID alone is not GPS
    assert exif_json(row)["EXIF:Model"] == "Canon EOS 40D"


def test_other_cameras(sqlite_url, shared_testdata):
    row, *_ = process(sqlite_url, shared_testdata, "exif/jpg/Nikon_D70.jpg")
    assert (row["camera_make"], row["lens"], row["taken_at"]) == (
        "NIKON CORPORATION", "100.0 mm f/2.8", dt.datetime(2008, 3, 15, 9, 52, 1))
    row, *_ = process(sqlite_url, shared_testdata, "exif/heic/IMG_5195.HEIC")
    assert (row["camera_model"], row["taken_at"], row["width"], row["height"], row["orientation"]) == (
        "iPhone 11 Pro Max", dt.datetime(2021, 4, 11, 15, 47, 53), 2566, 3313, 1)
    assert row["lens"].startswith("iPhone 11 Pro Max back triple camera")
    # XMP-only files ("invalid" EXIF) still get a date from XMP.
    row, *_ = process(sqlite_url, shared_testdata, "exif/jpg/invalid/image01551.jpg")
    assert row["taken_at"] == dt.datetime(2011, 9, 23, 12, 43, 3) and row["camera_make"] is None


# --- crafted files (written with exiftool into a temp storage root) -------------------------------

def crafted(tmp_path: Path, src: Path, name: str, *args: str) -> str:
    dest = tmp_path / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    if args:
        subprocess.run([EXIFTOOL, "-q", "-q", "-overwrite_original", *args, str(dest)], check=True)
    return str(dest.relative_to(tmp_path))


def test_south_west_below_sea_level(any_db_url, shared_testdata, tmp_path):
    rel = crafted(tmp_path, shared_testdata / "exif/jpg/Canon_40D.jpg", "sw.jpg",
                  "-GPSLatitude=33.8688", "-GPSLatitudeRef=S", "-GPSLongitude=70.5",
                  "-GPSLongitudeRef=W", "-GPSAltitude=50", "-GPSAltitudeRef#=1")
    row, follow, image_id = process(any_db_url, tmp_path, rel)
    assert (row["latitude"], row["longitude"], row["altitude"]) == (-33.8688, -70.5, -50)
    assert exif_json(row)["EXIF:GPSLatitude"] == 33.8688       # unsigned in EXIF, signed column
    assert follow == [FollowUp(GEO, {"image_id": image_id}, "geolocation")]


def test_xmp_only_gps(sqlite_url, shared_testdata, tmp_path):
    rel = crafted(tmp_path, shared_testdata / "exif/jpg/orientation/landscape_1.jpg", "xmp.jpg",
                  "-XMP:GPSLatitude=-12.5", "-XMP:GPSLongitude=-45.25", "-XMP:GPSAltitude=30",
                  "-XMP:GPSAltitudeRef#=1")
    row, follow, _ = process(sqlite_url, tmp_path, rel)
    assert (row["latitude"], row["longitude"], row["altitude"]) == (-12.5, -45.25, -30)
    assert len(follow) == 1      # via GPSPosition (exiftool's composite)


def test_zero_gps_is_no_gps(any_db_url, shared_testdata, tmp_path):
    rel = crafted(tmp_path, shared_testdata / "exif/jpg/Canon_40D.jpg", "zero.jpg",
                  "-GPSLatitude=0", "-GPSLatitudeRef=N", "-GPSLongitude=0", "-GPSLongitudeRef=E")
    row, follow, _ = process(any_db_url, tmp_path, rel)
    assert (row["latitude"], row["longitude"], follow) == (None, None, [])
    assert row["metadata_status"] == "ok"


def test_invalid_dates_fall_through(sqlite_url, shared_testdata, tmp_path):
    rel = crafted(tmp_path, shared_testdata / "exif/jpg/Canon_40D.jpg", "dates.jpg",
                  "-DateTimeOriginal#=0000:00:00 00:00:00", "-CreateDate=2001:02:03 04:05:06")
    row, *_ = process(sqlite_url, tmp_path, rel)
    assert row["taken_at"] == dt.datetime(2001, 2, 3, 4, 5, 6)
    rel = crafted(tmp_path, shared_testdata / "exif/jpg/Canon_40D.jpg", "nodate.jpg",
                  "-DateTimeOriginal#=0000:00:00 00:00:00", "-CreateDate#=    :  :     :  :  ")
    row, *_ = process(sqlite_url, tmp_path, rel)
    assert row["taken_at"] is None


def test_huge_tag_values_are_cut_but_stored(any_db_url, shared_testdata, tmp_path):
    (tmp_path / "desc.txt").write_text("x" * 200_000)
    rel = crafted(tmp_path, shared_testdata / "exif/jpg/Canon_40D.jpg", "big.jpg",
                  f"-XMP:Description<={tmp_path / 'desc.txt'}", f"-Make={'M' * 300}")
    row, *_ = process(any_db_url, tmp_path, rel)
    desc = exif_json(row)["XMP:Description"]
    assert desc.startswith("x" * metadata.MAX_STRING) and desc.endswith("(200000 characters, cut)")
    assert row["camera_make"] == "M" * 255


def test_video(any_db_url, tmp_path):
    """A minimal MP4 (ftyp + moov/mvhd) with iPhone-style Keys metadata written by exiftool."""
    import struct

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload
    mvhd = box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, 5000) + struct.pack(">IH", 0x10000, 0x100)
               + bytes(10) + struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000) + bytes(24)
               + struct.pack(">I", 2))
    (tmp_path / "plain.mp4").write_bytes(box(b"ftyp", b"isom" + bytes(4) + b"isommp41")
                                         + box(b"moov", mvhd) + box(b"mdat", bytes(16)))
    row, follow, _ = process(any_db_url, tmp_path, "plain.mp4")
    assert (row["metadata_status"], row["taken_at"], follow) == ("no_metadata", None, [])   # zero date
    shutil.copy(tmp_path / "plain.mp4", tmp_path / "phone.mp4")
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-Keys:GPSCoordinates=-33.5, 151.25, 12",
                    "-Keys:CreationDate=2020:01:02 03:04:05+02:00", "-Keys:Make=Apple",
                    "-Keys:Model=iPhone X", str(tmp_path / "phone.mp4")], check=True)
    row, follow, image_id = process(any_db_url, tmp_path, "phone.mp4")
    assert (row["metadata_status"], row["taken_at"], row["camera_model"]) == (
        "ok", dt.datetime(2020, 1, 2, 3, 4, 5), "iPhone X")
    assert (row["latitude"], row["longitude"], row["altitude"]) == (-33.5, 151.25, 12)
    assert follow == [FollowUp(GEO, {"image_id": image_id}, "geolocation")]


def test_heic_orientation_comes_from_irot(sqlite_url, tmp_path):
    from PIL import Image
    import pillow_heif
    pillow_heif.register_heif_opener()
    exif_block = Image.Exif()
    exif_block[0x0112] = 6
    Image.new("RGB", (64, 32)).save(tmp_path / "rot.heic", exif=exif_block.tobytes())
    row, *_ = process(sqlite_url, tmp_path, "rot.heic")
    assert exif_json(row)["QuickTime:Rotation"] == 270 and row["orientation"] == 6


# --- broken and hostile input ---------------------------------------------------------------------

def test_bad_files_are_stored_as_no_metadata(any_db_url, shared_testdata, tmp_path):
    canon = (shared_testdata / "exif/jpg/Canon_40D.jpg").read_bytes()
    nikon = (shared_testdata / "exif/jpg/gps/DSCN0010.jpg").read_bytes()
    files = {
        "empty.jpg": b"",
        "notes.txt": b"just some text\n",
        "text.jpg": b"this is not a jpeg at all\n" * 10,
        "garbage.jpg": os.urandom(4096),
        "soi-only.jpg": b"\xff\xd8",
        "truncated-in-exif.jpg": canon[:300],
        "truncated-after-exif.jpg": nikon[: len(nikon) // 2],
        "zeros.jpg": bytes(100_000),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        row, follow, _ = process(any_db_url, tmp_path, name)
        assert follow == [] or name == "truncated-after-exif.jpg", name
        assert row["metadata_status"] in ("ok", "no_metadata") and row["metadata_at"] is not None, name
        outcomes = (name, row["metadata_status"], row["metadata_error"])
        if name in ("empty.jpg", "garbage.jpg", "zeros.jpg", "soi-only.jpg", "truncated-in-exif.jpg"):
            assert row["metadata_status"] == "no_metadata" and row["metadata_error"], outcomes
        if name == "empty.jpg":
            assert row["metadata_error"] == "File is empty"
        if name == "truncated-after-exif.jpg":       # the EXIF was complete: still read (-m: quietly)
            assert (row["camera_model"], row["metadata_status"]) == ("COOLPIX P6000", "ok")
            assert row["latitude"] is not None and follow == [] or len(follow) == 1
        if name == "notes.txt":
            assert row["metadata_status"] == "no_metadata" and exif_json(row)["File:FileType"] == "TXT"


def test_corrupted_jpeg_keeps_its_exif(sqlite_url, shared_testdata):
    row, *_ = process(sqlite_url, shared_testdata, "exif/jpg/corrupted.jpg")
    assert row["camera_make"] == "OLYMPUS IMAGING CORP." and row["metadata_status"] == "ok"


@pytest.mark.parametrize("rel", ["missing.jpg", "../outside.jpg", "/etc/passwd", "sub", "sub/../../x.jpg",
                                 "fifo.jpg", "link-out.jpg", "nul\x00.jpg", ""])
def test_unreadable_paths_fail_the_job(sqlite_url, tmp_path, rel):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(b"\xff\xd8\xff")
    os.mkfifo(root / "fifo.jpg")
    (root / "link-out.jpg").symlink_to(tmp_path / "outside.jpg")
    image_id = add_image(sqlite_url, rel)
    with pytest.raises(JobFailed) as err:
        run_job(sqlite_url, root, {"image_id": image_id})
    assert err.value.args[0]
    assert get_row(sqlite_url, image_id)["metadata_at"] is None        # row untouched


def test_bad_job_data(sqlite_url, tmp_path):
    for data in ({}, {"image_id": "x"}, {"image_id": 999999}, [], {"image_id": -1}):
        with pytest.raises(JobFailed):
            run_job(sqlite_url, tmp_path, data)


def test_unusual_file_names(any_db_url, shared_testdata, tmp_path):
    src = shared_testdata / "exif/jpg/Canon_40D.jpg"
    for name in ["trailing space .jpg", " leading.jpg", "new\nline.jpg", "tab\t.jpg", "cr\r",
                 "dollar$HOME\"quote.jpg", "Crémieux.jpg", "-n.jpg", "#hash.jpg", "back\\slash\\n.jpg",
                 "-execute", "sub dir/@file.jpg"]:
        rel = crafted(tmp_path, src, name)
        row, *_ = process(any_db_url, tmp_path, rel)
        assert exif_json(row)["File:FileName"] == Path(name).name, name
        assert row["camera_model"] == "Canon EOS 40D", name
    # The one combination exiftool's C-string argument lines cannot carry: a clear failure.
    rel = crafted(tmp_path, src, "new\nline$.jpg")
    with pytest.raises(JobFailed, match="cannot be given"):
        run_job(any_db_url, tmp_path, {"image_id": add_image(any_db_url, rel)})


def test_non_utf8_file_name(shared_testdata, tmp_path):
    # images.path is UTF-8 text, so only exif.read can be handed such a name.
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    shutil.copy(shared_testdata / "exif/jpg/Canon_40D.jpg", raw)
    result = exif.read(os.fsdecode(raw))
    assert result.status == 0 and result.tags["EXIF:Model"] == "Canon EOS 40D"


# --- idempotency ----------------------------------------------------------------------------------

def test_rerun_updates_the_same_row(any_db_url, shared_testdata, tmp_path):
    shutil.copy(shared_testdata / "exif/jpg/gps/DSCN0010.jpg", tmp_path / "p.jpg")
    image_id = add_image(any_db_url, "p.jpg")
    first = run_job(any_db_url, tmp_path, {"image_id": image_id})
    again = run_job(any_db_url, tmp_path, {"image_id": image_id})
    assert first == again and len(first) == 1
    row = get_row(any_db_url, image_id)
    assert row["latitude"] == pytest.approx(43.4674483333333)
    # The file is replaced by one without GPS: stale columns are cleared, not kept.
    shutil.copy(shared_testdata / "exif/jpg/orientation/portrait_6.jpg", tmp_path / "p.jpg")
    assert run_job(any_db_url, tmp_path, {"image_id": image_id}) == []
    row = get_row(any_db_url, image_id)
    assert (row["latitude"], row["camera_make"], row["taken_at"], row["orientation"]) == (None, None, None, 6)
    with db.engine_for(any_db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(images)).scalar() == 1


# --- the per-process exiftool ---------------------------------------------------------------------

def test_one_exiftool_restarted_when_killed(sqlite_url, shared_testdata):
    reader = exif.reader()
    process(sqlite_url, shared_testdata, "exif/jpg/Canon_40D.jpg")
    pid, starts = reader.pid, reader.starts
    process(sqlite_url, shared_testdata, "exif/jpg/Nikon_D70.jpg")
    assert (reader.pid, reader.starts) == (pid, starts)            # same process for every job
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    row, *_ = process(sqlite_url, shared_testdata, "exif/jpg/Pentax_K10D.jpg")
    assert row["camera_model"] == "PENTAX K10D"
    assert reader.pid not in (None, pid) and reader.starts == starts + 1


def test_exiftool_killed_mid_command_is_retried(shared_testdata):
    """exiftool dies while a command is in flight (stopped, then killed): EOF, which PyExifTool's
    own reader would spin on forever, makes us restart it and run the command again."""
    reader = exif.reader()
    reader.read(shared_testdata / "exif/jpg/Canon_40D.jpg")
    pid, starts = reader.pid, reader.starts
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    result = reader.read(shared_testdata / "exif/jpg/Nikon_D70.jpg", timeout=20)
    assert result.tags["EXIF:Model"] == "NIKON D70"
    assert reader.pid not in (None, pid) and reader.starts == starts + 1


def test_exiftool_that_does_not_answer_times_out(shared_testdata):
    reader = exif.reader()
    reader.read(shared_testdata / "exif/jpg/Canon_40D.jpg")
    pid = reader.pid
    os.kill(pid, signal.SIGSTOP)                                   # hangs like a stuck NFS read
    t0 = time.monotonic()
    with pytest.raises(exif.ExifToolTimeout):
        reader.read(shared_testdata / "exif/jpg/Nikon_D70.jpg", timeout=1)
    assert time.monotonic() - t0 < 5
    assert reader.pid is None                                      # the hung one was killed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert reader.read(shared_testdata / "exif/jpg/Nikon_D70.jpg").tags["EXIF:Model"] == "NIKON D70"


def test_reader_raises_on_eof():
    r, w = os.pipe()
    os.write(w, b"partial")
    os.close(w)
    with pytest.raises(exif.ExifToolDied):
        exif._read_until(r, b"{ready}", 4096)
    os.close(r)


def _child_pid(q):
    exif.read("/etc/hostname")
    q.put(exif.reader().pid)


def test_forked_worker_starts_its_own_exiftool():
    exif.read("/etc/hostname")
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_pid, args=(q,))
    p.start()
    child = q.get(timeout=30)
    p.join(30)
    assert child not in (None, exif.reader().pid)
    assert exif.read("/etc/hostname").status == 0                  # parent's still works


# --- pure normalization ---------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("2008:05:30 15:56:01", dt.datetime(2008, 5, 30, 15, 56, 1)),
    ("2021:04:11 15:47:53.054-05:00", dt.datetime(2021, 4, 11, 15, 47, 53)),
    ("2011:09:23 12:43:03Z", dt.datetime(2011, 9, 23, 12, 43, 3)),
    ("2014-09-21T16:00:56.000000+02:00", dt.datetime(2014, 9, 21, 16, 0, 56)),
    ("2005:12:17", dt.datetime(2005, 12, 17)),
    ("0000:00:00 00:00:00", None), ("    :  :     :  :  ", None), ("2008:13:01 00:00:00", None),
    ("2008:02:30 10:00:00", None), ("1000:01:01 00:00:00", None), ("", None), (20080530, None),
    ("2008:05:30 25:00:00", None),
])
def test_parse_date(value, expected):
    assert metadata.parse_date(value) == expected


def test_gps_from_exif_refs_without_composite():
    base = {"File:FileType": "JPEG"}
    cols = metadata.normalize({**base, "EXIF:GPSLatitude": 33.5, "EXIF:GPSLatitudeRef": "S",
                               "EXIF:GPSLongitude": 70.25, "EXIF:GPSLongitudeRef": "W",
                               "EXIF:GPSAltitude": 5, "EXIF:GPSAltitudeRef": 1})
    assert (cols["latitude"], cols["longitude"], cols["altitude"]) == (-33.5, -70.25, -5)
    # An already-negative value with its Ref is not flipped back.
    cols = metadata.normalize({**base, "EXIF:GPSLatitude": -33.5, "EXIF:GPSLatitudeRef": "S",
                               "EXIF:GPSLongitude": 70.25, "EXIF:GPSLongitudeRef": "E"})
    assert (cols["latitude"], cols["longitude"]) == (-33.5, 70.25)
    # GPSPosition alone (the spec's second condition).
    tags = {**base, "Composite:GPSPosition": "-1.5 2.25"}
    assert metadata.has_gps(tags) and metadata.position(tags) == (-1.5, 2.25)
    # Out of range, junk, (0, 0).
    for lat, lon in ((91, 0), (10, 181), ("undef", 3), (0, 0)):
        tags = {**base, "Composite:GPSLatitude": lat, "Composite:GPSLongitude": lon}
        assert metadata.has_gps(tags) and metadata.position(tags) == (None, None)
    assert not metadata.has_gps({**base, "EXIF:GPSLatitude": 1, "EXIF:GPSVersionID": "2 2 0 0"})


def test_lens_ignores_numeric_lens_ids():
    assert metadata.lens({"Composite:LensID": 137}) is None
    assert metadata.lens({"Composite:LensID": "137 1", "XMP:Lens": "EF 50mm f/1.8"}) == "EF 50mm f/1.8"
    assert metadata.lens({"EXIF:LensModel": "RF24-105mm F4 L IS USM", "Composite:LensID": "x"}) \
        == "RF24-105mm F4 L IS USM"


def test_numbers_in_strings_and_nuls():
    cols = metadata.normalize({"EXIF:Make": "  Canon\x00\x00 ", "EXIF:Model": 5, "EXIF:Orientation": 9})
    assert (cols["camera_make"], cols["camera_model"], cols["orientation"]) == ("Canon", "5", None)


def test_exiftool_json_nonfinite_numbers_stay_text():
    tags = exif.parse_json(b'[{"A": 1e999, "B": 1.5, "C": "\xff"}]')
    assert tags == {"A": "1e999", "B": 1.5, "C": "\ufffd"}
    json.dumps(tags, allow_nan=False)


# --- end to end: PHP publishes, `python -m workers consume` runs, Geolocation chained ------------

PHP_AMQP = Path(__file__).resolve().parents[1] / "runtime" / "php" / "amqp.php"


def php_push(amqp_url: str, class_name: str, data: dict, queue: str) -> bytes:
    out = subprocess.run(["php", str(PHP_AMQP), "push", amqp_url, queue],
                         input=json.dumps({"class": class_name, "data": data}),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.encode()


@pytest.mark.skipif(not (shutil.which("php") and PHP_AMQP.exists()), reason="php or runtime helpers missing")
def test_end_to_end_php_to_consumer(mysql_url, rabbitmq, shared_testdata, tmp_path):
    from tests.support.consumers import consumer_env, drain, start_consumer, stop_consumer, wait_for
    from workers.laravel import decode_payload

    files = [f for f in all_testdata_files(shared_testdata)]
    ids = {add_image(mysql_url, rel): rel for rel in files}
    env = consumer_env(mysql_url, rabbitmq.url, storage_root=str(shared_testdata))
    proc = start_consumer("metadata", env, tmp_path / "logs")      # declares the queue
    try:
        for image_id in ids:
            php_push(rabbitmq.url, "App\\Jobs\\MetadataProcessJob", {"image_id": image_id}, "metadata")
        engine = db.engine_for(mysql_url)

        def done() -> bool:
            with engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(images)
                                    .where(images.c.metadata_at.isnot(None))).scalar() == len(ids)
        wait_for(done, 120, "all images processed", proc)
    finally:
        assert stop_consumer(proc) == 0
    geo = {}
    for headers, body in drain(rabbitmq.url, "geolocation"):
        job = decode_payload(body, headers)
        assert job.class_name == GEO and set(job.data) == {"image_id"}
        geo[job.data["image_id"]] = ids[job.data["image_id"]]
    expected = {i for i, rel in ids.items() if "/gps/" in rel or rel.endswith("IMG_5195.HEIC")}
    assert set(geo) == expected and len(expected) == 10
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(images))}
        # A dedup row per chained Geolocation job (deleted by the geolocation worker).
        assert conn.execute(sa.text("SELECT COUNT(*) FROM queues")).scalar() == len(expected)
    for image_id, rel in ids.items():
        assert rows[image_id].metadata_status in ("ok", "no_metadata"), rel
        if image_id in expected:
            assert rows[image_id].latitude is not None
    canon = next(r for i, r in rows.items() if ids[i].endswith("Canon_40D.jpg"))
    assert (canon.camera_model, canon.taken_at) == ("Canon EOS 40D", dt.datetime(2008, 5, 30, 15, 56, 1))
