"""Benchmark: thumbnail job, ours (Pillow) vs PHP Imagick doing what Intervention Image v3 does.

    .venv/bin/python bench/thumbnails.py [--photos 6] [--repeat 3] [--megapixels 12]

Makes 8-12 MP photos at runtime in a temp dir (testdata JPEGs upscaled, saved as quality-90 JPEG
with their EXIF and ICC kept; one carries Orientation 6), then times, per photo and method
(cover 300x300, scale 1600x1600, contain 800x600, resize 400x400):

  ours        workers.jobs.thumbnails.render_files: header checks, JPEG draft decoding, EXIF
              orientation, LANCZOS, ICC->sRGB, JPEG q75 encode, atomic write
  ours/full   the same with draft decoding off (what DCT scaling buys)
  Δfull       mean |ours - ours/full| in grey levels, before encoding (q75 itself: ~3.5)
  imagick     one php process: readImage, Intervention's AlignRotationModifier (flop/rotate +
              setImageOrientation), the Imagick modifier (cropImage+scaleImage for cover,
              scaleImage (+extentImage on white) for the others), Intervention's JPEG encoder
              settings (white background, ALPHACHANNEL_REMOVE, quality 75), getImagesBlob, write.

The crop/scale numbers passed to PHP come from workers.imaging.plan (the v3 formulas); output
sizes of both sides are checked equal. Single-threaded on both sides (ImageMagick's thread limit
is printed). Not a test; run it by hand.
"""
from __future__ import annotations

import argparse
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
TESTDATA = Path(os.environ.get("PHOTO_TESTDATA", "/work/shared/testdata"))
SIZES = [("cover", 300, 300), ("scale", 1600, 1600), ("contain", 800, 600), ("resize", 400, 400)]
SOURCES = ["exif/jpg/gps/DSCN0010.jpg", "exif/jpg/mobile/jolla.jpg",
           "exif/jpg/orientation/landscape_6.jpg", "exif/jpg/gps/DSCN0029.jpg",
           "exif/jpg/gps/DSCN0042.jpg", "exif/jpg/orientation/portrait_1.jpg",
           "exif/jpg/gps/DSCN0025.jpg", "exif/jpg/gps/DSCN0038.jpg"]

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


def ours_round(photos, method, w, h, out_dir: Path, draft: bool = True) -> tuple[list, dict]:
    """One pass of render_files over the photos (draft=False: no DCT scaling)."""
    from workers import imaging
    from workers.jobs import thumbnails
    from workers.settings import Settings
    settings = Settings(storage_root=out_dir, database_url="sqlite://")
    size = thumbnails.Size(method, w, h)
    saved = imaging.draft_request
    if not draft:
        imaging.draft_request = lambda *a: None
    try:
        times, outs = [], {}
        for p in photos:
            t0, c0 = time.perf_counter(), time.process_time()
            outs[p.name] = thumbnails.render_files(p, [size], settings, out_dir / p.stem)[size.key]
            times.append(((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000))
        return times, outs
    finally:
        imaging.draft_request = saved


def imagick_round(photos, method, w, h, tmp: Path) -> tuple[list, dict, dict]:
    """One php process over the photos (plus one untimed warm-up job)."""
    from workers import imaging
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


def draft_delta(photos, method, w, h) -> float:
    """Mean |DCT-scaled render - full-decode render| in grey levels, before JPEG encoding."""
    import numpy as np
    from workers import imaging
    deltas = []
    for p in photos:
        a, b = imaging.open_source(p, 10**9), imaging.open_source(p, 10**9)
        plan = imaging.plan(method, a.width, a.height, w, h)
        ra = imaging.render(a, imaging.decode(a, imaging.draft_request(plan, a.image.size)), plan)
        rb = imaging.render(b, imaging.decode(b, None), plan)
        deltas.append(np.abs(np.asarray(ra, float) - np.asarray(rb, float)).mean())
    return statistics.mean(deltas)


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
        print(f"{len(photos)} photos ({', '.join(sizes)}), repeat {args.repeat}, JPEG q90 with EXIF")
        print(f"{'':<18}{'---- wall ms per photo (median) ----':>44}{'--- CPU ms per photo ---':>30}")
        print(f"{'method':<18}{'ours':>8}{'ours/full':>11}{'imagick':>10}{'ratio':>8}{'Δfull':>7}"
              f"{'ours':>10}{'imagick':>10}{'ratio':>8}")
        meta = None
        for method, w, h in SIZES:
            ours, full, php = [], [], []
            ours_round(photos[:1], method, w, h, tmp / "warm")
            for _ in range(args.repeat):     # interleaved, so load changes hit both sides alike
                t, our_out = ours_round(photos, method, w, h, tmp / "ours")
                ours += t
                full += ours_round(photos, method, w, h, tmp / "full", draft=False)[0]
                t, php_out, meta = imagick_round(photos, method, w, h, tmp)
                php += t
            for name in our_out:
                with Image.open(our_out[name]) as a, Image.open(php_out[name]) as b:
                    assert a.size == b.size, (name, method, a.size, b.size)
            (o, oc), (f, _), (i, ic) = ((statistics.median(x[0] for x in r), statistics.median(x[1] for x in r))
                                        for r in (ours, full, php))
            print(f"{method}-{w}x{h:<8}{o:>8.1f}{f:>11.1f}{i:>10.1f}{i / o:>7.1f}x"
                  f"{draft_delta(photos, method, w, h):>7.2f}{oc:>10.1f}{ic:>10.1f}{ic / oc:>7.1f}x")
        print(f"imagick: {meta['version']}, thread limit {meta['threads']}; ratio = imagick / ours; "
              f"output sizes identical on both sides;\nΔfull = mean grey-level difference of our "
              f"DCT-scaled render from a full decode, before encoding; CPU = user+sys of the process "
              f"(steadier than wall time on a loaded box); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
