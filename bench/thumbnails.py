"""Benchmark: thumbnail job, ours vs PHP Imagick doing what Intervention Image v3 does, and how
far our faster resample moves the pixels from today's (Pillow LANCZOS) output.

    .venv/bin/python bench/thumbnails.py [--photos 6] [--repeat 3] [--megapixels 12]
    (under `flock /work/bench.lock` on a shared machine)

Speed: makes 8-12 MP photos at runtime in a temp dir (testdata JPEGs upscaled, saved as
quality-90 JPEG with their EXIF and ICC kept; one carries Orientation 6 and a Generic RGB
profile), then times, per photo and method (cover 300x300, scale 1600x1600, contain 800x600,
resize 400x400):

  ours        workers.jobs.thumbnails.render_files: header checks, JPEG DCT-scaled decoding
              (simplejpeg, packed for libvips), EXIF orientation, Lanczos-3 (libvips where it
              lines up with Pillow's box, else Pillow), ICC->sRGB, JPEG q75 encode, atomic write
  today       the same with Pillow decoding and resampling (LANCZOS) everything, as before libvips
  imagick     one php process: readImage, Intervention's AlignRotationModifier (flop/rotate +
              setImageOrientation), the Imagick modifier (cropImage+scaleImage for cover,
              scaleImage (+extentImage on white) for the others), Intervention's JPEG encoder
              settings (white background, ALPHACHANNEL_REMOVE, quality 75), getImagesBlob, write.

Quality (before encoding, so the JPEG does not hide anything), on the same synthetic photos and
on the largest real photos of the test data at their native size (the synthetic ones are smooth
upscales, too kind to any resample):

  ours-today  ours against today's render: mean and max |difference| (grey levels), SSIM
  q75         the yardstick: today's render against its own JPEG q75 round trip
  full        distance from the ideal (a full decode, Pillow LANCZOS), today's and ours

The crop/scale numbers passed to PHP come from workers.media.imaging.plan (the v3 formulas); output
sizes of both sides are checked equal. Single-threaded on both sides (ImageMagick's thread limit
is printed; libvips is set to one thread by workers/media/resample.py). Not a test; run it by hand.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TESTDATA = Path(os.environ.get("PHOTO_TESTDATA", ROOT.parent / "shared" / "testdata"))
SIZES = [("cover", 300, 300), ("scale", 1600, 1600), ("contain", 800, 600), ("resize", 400, 400)]
SOURCES = ["exif/jpg/gps/DSCN0010.jpg", "exif/jpg/mobile/jolla.jpg",
           "exif/jpg/orientation/landscape_6.jpg", "exif/jpg/gps/DSCN0029.jpg",
           "exif/jpg/gps/DSCN0042.jpg", "exif/jpg/orientation/portrait_1.jpg",
           "exif/jpg/gps/DSCN0025.jpg", "exif/jpg/gps/DSCN0038.jpg"]
# Real photos at native size (6-11 MP; one portrait, one HEIC) for the quality table.
NATIVE = ["detect/immich_craft-beer.jpg", "detect/recognize_food_casey-lee.jpg",
          "exif/jpg/mobile/jolla.jpg", "detect/recognize_rome_107_0668.jpg",
          "detect/lychee_undefined-exif-tag.jpg", "exif/heic/IMG_5195.HEIC"]

PHP = r'''<?php
// Intervention Image v3 (Imagick driver) steps, timed per job. Input: JSON jobs on argv[1].
$jobs = json_decode(file_get_contents($argv[1]), true);
$out = [];
$cpu = [];
function cpu_ms() { $r = getrusage(); return ($r['ru_utime.tv_sec'] + $r['ru_stime.tv_sec']) * 1e3
                                            + ($r['ru_utime.tv_usec'] + $r['ru_stime.tv_usec']) / 1e3; }
foreach ($jobs as $j) {
    $t0 = hrtime(true);
    $c0 = cpu_ms();
    $im = new Imagick();
    $im->readImage($j['path']);
    switch ($im->getImageOrientation()) {            // AlignRotationModifier
        case Imagick::ORIENTATION_TOPRIGHT: $im->flopImage(); break;
        case Imagick::ORIENTATION_BOTTOMRIGHT: $im->rotateImage('#000', 180); break;
        case Imagick::ORIENTATION_BOTTOMLEFT: $im->rotateImage('#000', 180); $im->flopImage(); break;
        case Imagick::ORIENTATION_LEFTTOP: $im->rotateImage('#000', -270); $im->flopImage(); break;
        case Imagick::ORIENTATION_RIGHTTOP: $im->rotateImage('#000', 90); break;
        case Imagick::ORIENTATION_RIGHTBOTTOM: $im->rotateImage('#000', -90); $im->flopImage(); break;
        case Imagick::ORIENTATION_LEFTBOTTOM: $im->rotateImage('#000', -90); break;
    }
    $im->setImageOrientation(Imagick::ORIENTATION_TOPLEFT);
    [$cx, $cy, $cw, $ch] = $j['crop'];
    [$sw, $sh] = $j['scaled'];
    [$w, $h] = $j['canvas'];
    [$ox, $oy] = $j['offset'];
    if ($j['method'] === 'cover') {                  // CoverModifier
        $im->cropImage($cw, $ch, $cx, $cy);
        $im->scaleImage($sw, $sh);
        $im->setImagePage(0, 0, 0, 0);
    } else {                                         // Resize/Scale/ContainModifier
        $im->scaleImage($sw, $sh);
        if ($j['method'] === 'contain') {
            $im->setImageBackgroundColor(new ImagickPixel('#ffffff'));
            $im->extentImage($w, $h, -$ox, -$oy);
        }
    }
    $white = new ImagickPixel('#ffffff');            // JpegEncoder
    $im->setImageBackgroundColor($white);
    $im->setBackgroundColor($white);
    $im->setFormat('JPEG');
    $im->setImageFormat('JPEG');
    $im->setCompression(Imagick::COMPRESSION_JPEG);
    $im->setImageCompression(Imagick::COMPRESSION_JPEG);
    $im->setCompressionQuality(75);
    $im->setImageCompressionQuality(75);
    $im->setImageAlphaChannel(Imagick::ALPHACHANNEL_REMOVE);
    file_put_contents($j['out'], $im->getImagesBlob());
    $im->clear();
    $out[] = (hrtime(true) - $t0) / 1e6;
    $cpu[] = cpu_ms() - $c0;
}
echo json_encode(['ms' => $out, 'cpu' => $cpu, 'threads' => Imagick::getResourceLimit(Imagick::RESOURCETYPE_THREAD),
                  'version' => Imagick::getVersion()['versionString']]);
'''


def make_photos(tmp: Path, count: int, megapixels: float) -> list[Path]:
    from PIL import Image
    photos = []
    for i in range(count):
        name = SOURCES[i % len(SOURCES)]
        with Image.open(TESTDATA / name) as im:
            mp = megapixels - (i % 3) * 2 if megapixels >= 10 else megapixels   # 12, 10, 8 MP mix
            f = math.sqrt(mp * 1e6 / (im.width * im.height))
            big = im.convert("RGB").resize((round(im.width * f), round(im.height * f)), Image.BICUBIC)
            opts = {k: im.info[k] for k in ("exif", "icc_profile") if im.info.get(k)}
        path = tmp / f"photo{i:02d}.jpg"
        big.save(path, "JPEG", quality=90, **opts)
        photos.append(path)
    return photos


@contextlib.contextmanager
def pillow_only():
    """Today's pipeline: every JPEG decoded and every size resampled by Pillow (LANCZOS)."""
    from workers.media import imaging, resample
    saved = resample.vips_spans, imaging._decode_packed
    resample.vips_spans = lambda *a: None
    imaging._decode_packed = lambda *a: None
    try:
        yield
    finally:
        resample.vips_spans, imaging._decode_packed = saved


