"""The Caffe-environment runner: `python3 -m tf2caffe.import_stage` in a Caffe (runtimes.py):
bullseye's chroot or the source-built Caffe's venv.

Makes the files and folders the import stage needs visible in the chroot, relays its stderr
(progress bars included) without glog's lines, and turns Caffe's process-killing CHECK failures
and crashes into one ConversionError naming the file Caffe was working on. A Ctrl-C stops the
stage and says which files were written. `measure_in` runs tf2caffe.caffe.pycaffe_check the same
way, to verify written files in another Caffe.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Dict, List, Optional

from . import interrupts
from .errors import ConversionError, signal_name
from .import_options import ImportOptions

if TYPE_CHECKING:
    from .report import Report
    from .runtimes import Runtime

# glog: "F1126 12:34:56.789012 12345 net.cpp:123] Check failed: ..." plus its stack dump.
GLOG_LINE = re.compile(r"^([IWEF])(?:\d{4})?\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ?(.*)$")
GLOG_NOISE = re.compile(r"^(\*\*\* |\s+@\s+0x|WARNING: Logging before InitGoogleLogging)")


def _seen_inside(path: Optional[str]) -> Optional[str]:
    """The path as given, unless it goes through a symbolic link: the chroot sees real
    directories only (bind-mounted at their real paths)."""
    if path is None:
        return None
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    return path if real == absolute else real


def run_import_stage(files: List[str], output: str, options: ImportOptions, caffe: "Runtime",
                     stdout=None) -> int:
    """Run the import stage in `caffe` (a runtimes.Runtime); returns its exit status. A Caffe abort becomes
    a ConversionError naming the file Caffe was working on. Output folders it had to create are
    removed again if nothing was written in them. `stdout`: where the stage's own report lines
    go (default: ours)."""
    new_folders = _missing_folders(os.path.abspath(output))
    try:
        return _run_import_stage(files, output, options, caffe, stdout)
    finally:
        for folder in new_folders:
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty: a result (or a folder already there)


def _missing_folders(path: str) -> List[str]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _run_import_stage(files: List[str], output: str, options: ImportOptions, caffe: "Runtime", stdout) -> int:
    files = [_seen_inside(path) for path in files]
    output = _seen_inside(output)
    options = dataclasses.replace(options, prototxt=_seen_inside(options.prototxt),
                                  report=_seen_inside(options.report))
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise ConversionError("%s: cannot create the output folder: %s" % (output, error.strerror))
    binds = [output] + [path for path in list(files) + [options.prototxt, options.report]
                        if path and os.path.exists(path)]
    if options.report:
        binds.append(_report_folder(options.report))
    scratch = None
    status_read = status_write = -1
    reader = child = None
    started: List[str] = []
    written: List[str] = []
    try:
        # Held: a Ctrl-C as the folder is made would leave it behind.
        with interrupts.held():
            try:
                scratch = tempfile.mkdtemp(prefix=".tf2caffe-import-", dir=output)
            except OSError as error:
                raise ConversionError("%s: cannot write in the output folder: %s" % (output, error.strerror))
            status_read, status_write = os.pipe()
        argv = ["-m", "tf2caffe.import_stage"] + options.argv(files, output)
        argv += ["--scratch", scratch, "--status-fd", str(status_write)]
        command = caffe.command(argv, binds, os.getcwd())
        # The child runs in a process group of its own, which `_stop` signals whole: a Ctrl-C
        # that reached the shell setting up the chroot (dash -c defers SIGINT to the next
        # command) or a process between fork and exec would otherwise be lost, and the import run
        # to its end. A Ctrl-C while Popen starts it (or the status reader) is raised once
        # `child` names what to stop and `reader` a thread that runs.
        with interrupts.held():
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=subprocess.PIPE, pass_fds=(status_write,),
                                     start_new_session=True)
            os.close(status_write)
            status_write = -1
            reader = threading.Thread(target=_read_status, args=(status_read, started, written), daemon=True)
            reader.start()
        fatal = _relay_stderr(child.stderr, keep_glog=options.debug)
        returncode = child.wait()
        reader.join()
    except KeyboardInterrupt:
        if child is not None:
            _stop(child)
        if reader is not None:
            reader.join()
        raise KeyboardInterrupt(_interrupted(started, written))
    finally:
        if status_write >= 0:
            os.close(status_write)
        if reader is None and status_read >= 0:
            os.close(status_read)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if returncode < 0 or (returncode != 0 and fatal):
        where = started[-1] if started else files[0]
        if fatal:
            raise ConversionError("%s: Caffe refused the net: %s" % (where, fatal))
        raise ConversionError("%s: Caffe crashed (killed by %s)" % (where, signal_name(-returncode)))
    return returncode


def measure_in(caffe: "Runtime", converted: "Report") -> Dict[str, Dict]:
    """{file: report.runtime_errors} of the `converted` files (an import report), measured in
    `caffe` (tf2caffe.caffe.pycaffe_check, reading a copy of the report). A Caffe abort becomes a
    ConversionError."""
    from . import report as import_report
    files = list(converted.results)
    with tempfile.TemporaryDirectory(prefix="tf2caffe-check-") as folder:
        report = os.path.join(folder, "report.json")
        import_report.write(report, converted)
        binds = [report] + [path for result in converted.results.values()
                            for path in (result.file, result.prototxt, result.caffemodel)]
        command = caffe.command(["-m", "tf2caffe.caffe.pycaffe_check", report] + files,
                                [_seen_inside(path) for path in binds], os.getcwd())
        completed = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, universal_newlines=True)
    if completed.returncode == 0:
        return json.loads(completed.stdout)
    lines = completed.stderr.splitlines()
    glog = [match for match in map(GLOG_LINE.match, lines) if match]
    fatal = next((match.group(2).strip() for match in glog if match.group(1) == "F"), None)
    said = [line for line in lines if not (GLOG_LINE.match(line) or GLOG_NOISE.match(line) or not line.strip())]
    where = ", ".join(files)
    if fatal:
        raise ConversionError("%s: %s refused the net: %s" % (where, caffe.name, fatal))
    if completed.returncode < 0:
        raise ConversionError("%s: %s crashed (killed by %s)" % (where, caffe.name, signal_name(-completed.returncode)))
    # Its own one-line error ("tf2caffe: error: ..."), which names the file.
    raise ConversionError("in %s: %s" % (caffe.name, said[-1].split("error: ", 1)[-1] if said else
                                         "exit status %d" % completed.returncode))


def _report_folder(report: str) -> str:
    """The report's folder, created if needed; refused now if the report could not be written
    there, rather than after the conversion."""
    folder = os.path.dirname(os.path.abspath(report))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ConversionError("%s: cannot create the report's folder: %s" % (report, error.strerror))
    if os.path.isdir(report) or not os.access(folder, os.W_OK):
        raise ConversionError("%s: cannot write the report: %s" % (
            report, "is a directory" if os.path.isdir(report) else "permission denied"))
    return folder


def _read_status(fd: int, started: List[str], written: List[str]) -> None:
    """The import stage's "start<TAB>FILE" and "wrote<TAB>FILE" lines."""
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:
            event, _, path = line.decode("utf-8", "replace").rstrip("\n").partition("\t")
            (written if event == "wrote" else started).append(path)


