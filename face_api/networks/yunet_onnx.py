"""YuNet, the same network and weights as the `yuface` wheel's libfacedetection, run by onnxruntime.

libfacedetection computes YuNet with its own AVX2 kernels (a dot product per output value, ended
by horizontal adds): most of our CPU per photo (the README has the figures). This
module reads the weights at run time from the installed yuface package (libfacedetection.so
exports them as data symbols, and its table `param_pConvInfo` says each layer's shape), builds the
network as an ONNX graph in memory and runs it with onnxruntime; the pre-processing (padding) and
post-processing (anchors, decoding, score, NMS, integer output) are numpy copies of
libfacedetection's. `run(rgb)` returns the rows yuface's `detect` returns for the same image
(score*100, x, y, w, h, 10 landmark coordinates, as int16); `Detector.check_against` compares the
two and refuses to be used if they differ.

libfacedetection v3 (2023, `src/facedetectcnn-model.cpp`, `facedetectcnn.cpp`), as read here:
- the BGR image is zero-padded at the bottom and right to multiples of 32; raw 0..255 values;
- the first layer is a 3x3 stride-2 convolution (pad 1) stored as a 1x1 over 32 channels: the
  27 values of each 3x3x3 patch in (row, column, B/G/R) order, then 5 zeros; ReLU;
- every other layer is a 1x1 convolution (no ReLU) followed by a 3x3 depth-wise convolution
  (pad 1, ReLU except in the heads); 2x2 stride-2 max pools;
- backbone -> three feature maps at strides 8, 16, 32; the neck adds the nearest-upsampled
  coarser map to the finer one after each lateral block (top-down);
- heads per level: cls (1), bbox (4), obj (1), kps (10) channels; anchors at (col, row) * stride
  with no offset; box centre = d * stride + anchor, size = exp(d) * stride; landmarks
  d * stride + anchor; score = sqrt(sigmoid(cls) * sigmoid(obj)) >= 0.2, stable sort, the best
  1000, greedy NMS keeping boxes whose IoU with every kept one is <= 0.45, the best 512;
- output: int16 rows, values truncated toward zero (score * 100, x, y, w, h, landmarks).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ..boxes import xywh_iou
from ..errors import ModelFormatError
from .onnxgraph import Graph, session

PAD = 32                    # input sides are padded to multiples of this
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.2       # libfacedetection's detection_output arguments
NMS_THRESHOLD = 0.45
TOP_K = 1000
KEEP_TOP_K = 512
HEAD_CHANNELS = (("cls", 1), ("bbox", 4), ("obj", 1), ("kps", 10))

# param_pConvInfo's 53 entries, in order: (symbol prefix, depth-wise?) pairs of point-wise then
# depth-wise layers, except the first (a single point-wise layer over the 3x3 patches).
_BACKBONE = ["backbone__model0_pw", "backbone__model0_dp_pw", "backbone__model0_dp_dw"] + [
    f"backbone__model{m}_dp{d}_{kind}" for m in range(1, 6) for d in (1, 2) for kind in ("pw", "dw")]
_NECK = [f"neck__lateral_convs__{i}_{kind}" for i in range(3) for kind in ("pw", "dw")]
_HEADS = [f"bbox_head__multi_level_{head}__{level}_{kind}"
          for head in ("cls", "bbox", "obj", "kps") for level in range(3) for kind in ("pw", "dw")]
LAYER_NAMES = _BACKBONE + _NECK + _HEADS   # 23 + 6 + 24 = 53


class ModelFormatError(ValueError):
    """The installed libfacedetection is not the YuNet this module knows how to rebuild."""


class _ConvInfo(ctypes.Structure):
    """libfacedetection's ConvInfoStruct."""
    _fields_ = [("channels", ctypes.c_int), ("num_filters", ctypes.c_int),
                ("is_depthwise", ctypes.c_bool), ("is_pointwise", ctypes.c_bool),
                ("with_relu", ctypes.c_bool),
                ("weights", ctypes.POINTER(ctypes.c_float)),
                ("biases", ctypes.POINTER(ctypes.c_float))]


def library_path() -> str:
    import yuface

    return os.path.join(os.path.dirname(yuface.__file__), "libfacedetection.so")


