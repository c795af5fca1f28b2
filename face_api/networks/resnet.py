"""dlib's face-encoding ResNet, the same weights run by onnxruntime: less CPU per face.

dlib's Python wheel computes its convolutions without a BLAS: more CPU per face than YuNet spends
on a whole photo (the README has the figures). This module reads the weights from the same model file
dlib loads (`dlib_face_recognition_resnet_model_v1.dat`, from the face_recognition_models
package), builds the same network as an ONNX graph in memory, and runs it with onnxruntime.
The face chip is still cut by dlib (`dlib.get_face_chip`, what compute_face_descriptor does), so
only the arithmetic moves; encodings agree with dlib's up to float summation order, and
`Encoder.check_against` refuses to be used if they ever do not.

The network is dlib's `anet_type` from dnn_face_recognition_ex.cpp (a ResNet-29 with 128
outputs). Its file is dlib's own serialization: layers bottom-up, each one's "details" (a version
string then its fields) followed by bookkeeping fields we skip. dlib quirks kept here:
- convolutions with stride 2 have no padding (dlib's con_ default), pools likewise;
- `add_prev` adds tensors of different sizes by zero-padding the smaller at the end (bottom, right,
  and extra channels): the down-sampling units' shortcut is an average pool that comes out one
  pixel larger, or with fewer channels, than the block.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from .onnxgraph import Graph, session

CHIP_SIZE = 150        # dlib's face chip: 150x150 ...
CHIP_PADDING = 0.25    # ... with 25% padding around the landmarks' face box


@dataclass
class Layer:
    kind: str                                  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    params: dict = field(default_factory=dict)


# ------------------------------------------------------------------ dlib's serialization

class _Reader:
    """dlib/serialize.h: integers are a length byte (0x80: negative) then little-endian bytes;
    floats a mantissa and an exponent (two such integers); strings a length then bytes; bools
    the characters '0'/'1'; tensors (version 2) four dimensions then raw little-endian float32."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelFormatError("model file ends early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        head = self._take(1)[0]
        size, negative = head & 0x0F, bool(head & 0x80)
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if negative else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def string(self) -> str:
        return self._take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise ModelFormatError(f"expected a bool at byte {self.pos - 1}")
        return c == b"1"

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise ModelFormatError(f"unexpected tensor version at byte {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape).astype(np.float32)

    def alias_tensor(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise ModelFormatError(f"unexpected alias tensor version at byte {self.pos}")
        return tuple(self.int() for _ in range(4))


def _details(r: _Reader) -> Layer:
    """One layer's details, by its version string (the versions in dlib's 2017 model file)."""
    version = r.string()
    if version == "con_4":
        params = r.tensor()
        filters, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        w_shape, b_shape = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        flat = params.reshape(-1)
        n_w = int(np.prod(w_shape))
        return Layer("con", {"weight": flat[:n_w].reshape(w_shape), "bias": flat[n_w:n_w + filters],
                             "kernel": (nr, nc), "stride": (sy, sx), "pad": (py, px)})
    if version == "affine_":
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias_tensor(), r.alias_tensor()
        mode = r.int()
        k = int(np.prod(gamma))
        if mode != 0:   # CONV_MODE: one scale and shift per channel
            raise ModelFormatError("affine layer not in per-channel mode")
        return Layer("affine", {"scale": params[:k], "shift": params[k:2 * k]})
    if version == "relu_":
        return Layer("relu")
    if version in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return Layer(version[:-2], {"kernel": (nr, nc), "stride": (sy, sx), "pad": (py, px)})
    if version == "add_prev_":
        return Layer("add_prev")
    if version == "fc_2":
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        r.alias_tensor(), r.alias_tensor()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if bias_mode != 1:  # FC_NO_BIAS
            raise ModelFormatError("fc layer with a bias")
        return Layer("fc", {"weight": params[:inputs * outputs].reshape(inputs, outputs)})
    raise ModelFormatError(f"unknown layer {version!r}")


def read_network(path: Path) -> tuple[tuple[float, float, float], list[Layer]]:
    """(the input's channel means, layers bottom-up) from dlib's serialized face ResNet."""
    r = _Reader(Path(path).read_bytes())
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise ModelFormatError("not dlib's metric-learning network")
    r.float(), r.float()                     # margin, distance threshold (training only)
    while (version := r.int()) != 3:         # add_layer (2) / tag / skip (1) wrappers, top down
        if version not in (1, 2):
            raise ModelFormatError(f"unexpected layer version {version}")
    if r.string() != "input_rgb_image_sized":
        raise ModelFormatError("unexpected input layer")
    means = (r.float(), r.float(), r.float())
    if (r.int(), r.int()) != (CHIP_SIZE, CHIP_SIZE):
        raise ModelFormatError("input is not a 150x150 chip")
    layers = []
    while r.pos < len(r.data):
        layers.append(_details(r))
        r.bool(), r.bool(), r.bool()         # setup called, gradient stale, output disabled
        r.tensor(), r.tensor(), r.tensor()   # x_grad, cached output, params_grad
        if len(layers) == 1:
            r.int()                          # the input layer's sample expansion factor
    return means, layers


# ------------------------------------------------------------------ the ONNX graph

def build_onnx(layers: list[Layer]) -> bytes:
    """The network as a serialized ONNX model: input "chips" (N, 3, 150, 150) float32, already
    normalised; output "encodings" (N, 128). Each convolution absorbs the affine layer after it."""
    g = Graph()
    shape = [3, CHIP_SIZE, CHIP_SIZE]          # channels, rows, columns of the current tensor

    def pooled(size: int, kernel: int, stride: int, pad: int) -> int:
        return (size + 2 * pad - kernel) // stride + 1

    def padded_to(x: str, have: list[int], want: list[int]) -> str:
        """dlib's add_prev: the smaller tensor gets zeros at the end of each dimension."""
        if have == want:
            return x
        ends = [0] + [w - h for w, h in zip(want, have)]      # batch, channels, rows, columns
        return g.node("Pad", [x, g.const(np.array([0, 0, 0, 0] + ends, dtype=np.int64))])

    x, block_in, block_out = "chips", None, None
    in_shape = out_shape = None
    i = 0
    while i < len(layers):
        layer, p = layers[i], layers[i].params
        previous = layers[i - 1].kind if i else None
        # a residual unit starts after the stem's max pool or after the previous unit's relu
        unit_start = previous == "max_pool" or (previous == "relu" and i >= 2
                                                  and layers[i - 2].kind == "add_prev")
        if layer.kind == "con":
            if unit_start:
                block_in, in_shape = x, list(shape)
            w, b = p["weight"], p["bias"]
            if i + 1 < len(layers) and layers[i + 1].kind == "affine":
                scale, shift = layers[i + 1].params["scale"], layers[i + 1].params["shift"]
                w, b = w * scale[:, None, None, None], b * scale + shift
                i += 1
            (kr, kc), (sr, sc), (pr, pc) = p["kernel"], p["stride"], p["pad"]
            x = g.node("Conv", [x, g.const(w), g.const(b)], kernel_shape=[kr, kc],
                       strides=[sr, sc], pads=[pr, pc, pr, pc])
            shape = [w.shape[0], pooled(shape[1], kr, sr, pr), pooled(shape[2], kc, sc, pc)]
        elif layer.kind == "affine":
            x = g.node("Add", [g.node("Mul", [x, g.const(p["scale"][:, None, None])]),
                               g.const(p["shift"][:, None, None])])
        elif layer.kind == "relu":
            x = g.node("Relu", [x])
        elif layer.kind == "max_pool":
            (kr, kc), (sr, sc), (pr, pc) = p["kernel"], p["stride"], p["pad"]
            x = g.node("MaxPool", [x], kernel_shape=[kr, kc], strides=[sr, sc], pads=[pr, pc, pr, pc])
            shape = [shape[0], pooled(shape[1], kr, sr, pr), pooled(shape[2], kc, sc, pc)]
        elif layer.kind == "avg_pool" and p["kernel"] == (0, 0):   # avg_pool_everything
            x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
            shape = [shape[0]]
        elif layer.kind == "avg_pool":      # a down-sampling unit's shortcut, from its input
            block_out, out_shape = x, list(shape)
            (kr, kc), (sr, sc), (pr, pc) = p["kernel"], p["stride"], p["pad"]
            x = g.node("AveragePool", [block_in], kernel_shape=[kr, kc], strides=[sr, sc],
                       pads=[pr, pc, pr, pc])
            shape = [in_shape[0], pooled(in_shape[1], kr, sr, pr), pooled(in_shape[2], kc, sc, pc)]
        elif layer.kind == "add_prev":
            if previous == "avg_pool":
                other, other_shape = block_out, out_shape
            else:
                other, other_shape = block_in, in_shape
            want = [max(a, b) for a, b in zip(shape, other_shape)]
            x = g.node("Add", [padded_to(x, shape, want), padded_to(other, other_shape, want)])
            shape = want
        elif layer.kind == "fc":
            x = g.node("MatMul", [x, g.const(p["weight"])])
        else:
            raise ModelFormatError(f"no ONNX mapping for {layer.kind}")
        i += 1
    g.rename_last("encodings")
    return g.serialized("dlib_face_resnet", {"chips": [None, 3, CHIP_SIZE, CHIP_SIZE]},
                        {"encodings": [None, 128]})


# ------------------------------------------------------------------ running it

class Encoder:
    """`encode(chips)`: 128-d encodings of (N, 150, 150, 3) uint8 RGB face chips; one session per
    process (onnxgraph.session: one thread per call, several threads at once)."""

    def __init__(self, model_path: Path):
        means, layers = read_network(model_path)
        self.means = np.asarray(means, dtype=np.float32)
        self.session = session(build_onnx(layers))

    def encode(self, chips: np.ndarray) -> np.ndarray:
        """dlib's input layer: (pixel - channel mean) / 256, planes R, G, B."""
        x = (np.asarray(chips, dtype=np.float32) - self.means) / np.float32(256.0)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return self.session.run(["encodings"], {"chips": x})[0].astype(np.float64)

    def check_against(self, dlib_encoder, tolerance: float = 1e-4) -> float:
        """Largest difference from dlib's own encoder on a test face; ModelFormatError above
        `tolerance` (the graph would not be dlib's network)."""
        import dlib

        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
        shape = dlib.full_object_detection(
            dlib.rectangle(40, 40, 160, 160),
            [dlib.point(70, 80), dlib.point(90, 80), dlib.point(130, 80), dlib.point(110, 80),
             dlib.point(100, 130)])
        theirs = np.array(dlib_encoder.compute_face_descriptor(img, shape, 1))
        ours = self.encode(dlib.get_face_chip(img, shape, CHIP_SIZE, CHIP_PADDING)[None])[0]
        worst = float(np.max(np.abs(theirs - ours)))
        if not worst <= tolerance:
            raise ModelFormatError(f"onnxruntime encodings differ from dlib's by {worst:.2g}")
        return worst


def checked_encoder(model_path: Path, dlib_encoder) -> Encoder:
    """An Encoder whose output matched dlib's own (ModelFormatError otherwise)."""
    encoder = Encoder(model_path)
    encoder.check_against(dlib_encoder)
    return encoder
