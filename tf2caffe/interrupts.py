"""Ctrl-C held back while steps that belong together run: runs in both environments (Python 3.9).

`pthread_sigmask` cannot do this in a process with threads: it blocks the signal in the calling
thread only, and the kernel hands it to another one (OpenBLAS's workers in the Caffe child),
whose C-level handler still makes Python raise KeyboardInterrupt in the main thread at once.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator, List

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C (or SIGTERM) comes meanwhile, then act on it as
    usual: KeyboardInterrupt, or termination. Main thread only (Python's signal handlers run there)."""
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
