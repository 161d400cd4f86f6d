"""Ctrl-C during `tf2caffe import`, whenever it comes and however busy the machine is: the command
stops with exit 130 and the one line `tf2caffe: interrupted; no output was written`, the output
folder is as it was (no partial output, no scratch folder) and no process of the import is left.

Ctrl-C in a terminal sends SIGINT to the command's whole process group (the Caffe child included);
`kill -INT PID` sends it to the command alone, which must pass it on. Each test tries both, with
the import stage in each Caffe (bullseye's chroot, the source-built Caffe's venv).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from test_bad_input import PROJECT_ROOT, Workspace, assert_untouched
from tf2caffe import intermediate, runtimes
from tf2caffe.intermediate import Layer, Model

pytestmark = [pytest.mark.chroot, pytest.mark.slow]

INTERRUPTED = ["tf2caffe: interrupted; no output was written"]
# After the signal, how long a stop may take at most (it takes about a second).
STOP_SECONDS = 120


def vgg_like(size=64, seed=0) -> Model:
    """VGG-16's layers on a 64x64 input (40 M weights, 160 MB): big enough that converting it
    takes seconds. Random reference outputs: it is interrupted long before verification."""
    rng = np.random.RandomState(seed)
    layers = [Layer("input", "input", [], {"shape": [None, size, size, 3]}, [1, size, size, 3])]
    previous, channels = "input", 3
    for block, (width, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for index in range(1, convs + 1):
            conv = "block%d_conv%d" % (block, index)
            kernel = rng.randn(3, 3, channels, width).astype(np.float32) * np.sqrt(2.0 / (9 * channels))
            layers.append(Layer(conv, "conv2d", [previous], {
                "filters": width, "groups": 1, "kernel_size": [3, 3], "strides": [1, 1],
                "dilation": [1, 1], "padding": "same"}, [1, size, size, width],
                {"kernel": kernel, "bias": np.zeros(width, np.float32)}))
            layers.append(Layer(conv + "/relu", "activation", [conv], {"function": "relu"}, [1, size, size, width]))
            previous, channels = conv + "/relu", width
        size //= 2
        layers.append(Layer("block%d_pool" % block, "max_pool2d", [previous], {
            "pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}, [1, size, size, channels]))
        previous = "block%d_pool" % block
    features = size * size * channels
    layers.append(Layer("flatten", "flatten", [previous], {}, [1, features]))
    previous = "flatten"
    for name, units in (("fc1", 4096), ("fc2", 4096), ("predictions", 10)):
        kernel = rng.randn(features, units).astype(np.float32) / np.sqrt(features)
        layers.append(Layer(name, "dense", [previous], {"units": units}, [1, units],
                            {"kernel": kernel, "bias": np.zeros(units, np.float32)}))
        previous, features = name, units
    return Model("model", layers, ["predictions"], {}, {"input": rng.rand(1, 64, 64, 3).astype(np.float32)},
                 {"predictions": rng.randn(1, 10).astype(np.float32)})


@pytest.fixture(scope="module")
def big_h5(tmp_path_factory) -> Path:
    """Written once (it takes seconds); each test's workspace links to it."""
    path = tmp_path_factory.mktemp("vgg_like") / "model.h5"
    intermediate.write(str(path), vgg_like())
    return path


def workspace(folder: Path, h5: Path) -> Workspace:
    folder.mkdir()
    ws = Workspace(folder)
    os.link(str(h5), str(ws.h5))  # its own name: processes_mentioning() tells the runs apart
    return ws


def _as_in_a_terminal() -> None:
    # A test runner started in the background by a non-interactive shell (`make test &`, some CI
    # launchers) ignores SIGINT, and an ignored SIGINT is inherited: the command would then rightly
    # ignore Ctrl-C too. A terminal's foreground command has SIGINT at its default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_import(ws: Workspace, caffe: str) -> subprocess.Popen:
    """`tf2caffe import` with the import stage in `caffe`, in its own process group (as a shell's
    foreground job)."""
    return subprocess.Popen([sys.executable, "-m", "tf2caffe", *ws.import_args()], cwd=str(PROJECT_ROOT),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, start_new_session=True, preexec_fn=_as_in_a_terminal,
                            env=dict(os.environ, **{runtimes.CAFFE_ENV: caffe}))


def interrupt(command: subprocess.Popen, to_group: bool) -> None:
    (os.killpg if to_group else os.kill)(command.pid, signal.SIGINT)


def finish(command: subprocess.Popen) -> str:
    """Its stderr, once it has ended."""
    _, stderr = command.communicate(timeout=STOP_SECONDS)
    return stderr


def kill_if_running(command: subprocess.Popen) -> None:
    """A failed test's command and its whole group, so that nothing outlives the test."""
    if command.poll() is None:
        os.killpg(command.pid, signal.SIGKILL)
        command.wait()