def read_layers(path: str | None = None) -> dict[str, dict]:
    """name -> {"weight", "bias", "depthwise", "relu"} from libfacedetection.so's exported data.

    Point-wise weights come out as (filters, channels), depth-wise ones as (channels, 3, 3)."""
    lib = ctypes.CDLL(path or library_path())
    table = (_ConvInfo * len(LAYER_NAMES)).in_dll(lib, "param_pConvInfo")
    layers = {}
    for name, info in zip(LAYER_NAMES, table):
        depthwise = name.endswith("_dw")
        if (info.is_depthwise, info.is_pointwise) != (depthwise, not depthwise):
            raise ModelFormatError(f"{name}: unexpected layer kind")
        c, f = info.channels, info.num_filters
        count = 9 * c if depthwise else f * c
        for suffix, pointer, n in (("weight", info.weights, count), ("bias", info.biases, f)):
            named = (ctypes.c_float * n).in_dll(lib, f"{name}_{suffix}")
            if ctypes.addressof(named) != ctypes.cast(pointer, ctypes.c_void_p).value:
                raise ModelFormatError(f"param_pConvInfo's {name} is not {name}_{suffix}")
        weight = np.ctypeslib.as_array(info.weights, (count,)).astype(np.float32)
        bias = np.ctypeslib.as_array(info.biases, (f,)).astype(np.float32)
        if depthwise:
            if c != f:
                raise ModelFormatError(f"{name}: depth-wise layer changes the channel count")
            weight = np.ascontiguousarray(weight.reshape(9, c).T.reshape(c, 3, 3))
        else:
            weight = weight.reshape(f, c)
        layers[name] = {"weight": weight, "bias": bias, "depthwise": depthwise,
                        "relu": bool(info.with_relu)}
    first = layers[LAYER_NAMES[0]]["weight"]
    if first.shape != (16, 32) or np.any(first[:, 27:]):
        raise ModelFormatError("the first layer is not a 3x3x3 patch convolution")
    return layers


# ------------------------------------------------------------------ the ONNX graph

def build_onnx(layers: dict[str, dict]) -> bytes:
    """YuNet as a serialized ONNX model: input "image" (1, 3, H, W) float32 B, G, R planes, 0..255,
    H and W multiples of 32; outputs "level8", "level16", "level32" (1, 16, H/s, W/s): the heads'
    cls, bbox (4), obj, kps (10) channels before any activation."""
    g = Graph()
    node = g.node

    def conv(x: str, weight: np.ndarray, bias: np.ndarray, relu: bool, **attrs) -> str:
        x = node("Conv", [x, g.const(weight.astype(np.float32)), g.const(bias.astype(np.float32))],
                 **attrs)
        return node("Relu", [x]) if relu else x

    def layer(x: str, name: str, relu: bool) -> str:
        p = layers[name]
        if p["relu"] != relu:
            raise ModelFormatError(f"{name}: unexpected activation")
        if p["depthwise"]:
            c = p["weight"].shape[0]
            return conv(x, p["weight"][:, None], p["bias"], relu, kernel_shape=[3, 3],
                        pads=[1, 1, 1, 1], group=c)
        return conv(x, p["weight"][:, :, None, None], p["bias"], relu, kernel_shape=[1, 1])

    def dp(x: str, prefix: str, relu: bool = True) -> str:
        return layer(layer(x, prefix + "_pw", False), prefix + "_dw", relu)

    def unit(x: str, m: int) -> str:
        return dp(dp(x, f"backbone__model{m}_dp1"), f"backbone__model{m}_dp2")

    def pool(x: str) -> str:
        return node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def up(x: str) -> str:
        scales = g.const(np.array([1, 1, 2, 2], dtype=np.float32))
        return node("Resize", [x, "", scales], mode="nearest", nearest_mode="floor",
                    coordinate_transformation_mode="asymmetric")

    # the first layer: its (filter, 27 patch values in row, column, channel order) -> OIHW
    first = layers[LAYER_NAMES[0]]
    w0 = first["weight"][:, :27].reshape(16, 3, 3, 3).transpose(0, 3, 1, 2)
    x = conv("image", w0, first["bias"], True, kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1])
    x = pool(dp(x, "backbone__model0_dp"))
    x = unit(unit(x, 1), 2)
    f8 = unit(pool(x), 3)
    f16 = unit(pool(f8), 4)
    f32 = unit(pool(f16), 5)
    # the neck, top-down
    f32 = dp(f32, "neck__lateral_convs__2")
    f16 = dp(node("Add", [up(f32), f16]), "neck__lateral_convs__1")
    f8 = dp(node("Add", [up(f16), f8]), "neck__lateral_convs__0")
    # the heads of a level: their point-wise layers stacked into one, likewise the depth-wise
    outputs = {}
    for level, (feature, stride) in enumerate(zip((f8, f16, f32), STRIDES)):
        parts = [layers[f"bbox_head__multi_level_{head}__{level}_{kind}"]
                 for head, _ in HEAD_CHANNELS for kind in ("pw", "dw")]
        pw, dw = parts[0::2], parts[1::2]
        if any(p["relu"] for p in parts) or [p["weight"].shape[0] for p in pw] != [
                n for _, n in HEAD_CHANNELS]:
            raise ModelFormatError("unexpected head layers")
        y = conv(feature, np.concatenate([p["weight"] for p in pw])[:, :, None, None],
                 np.concatenate([p["bias"] for p in pw]), False, kernel_shape=[1, 1])
        y = conv(y, np.concatenate([p["weight"] for p in dw])[:, None],
                 np.concatenate([p["bias"] for p in dw]), False, kernel_shape=[3, 3],
                 pads=[1, 1, 1, 1], group=16)
        outputs[g.rename_last(f"level{stride}")] = [1, 16, None, None]
    return g.serialized("yunet_libfacedetection", {"image": [1, 3, None, None]}, outputs)


