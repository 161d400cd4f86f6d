"""TensorFlow's (H, W, C, N) weight layout -> Caffe's (N, C, H, W), in blocks of output rows.

The same permutation serves a convolution kernel (kh, kw, in, out) and a Dense kernel whose
input was a Flatten of (H, W, C) (its rows are in H,W,C order, Caffe's in C,H,W). numpy copies
such a transpose element by element across the whole array; on VGG-19's fc6 (25088 x 4096) that
took 2.5-4.5 s here, cache-sized tiles 0.5 s. Blocks let a writer stream the result without
ever holding a second full copy.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


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
