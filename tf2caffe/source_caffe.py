"""A second real Caffe, built from source: BVLC Caffe + SSD layers in a cached venv.

The import stage's Caffe is Debian bullseye's packaged python3-caffe (environments.py), and
bullseye is past its LTS.  This builds the other Caffe that works on these machines, from what
the package registries serve today: the PyPI sdist ``brocolli-caffe`` (BVLC master plus
PriorBox, DetectionOutput, Permute, Normalize, ReLU6, Upsample, ...), compiled on the host
against Debian bookworm's libraries, into a venv ``<cache>/caffe-source-<key>`` whose
``bin/python`` imports ``caffe``.

The recipe (tf2caffe/recipes/source-caffe-*.txt and the PATCHES and CMAKE_FLAGS below):

1. apt-get the pinned build packages (tf2caffe/recipes/source-caffe-packages.txt) that are missing;
2. create the venv with Debian's /usr/bin/python3 (the Python whose headers python3-dev
   ships) and pip install its pinned runtime (tf2caffe/recipes/source-caffe-requirements.txt);
3. pip download the sdist, its sha256 pinned (tf2caffe/recipes/source-caffe-sdist.txt);
4. unpack, apply PATCHES, cmake + make (through ccache);
5. copy ``python/caffe`` (with ``_caffe.so``) into the venv and list the layer types it knows
   in ``<venv>/layer-types.txt``.

Everything happens in ``<venv>.partial`` under a lock and is renamed into place when complete,
so a second call costs milliseconds.  The sdist's ``setup.py`` is not used: it wants conda and
Python <= 3.9.  Standard library only, like environments.py: it runs on the system python3.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import NamedTuple

from .environments import (RECIPES, Progress, apt_install_host, cache_dir, cache_key, du_mb, locked,
                           read_packages, remove_interrupted, run_logged, timed_step)

# Bump when the recipe changes in a way that neither the input files nor PATCHES/CMAKE_FLAGS show.
RECIPE = "caffe-source/2"

PACKAGES_FILE = RECIPES / "source-caffe-packages.txt"
SDIST_FILE = RECIPES / "source-caffe-sdist.txt"
REQUIREMENTS_FILE = RECIPES / "source-caffe-requirements.txt"

# The interpreter _caffe.so is compiled for: Debian's, whose headers python3-dev installs
# (the python3 on PATH may be another build, e.g. pyenv's).
DEBIAN_PYTHON = Path("/usr/bin/python3")

LAYER_TYPES = "layer-types.txt"
JOBS = 2  # these machines have 2 cores; more parallel compilers only add memory pressure


class Patch(NamedTuple):
    """Replace ``old`` (which must occur exactly once) by ``new`` in the sdist's ``path``."""
    path: str
    old: str
    new: str
    why: str


def _boost_python_lib() -> str:
    """Debian names Boost.Python after the Python it is built for: boost_python311."""
    version = os.path.realpath(DEBIAN_PYTHON).rsplit("python", 1)[1]  # "3.11"
    return "boost_python" + version.replace(".", "")


