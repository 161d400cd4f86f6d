"""Benchmark tf2caffe: VGG-19 at 224x224, and the largest keras.applications models.

    python3 bench/run.py [--models vgg19 ...] [--repeat 3] [--work build/bench] [--output bench/results.md]

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
MIB = 2.0 ** 20
SECTION = "<!-- model: %s -->"  # starts each model's part of results.md
STAGE_ORDER = ["reading", "emitting Caffe layers", "writing the prototxt", "loading the net in Caffe",
               "assigning weights", "saving", "writing weights", "verifying"]


class Model:
    """A benchmarked model: a tflearn architecture module, or a keras.applications builder whose
    seeded, conditioned weights (weights=None, `condition_keras_model`) are saved to a .keras
    file before the timed steps. `targets`: the VGG-19 targets of bench/README.md apply."""

    def __init__(self, title: str, shape: str, arch: Optional[str] = None, keras: Optional[str] = None,
                 targets: bool = False):
        self.title, self.shape, self.arch, self.keras, self.targets = title, shape, arch, keras, targets


# The largest keras.applications classifiers, at the smallest input each accepts (tests/test_zoo.py).
MODELS = {
    "vgg19": Model("VGG-19, 224x224, 1000 classes, 143.7 M parameters", "1,224,224,3",
                   arch="architectures/vgg19.py", targets=True),
    "convnext_xlarge": Model("ConvNeXtXLarge, 32x32, 1000 classes, 350.2 M parameters", "1,32,32,3",
                             keras="ConvNeXtXLarge"),
    "efficientnet_v2_l": Model("EfficientNetV2L, 32x32, 1000 classes, 118.5 M parameters", "1,32,32,3",
                               keras="EfficientNetV2L"),
}


class Run:
    """One child process: wall time, its peak RSS in bytes, what it printed; `error` when it failed
    (the end of its stderr, or the signal that killed it: 9 is the kernel's out-of-memory killer)."""

    def __init__(self, wall: float, rss: int, stdout: str, error: Optional[str] = None):
        self.wall, self.rss, self.stdout, self.error = wall, rss, stdout, error

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
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        error = None
        if code != 0:
            lines = [line for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
            error = "killed by signal %d" % -code if code < 0 else "exit %d: %s" % (code, (lines or [""])[-1])
            sys.stderr.write("bench: %s failed: %s\n" % (" ".join(argv), error))
        return Run(wall, usage.ru_maxrss * 1024, out.read().decode("utf-8", "replace"), error)


class Step:
    """A step run `repeat` times, each time into an empty folder; medians of wall time and RSS."""

    def __init__(self, key: str, label: str, runs: List[Run], inner: Optional[List[float]] = None):
        self.key, self.label, self.runs = key, label, runs
        self.wall = statistics.median(run.wall for run in runs)
        self.rss = statistics.median(run.rss for run in runs)
        self.spread = (min(run.wall for run in runs), max(run.wall for run in runs))
        self.inner = statistics.median(inner) if inner else None  # after interpreter start-up
        self.error = next((run.error for run in runs if run.error), None)


def repeat(key: str, label: str, times: int, argv, folder: Optional[Path] = None, inner=None) -> Step:
    runs, inner_times = [], []
    for _ in range(times):
        if folder is not None:
            shutil.rmtree(str(folder), ignore_errors=True)
            folder.mkdir(parents=True)
        sys.stderr.write("bench: %s ...\n" % label)
        runs.append(run_child(argv))
        if runs[-1].error:  # a failure is reported, not repeated
            break
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
    if step.error and report.exists():  # verification over the tolerance: the report has the stages
        seconds(step.runs[-1])
        step.error += verdict(entries[-1])
    if not entries:
        return step, {}, {}
    names = sorted(entries[-1]["stage_seconds"], key=STAGE_ORDER.index)
    stages = {name: statistics.median(entry["stage_seconds"].get(name, 0.0) for entry in entries) for name in names}
    return step, stages, entries[-1]


def verdict(entry: Dict) -> str:
    """Where a verified import's report puts the worst error, for a failed verification."""
    worst = entry.get("worst") or {}
    return " (report: verified %s, worst layer %s at %s, first over the per-layer tolerance %s)" % (
        entry.get("verified"), worst.get("layer"), "%.1e" % worst["max_rel"] if worst else None,
        entry.get("first_over_layer_tolerance"))


def load_average() -> str:
    return " ".join("%.2f" % value for value in os.getloadavg())


def machine() -> Dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    memory = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    os_name = platform.platform()
    if os.path.exists("/etc/os-release"):
        fields = dict(line.rstrip("\n").split("=", 1) for line in open("/etc/os-release") if "=" in line)
        os_name = "%s, Linux %s" % (fields.get("PRETTY_NAME", "").strip('"'), platform.release())
    return {"CPU": cpu, "cores": str(os.cpu_count()), "RAM": "%.1f GiB" % (memory / 2.0 ** 20), "OS": os_name,
            "load average at start": load_average()}


def measure(name: str, model: Model, work: Path, times: int):
    """Every step for `model`; a failed step is kept (with its error) and what needs its output skipped."""
    steps: Dict[str, Step] = {}
    stages: Dict[str, Dict[str, float]] = {}
    entries: Dict[str, Dict] = {}
    sizes: Dict[str, int] = {}

    def add(step: Step) -> Step:
        steps[step.key] = step
        return step

    def child_seconds(run: Run) -> float:
        return run.json()["seconds"]

    result = (steps, stages, entries, sizes)
    source = model.arch
    if model.keras:
        source = str(work / (name + ".keras"))
        if add(repeat("build", "build it (weights=None, seed 0), condition the weights, save the .keras "
                      "(preparation, not a conversion step)", 1,
                      CHILDREN + ["keras-build", model.keras, model.shape, source])).error:
            return result
    if model.targets:
        add(repeat("interpreter", "interpreter + the native import stage's modules (in-process: the imports)",
                   times, CHILDREN + ["interpreter"], inner=child_seconds))
    export_dir = work / "export"
    if add(repeat("export", "tf2caffe export (TF load or build, forward pass, HDF5)", times,
                  TF2CAFFE + ["export", source, "-o", str(export_dir), "--input-shape", model.shape],
                  export_dir)).error:
        return result
    (h5,) = export_dir.glob("*.h5")
    if model.targets:
        add(repeat("tf_forward", "TF's forward pass (child: import TF, build, init; in-process: one forward)",
                   times, CHILDREN + ["tf-forward", model.arch, model.shape], inner=child_seconds))
        add(repeat("a", "(a) import TF, build the model, np.save every weight", times,
                   CHILDREN + ["tf-save", model.arch, model.shape, str(work / "a")], work / "a", child_seconds))
    else:
        add(repeat("a", "(a) import TF, load the .keras, save it again, np.save every weight", times,
                   CHILDREN + ["keras-save", source, str(work / "a")], work / "a", child_seconds))
    add(repeat("b", "(b) read the HDF5 intermediate, write its bytes unchanged", times,
               CHILDREN + ["h5-copy", str(h5), str(work / "b" / "copy.bin")], work / "b", child_seconds))
    if model.targets:
        add(repeat("permutation", "fc6's flatten permutation (child reads it; in-process: the tiled permutation)",
                   times, CHILDREN + ["permute", str(h5)], inner=child_seconds))
    for backend in ("native", "pycaffe"):
        for verify in (False, True):
            key = "%s%s" % (backend, "_verified" if verify else "")
            step, stages[key], entries[key] = import_step(
                key, "tf2caffe import --backend %s%s" % (backend, "" if verify else " --no-verify"), times,
                h5, work / key, backend, verify)
            add(step)
    sizes["intermediate"] = h5.stat().st_size
    if entries["native"]:
        caffemodel = Path(entries["native"]["files"]["caffemodel"])
        sizes["caffemodel"] = caffemodel.stat().st_size
        add(repeat("c", "(c) cp of the .caffemodel", times, ["cp", str(caffemodel), str(work / "c" / "copy")],
                   work / "c"))
    if model.targets:
        sizes["largest blob"] = 4 * 25088 * 4096  # fc6
        for backend in ("native", "pycaffe"):
            out = work / ("convert_" + backend)
            add(repeat("convert_" + backend, "tf2caffe convert --backend %s --no-verify" % backend, times,
                       TF2CAFFE + ["convert", model.arch, "-o", str(out), "--input-shape", model.shape,
                                   "--backend", backend, "--no-verify"], out))
    return result


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


# The steps the VGG-19 targets compare.
TARGET_STEPS = ("interpreter", "a", "b", "permutation", "native", "pycaffe", "convert_native", "convert_pycaffe")


def targets(steps: Dict[str, Step], sizes: Dict[str, int]) -> List[str]:
    """The VGG-19 targets of bench/README.md, a row each."""
    s = steps
    native, pycaffe = s["native"], s["pycaffe"]
    lines = ["## Targets", "", "| target | measured | limit | verdict |", "| --- | ---: | ---: | --- |"]
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
    return lines + [""]


def markdown(name: str, model: Model, info: Dict[str, str], steps: Dict[str, Step], stages, entries, sizes,
             times: int) -> str:
    """The section of results.md for one model."""
    lines = [SECTION % name, "# tf2caffe benchmark: " + model.title, "",
             "Machine: " + "; ".join("%s: %s" % item for item in info.items()) + ".", "",
             "Each step is a fresh process, run %d time%s: median wall time (min-max) and median peak RSS. "
             "\"In-process\" excludes interpreter start-up and imports. Files are on the local disk, read from "
             "the page cache (warm). A failed step is run once and its error shown." % (
                 times, "" if times == 1 else "s"), "",
             "| step | wall s | (min-max) | in-process s | peak RSS MiB |", "| --- | ---: | ---: | ---: | ---: |"]
    for step in steps.values():
        lines.append("| %s%s | %.2f | %.2f-%.2f | %s | %.0f |" % (
            step.label, " -- **FAILED**: " + step.error.replace("|", "/") if step.error else "", step.wall,
            step.spread[0], step.spread[1], "%.2f" % step.inner if step.inner is not None else "", step.rss / MIB))
    if "permutation" in steps and not steps["permutation"].error:
        lines += ["", "Untiled numpy transpose of the same kernel, for comparison: %.2f s." % statistics.median(
            run.json()["numpy_transpose"] for run in steps["permutation"].runs)]
    lines += ["", "Import stages (median s, from the report's `stage_seconds`):", "",
              "| run | stages |", "| --- | --- |"]
    for key, values in stages.items():
        lines.append("| %s | %s |" % (steps[key].label, ", ".join("%s %.2f" % item for item in values.items())))
    lines += ["", "Sizes: %s." % ", ".join("%s %.1f MiB" % (what, size / MIB) for what, size in sizes.items()), ""]
    if model.targets and all(key in steps and not steps[key].error for key in TARGET_STEPS):
        lines += targets(steps, sizes)
    verifying = ["pycaffe's `verifying` stage %.2f" % stages["pycaffe_verified"]["verifying"]
                 if "verifying" in stages.get("pycaffe_verified", {}) else "",
                 "OpenCV's (loads the files, forward pass) %.2f" % stages["native_verified"]["verifying"]
                 if "verifying" in stages.get("native_verified", {}) else ""]
    if "tf_forward" in steps and steps["tf_forward"].inner is not None:
        verifying.insert(0, "TensorFlow's forward pass %.2f (first run, as export runs it)" % steps["tf_forward"].inner)
    lines += ["Verification, timed apart (median s): %s." % "; ".join(part for part in verifying if part),
              "", "Load average at the end: %s." % load_average(), ""]
    return "\n".join(lines)


def merged(previous: str, sections: Dict[str, str]) -> str:
    """results.md with the sections of the models just run replaced, the others kept, in MODELS order."""
    kept = {}
    for chunk in previous.split(SECTION.split("%s")[0])[1:]:
        kept[chunk.split(" ", 1)[0]] = SECTION.split("%s")[0] + chunk.rstrip("\n") + "\n"
    kept.update(sections)
    return "\n".join(kept[name] for name in MODELS if name in kept)


def main() -> int:
    p = argparse.ArgumentParser(prog="python3 bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=["vgg19"], metavar="MODEL",
                   help="which to run, of %s (default: vgg19)" % ", ".join(MODELS))
    p.add_argument("--repeat", type=int, default=3, help="runs per step (default: 3)")
    p.add_argument("--work", type=Path, default=PROJECT / "build" / "bench",
                   help="scratch folder, up to 15 GB while a model runs, emptied after it (default: build/bench)")
    p.add_argument("--output", type=Path, default=PROJECT / "bench" / "results.md",
                   help="the Markdown tables: the sections of the models run are replaced, the others kept")
    args = p.parse_args()
    if not os.path.exists(PYTHON):
        raise SystemExit("bench: %s is missing: run `make env` first" % PYTHON)
    sections = {}
    for name in args.models:
        info = machine()
        work = args.work.resolve() / name
        work.mkdir(parents=True, exist_ok=True)
        sections[name] = markdown(name, MODELS[name], info, *measure(name, MODELS[name], work, args.repeat),
                                  times=args.repeat)
        print(sections[name])
        shutil.rmtree(str(work))  # the big models' files would not fit side by side on a small disk
    previous = args.output.read_text() if args.output.exists() else ""
    args.output.write_text(merged(previous, sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
