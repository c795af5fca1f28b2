"""The small part of ONNX both rebuilt networks need (resnet.py, yunet_onnx.py): a graph
built node by node in memory, an onnxruntime session that computes on the calling thread, and
`Rebuilt`, which builds a network on first use, checks it against the native code and falls back
to that code if the two ever differ.

The engine runs one photo per core (gunicorn's workers x threads is the core budget), so a session
gets one thread and never spins waiting for work: onnxruntime's own pool would fight the other
photos' threads for the cores. onnxruntime releases the GIL while computing, and a session may be
run from several threads at once.
"""
from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable, Generic, TypeVar

import numpy as np

log = logging.getLogger("face_api")
T = TypeVar("T")

OPSET = 17
IR_VERSION = 8      # what the pinned onnxruntime reads


class Graph:
    """Nodes and weights of one ONNX graph; every value gets a fresh name."""

    def __init__(self):
        self.nodes, self.weights = [], []
        self._ids = itertools.count()

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = f"w{next(self._ids)}"
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        out = f"t{next(self._ids)}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def rename_last(self, name: str) -> str:
        """Give the last node's output a name of its own (a graph output)."""
        self.nodes[-1].output[0] = name
        return name

    def serialized(self, name: str, inputs: dict[str, list], outputs: dict[str, list]) -> bytes:
        """The model: float32 `inputs` and `outputs` by name -> shape (None: any size)."""
        from onnx import TensorProto, helper

        def info(names):
            return [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in names.items()]

        graph = helper.make_graph(self.nodes, name, info(inputs), info(outputs), self.weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        return model.SerializeToString()


def session(model: bytes, memory_pattern: bool = True):
    """An onnxruntime session on the CPU, one thread, no spinning. `memory_pattern` False for
    inputs whose size changes every call (a memory plan per shape buys nothing then)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = memory_pattern
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class Rebuilt(Generic[T]):
    """A native network's onnxruntime rebuild, made on first use by `build` (which checks it
    against the native code and raises if they differ). Thread-safe. `get()` is None, and
    `problem` says why in one line (logged once), when it cannot be built or does not agree:
    the caller then runs the native code."""

    def __init__(self, what: str, build: Callable[[], T]):
        self.what, self._build = what, build
        self._lock = threading.Lock()
        self._built: T | None = None
        self.problem: str | None = None

    def get(self) -> T | None:
        with self._lock:
            if self._built is None and self.problem is None:
                try:
                    self._built = self._build()
                except Exception as exc:  # ImportError, another model build, a mismatch
                    self.problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                    log.warning("%s fall back to the native code: %s", self.what, self.problem)
            return self._built

    def runtime(self, setting: str, native: str) -> str:
        """What computes the network under PHOTO_FACE_RUNTIME=`setting`: "onnxruntime" or `native`."""
        return "onnxruntime" if setting == "onnxruntime" and self.get() is not None else native
