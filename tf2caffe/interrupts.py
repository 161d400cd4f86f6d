"""Ctrl-C held back while steps that belong together run: runs in both environments (Python 3.9).

`pthread_sigmask` cannot do this in a process with threads: it blocks the signal in the calling
thread only, and the kernel hands it to another one (OpenBLAS's workers in the Caffe child),
whose C-level handler still makes Python raise KeyboardInterrupt in the main thread at once.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator, List

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Where Python ignored a Ctrl-C's KeyboardInterrupt: raised by the handler where no exception can
# propagate (a weakref callback in importlib's module locks, an at-fork hook, a
# __del__), it is only reported as "Exception ignored in ...", and the command ran on to its end.
_lost: List[object] = []
_report_others = sys.unraisablehook


def _keep(unraisable) -> None:
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _lost.append(unraisable.object)
    else:
        _report_others(unraisable)


def keep_lost_interrupts() -> None:
    """From now on, a KeyboardInterrupt that Python ignores is raised again by the next held()."""
    global _report_others
    if sys.unraisablehook is not _keep:
        _report_others = sys.unraisablehook
        sys.unraisablehook = _keep


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C (or SIGTERM) comes meanwhile, then act on it as
    usual: KeyboardInterrupt, or termination. A Ctrl-C that Python lost earlier (see
    keep_lost_interrupts) is raised before the block starts. Main thread only (Python's signal
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
