"""tf2caffe as a pip package: the wheel, built from this checkout, installed into fresh venvs.

Without the extras, the command names the extra to install in one line; with them, an
unprivileged user with no Caffe environment converts a Keras model, verified in OpenCV. The
venvs use Debian's /usr/bin/python3 (an unprivileged user can run it; pyenv's lives under
/root) and pip's own cache and configuration.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import intermediate_models
import tf2caffe

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
# Runs a command as nobody, with no supplementary groups.
AS_NOBODY = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]

pytestmark = pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's python3")


def run(command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools writes build/ and *.egg-info next to pyproject.toml.
    source = copy_of_checkout(folder / "source")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", folder, source])
    assert built.returncode == 0, built.stderr
    (found,) = folder.glob("tf2caffe-*.whl")
    return found


def copy_of_checkout(folder: Path) -> Path:
    """The checkout's tracked files, as a fresh clone has them, copied to `folder`."""
    files = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "-z"], stdout=subprocess.PIPE,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (PROJECT_ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes((PROJECT_ROOT / name).read_bytes())
    return folder


def fresh_venv(folder: Path, *requirements) -> Path:
    created = run([SYSTEM_PYTHON, "-m", "venv", folder])
    assert created.returncode == 0, created.stderr
    installed = run([folder / "bin" / "python", "-m", "pip", "install", "-q", *requirements])
    assert installed.returncode == 0, installed.stderr[-3000:]
    return folder / "bin"


def open_to_others(folder: Path) -> None:
    """Let other users through `folder` and its parents (pytest makes its folders private)."""
    for path in [folder, *folder.parents]:
        mode = path.stat().st_mode
        if not mode & 0o001:
            path.chmod(mode | 0o005)


def test_wheel_contents(wheel):
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name == "tf2caffe-%s-py3-none-any.whl" % tf2caffe.__version__  # the one version
    assert "tf2caffe/recipes/debian-packages.txt" in names  # the Caffe root's cache key
    assert "tf2caffe/caffe/handlers/__init__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "architectures/"))]


def test_without_extras_one_line_names_the_extra(wheel, tmp_path):
    """The package alone (numpy, h5py, protobuf): the command runs, and a conversion says which
    extra it needs."""
    bin_folder = fresh_venv(tmp_path / "venv", wheel)
    version = run([bin_folder / "python", "-m", "tf2caffe", "--version"], cwd=str(tmp_path))
    assert version.stdout.strip() == "tf2caffe %s" % tf2caffe.__version__, version.stderr
    refused = run([bin_folder / "tf2caffe", "convert", "model.keras", "-o", tmp_path / "out"], cwd=str(tmp_path))
    assert refused.returncode == 2
    assert refused.stderr == ("tf2caffe: error: the Python module 'tensorflow' is not installed: "
                              "pip install 'tf2caffe[tensorflow]' (in a checkout: make env)\n")
    # An intermediate imports natively without TensorFlow; verifying it without a Caffe needs OpenCV.
    h5 = intermediate_models.write(intermediate_models.mlp(), tmp_path)
    unverified = run([bin_folder / "tf2caffe", "import", h5, "-o", tmp_path / "out"], cwd=str(tmp_path),
                     env=dict(os.environ, TF2CAFFE_CAFFE="none"))
    assert unverified.returncode == 2 and unverified.stderr.count("\n") == 1
    assert "pip install 'tf2caffe[opencv]'" in unverified.stderr, unverified.stderr


@pytest.mark.slow
def test_with_extras_converts_as_nobody_without_caffe(wheel, tmp_path):
    """pip install 'tf2caffe[tensorflow,opencv]', then `tf2caffe convert model.keras -o out/` as
    nobody, with an empty cache (no Caffe environment): written natively, verified in OpenCV."""
    bin_folder = fresh_venv(tmp_path / "venv", "%s[tensorflow,opencv]" % wheel)
    work = tmp_path / "work"
    work.mkdir()
    made = run([bin_folder / "python", "-c", "import keras; m = keras.Sequential([keras.Input((8, 8, 3)), "
                "keras.layers.Conv2D(4, 3, activation='relu'), keras.layers.Flatten(), keras.layers.Dense(5)]); "
                "m.save('model.keras')"], cwd=str(work))
    assert made.returncode == 0, made.stderr[-2000:]
    open_to_others(tmp_path)
    os.chown(str(work), NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TF2CAFFE_CACHE": str(work / "cache")}
    converted = run(AS_NOBODY + [bin_folder / "tf2caffe", "convert", "model.keras", "-o", "out"],
                    cwd=str(work), env=env)
    assert converted.returncode == 0, converted.stdout + converted.stderr
    assert "written by native (no Caffe environment found)" in converted.stdout
    assert "verified in OpenCV only" in converted.stdout
    assert (work / "out" / "model.caffemodel").stat().st_uid == NOBODY