# ------------------------------------------------------------------ decoding

def _anchors(rows: int, cols: int, stride: int) -> np.ndarray:
    """(rows*cols, 2) x, y of libfacedetection's meshgrid (no offset), row-major."""
    ys, xs = np.mgrid[0:rows, 0:cols]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) * np.float32(stride)


def decode(levels: list[np.ndarray]) -> np.ndarray:
    """libfacedetection's bbox/kps decoding, scores, NMS and int16 output rows from the three
    (1, 16, h, w) head outputs: (N, 16) int16, the last column 0."""
    f32 = np.float32
    scores, boxes, marks = [], [], []
    for out, stride in zip(levels, STRIDES):
        _, _, rows, cols = out.shape
        d = out[0].reshape(16, rows * cols).T                 # (anchors, 16), row-major
        prior = _anchors(rows, cols, stride)
        s = f32(stride)
        logits = np.clip(d[:, [0, 5]], f32(-88.3762626647949), f32(88.3762626647949))
        sig = f32(1) / (f32(1) + np.exp(-logits))
        score = np.sqrt(sig[:, 0] * sig[:, 1])
        keep = np.nonzero(score >= f32(SCORE_THRESHOLD))[0]
        if not len(keep):
            continue
        d, prior = d[keep], prior[keep]
        centre = d[:, 1:3] * s + prior
        size = np.exp(d[:, 3:5]) * s
        boxes.append(np.concatenate([centre - size / f32(2), centre + size / f32(2)], axis=1))
        marks.append(d[:, 6:16] * s + np.tile(prior, 5))
        scores.append(score[keep])
    if not scores:
        return np.zeros((0, 16), dtype=np.int16)
    scores, boxes, marks = np.concatenate(scores), np.concatenate(boxes), np.concatenate(marks)
    order = np.argsort(-scores, kind="stable")[:TOP_K]    # std::stable_sort, descending
    kept = _nms(boxes[order], NMS_THRESHOLD)[:KEEP_TOP_K]
    idx = order[kept]
    b = boxes[idx]
    rows = np.zeros((len(idx), 16), dtype=np.int16)
    rows[:, 0] = np.trunc(scores[idx] * f32(100))
    rows[:, 1:3] = np.trunc(b[:, 0:2])
    rows[:, 3:5] = np.trunc(b[:, 2:4] - b[:, 0:2])
    rows[:, 5:15] = np.trunc(marks[idx])
    return rows


def _nms(boxes: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS over boxes (x0, y0, x1, y1) in score order: indexes of those whose overlap with
    every one kept before is <= threshold (libfacedetection's JaccardOverlap, float32)."""
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0) * (y1 - y0)
    alive = np.ones(len(boxes), dtype=bool)
    kept = []
    thr = np.float32(threshold)
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        kept.append(i)
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if not len(rest):
            break
        iw = np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest])
        ih = np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest])
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = np.where((iw > 0) & (ih > 0), inter / (area[i] + area[rest] - inter),
                               np.float32(0))
        alive[rest[overlap > thr]] = False
    return kept


# ------------------------------------------------------------------ running it

