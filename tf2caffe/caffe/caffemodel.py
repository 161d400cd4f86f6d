"""Write a binary `.caffemodel` (a protobuf `NetParameter`) without Caffe or protobuf.

Only the fields a weights file needs are written. Field numbers are BVLC caffe.proto's, checked
against the descriptor of Debian bullseye's `caffe/proto/caffe_pb2.py` (python3-caffe
1.0.0+git20180821.99bd997, the reference target):
  NetParameter.name = 1 (string), NetParameter.layer = 100 (LayerParameter, repeated);
  LayerParameter.name = 1, type = 2, bottom = 3, top = 4 (strings), blobs = 7 (BlobProto);
  BlobProto.data = 5 (packed float), BlobProto.shape = 7 (BlobShape);
  BlobShape.dim = 1 (packed int64).
Every layer is written, weightless ones included, with its bottoms and tops, so the file alone
shows the net's topology (as pycaffe's `net.save` does) for tools that read only the weights.

Streaming: a protobuf message is prefixed by its length, so every layer's size must be known
before its first byte is written, and the whole file's size before anything is created (Caffe
cannot read one of 2 GiB or more). Sizes follow from blob shapes
alone, so the writer first learns every blob's shape, then evaluates each blob once more,
writes it in chunks (from a second thread, while the next is computed) and drops it: at most one
blob, and two chunks waiting to be written, are in memory at a time.
A blob callable may declare its shape as a `shape` attribute (a tuple of ints; see
`netspec.LazyBlob`); it is then called only once, and if it also has `blocks()` (consecutive
blocks along the first axis) not even one whole blob need be in memory. An undeclared one is
called once just to learn its shape.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence, Tuple

import numpy as np

from ..atomic import atomic_file
from ..errors import ConversionError
from .netspec import CaffeLayer

# Caffe reads with protobuf's total-bytes limit at kProtoReadBytesLimit = INT_MAX (util/io.cpp),
# and with bullseye's protobuf 3.12 a file of exactly INT_MAX bytes fails too ("CHECK failed:
# ctx.LastTag() != 1"); one byte less loads (measured, with a single 2 GiB InnerProduct blob).
MAX_CAFFEMODEL_BYTES = 2 ** 31 - 2
CHUNK_BYTES = 16 * 2 ** 20

_LENGTH_DELIMITED = 2
_NET_NAME, _NET_LAYER = 1, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BOTTOM, _LAYER_TOP, _LAYER_BLOBS = 1, 2, 3, 4, 7
_BLOB_DATA, _BLOB_SHAPE = 5, 7
_SHAPE_DIM = 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_header(field: int, payload_size: int) -> bytes:
    """Tag and length of a length-delimited field (string, message or packed repeated)."""
    return _varint(field << 3 | _LENGTH_DELIMITED) + _varint(payload_size)


def _string_field(field: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return _field_header(field, len(data)) + data


class _BlobPlan:
    """One blob's serialised form: everything but the float data, which is written streaming."""

    def __init__(self, make: Callable[[], np.ndarray], shape: Sequence[int]):
        self.make = make
        self.shape = tuple(int(d) for d in shape)
        self.count = int(np.prod(self.shape, dtype=np.int64))
        dims = b"".join(_varint(d) for d in self.shape)
        # Fields in number order and empty ones left out, byte for byte as Caffe's Blob::ToProto
        # writes them; a 0-d blob (a channel-shared PReLU slope) has no shape field at all.
        self.data_header = _field_header(_BLOB_DATA, 4 * self.count) if self.count else b""
        self.shape_field = b""
        if dims:
            shape_message = _field_header(_SHAPE_DIM, len(dims)) + dims
            self.shape_field = _field_header(_BLOB_SHAPE, len(shape_message)) + shape_message
        self.size = len(self.data_header) + 4 * self.count + len(self.shape_field)


class _LayerPlan:
    def __init__(self, layer: CaffeLayer):
        self.name = layer.name
        self.head = b"".join(
            [_string_field(_LAYER_NAME, layer.name), _string_field(_LAYER_TYPE, layer.type)]
            + [_string_field(_LAYER_BOTTOM, bottom) for bottom in layer.bottoms]
            + [_string_field(_LAYER_TOP, top) for top in layer.tops])
        self.blobs = [_BlobPlan(make, _shape_of(make)) for make in layer.blobs]
        self.size = len(self.head) + sum(len(_field_header(_LAYER_BLOBS, blob.size)) + blob.size
                                         for blob in self.blobs)


def _shape_of(make: Callable[[], np.ndarray]) -> Tuple[int, ...]:
    declared = getattr(make, "shape", None)
    return tuple(declared) if declared is not None else np.shape(make())