def _stop(child: subprocess.Popen) -> None:
    """Interrupt the import stage's whole process group (a Ctrl-C reaches this process only) and
    wait until it has ended, so that nothing is written after this process has said what was. A
    second Ctrl-C kills it."""
    try:
        _signal_group(child, signal.SIGINT)
        child.communicate()  # its stderr (its own "interrupted" line) is not the user's news
    except KeyboardInterrupt:
        _signal_group(child, signal.SIGKILL)
        child.wait()


def _signal_group(child: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(child.pid, number)
    except ProcessLookupError:
        pass  # the group has ended already


def _interrupted(started: List[str], written: List[str]) -> str:
    unfinished = [path for path in started if path not in written]
    if not written:
        return "interrupted; no output was written"
    return "interrupted; wrote the output of %s only%s" % (
        ", ".join(written), "; none for %s" % unfinished[-1] if unfinished else "")


def _relay_stderr(stream, keep_glog: bool) -> Optional[str]:
    """Copy the child's stderr to ours as it comes (progress bars included), without glog's lines;
    returns the first fatal glog message (e.g. 'Check failed: ...')."""
    fatal = None
    pending = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        segments = re.split(rb"(?<=[\r\n])", pending)
        pending = segments.pop()  # incomplete (or empty) tail
        for segment in segments:
            fatal = _relay_segment(segment, keep_glog, fatal)
    if pending:
        fatal = _relay_segment(pending, keep_glog, fatal)
    stream.close()
    return fatal


def _relay_segment(segment: bytes, keep_glog: bool, fatal: Optional[str]) -> Optional[str]:
    text = segment.decode("utf-8", "replace")
    match = GLOG_LINE.match(text.rstrip("\r\n"))
    if match and match.group(1) == "F" and fatal is None:
        fatal = match.group(2).strip()
    if keep_glog or not (match or GLOG_NOISE.match(text)):
        sys.stderr.write(text)
        sys.stderr.flush()
    return fatal