PATCHES = (
    Patch("python/CMakeLists.txt", " -lboost_python ", f" -l{_boost_python_lib()} ",
          "there is no unversioned libboost_python on Debian, only one per Python version"),
    Patch("src/caffe/net.cpp", '#include "caffe/test/test_caffe_main.hpp"\n', "",
          "net.cpp never uses this test header, and it needs gtest, which is not built"),
    Patch("python/caffe/io.py", "import numpy as np\nimport skimage.io\nfrom scipy.ndimage import zoom\n",
          "import numpy as np\n",
          "`import caffe` imports caffe.io: only two image helpers need scikit-image and scipy "
          "(hundreds of MB), so they import them themselves (next two patches)"),
    Patch("python/caffe/io.py", "    img = skimage.img_as_float(",
          "    import skimage.io\n    img = skimage.img_as_float(",
          "load_image's own import of scikit-image (moved from the module's top)"),
    Patch("python/caffe/io.py", "        resized_im = zoom(",
          "        from scipy.ndimage import zoom\n        resized_im = zoom(",
          "resize_image's own import of scipy (moved from the module's top)"),
    Patch("src/caffe/util/io.cpp",
          "  coded_input->SetTotalBytesLimit(536870912);\n\n  bool success = proto->ParseFromCodedStream(coded_input);\n"
          "\n  delete coded_input;\n  delete raw_input;\n  close(fd);",
          "  coded_input->SetTotalBytesLimit(INT_MAX);\n\n  bool success = proto->ParseFromCodedStream(coded_input);\n"
          "\n  delete coded_input;\n  delete raw_input;\n  close(fd);",
          "the fork reads at most 512 MB of .caffemodel (ConvNeXtLarge's is 791 MB); BVLC Caffe's "
          "limit is INT_MAX, as protobuf's own"),
)

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DCPU_ONLY=ON", "-DUSE_OPENCV=OFF", "-DUSE_LEVELDB=OFF", "-DUSE_LMDB=OFF", "-DBUILD_docs=OFF",
    "-DBUILD_python=ON", "-Dpython_version=3",
    # The sdist's CMakeLists looks for Python's headers under ANACONDA_HOME/include/PYTHON_VERSION.
    "-DANACONDA_HOME=/usr", f"-DPYTHON_VERSION={os.path.basename(os.path.realpath(DEBIAN_PYTHON))}",
    # Debian keeps the (serial) HDF5 headers and libraries in their own directories.
    "-DCMAKE_CXX_FLAGS=-I/usr/include/hdf5/serial",
    "-DCMAKE_SHARED_LINKER_FLAGS=-L/usr/lib/x86_64-linux-gnu/hdf5/serial",
    "-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
)


def _venv_path() -> Path:
    key = cache_key(PACKAGES_FILE.read_bytes(), SDIST_FILE.read_bytes(), REQUIREMENTS_FILE.read_bytes(),
               repr(PATCHES).encode(), repr(CMAKE_FLAGS).encode(), RECIPE.encode(),
               os.path.realpath(DEBIAN_PYTHON).encode())
    return cache_dir() / f"caffe-source-{key}"


def built_source_caffe_python() -> Path | None:
    """``<venv>/bin/python`` of the source-built Caffe if it has been built (never builds it)."""
    venv = _venv_path()
    return venv / "bin" / "python" if venv.is_dir() else None


def source_caffe_python(progress: Progress = print) -> Path:
    """``<venv>/bin/python`` of the source-built Caffe (``import caffe`` works), built if needed."""
    return ensure_source_caffe(progress) / "bin" / "python"


def source_caffe_layer_types(progress: Progress = print) -> list[str]:
    """The layer types this Caffe knows (``caffe.layer_type_list()``, recorded at build time)."""
    return (ensure_source_caffe(progress) / LAYER_TYPES).read_text().split()


def _missing_packages(packages: list[str]) -> list[str]:
    """The ``name=version`` entries that dpkg does not have installed at that version."""
    names = [p.split("=", 1)[0] for p in packages]
    listing = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version} ${db:Status-Abbrev}\\n",
                              *names], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             universal_newlines=True).stdout
    installed = {line.split()[0] for line in listing.splitlines() if line.split()[1:2] == ["ii"]}
    return [p for p in packages if p not in installed]


def _apply(patch: Patch, source: Path) -> None:
    path = source / patch.path
    text = path.read_text()
    if text.count(patch.old) != 1:
        raise RuntimeError(f"patch for {patch.path} ({patch.why}): expected exactly one "
                           f"{patch.old!r}, found {text.count(patch.old)}")
    path.write_text(text.replace(patch.old, patch.new))