def ours_round(photos, method, w, h, out_dir: Path) -> tuple[list, dict]:
    """One pass of render_files over the photos: [(wall ms, CPU ms)], name -> written file."""
    from workers.jobs import thumbnails
    from workers.settings import Settings
    settings = Settings(storage_root=out_dir, database_url="sqlite://")
    size = thumbnails.Size(method, w, h)
    times, outs = [], {}
    for p in photos:
        t0, c0 = time.perf_counter(), time.process_time()
        outs[p.name] = thumbnails.render_files(p, [size], settings, out_dir / p.stem)[size.key]
        times.append(((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000))
    return times, outs


def imagick_round(photos, method, w, h, tmp: Path) -> tuple[list, dict, dict]:
    """One php process over the photos (plus one untimed warm-up job)."""
    from workers.media import imaging
    jobs, outs = [], {}
    for p in photos:
        src = imaging.open_source(p, 10**9)
        plan = imaging.plan(method, src.width, src.height, w, h)
        out = tmp / "php" / f"{p.stem}-{method}.jpg"
        out.parent.mkdir(exist_ok=True)
        outs[p.name] = out
        jobs.append({"path": str(p), "method": method, "crop": plan.crop, "scaled": plan.scaled,
                     "canvas": plan.canvas, "offset": plan.offset, "out": str(out)})
    jobs_file = tmp / f"jobs-{method}.json"
    jobs_file.write_text(json.dumps(jobs[:1] + jobs))
    script = tmp / "bench.php"
    script.write_text(PHP)
    res = json.loads(subprocess.run(["php", str(script), str(jobs_file)], check=True,
                                    capture_output=True, text=True).stdout)
    return list(zip(res["ms"][1:], res["cpu"][1:])), outs, res


def renders(path: Path, method, w, h) -> dict:
    """ours, today's and the ideal (full decode, Pillow) render of one photo, before encoding."""
    from workers.media import imaging

    def render(draft: bool):
        src = imaging.open_source(path, 10**9)
        with src.image:
            plan = imaging.plan(method, src.width, src.height, w, h)
            request = imaging.draft_request(plan, src.image.size) if draft else None
            return imaging.render(src, imaging.decode(src, request), plan)
    out = {"ours": render(True)}
    with pillow_only():
        out["today"], out["full"] = render(True), render(False)
    return out


def quality_rows(photos, label: str) -> list[str]:
    from tests.support.image_quality import difference, jpeg_noise
    rows = []
    for method, w, h in SIZES:
        diffs = {"ours-today": [], "q75": [], "full-today": [], "full-ours": []}
        for p in photos:
            r = renders(p, method, w, h)
            diffs["ours-today"].append(difference(r["today"], r["ours"]))
            diffs["q75"].append(jpeg_noise(r["today"]))
            diffs["full-today"].append(difference(r["full"], r["today"]))
            diffs["full-ours"].append(difference(r["full"], r["ours"]))
        cells = []
        for ds in diffs.values():      # mean of the means, worst max, worst SSIM
            cells.append(f"{statistics.mean(d.mean for d in ds):>6.2f}{max(d.max for d in ds):>5}"
                         f"{min(d.ssim for d in ds):>8.4f}")
        rows.append(f"{label:<10}{f'{method}-{w}x{h}':<18}" + "  |".join(cells))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--megapixels", type=float, default=12.0)
    args = ap.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="bench-thumbs-") as tmpdir:
        tmp = Path(tmpdir)
        photos = make_photos(tmp, args.photos, args.megapixels)
        sizes = []
        for p in photos:
            with Image.open(p) as im:
                sizes.append(f"{im.width}x{im.height}")
        load = os.getloadavg()[0]
        print(f"{len(photos)} photos ({', '.join(sizes)}), repeat {args.repeat}, JPEG q90 with EXIF")
        print(f"{'':<18}{'------ wall ms per photo (median) ------':>44}{'--- CPU ms per photo ---':>30}")
        print(f"{'method':<18}{'ours':>8}{'today':>8}{'imagick':>10}{'ratio':>8}{'today':>8}"
              f"{'ours':>10}{'imagick':>10}{'ratio':>8}")
        meta = None
        for method, w, h in SIZES:
            ours, today, php = [], [], []
            ours_round(photos[:1], method, w, h, tmp / "warm")
            for _ in range(args.repeat):     # interleaved, so load changes hit all sides alike
                t, our_out = ours_round(photos, method, w, h, tmp / "ours")
                ours += t
                with pillow_only():
                    today += ours_round(photos, method, w, h, tmp / "today")[0]
                t, php_out, meta = imagick_round(photos, method, w, h, tmp)
                php += t
            for name in our_out:
                with Image.open(our_out[name]) as a, Image.open(php_out[name]) as b:
                    assert a.size == b.size, (name, method, a.size, b.size)
            (o, oc), (t, _), (i, ic) = ((statistics.median(x[0] for x in r), statistics.median(x[1] for x in r))
                                        for r in (ours, today, php))
            print(f"{method}-{w}x{h:<8}{o:>8.1f}{t:>8.1f}{i:>10.1f}{i / o:>7.1f}x{i / t:>7.1f}x"
                  f"{oc:>10.1f}{ic:>10.1f}{ic / oc:>7.1f}x")
        load = max(load, os.getloadavg()[0])
        print(f"imagick: {meta['version']}, thread limit {meta['threads']}; ratio = imagick / ours "
              f"(the second 'today' column: imagick / today); output sizes identical on both sides;\n"
              f"CPU = user+sys of the process (steadier than wall time on a loaded box); "
              f"load average up to {load:.1f} on {os.cpu_count()} CPUs")
        print("\nquality before encoding, per method: mean |diff| (mean over photos), max |diff| and "
              "SSIM (worst photo)")
        print(f"{'photos':<10}{'method':<18}{'ours vs today':^19}|{'q75 (yardstick)':^21}|"
              f"{'full vs today':^21}|{'full vs ours':^21}")
        native = [TESTDATA / n for n in NATIVE if (TESTDATA / n).exists()]
        for line in quality_rows(photos, "synthetic") + quality_rows(native, f"native{len(native)}"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
