"""The reference batch a conversion is verified on: a seeded standard-normal sample, followed by
the user's own inputs when `--reference-input X.npy` (or `X.npz`, one array per input name) is given (real data exercises value ranges
that random inputs do not)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import ConversionError


def load_user_input(path) -> Union[np.ndarray, Dict[str, np.ndarray]]:
    """An NHWC (or N,D) float array from a `.npy` file (a single-input model), or {input name:
    array} from an `.npz` file (one array per input); a single sample may omit the batch axis."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError("%s: no such file" % path)
    try:
        loaded = np.load(str(path), allow_pickle=False)  # never unpickle code from a data file
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: _checked(path, loaded[name], name) for name in loaded.files}
    except (OSError, ValueError) as error:
        raise ConversionError("%s: not a readable .npy/.npz array (%s)" % (path, error))
    return _checked(path, loaded)


def _checked(path: Path, value: np.ndarray, name: str = "") -> np.ndarray:
    where = "%s%s" % (path, "['%s']" % name if name else "")
    if value.dtype.kind not in "fiu":
        raise ConversionError("%s: dtype %s is not numeric" % (where, value.dtype))
    value = value.astype(np.float32)
    if not np.all(np.isfinite(value)):
        raise ConversionError("%s: contains NaN or Inf" % where)
    return value


def reference_batch(shapes: Sequence[Sequence[int]], seed: int,
                    user_input: Union[None, np.ndarray, Dict[str, np.ndarray]] = None, where: str = "",
                    names: Sequence[str] = ()) -> List[np.ndarray]:
    """One array per model input (named `names`): the seeded sample, with the user's arrays for it
    appended on the batch axis."""
    rng = np.random.default_rng(seed)
    batch = [rng.standard_normal(list(shape)).astype(np.float32) for shape in shapes]
    if user_input is None:
        return batch
    if not isinstance(user_input, dict):
        if len(batch) != 1:
            raise ConversionError("%s%d inputs (%s): --reference-input X.npy is for a single input; give an "
                                  ".npz with one array per input name" % (where, len(batch), ", ".join(names)))
        return [append_user_input(batch[0], user_input, where)]
    arrays = {_input_named(key, names, where): value for key, value in user_input.items()}
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ConversionError("%s--reference-input has no array for input(s) %s (it has %s)" % (
            where, ", ".join("'%s'" % name for name in missing), ", ".join("'%s'" % k for k in user_input)))
    appended = [append_user_input(seeded, arrays[name], where, name) for seeded, name in zip(batch, names)]
    counts = {name: len(value) - len(seeded) for name, value, seeded in zip(names, appended, batch)}
    if len(set(counts.values())) > 1:
        raise ConversionError("%s--reference-input has different batch sizes per input: %s" % (
            where, ", ".join("'%s' %d" % item for item in counts.items())))
    return appended


def _input_named(key: str, names: Sequence[str], where: str) -> str:
    """The input an .npz array's name means: the name itself, or a tensor's ("x" for "x:0")."""
    for name in names:
        if key == name or key == name.split(":")[0] or key.split(":")[0] == name:
            return name
    raise ConversionError("%s--reference-input has an array '%s', but the model has no such input (its "
                          "inputs: %s)" % (where, key, ", ".join(names)))


def append_user_input(seeded: np.ndarray, user_input: Optional[np.ndarray], where: str = "",
                      name: str = "") -> np.ndarray:
    if user_input is None:
        return seeded
    sample = list(seeded.shape[1:])
    user = user_input[None] if list(user_input.shape) == sample else user_input
    if list(user.shape[1:]) != sample:
        raise ConversionError("%s--reference-input%s has shape %s; the model's input%s is %s (batch "
                              "first, NHWC)" % (where, "['%s']" % name if name else "", list(user_input.shape),
                                                " '%s'" % name if name else "", [None] + sample))
    return np.concatenate([seeded.astype(np.float32), user.astype(np.float32)])
