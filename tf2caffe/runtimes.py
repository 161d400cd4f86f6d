"""The runtimes a converted net can run in, and which of them writes it.

- `bullseye`: Debian bullseye's packaged pycaffe, in its chroot (environments.py);
- `source`: the Caffe built from source (BVLC + SSD layers), in its venv (source_caffe.py);
- `opencv`: OpenCV 4.x's Caffe importer, in this process (the TensorFlow venv).

Each says whether it is available on this machine (built: nothing is built here) and which
Caffe layer types it runs. A net is verified in every available runtime that has all of its
layer types; it is written with pycaffe in the first such Caffe (`caffe_order`), else by the
native writer, and then verified in OpenCV alone. TF2CAFFE_CAFFE (`make env CAFFE=...`) names
the Caffe to prefer, or `none` to use no Caffe at all.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from . import interrupts
from .atomic import atomic_file
from .errors import ConversionError

CAFFE_ENV = "TF2CAFFE_CAFFE"
NO_CAFFE = "none"
CAFFES = ("bullseye", "source")  # the default preference: the reference target first
OPENCV = "opencv"

LIST_LAYER_TYPES = "import caffe; print('\\n'.join(sorted(caffe.layer_type_list())))"


class Runtime:
    key = ""  # what TF2CAFFE_CAFFE and the tests call it
    name = ""  # what reports and the terminal call it
    is_caffe = True

    def available(self) -> bool:
        raise NotImplementedError

    def layer_types(self) -> FrozenSet[str]:
        """The Caffe layer types it runs (only asked of an available runtime)."""
        raise NotImplementedError

    def command(self, argv: Sequence[str], paths: Iterable[str], cwd: str) -> List[str]:
        """A Caffe's: the command line that runs `python3 ARGV...` in it, with `paths` and `cwd`
        visible at their real paths."""
        raise NotImplementedError

    def missing(self, types: Iterable[str]) -> List[str]:
        """The types of a net that this runtime lacks."""
        return sorted(set(types) - self.layer_types())

    def runs(self, types: Iterable[str]) -> bool:
        return self.available() and not self.missing(types)


class BullseyeCaffe(Runtime):
    key, name = "bullseye", "pycaffe-bullseye"

    def available(self) -> bool:
        from . import environments
        return environments.built_caffe_root() is not None and not environments.userns_error()

    def layer_types(self) -> FrozenSet[str]:
        return _bullseye_layer_types()

    def command(self, argv: Sequence[str], paths: Iterable[str], cwd: str) -> List[str]:
        """`python3 ARGV...` in the chroot, with `paths` (and cwd) visible at their real paths."""
        from . import environments
        return environments.caffe_command(["python3", *argv], paths, cwd)


@lru_cache(maxsize=None)
def _bullseye_layer_types() -> FrozenSet[str]:
    """`caffe.layer_type_list()` of the chroot, asked once and kept next to the root (which is
    never changed once built)."""
    from . import environments
    root = environments.built_caffe_root()
    recorded = root.with_name(root.name + ".layer-types.txt")
    if recorded.exists():
        return frozenset(recorded.read_text().split())
    listed = subprocess.run(BullseyeCaffe().command(["-c", LIST_LAYER_TYPES], [], os.getcwd()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if listed.returncode != 0 or not listed.stdout.split():
        raise RuntimeError("cannot list the layer types of the Caffe in %s: %s" % (root, listed.stderr))
    try:
        with atomic_file(str(recorded), mode="w") as out:
            out.write(listed.stdout)
    except ConversionError:
        pass  # a shared cache this user cannot write: asked again next time
    return frozenset(listed.stdout.split())


class SourceCaffe(Runtime):
    key, name = "source", "pycaffe-source"

    def available(self) -> bool:
        from .source_caffe import built_source_caffe_python
        return built_source_caffe_python() is not None

    def layer_types(self) -> FrozenSet[str]:
        from .source_caffe import source_caffe_layer_types
        return frozenset(source_caffe_layer_types())

    def command(self, argv: Sequence[str], paths: Iterable[str], cwd: str) -> List[str]:
        """The venv's python with ARGV, in a clean environment like the chroot's (no binds
        needed: it runs on this machine's file system)."""
        from .environments import PROJECT_ROOT
        from .source_caffe import built_source_caffe_python
        env = ["PATH=/usr/bin:/bin", "HOME=/tmp", "GLOG_minloglevel=2", "PYTHONPATH=%s" % PROJECT_ROOT,
               "PYTHONDONTWRITEBYTECODE=1"]
        env += ["%s=%s" % (k, os.environ[k]) for k in ("TERM", "COLUMNS") if k in os.environ]
        return ["env", "-i", *env, str(built_source_caffe_python()), *argv]


class OpenCV(Runtime):
    key, name, is_caffe = OPENCV, "OpenCV", False

    def available(self) -> bool:
        import importlib.util
        return importlib.util.find_spec("cv2") is not None

    def layer_types(self) -> FrozenSet[str]:
        # The opencv profile is, by its definition, what OpenCV 4.x's importer loads and runs.
        from .caffe.profiles import PROFILES
        return PROFILES["opencv"].layers


RUNTIMES: Dict[str, Runtime] = {runtime.key: runtime for runtime in (BullseyeCaffe(), SourceCaffe(), OpenCV())}


def caffe_order() -> List[Runtime]:
    """The Caffes in the order they are preferred for writing: TF2CAFFE_CAFFE's first (none: no
    Caffe at all), then the others."""
    wanted = os.environ.get(CAFFE_ENV) or CAFFES[0]
    if wanted == NO_CAFFE:
        return []
    if wanted not in CAFFES:
        raise ConversionError("%s=%s: expected one of %s" % (CAFFE_ENV, wanted, ", ".join(CAFFES + (NO_CAFFE,))))
    return [RUNTIMES[wanted]] + [RUNTIMES[key] for key in CAFFES if key != wanted]


def available_caffes() -> List[Runtime]:
    return [runtime for runtime in caffe_order() if runtime.available()]


def available_runtimes() -> List[Runtime]:
    """Every runtime here, the Caffes in preference order first."""
    return available_caffes() + [runtime for runtime in [RUNTIMES[OPENCV]] if runtime.available()]


def why_opencv_only(types: Iterable[str]) -> str:
    """Why a net of `types` was verified in OpenCV alone, in words."""
    caffes = available_caffes()
    return lacking(caffes, types) if caffes else no_caffe()


def types_per_file(files: Sequence[str], profile: str,
                   prototxt: Optional[str]) -> Dict[str, Optional[FrozenSet[str]]]:
    """file -> the Caffe layer types the import stage will write for it, or None when that cannot
    be told here (a file the import stage will refuse, and say why)."""
    if prototxt:
        try:
            with open(prototxt) as f:
                types: Optional[FrozenSet[str]] = frozenset(re.findall(r'\btype\s*:\s*"([^"]+)"', f.read()))
        except OSError:
            types = None
        return {path: types for path in files}
    return emitted_types(files, profile)


def emitted_types(files: Sequence[str], profile: str) -> Dict[str, Optional[FrozenSet[str]]]:
    """file -> the Caffe layer types of the net emitted for it (emit needs no Caffe), or None if
    it cannot be emitted. Read in one forked child, like the import stage's first read of each
    file: a corrupt file can crash the HDF5 library (then the files from it on are None)."""
    def list_types(write_end: int) -> int:
        from . import intermediate
        from .caffe import emit
        for index, path in enumerate(files):
            try:
                model = intermediate.read(path)
                net, _ = emit.build_net(model, profile)
                listed = " ".join(sorted({layer.type for layer in net.layers}))
            except Exception:  # the import stage meets it again, and reports it
                continue
            os.write(write_end, ("%d %s\n" % (index, listed)).encode())
        return 0

    _, written = interrupts.in_forked_child(list_types)
    lines = written.decode().splitlines()
    types: Dict[str, Optional[FrozenSet[str]]] = dict.fromkeys(files)
    for line in lines:
        index, _, listed = line.partition(" ")
        types[files[int(index)]] = frozenset(listed.split())
    return types


@dataclass
class Choice:
    """Who writes a net: pycaffe in `caffe`, or the native writer (`caffe` None); `reason`: why,
    when it was chosen automatically."""
    caffe: Optional[Runtime]
    reason: Optional[str] = None

    @property
    def backend(self) -> str:
        return "native" if self.caffe is None else "pycaffe"

    def describe(self) -> str:
        """'pycaffe-source (it has every layer type of the net)', 'native (no Caffe here has ReLU6)'."""
        return (self.caffe.name if self.caffe else "native") + (" (%s)" % self.reason if self.reason else "")


def choose_writer(backend: Optional[str], types: Optional[Iterable[str]]) -> Choice:
    """`backend` (None: automatic) for a net of layer `types` (None: not known): pycaffe in the
    first available Caffe that has all of them, else the native writer. Forced pycaffe without a
    fitting Caffe takes the first one (which will name the type it lacks)."""
    caffes = available_caffes()
    types = None if types is None else set(types)
    fitting = [caffe for caffe in caffes if types is None or not caffe.missing(types)]
    if backend == "native":
        return Choice(None)
    if backend == "pycaffe":
        if not caffes:
            raise ConversionError("the pycaffe backend needs a Caffe environment: run `make env` (or "
                                  "`make env CAFFE=source`), or pass --backend native")
        return Choice((fitting or caffes)[0])
    if not caffes:
        return Choice(None, no_caffe())
    if fitting:
        return Choice(fitting[0], "the Caffe environment exists" if types is None
                      else "it has every layer type of the net")
    return Choice(None, lacking(caffes, types))


def no_caffe() -> str:
    """Why no Caffe is used, in words: none is built, or the one built cannot be entered."""
    from . import environments
    if environments.built_caffe_root() is not None and environments.userns_error():
        return "no Caffe environment usable: %s" % environments.userns_error()
    return "no Caffe environment found"


def lacking(caffes: Sequence[Runtime], types: Iterable[str]) -> str:
    """Why none of `caffes` runs a net of `types`, in words: 'no Caffe here has ReLU6' when they
    all lack the same, else per Caffe."""
    types = set(types)
    missing = {caffe.name: caffe.missing(types) for caffe in caffes}
    if len({tuple(names) for names in missing.values()}) == 1:
        return "no Caffe here has %s" % ", ".join(next(iter(missing.values())))
    return "no Caffe here has all its layer types: %s" % "; ".join(
        "%s lacks %s" % (name, ", ".join(names)) for name, names in missing.items() if names)


def writers(files: Sequence[str], backend: Optional[str], profile: str,
            prototxt: Optional[str]) -> List[Tuple[Choice, List[str]]]:
    """Who writes each of `files` (`choose_writer`), as (choice, its files) in the order of each
    writer's first file."""
    types = {} if backend == "native" else types_per_file(files, profile, prototxt)
    groups: Dict[Tuple[Optional[str], Optional[str]], Tuple[Choice, List[str]]] = {}
    for path in files:
        choice = choose_writer(backend, types.get(path))
        if prototxt and choice.caffe is None and backend is None and available_caffes():
            choice = Choice(available_caffes()[0], "a hand-written prototxt needs Caffe")
        key = (choice.caffe.key if choice.caffe else None, choice.reason)
        groups.setdefault(key, (choice, []))[1].append(path)
    return list(groups.values())
