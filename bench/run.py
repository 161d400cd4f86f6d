"""Benchmark tf2caffe on VGG-19 at 224x224 (1000 classes, 143.7 M parameters, seeded weights).

    python3 bench/run.py [--repeat 3] [--work build/bench] [--output bench/results.md]

Every step runs in a fresh child process (`os.wait4` gives that child's own peak RSS); each is
repeated and the median reported. Standard library only: the children run in the project's
venvs. See bench/README.md for the targets and how to read the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = str(PROJECT / ".venv" / "bin" / "python")
TF2CAFFE = [PYTHON, "-m", "tf2caffe"]
CHILDREN = [PYTHON, str(PROJECT / "bench" / "children.py")]
ARCH = "architectures/vgg19.py"
SHAPE = "1,224,224,3"
MIB = 2.0 ** 20
STAGE_ORDER = ["reading", "emitting Caffe layers", "writing the prototxt", "loading the net in Caffe",
               "assigning weights", "saving", "writing weights", "verifying"]


class Run:
    """One child process: wall time, its peak RSS in bytes, what it printed."""

    def __init__(self, wall: float, rss: int, stdout: str):
        self.wall, self.rss, self.stdout = wall, rss, stdout

    def json(self) -> Dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_child(argv: List[str]) -> Run:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen(argv, cwd=str(PROJECT), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit("bench: %s failed (exit %d):\n%s" % (
                " ".join(argv), child.returncode, err.read().decode("utf-8", "replace")[-3000:]))
        return Run(wall, usage.ru_maxrss * 1024, out.read().decode("utf-8", "replace"))


class Step:
    """A step run `repeat` times, each time into an empty folder; medians of wall time and RSS."""

    def __init__(self, key: str, label: str, runs: List[Run], inner: Optional[List[float]] = None):
        self.key, self.label, self.runs = key, label, runs
        self.wall = statistics.median(run.wall for run in runs)
        self.rss = statistics.median(run.rss for run in runs)
        self.spread = (min(run.wall for run in runs), max(run.wall for run in runs))
        self.inner = statistics.median(inner) if inner else None  # after interpreter start-up


def repeat(key: str, label: str, times: int, argv, folder: Optional[Path] = None, inner=None) -> Step:
    runs, inner_times = [], []
    for _ in range(times):
        if folder is not None:
            shutil.rmtree(str(folder), ignore_errors=True)
            folder.mkdir(parents=True)
        sys.stderr.write("bench: %s ...\n" % label)
        runs.append(run_child(argv))
        if inner is not None:
            inner_times.append(inner(runs[-1]))
    return Step(key, label, runs, inner_times)


def report_entry(report: Path) -> Dict:
    return next(iter(json.loads(report.read_text())["results"].values()))


def import_step(key: str, label: str, times: int, h5: Path, out: Path, backend: str, verify: bool):
    report = out / "report.json"
    argv = TF2CAFFE + ["import", str(h5), "-o", str(out), "--backend", backend, "--report", str(report)]
    entries = []

    def seconds(run: Run) -> float:
        entries.append(report_entry(report))
        return entries[-1]["seconds"]

    step = repeat(key, label, times, argv + ([] if verify else ["--no-verify"]), out, seconds)
    names = sorted(entries[-1]["stage_seconds"], key=STAGE_ORDER.index)
    stages = {name: statistics.median(entry["stage_seconds"].get(name, 0.0) for entry in entries) for name in names}
    return step, stages, entries[-1]


def machine() -> Dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    memory = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    os_name = platform.platform()
    if os.path.exists("/etc/os-release"):
        fields = dict(line.rstrip("\n").split("=", 1) for line in open("/etc/os-release") if "=" in line)
        os_name = "%s, Linux %s" % (fields.get("PRETTY_NAME", "").strip('"'), platform.release())
    return {"CPU": cpu, "cores": str(os.cpu_count()), "RAM": "%.1f GiB" % (memory / 2.0 ** 20), "OS": os_name,
            "load average at start": " ".join("%.2f" % value for value in os.getloadavg())}


def measure(work: Path, times: int):
    steps: Dict[str, Step] = {}
    stages: Dict[str, Dict[str, float]] = {}

    def add(step: Step) -> Step:
        steps[step.key] = step
        return step

    export_dir = work / "export"
    add(repeat("interpreter", "interpreter + the native import stage's modules (in-process: the imports)", times,
               CHILDREN + ["interpreter"], inner=lambda run: run.json()["seconds"]))
    add(repeat("export", "tf2caffe export (TF build, seeded init, forward pass, HDF5)", times,
               TF2CAFFE + ["export", ARCH, "-o", str(export_dir), "--input-shape", SHAPE], export_dir))
    h5 = export_dir / "vgg19.h5"
    add(repeat("tf_forward", "TF's forward pass (child: import TF, build, init; in-process: one forward)", times,
               CHILDREN + ["tf-forward", ARCH, SHAPE], inner=lambda run: run.json()["seconds"]))
    add(repeat("a", "(a) import TF, build VGG-19, np.save every weight", times,
               CHILDREN + ["tf-save", ARCH, SHAPE, str(work / "a")], work / "a", lambda run: run.json()["seconds"]))
    add(repeat("b", "(b) read the HDF5 intermediate, write its bytes unchanged", times,
               CHILDREN + ["h5-copy", str(h5), str(work / "b" / "copy.bin")], work / "b",
               lambda run: run.json()["seconds"]))
    permutation = add(repeat("permutation", "fc6's flatten permutation (child reads it; in-process: the tiled "
                             "permutation)", times, CHILDREN + ["permute", str(h5)],
                             inner=lambda run: run.json()["seconds"]))
    numpy_transpose = statistics.median(run.json()["numpy_transpose"] for run in permutation.runs)
    entries = {}
    for backend in ("native", "pycaffe"):
        for verify in (False, True):
            key = "%s%s" % (backend, "_verified" if verify else "")
            step, stages[key], entries[key] = import_step(
                key, "tf2caffe import --backend %s%s" % (backend, "" if verify else " --no-verify"), times,
                h5, work / key, backend, verify)
            add(step)
    caffemodel = Path(entries["native"]["files"]["caffemodel"])
    add(repeat("c", "(c) cp of the .caffemodel", times, ["cp", str(caffemodel), str(work / "c" / "copy")],
               work / "c"))
    for backend in ("native", "pycaffe"):
        out = work / ("convert_" + backend)
        add(repeat("convert_" + backend, "tf2caffe convert --backend %s --no-verify" % backend, times,
                   TF2CAFFE + ["convert", ARCH, "-o", str(out), "--input-shape", SHAPE, "--backend", backend,
                               "--no-verify"], out))
    sizes = {"intermediate": h5.stat().st_size, "caffemodel": caffemodel.stat().st_size,
             "largest blob": 4 * 25088 * 4096}
    return steps, stages, entries, sizes, numpy_transpose


def check(name: str, measured: float, limit: float, unit: str, formula: str) -> str:
    """A row: `measured` must be at most `limit`."""
    verdict = "met" if measured <= limit else "MISSED by %.2f %s (%.0f%%)" % (
        measured - limit, unit, 100.0 * (measured - limit) / limit)
    return "| %s | %.2f %s | %.2f %s = %s | %s |" % (name, measured, unit, limit, unit, formula, verdict)


def check_speedup(name: str, native: float, pycaffe: float, wanted: float = 3.0) -> str:
    ratio = pycaffe / native
    verdict = "met" if ratio >= wanted else "MISSED: native would need %.2f s (%.2f s less)" % (
        pycaffe / wanted, native - pycaffe / wanted)
    return "| %s | %.2fx (%.2f s vs %.2f s) | %.0fx | %s |" % (name, ratio, native, pycaffe, wanted, verdict)


def markdown(info, steps, stages, entries, sizes, numpy_transpose, times: int) -> str:
    s = steps
    lines = ["# tf2caffe benchmark: VGG-19, 224x224, 1000 classes, 143.7 M parameters", "",
             "Machine: " + "; ".join("%s: %s" % item for item in info.items()) + ".", "",
             "Each step is a fresh process, run %d times: median wall time (min-max) and median peak RSS. "
             "\"In-process\" excludes interpreter start-up and imports. Files are on the local disk, read from "
             "the page cache (warm)." % times, "",
             "| step | wall s | (min-max) | in-process s | peak RSS MiB |", "| --- | ---: | ---: | ---: | ---: |"]
    for step in steps.values():
        lines.append("| %s | %.2f | %.2f-%.2f | %s | %.0f |" % (
            step.label, step.wall, step.spread[0], step.spread[1],
            "%.2f" % step.inner if step.inner is not None else "", step.rss / MIB))
    lines += ["", "Untiled numpy transpose of the same kernel, for comparison: %.2f s." % numpy_transpose, "",
              "Import stages (median s, from the report's `stage_seconds`):", "",
              "| run | stages |", "| --- | --- |"]
    for key, values in stages.items():
        lines.append("| %s | %s |" % (s[key].label, ", ".join("%s %.2f" % item for item in values.items())))
    lines += ["", "Sizes: intermediate %.1f MiB, .caffemodel %.1f MiB, largest blob (fc6) %.1f MiB." % (
        sizes["intermediate"] / MIB, sizes["caffemodel"] / MIB, sizes["largest blob"] / MIB), ""]
    native, pycaffe = s["native"], s["pycaffe"]
    lines += ["## Targets", "", "| target | measured | limit | verdict |", "| --- | ---: | ---: | --- |"]
    for backend in ("native", "pycaffe"):
        lines.append(check("convert --backend %s --no-verify <= 1.5 x (a) + import stage" % backend,
                           s["convert_" + backend].wall, 1.5 * s["a"].wall + s[backend].wall, "s",
                           "1.5 x %.2f + %.2f" % (s["a"].wall, s[backend].wall)))
    lines.append(check("native import, in-process <= 2 x (b) + permutation", native.inner,
                       2 * s["b"].inner + s["permutation"].inner, "s",
                       "2 x %.2f + %.2f" % (s["b"].inner, s["permutation"].inner)))
    lines.append(check_speedup("native import vs pycaffe route (whole processes)", native.wall, pycaffe.wall))
    lines.append(check_speedup("native import vs pycaffe route (in-process)", native.inner, pycaffe.inner))
    limit = s["interpreter"].rss + 2 * sizes["largest blob"] + 64 * MIB
    lines.append(check("native peak RSS <= interpreter + 2 x largest blob + 64 MiB", native.rss / MIB, limit / MIB,
                       "MiB", "%.0f + 2 x %.0f + 64" % (s["interpreter"].rss / MIB, sizes["largest blob"] / MIB)))
    lines += ["", "Verification, timed apart (median s): TensorFlow's forward pass %.2f (first run, as export "
              "runs it); pycaffe's `verifying` stage %.2f; OpenCV's (loads the files, forward pass) %.2f." % (
                  s["tf_forward"].inner, stages["pycaffe_verified"].get("verifying", 0.0),
                  stages["native_verified"].get("verifying", 0.0)),
              "", "Load average at the end: %s." % " ".join("%.2f" % value for value in os.getloadavg()), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python3 bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per step (default: 3)")
    p.add_argument("--work", type=Path, default=PROJECT / "build" / "bench",
                   help="scratch folder, about 7 GB (default: build/bench)")
    p.add_argument("--output", type=Path, default=PROJECT / "bench" / "results.md", help="the Markdown table")
    args = p.parse_args()
    if not os.path.exists(PYTHON):
        raise SystemExit("bench: %s is missing: run `make env` first" % PYTHON)
    info = machine()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    text = markdown(info, *measure(work, args.repeat), times=args.repeat)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