class Detector:
    """`rows(bgr)`: what yuface's `detect` returns for a BGR uint8 image; `run(rgb)` likewise for
    an RGB one (onnxgraph.session: one thread per call, several threads at once). A call keeps
    its intermediate tensors in onnxruntime's arena, more than libfacedetection keeps
    (bench/face_quality.py --sections runtimes measures both)."""

    def __init__(self, path: str | None = None):
        # every image has its own size: no memory plan per shape (less RSS, same speed)
        self.session = session(build_onnx(read_layers(path)), memory_pattern=False)

    def rows(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        if bgr.ndim != 3 or bgr.shape[2] != 3 or h < 1 or w < 1:
            raise ValueError("expected an HxWx3 image")
        x = np.zeros((1, 3, -(-h // PAD) * PAD, -(-w // PAD) * PAD), dtype=np.float32)
        x[0, :, :h, :w] = bgr.transpose(2, 0, 1)
        return decode(self.session.run([f"level{s}" for s in STRIDES], {"image": x}))

    def run(self, rgb: np.ndarray) -> np.ndarray:
        return self.rows(rgb[:, :, 2::-1])

    def check_against(self, c_detect, bgr: np.ndarray | None = None) -> int:
        """Compare with yuface's `detect` on `bgr` (default: drawn faces); ModelFormatError when a
        detection of one has no match in the other. Returns yuface's detection count."""
        drawn = bgr is None
        if drawn:
            bgr = _test_image()
        ours, theirs = self.rows(bgr), np.asarray(c_detect(np.ascontiguousarray(bgr)))
        if drawn and len(theirs) == 0:
            raise ModelFormatError("yuface finds no face in the drawn test image: nothing checked")
        problems = compare(ours, theirs)
        if problems:
            raise ModelFormatError("onnxruntime YuNet differs from yuface's: " + problems[0])
        return len(theirs)


def compare(ours: np.ndarray, theirs: np.ndarray, floor: float = 0.3, score_tol: float = 0.02,
            min_iou: float = 0.9, mark_tol: float = 1.5) -> list[str]:
    """Differences between two sets of rows: each detection scoring >= floor in one needs a match
    in the other (IoU >= min_iou, scores within score_tol, landmarks within mark_tol pixels);
    detections within score_tol of the floor may go unmatched."""
    problems = []
    for name, a, b in (("yuface", theirs, ours), ("onnx", ours, theirs)):
        for row in a:
            score = row[0] / 100.0
            if score < floor:
                continue
            matched = any(_row_iou(row, other) >= min_iou
                          and abs(score - other[0] / 100.0) <= score_tol
                          and np.max(np.abs(row[5:15].astype(float) - other[5:15])) <= mark_tol
                          for other in b)
            if not matched and score >= floor + score_tol:
                problems.append(f"{name}'s detection {row[:15].tolist()} has no match")
    return problems


def _row_iou(a: np.ndarray, b: np.ndarray) -> float:
    return xywh_iou(tuple(float(v) for v in a[1:5]), tuple(float(v) for v in b[1:5]))


def _test_image() -> np.ndarray:
    """A BGR image of 330x250 (not multiples of 32) with three drawn faces, ~25, ~60 and ~150 px
    high: one for each of YuNet's three anchor strides."""
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("RGB", (330, 250), (90, 120, 150))
    draw = ImageDraw.Draw(img)
    for x, y, s in ((10, 10, 0.25), (40, 120, 0.6), (140, 40, 1.4)):
        def box(x0, y0, x1, y1):
            return (x + x0 * s, y + y0 * s, x + x1 * s, y + y1 * s)
        draw.ellipse(box(0, 0, 80, 110), fill=(200, 160, 130))           # face
        draw.rectangle(box(10, 20, 70, 28), fill=(60, 40, 30))            # brows
        draw.ellipse(box(18, 35, 35, 45), fill=(40, 30, 30))              # eyes
        draw.ellipse(box(45, 35, 62, 45), fill=(40, 30, 30))
        draw.polygon([box(40, 45, 40, 45)[:2], box(33, 70, 33, 70)[:2],
                      box(47, 70, 47, 70)[:2]], fill=(170, 120, 100))     # nose
        draw.ellipse(box(22, 80, 58, 92), fill=(150, 60, 60))             # mouth
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    return np.ascontiguousarray(np.asarray(img)[:, :, ::-1])


def checked_detector(c_detect) -> Detector:
    """A Detector whose rows matched yuface's `detect` (ModelFormatError otherwise)."""
    detector = Detector()
    detector.check_against(c_detect)
    return detector
