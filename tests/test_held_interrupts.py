"""interrupts.held(): Ctrl-C waits for the end of the block, also in a process with threads (the
Caffe child has OpenBLAS's), where a signal mask did not hold it."""
import os
import signal
import threading
import time
import weakref

import pytest

from tf2caffe import interrupts


@pytest.fixture
def another_thread():
    """A thread that does not block SIGINT, like OpenBLAS's workers: the kernel may hand it a
    signal sent to the process."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    yield
    stop.set()
    thread.join()


def ctrl_c_then_work(done):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs signal handlers between bytecodes: they had their chance
    done.append("the rest of the block")


def test_ctrl_c_waits_for_the_end_of_the_block(another_thread):
    done = []
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            ctrl_c_then_work(done)
    assert done == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_signal_mask_does_not_hold_ctrl_c_in_a_process_with_threads(another_thread):
    """Why held() uses a Python handler: pthread_sigmask blocks the calling thread only, the
    kernel hands the signal to the other thread, and Python raises in the main one at once."""
    done = []
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with pytest.raises(KeyboardInterrupt):
            ctrl_c_then_work(done)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    assert done == []


def test_a_ctrl_c_that_python_ignored_is_raised_by_the_next_held():
    """Its handler ran in a weakref callback (as in importlib's module locks), where Python only
    reports the KeyboardInterrupt as "Exception ignored"."""
    interrupts.watch()
    done = []
    referent = set()
    reference = weakref.ref(referent, lambda _: ctrl_c_then_work(done))
    del referent  # the callback runs here: its KeyboardInterrupt is ignored
    assert done == [] and reference() is None
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            done.append("the block")
    assert done == []
