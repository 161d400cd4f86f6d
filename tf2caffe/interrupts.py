"""Ctrl-C held back while steps that belong together run: runs in both environments (Python 3.9).

`pthread_sigmask` cannot do this in a process with threads: it blocks the signal in the calling
thread only, and the kernel hands it to another one (OpenBLAS's workers in the Caffe child),
whose C-level handler still makes Python raise KeyboardInterrupt in the main thread at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, Iterator, List, NoReturn, Tuple

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Where Python ignored a Ctrl-C's KeyboardInterrupt: raised by the handler where no exception can
# propagate (a weakref callback in importlib's module locks, an at-fork hook, a
# __del__), it is only reported as "Exception ignored in ...", and the command ran on to its end.
_lost: List[object] = []
_report_others = sys.unraisablehook
# How many Ctrl-Cs (SIGINTs) came since watch().
_seen = 0


def _keep(unraisable) -> None:
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _lost.append(unraisable.object)
    else:
        _report_others(unraisable)


def _interrupt(_number, _frame) -> None:
    global _seen
    _seen += 1
    raise KeyboardInterrupt


def watch() -> None:
    """From now on, count every Ctrl-C (see seen()), and raise a KeyboardInterrupt that Python
    ignored again at the next held(). A SIGINT that the command inherited as ignored stays ignored."""
    global _report_others
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    if sys.unraisablehook is not _keep:
        _report_others = sys.unraisablehook
        sys.unraisablehook = _keep


def seen() -> int:
    """How many Ctrl-Cs came since watch(). Whatever fails after one failed of it: C extensions
    turn a KeyboardInterrupt raised inside their import into an ImportError (numpy's "PyCapsule_Import
    could not import module"), and Python < 3.12 wraps one raised by a class's creation in a
    RuntimeError."""
    return _seen


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C (or SIGTERM) comes meanwhile, then act on it as
    usual: KeyboardInterrupt, or termination. A Ctrl-C that Python lost earlier (see
    watch) is raised before the block starts. Main thread only (Python's signal
    handlers run there)."""
    if _lost:
        del _lost[:]
        raise KeyboardInterrupt
    received: List[int] = []

    def record(number, _frame):
        received.append(number)

    previous = {number: signal.signal(number, record) for number in HELD_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):  # each once, in the order they came
            signal.raise_signal(number)  # to this thread: its handler runs before this returns


def in_forked_child(work: Callable[[int], int]) -> Tuple[int, bytes]:
    """Run `work(write_fd)` in a forked child; (how it ended, what it wrote). How it ended is the
    child's exit status, 1 if `work` raised, or minus the signal that killed it. A Ctrl-C that
    kills the child is this process's KeyboardInterrupt too, and the child never outlives it."""
    read_end, write_end = os.pipe()
    pid = None
    try:
        # Held while forking: the handler of a SIGINT that comes during os.fork() can run in one
        # of its at-fork hooks (logging's), which ignore the KeyboardInterrupt it raises.
        with held():
            pid = os.fork()
            if pid == 0:
                _run_child(work, read_end, write_end)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            written = pipe.read()
    except KeyboardInterrupt:
        # Ctrl-C to this process alone (`kill -INT`). The child is not reaped yet (only the
        # waitpid below reaps it), so its pid is still its own.
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        if os.WTERMSIG(status) == signal.SIGINT:
            # Ctrl-C reaches the whole process group: this process's own KeyboardInterrupt may
            # not have been raised yet.
            raise KeyboardInterrupt
        return -os.WTERMSIG(status), written
    return os.WEXITSTATUS(status), written


def _run_child(work: Callable[[int], int], read_end: int, write_end: int) -> NoReturn:
    status = 1
    try:
        # Interrupted, the child dies of the signal, which its parent tells from a failure. (It
        # inherits the handlers of the parent's held(), which it never leaves.)
        for number in HELD_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        os.close(read_end)
        status = work(write_end)
    finally:
        os._exit(status)  # no cleanup handlers: they belong to the parent
