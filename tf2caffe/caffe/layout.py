"""TensorFlow's (H, W, C, N) weight layout -> Caffe's (N, C, H, W), in blocks of output rows.

The same permutation serves a convolution kernel (kh, kw, in, out) and a Dense kernel whose
input was a Flatten of (H, W, C) (its rows are in H,W,C order, Caffe's in C,H,W). numpy copies
such a transpose element by element across the whole array; on VGG-19's fc6 (25088 x 4096) that
took 2.5-4.5 s here, cache-sized tiles 0.5 s. Blocks let a writer stream the result without
ever holding a second full copy.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence, Tuple

import numpy as np


def held_axes(rank: int) -> Tuple[int, ...]:
    """How Caffe holds a TensorFlow tensor of `rank` unless a layer says otherwise: the axes of
    TensorFlow's value that make Caffe's blob (NHWC -> NCHW for 4-D, TensorFlow's own order else)."""
    return (0, 3, 1, 2) if rank == 4 else tuple(range(rank))


def inverse(axes: Sequence[int]) -> Tuple[int, ...]:
    return tuple(int(a) for a in np.argsort(axes))


class FlatOrder(NamedTuple):
    """The order of a flattened blob where TensorFlow flattens its own tensor of `shape` (without
    batch): Caffe's vector is that tensor transposed by `axes`, then flattened."""
    shape: Tuple[int, ...]
    axes: Tuple[int, ...]

    @classmethod
    def of(cls, shape: Sequence[int], axes: Sequence[int]) -> "FlatOrder":
        """The order of a blob of TensorFlow `shape` held by `axes` (both with batch)."""
        return cls(tuple(int(d) for d in shape[1:]), tuple(int(a) - 1 for a in axes[1:]))

    @classmethod
    def chw(cls, hwc: Sequence[int]) -> "FlatOrder":
        """Caffe's flattening of an (H, W, C) tensor it holds as C, H, W."""
        return cls(tuple(int(d) for d in hwc), (2, 0, 1))

    def indices(self) -> np.ndarray:
        """Caffe's feature i is TensorFlow's feature indices()[i]."""
        return np.arange(int(np.prod(self.shape))).reshape(self.shape).transpose(self.axes).reshape(-1)

    def is_identity(self) -> bool:
        """Whether the two orders coincide: the axes longer than 1 keep their order."""
        moved = [a for a in self.axes if self.shape[a] > 1]
        return moved == sorted(moved)

    def is_chw(self) -> bool:
        return len(self.shape) == 3 and tuple(self.axes) == (2, 0, 1)


# Elements per tile (100 KB of float32: well inside a core's L2 cache), and output rows per tile.
TILE_ELEMENTS = 25600
TILE_ROWS = 128


def hwcn_to_nchw_blocks(kernel: np.ndarray, spatial: Sequence[int]) -> Iterator[np.ndarray]:
    """`kernel` holds (H*W*C, N) values in H,W,C,N order, with (H, W) = `spatial`; yields Caffe's
    (N, C, H, W) array in consecutive C-contiguous blocks along N."""
    h, w = (int(d) for d in spatial)
    units = kernel.shape[-1]
    channels = kernel.size // (h * w * units)
    source = kernel.reshape(h * w, channels, units)
    for start in range(0, units, TILE_ROWS):
        stop = min(start + TILE_ROWS, units)
        block = np.empty((stop - start, channels, h * w), kernel.dtype)
        _permute(source, start, stop, block)
        yield block.reshape(stop - start, channels, h, w)


def _permute(source: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    """out (stop - start, C, H*W) = source (H*W, C, N)[:, :, start:stop] transposed, tile by tile."""
    hw = source.shape[0]
    step = max(1, TILE_ELEMENTS // (hw * (stop - start)))
    for first in range(0, source.shape[1], step):
        last = first + step
        out[:, first:last] = source[:, first:last, start:stop].transpose(2, 1, 0)
