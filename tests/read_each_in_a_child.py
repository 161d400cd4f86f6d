"""Read intermediate files as the import stage does, each in a forked child, and report per file.

    python3 tests/read_each_in_a_child.py FILE.h5...

Run inside the Caffe chroot (h5py 2.10, HDF5 1.10) by tests/test_intermediate_fuzz.py, one
process for the whole batch. Prints one JSON object: file -> {"outcome": "clean" | "error" |
"other" | "crash", "detail": the message, exception or signal}, or "slow" when
the read had not ended after SECONDS_PER_FILE. "error" is the project's
IntermediateError, "other" any other exception (a bug: the reader let it through), "crash" the
child's death by a signal (HDF5's C library dereferencing corrupt metadata, which the
reader's own check in a child process should have turned into an IntermediateError).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

from tf2caffe import intermediate

CLEAN, ERROR, OTHER = 0, 3, 4
# A good small file reads in milliseconds; some corrupt ones make HDF5 1.10 allocate gigabytes
# (a flipped length in the global heap that holds string attributes) for seconds on end.
SECONDS_PER_FILE = 3.0


def read_like_the_import_stage(path: str) -> None:
    """What the import stage reads from a file: the check in a child of its own, then the
    structure, the compared layers and every array and reference dataset."""
    intermediate.check_readable(path)
    model = intermediate.read(path)
    try:
        model.compared_layers()
        model.read_all()
    finally:
        model.file.close()


def read_in_child(path: str, report_fd: int) -> int:
    try:
        read_like_the_import_stage(path)
    except intermediate.IntermediateError as error:
        os.write(report_fd, str(error).encode("utf-8", "replace"))
        return ERROR
    except BaseException:
        os.write(report_fd, traceback.format_exc().encode("utf-8", "replace"))
        return OTHER
    return CLEAN


def outcome(path: str) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)  # its own group, with the reader's own child: killed together when slow
        os.close(read_end)
        os._exit(read_in_child(path, write_end))
    os.close(write_end)
    deadline = time.monotonic() + SECONDS_PER_FILE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return {"outcome": "slow", "detail": "still reading after %g s" % SECONDS_PER_FILE}
        time.sleep(0.002)
    with os.fdopen(read_end, "rb") as pipe:
        detail = pipe.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return {"outcome": "crash", "detail": signal.Signals(os.WTERMSIG(status)).name}
    code = os.WEXITSTATUS(status)
    return {"outcome": {CLEAN: "clean", ERROR: "error", OTHER: "other"}.get(code, "other"),
            "detail": detail or "exit status %d" % code}


def main(paths) -> None:
    json.dump({path: outcome(path) for path in paths}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
