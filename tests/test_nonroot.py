"""`make` as an unprivileged user (nobody), from a copy of this checkout it owns.

The shared cache (TF2CAFFE_CACHE) is one root filled: the TensorFlow venv of Debian's python3
and this machine's Caffe root (hard links to the one root built). With the Caffe root, nobody's
conversion is written by pycaffe in it (an unprivileged user namespace, where the kernel allows
one); without it, `make` says why and converts natively, verified in OpenCV.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tf2caffe import environments
from test_packaging import AS_NOBODY, NOBODY, SYSTEM_PYTHON, copy_of_checkout, open_to_others

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL = "tflearn_convnet_mnist"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switches to nobody, as root")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """A cache root filled, readable by everyone."""
    cache = tmp_path_factory.mktemp("shared") / "cache"
    cache.mkdir()
    root = environments.ensure_caffe_root()
    subprocess.run(["cp", "-al", str(root), str(cache / root.name)], check=True)
    env = dict(os.environ, TF2CAFFE_CACHE=str(cache), PYTHONPATH=str(PROJECT_ROOT))
    # The heavy venv only: `environments tf` would also relink this checkout's .venv to it.
    build = "from tf2caffe import environments as e; e._ensure_heavy_venv(e.PROJECT_ROOT, print)"
    built = subprocess.run([SYSTEM_PYTHON, "-c", build], env=env, cwd=str(cache),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert built.returncode == 0, built.stdout[-3000:]
    open_to_others(cache)
    return cache


def checkout_of_nobody(folder: Path) -> Path:
    copy_of_checkout(folder)
    subprocess.run(["chown", "-R", "%d:%d" % (NOBODY, NOBODY), str(folder)], check=True)
    open_to_others(folder)
    return folder


def make_as_nobody(checkout: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(checkout), "TF2CAFFE_CACHE": str(cache)}
    return subprocess.run(AS_NOBODY + ["make", "PYTHON=%s" % SYSTEM_PYTHON, "MODEL=%s" % MODEL], cwd=str(checkout),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


@pytest.mark.slow
@pytest.mark.chroot
def test_make_as_nobody_uses_the_caffe_root_root_built(shared_cache, tmp_path):
    if subprocess.call(AS_NOBODY + ["unshare", "-rm", "true"], stderr=subprocess.DEVNULL):
        pytest.skip("this kernel does not allow unprivileged user namespaces")
    made = make_as_nobody(checkout_of_nobody(tmp_path / "checkout"), shared_cache)
    assert made.returncode == 0, made.stdout[-4000:]
    assert "Traceback" not in made.stdout
    written = tmp_path / "checkout" / "build" / MODEL / (MODEL + ".caffemodel")
    assert written.stat().st_uid == NOBODY
    assert "pycaffe-bullseye" in made.stdout and "OpenCV" in made.stdout


@pytest.mark.slow
def test_make_as_nobody_without_a_caffe_root_says_so_and_converts_natively(shared_cache, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for venv in shared_cache.glob("tf-venv-*"):
        (cache / venv.name).symlink_to(venv)
    open_to_others(cache)
    made = make_as_nobody(checkout_of_nobody(tmp_path / "checkout"), cache)
    assert made.returncode == 0, made.stdout[-4000:]
    assert "Traceback" not in made.stdout
    assert "is not built, and building it (debootstrap, chroot) needs root" in made.stdout
    assert "backend: native (no Caffe environment found)" in made.stdout
    assert "verified in OpenCV only" in made.stdout


def test_environment_steps_as_nobody_say_what_needs_root(tmp_path):
    """`make env` / `make test`'s steps for the Caffes, with nothing built: one line each, no
    traceback, success (the conversions then use the native backend and OpenCV)."""
    open_to_others(tmp_path)
    os.chown(str(tmp_path), NOBODY, NOBODY)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF2CAFFE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(PROJECT_ROOT)}
    for command, said in [("caffe", "is not built, and building it (debootstrap, chroot) needs root"),
                          ("caffe-source", "caffe source: not built, and building it (apt-get) needs root")]:
        ran = subprocess.run(AS_NOBODY + [SYSTEM_PYTHON, "-m", "tf2caffe.environments", command], cwd=str(tmp_path),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        assert ran.returncode == 0 and said in ran.stdout and "Traceback" not in ran.stdout, ran.stdout
