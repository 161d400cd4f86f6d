"""An emitted Caffe net: layers with their parameters and (lazily computed) weight blobs.

The prototxt text is written here rather than through caffe_pb2 because the emitter must also
run where no Caffe is installed (`--check-only`, the TensorFlow side); protobuf's text format
for nested messages, repeated fields and enums is all a prototxt needs.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np


class Quoted(str):
    """A string parameter value (printed in quotes); a plain str in params is an enum name."""


class CaffeLayer:
    """One Caffe layer. `blobs` are zero-argument callables returning arrays in Caffe's layout,
    so weights are read and transformed only when they are written."""

    def __init__(self, name, type, bottoms=(), tops=(), params=None, blobs=()):
        self.name = name
        self.type = type
        self.bottoms = list(bottoms)
        self.tops = list(tops)
        self.params = dict(params or {})
        self.blobs: List[Callable[[], np.ndarray]] = [
            blob if callable(blob) else (lambda value=blob: value) for blob in blobs]
        self.source: Optional[str] = None  # the TensorFlow layer it was emitted for (the report's table)

    def __repr__(self):
        return "CaffeLayer(%r, %r, %r -> %r)" % (self.name, self.type, self.bottoms, self.tops)


class LazyBlob:
    """A weight blob whose shape is known before its values: a writer sizes the file from `shape`
    alone, then computes the values once. Give `make` (returns the array) or `blocks` (yields it
    in consecutive C-contiguous blocks along the first axis, so it need never be whole)."""

    def __init__(self, shape: Sequence[int], make: Optional[Callable[[], np.ndarray]] = None,
                 blocks: Optional[Callable[[], Iterable[np.ndarray]]] = None):
        if (make is None) == (blocks is None):
            raise ValueError("give make or blocks")
        self.shape = tuple(int(d) for d in shape)
        self._make = make
        self._blocks = blocks

    def __call__(self) -> np.ndarray:
        if self._make is not None:
            return self._make()
        whole = np.empty(self.shape, np.float32)
        start = 0
        for block in self._blocks():
            whole[start:start + len(block)] = block
            start += len(block)
        return whole

    def blocks(self) -> Iterable[np.ndarray]:
        return self._blocks() if self._blocks is not None else [self._make()]


class NetSpec:
    def __init__(self, name):
        self.name = name
        self.layers: List[CaffeLayer] = []

    def add(self, layer: CaffeLayer) -> CaffeLayer:
        self.layers.append(layer)
        return layer

    def weighted_layers(self) -> List[CaffeLayer]:
        return [layer for layer in self.layers if layer.blobs]

    def to_prototxt(self) -> str:
        lines = ['name: "%s"' % self.name]
        for layer in self.layers:
            lines.append("layer {")
            lines.append('  name: "%s"' % layer.name)
            lines.append('  type: "%s"' % layer.type)
            lines.extend('  bottom: "%s"' % bottom for bottom in layer.bottoms)
            lines.extend('  top: "%s"' % top for top in layer.tops)
            _write_fields(lines, layer.params, "  ")
            lines.append("}")
        return "\n".join(lines) + "\n"


def _write_fields(lines, fields: Dict, indent: str) -> None:
    for key, value in fields.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, dict):
                lines.append("%s%s {" % (indent, key))
                _write_fields(lines, item, indent + "  ")
                lines.append("%s}" % indent)
            else:
                lines.append("%s%s: %s" % (indent, key, _scalar(item)))


def _scalar(value) -> str:
    if isinstance(value, Quoted):
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)  # an enum name such as MAX or SUM


def shape_param(shape: Sequence[int]) -> Dict:
    return {"dim": [int(d) for d in shape]}