def _relocate(partial: Path, final: Path, python: Path, log: Path) -> None:
    """Make the venv built at ``partial`` correct at ``final``, before the rename.

    A venv's bin/ scripts (activate, pip, f2py, ...) name its directory; its .pyc files name
    their source files (tracebacks read them): both must name ``final``.
    """
    for script in (partial / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if str(partial).encode() in data:
                script.write_bytes(data.replace(str(partial).encode(), str(final).encode()))
    run_logged([str(python), "-m", "compileall", "-q", "-f", "-s", str(partial), "-p", str(final),
                 str(partial / "lib")], log, "compileall")


def ensure_source_caffe(progress: Progress = print) -> Path:
    """Return the venv of the source-built Caffe, building it once (see the module docstring)."""
    final = _venv_path()
    if final.is_dir():
        return final
    with locked(final.with_name(final.name + ".lock"), progress):
        if final.is_dir():  # another process built it while we waited
            return final
        start = time.monotonic()
        partial = final.with_name(final.name + ".partial")
        log = final.with_name(final.name + ".log")
        remove_interrupted("caffe-source-*.partial", partial, progress)
        log.write_text("")
        progress(f"source caffe: building {final} (log: {log})")

        missing = _missing_packages(read_packages(PACKAGES_FILE))
        if missing:
            apt_install_host(missing, progress, log)

        python = partial / "bin" / "python"
        with timed_step(progress, "source caffe: venv + pip install -r source-caffe-requirements.txt"):
            run_logged([str(DEBIAN_PYTHON), "-m", "venv", "--prompt", final.name, str(partial)],
                        log, "python -m venv")
            run_logged([str(python), "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                         "--no-compile", "-r", str(REQUIREMENTS_FILE)], log, "pip install")

        # The compile happens inside the partial venv, so an interrupted build is cleaned with it.
        work = partial / "build"
        with timed_step(progress, "source caffe: pip download the sdist (sha256 checked)"):
            run_logged([str(python), "-m", "pip", "download", "--no-input", "--progress-bar", "off",
                         "--no-deps", "--no-binary", ":all:", "--require-hashes",
                         "-r", str(SDIST_FILE), "-d", str(work / "sdist")], log, "pip download")
            (sdist,) = (work / "sdist").glob("*.tar.gz")
            with tarfile.open(sdist) as tar:
                top = tar.getnames()[0].split("/")[0]
                tar.extractall(work)
            source = work / top
        for patch in PATCHES:
            _apply(patch, source)
        progress(f"source caffe: {len(PATCHES)} patches applied")

        # ccache: paths below the partial venv count as relative, so a rebuild (new key,
        # same sources) hits; its cache lives with the others.
        ccache = ["env", f"CCACHE_BASEDIR={partial}", f"CCACHE_DIR={cache_dir() / 'ccache'}"]
        build = work / "cmake-build"
        with timed_step(progress, f"source caffe: cmake + make -j{JOBS} (cold: minutes)"):
            run_logged([*ccache, "cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS],
                        log, "cmake")
            run_logged([*ccache, "make", "-C", str(build), f"-j{JOBS}"], log, "make")

        site = partial / "lib" / os.path.basename(os.path.realpath(DEBIAN_PYTHON)) / "site-packages"
        # symlinks=False: python/caffe/_caffe.so is a symlink into the build tree.
        shutil.copytree(source / "python" / "caffe", site / "caffe", symlinks=False)
        shutil.rmtree(work)

        with timed_step(progress, "source caffe: import caffe, list its layer types"):
            listed = subprocess.run(
                [str(python), "-c", "import caffe; print('\\n'.join(sorted(caffe.layer_type_list())))"],
                env=dict(os.environ, GLOG_minloglevel="2"), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, universal_newlines=True)
            if listed.returncode != 0:
                raise RuntimeError(f"import caffe failed in {partial}:\n{listed.stdout}")
            (partial / LAYER_TYPES).write_text(listed.stdout)

        _relocate(partial, final, python, log)
        os.rename(partial, final)
        progress(f"source caffe: ready in {time.monotonic() - start:.0f} s, {du_mb(final)} MB, "
                 f"{len(listed.stdout.split())} layer types: {final}")
    return final
