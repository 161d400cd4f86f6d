"""The reference batch a conversion is verified on: a seeded standard-normal sample, followed by
the user's own inputs when `--reference-input X.npy` is given (real data exercises value ranges
that random inputs do not)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import ConversionError


def load_user_input(path) -> np.ndarray:
    """An NHWC (or N,D) float array from a `.npy` file; a single sample may omit the batch axis."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError("%s: no such .npy file" % path)
    try:
        value = np.load(str(path), allow_pickle=False)  # never unpickle code from a data file
    except (OSError, ValueError) as error:
        raise ConversionError("%s: not a readable .npy array (%s)" % (path, error))
    if value.dtype.kind not in "fiu":
        raise ConversionError("%s: dtype %s is not numeric" % (path, value.dtype))
    value = value.astype(np.float32)
    if not np.all(np.isfinite(value)):
        raise ConversionError("%s: contains NaN or Inf" % path)
    return value


def reference_batch(shapes: Sequence[Sequence[int]], seed: int,
                    user_input: Optional[np.ndarray] = None, where: str = "") -> List[np.ndarray]:
    """One array per model input: the seeded sample, with `user_input` appended on the batch axis."""
    rng = np.random.default_rng(seed)
    batch = [rng.standard_normal(list(shape)).astype(np.float32) for shape in shapes]
    return [append_user_input(batch[0], user_input, where)] + batch[1:] if batch else batch


def append_user_input(seeded: np.ndarray, user_input: Optional[np.ndarray], where: str = "") -> np.ndarray:
    if user_input is None:
        return seeded
    sample = list(seeded.shape[1:])
    user = user_input[None] if list(user_input.shape) == sample else user_input
    if list(user.shape[1:]) != sample:
        raise ConversionError("%s--reference-input has shape %s; the model's input is %s (batch "
                              "first, NHWC)" % (where, list(user_input.shape), [None] + sample))
    return np.concatenate([seeded.astype(np.float32), user.astype(np.float32)])
