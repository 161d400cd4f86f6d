"""What a slicing op takes, read off the op itself (graph StridedSlice/Slice/Split, Keras GetItem,
Slice, Split, Unstack): applied to one index array per axis, the op returns the positions it
keeps along that axis, so every mask, negative bound and ellipsis means what TensorFlow says."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np

from ..errors import Unmappable


def slice_config(shape: Sequence[int], take: Callable[[np.ndarray], np.ndarray]) -> Dict[str, List[int]]:
    """The vocabulary `slice` config (begin, end, strides per non-batch axis) of the op `take`
    applies to an int32 array of `shape`; Unmappable where it is no forward-strided slice or
    slices the batch axis."""
    shape = [int(d) for d in shape]
    config = {"begin": [], "end": [], "strides": []}
    for axis, size in enumerate(shape):
        index = np.broadcast_to(np.arange(size, dtype=np.int32).reshape(
            [-1 if a == axis else 1 for a in range(len(shape))]), shape)
        taken = np.asarray(take(index)).reshape(-1)
        _, first = np.unique(taken, return_index=True)
        taken = taken[np.sort(first)]
        step = int(taken[1] - taken[0]) if len(taken) > 1 else 1
        if step < 1 or not np.array_equal(taken, taken[0] + step * np.arange(len(taken))):
            raise Unmappable("takes %s along axis %d, not a forward stride" % (taken.tolist(), axis))
        if axis == 0:
            if len(taken) != size:
                raise Unmappable("slices the batch axis")
            continue
        config["begin"].append(int(taken[0]))
        config["end"].append(int(taken[-1]) + 1)
        config["strides"].append(step)
    return config