@contextlib.contextmanager
def busy_cpus() -> Iterator[None]:
    """Every CPU kept busy by a spinning process: signals then meet processes that wait for a CPU."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def interrupted_in_pythons_start(returncode: int, stderr: str) -> bool:
    """Python's own start (site, runpy) was interrupted, before the first line of tf2caffe ran:
    Python exits 1 with its traceback ("Fatal Python error: init_import_site", "Could not import
    runpy module"), and none of its frames is in the package."""
    return (returncode == 1 and stderr.rstrip().endswith("KeyboardInterrupt")
            and str(PROJECT_ROOT / "tf2caffe") not in stderr)


def assert_stopped_cleanly(command: subprocess.Popen, stderr: str, survivors: List[str], ws: Workspace,
                           when: str) -> None:
    # -SIGINT: the signal came before Python had installed its handler (the shell shows 130 too);
    # nothing had started then. Likewise in Python's start (README, Known limits).
    assert (command.returncode in (130, -signal.SIGINT)
            or interrupted_in_pythons_start(command.returncode, stderr)), "%s: exit %s: %s" % (
        when, command.returncode, stderr)
    if command.returncode == 130:
        assert stderr.splitlines() == INTERRUPTED, "%s: %s" % (when, stderr)
    assert not survivors, "%s: the import stage outlived the command: %s" % (when, survivors)
    assert_untouched(ws.out)


def process_commands() -> List[str]:
    """The command line of every process."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
        except OSError:
            continue  # it ended meanwhile
    return found


def processes_mentioning(text: str) -> List[str]:
    return [command for command in process_commands() if text in command]


def import_stages(ws: Workspace, commands: List[str]) -> int:
    """How many processes run this workspace's import stage (2 while a child reads the file)."""
    return sum(" -m tf2caffe.import_stage %s " % ws.h5 in command for command in commands)


def scratch_prototxt(ws: Workspace) -> bool:
    # It reaches the scratch folder just before Caffe loads the net (which takes seconds).
    return bool(list(ws.out.glob(".tf2caffe-import-*/model.prototxt")))


# When each run is interrupted: a moment of the import, seen from outside (the run's workspace,
# every process's command line, seconds since its start). Together they cover the command's start,
# the Caffe chroot's (the shells and unshare last milliseconds: they fall between the first
# moments), its Python's and pycaffe's, the child process that reads the whole file once, and
# Caffe loading the net.
MOMENTS = {
    "at_once": lambda ws, commands, seconds: True,
    "after_0.1s": lambda ws, commands, seconds: seconds >= 0.1,  # numpy loading, on a busy machine
    "after_0.2s": lambda ws, commands, seconds: seconds >= 0.2,
    "after_0.5s": lambda ws, commands, seconds: seconds >= 0.5,
    "import_stage_started": lambda ws, commands, seconds: import_stages(ws, commands) >= 1,
    "file_read_in_a_child": lambda ws, commands, seconds: import_stages(ws, commands) == 2,
    "caffe_loading_the_net": lambda ws, commands, seconds: scratch_prototxt(ws),
}


@pytest.mark.parametrize("caffe", runtimes.CAFFES)
def test_interrupted_at_every_moment_under_load(tmp_path, big_h5, caffe):
    """One run per moment and per way (Ctrl-C, `kill -INT`), all at once, with every CPU busy."""
    if not runtimes.RUNTIMES[caffe].available():
        pytest.skip("the %s Caffe is not built" % caffe)
    runs = []
    with busy_cpus():
        try:
            for moment, reached in MOMENTS.items():
                for to_group in (True, False):
                    ws = workspace(tmp_path / ("%s_%s" % (moment, "ctrl_c" if to_group else "kill")), big_h5)
                    runs.append((moment, reached, to_group, ws, start_import(ws, caffe)))
            started = time.monotonic()
            waiting = list(runs)
            while waiting:
                commands = process_commands()
                seconds = time.monotonic() - started
                for run in list(waiting):
                    moment, reached, to_group, ws, command = run
                    assert command.poll() is None, "%s: ended before it: %s" % (moment, command.communicate())
                    if reached(ws, commands, seconds):
                        interrupt(command, to_group)
                        waiting.remove(run)
                assert seconds < 120, "never reached: %s" % [run[0] for run in waiting]
                time.sleep(0.005)
            ended = []
            for _, _, _, ws, command in runs:
                stderr = finish(command)
                ended.append((stderr, processes_mentioning(str(ws.h5))))  # at once: none may linger
        finally:
            for *_, command in runs:
                kill_if_running(command)
    for (moment, _, to_group, ws, command), (stderr, survivors) in zip(runs, ended):
        assert_stopped_cleanly(command, stderr, survivors, ws, "%s (%s)" % (moment, "Ctrl-C" if to_group else "kill -INT"))