def write_caffemodel(path, net_name: str, layers: Sequence[CaffeLayer],
                     each: Callable[[Iterable], Iterable] = iter, shown_path=None) -> int:
    """Write `layers` (with their blobs) as a binary NetParameter to `path`; return its size.
    `each` wraps the loop over layers (a progress bar); its items have a `name`. `shown_path` is
    what messages call the file (`path` may be a scratch file).

    Raises ConversionError, before any file is created, when the result would exceed what Caffe
    can read; the file appears complete or not at all.
    """
    shown_path = shown_path or path
    plans = [_LayerPlan(layer) for layer in layers]
    head = _string_field(_NET_NAME, net_name)
    size = len(head) + sum(len(_field_header(_NET_LAYER, plan.size)) + plan.size for plan in plans)
    if size > MAX_CAFFEMODEL_BYTES:
        raise ConversionError("%s: the .caffemodel would be %d bytes (%.2f GiB); Caffe reads at most "
                              "%d (2 GiB - 2)" % (shown_path, size, size / 2.0 ** 30, MAX_CAFFEMODEL_BYTES))
    with atomic_file(path, shown_path) as file, _written_behind(file) as out:
        out.write(head)
        for plan in each(plans):
            out.write(_field_header(_NET_LAYER, plan.size) + plan.head)
            for index, blob in enumerate(plan.blobs):
                out.write(_field_header(_LAYER_BLOBS, blob.size) + blob.data_header)
                for block in _checked_blocks(blob, shown_path, plan.name, index):
                    _write_floats(out, block)
                out.write(blob.shape_field)
    return size


def _checked_blocks(blob: _BlobPlan, path, layer_name: str, index: int) -> Iterator[np.ndarray]:
    """The blob's values, in the blocks it comes in, each checked against the shape the file's
    size was computed from: written anyway, a wrong one would make the file unreadable."""
    blocks = getattr(blob.make, "blocks", None)
    expected_rows = blob.shape[0] if blob.shape else 1
    rows = 0
    for block in blocks() if blocks is not None else [blob.make()]:
        block = np.asarray(block)
        if block.ndim != len(blob.shape) or block.shape[1:] != blob.shape[1:]:
            raise _wrong_shape(path, layer_name, index, block.shape, blob.shape)
        rows += block.shape[0] if block.ndim else 1
        if rows > expected_rows:
            raise _wrong_shape(path, layer_name, index, (rows,) + blob.shape[1:], blob.shape)
        yield block
    if rows != expected_rows:
        raise _wrong_shape(path, layer_name, index, (rows,) + blob.shape[1:], blob.shape)


def _wrong_shape(path, layer_name: str, index: int, shape, expected) -> ConversionError:
    return ConversionError("%s: layer '%s': weight blob %d has shape %s, not the %s the Caffe layer "
                           "needs" % (path, layer_name, index, list(shape), list(expected)))


def _write_floats(out: BinaryIO, value: np.ndarray) -> None:
    """Little-endian float32 in C order, converting at most CHUNK_BYTES at a time."""
    if value.ndim == 0:
        value = value.reshape(1)
    row_bytes = 4 * max(1, int(np.prod(value.shape[1:], dtype=np.int64)))
    rows = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, value.shape[0], rows):
        chunk = np.ascontiguousarray(value[start:start + rows], dtype="<f4")
        out.write(chunk)  # C-contiguous, so its buffer is the bytes, without a copy


class _WriteBehind:
    """Hands what is written to a second thread, so the next blob is read and permuted while the
    last one goes to the file (both release the GIL; measured on VGG-19: 1.4 s instead of 2.2).
    At most DEPTH pieces wait, so memory stays bounded. A write error is raised in the caller."""

    DEPTH = 2

    def __init__(self, out: BinaryIO):
        self.out = out
        self.pending: "queue.Queue" = queue.Queue(self.DEPTH)
        self.failure = None
        self.abandoned = False
        self.thread = threading.Thread(target=self._drain, name="caffemodel-writer", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            data = self.pending.get()
            if data is None:
                return
            if self.failure is None and not self.abandoned:
                try:
                    self.out.write(data)
                except BaseException as error:
                    self.failure = error

    def write(self, data) -> None:
        if self.failure is not None:
            raise self.failure
        self.pending.put(data)

    def finish(self) -> None:
        self.pending.put(None)
        self.thread.join()


@contextlib.contextmanager
def _written_behind(out: BinaryIO) -> Iterator[_WriteBehind]:
    writer = _WriteBehind(out)
    try:
        yield writer
    except BaseException:
        writer.abandoned = True  # what still waits is not written: the file is being dropped
        writer.finish()
        raise
    writer.finish()
    if writer.failure is not None:
        raise writer.failure
