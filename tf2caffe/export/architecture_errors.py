"""Exceptions raised by an architecture module's own code, reported as one line.

An architecture module (architectures/README.md) is the user's code: an exception in its
build(), train() or reference_data() (or anything they call, tflearn included) is a problem in
that file, so it becomes a ConversionError naming the file, the module's function and the
exception; the original stays chained as its cause, so `--debug` shows the whole traceback.
Which exceptions are the module's is read from the traceback (did it pass through the module's
file?), so one `with` around everything that calls into the module is enough, and an exception
in tf2caffe's own code still propagates unchanged, traceback and all.
"""
from __future__ import annotations

import contextlib
import os
import traceback

from ..errors import ConversionError


def module_function(error: BaseException, path) -> str:
    """The function of the module at `path` that the exception came out of ('build()'), or ''
    if its traceback never passed through that file. The outermost frame in the file is the
    function tf2caffe called; deeper ones are the module's own helpers."""
    path = os.path.realpath(str(path))
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if os.path.realpath(frame.f_code.co_filename) == path:
            name = frame.f_code.co_name
            return "import" if name == "<module>" else name + "()"
    return ""


@contextlib.contextmanager
def architecture_errors(path):
    """Turn an exception raised in the architecture module at `path` into one ConversionError line:
    'PATH: build() failed: ValueError: first line of its message'."""
    try:
        yield
    except ConversionError:
        raise
    except Exception as error:
        function = module_function(error, path)
        if not function:
            raise
        lines = str(error).strip().splitlines()
        raise ConversionError("%s: %s failed: %s%s" % (
            path, function, type(error).__name__, ": " + lines[0] if lines else "")) from error
