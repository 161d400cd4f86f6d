"""Output files that appear complete or not at all: written to a temporary file in the same
folder, then renamed over the target. Runs in both environments (Python 3.9 in the Caffe chroot)."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import BinaryIO, Iterator, Optional

from .errors import ConversionError

# OSErrors of writing that say the output has no room: the user's to fix, worded in one line.
# Other OSErrors raised in the block come from the caller's own work (e.g. reading weights).
OUTPUT_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def replacing(path, shown_path: Optional[str] = None, failure: str = "cannot write") -> Iterator[str]:
    """Yields the name of a new temporary file next to `path` that replaces `path` when the block
    succeeds and vanishes when it fails. Errors become ConversionError("<shown_path>: <failure>:
    <reason>"); `shown_path`: what messages call the file (default `path`)."""
    shown_path = shown_path or path
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=folder)
    except OSError as error:
        raise _failed(shown_path, failure, error) from None
    os.close(handle)
    try:
        yield tmp
    except BaseException as error:
        _remove(tmp)
        if isinstance(error, OSError) and error.errno in OUTPUT_FULL:
            raise _failed(shown_path, failure, error) from None
        raise
    try:
        # mkstemp's 0600 would make the result unreadable to others, unlike any other new file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        raise _failed(shown_path, failure, error) from None


@contextlib.contextmanager
def atomic_file(path, shown_path: Optional[str] = None, failure: str = "cannot write",
                mode: str = "wb") -> Iterator[BinaryIO]:
    """`replacing`, opened: the file object to write (binary unless `mode` says otherwise)."""
    with replacing(path, shown_path, failure) as tmp, open(tmp, mode) as out:
        yield out


def _failed(path, failure: str, error: OSError) -> ConversionError:
    return ConversionError("%s: %s: %s" % (path, failure, error.strerror or error))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
