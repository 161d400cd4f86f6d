"""Create and use tf2caffe's two runtime environments.

* The TF side (export stage) is a venv with TensorFlow etc. from
  ``requirements.txt``, cached under ``cache_dir()`` and linked into the
  project as a small ``<project>/.venv``.
* The Caffe side (import stage) is a Debian bullseye root filesystem with
  ``python3-caffe`` (``tf2caffe/recipes/debian-packages.txt``); commands run in it with
  ``chroot`` inside a private mount namespace.

Standard library only: this module runs on the plain system ``python3``
(3.9+) before either environment exists.  Both builds are cached and keyed
on a hash of their inputs, so repeated calls cost milliseconds.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
# A checkout's root; for a pip-installed tf2caffe, its site-packages.
PROJECT_ROOT = PACKAGE_DIR.parent
# What the environments are built from, shipped in the package: their cache keys are then the same
# for a checkout and for a pip-installed tf2caffe, which can use the environments a checkout built.
RECIPES = PACKAGE_DIR / "recipes"

# Bump these when the build recipe changes in a way the input files do not
# show: the cache key changes and a fresh environment is built next to the old.
CAFFE_RECIPE = "caffe-root/bullseye-minbase/1"
TF_RECIPE = "tf-venv/1"

SUITE = "bullseye"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
COMPLETE = ".complete"

Progress = Callable[[str], None]


def cache_dir() -> Path:
    """``$TF2CAFFE_CACHE`` or ``~/.cache/tf2caffe``."""
    env = os.environ.get("TF2CAFFE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tf2caffe"


# ---------------------------------------------------------------- helpers

def cache_key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        # Length-prefix each part so ("ab", "c") and ("a", "bc") differ.
        h.update(b"%d:" % len(part) + part)
    return h.hexdigest()[:12]


@contextlib.contextmanager
def locked(lock_path: Path, progress: Progress) -> Iterator[None]:
    """Exclusive lock, so concurrent builders wait instead of colliding."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            progress(f"waiting for another process that holds {lock_path} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point.startswith(prefix) or mount_point == prefix[:-1]:
                found.append(mount_point)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf, refusing if anything is mounted below (it would delete host files)."""
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return
    mounts = _mounts_under(path)
    if mounts:
        raise RuntimeError(f"refusing to delete {path}: still mounted: {mounts}")
    shutil.rmtree(path)


def remove_interrupted(pattern: str, own: Path, progress: Progress) -> None:
    """Delete interrupted builds in the cache: ``own`` (whose lock the caller
    holds) and those of other cache keys whose lock is free."""
    for path in cache_dir().glob(pattern):
        if not path.is_dir() or (path / COMPLETE).exists():
            continue
        if path == own:
            progress(f"removing {path.name} of an interrupted build")
            remove_tree(path)
            continue
        lock = path.with_name(path.name.replace(".partial", "") + ".lock")
        with open(lock, "a") as f:
            try:
                # Fails while any process holds it (even via another fd of ours).
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built right now
            progress(f"removing {path.name} of an interrupted build")
            remove_tree(path)


def run_logged(cmd: Sequence[str], log: Path, what: str) -> None:
    """Run cmd with its (long) output in a log file; show the tail on failure."""
    with open(log, "ab") as f:
        f.write(("\n$ " + shlex.join(cmd) + "\n").encode())
        f.flush()
        rc = subprocess.call(list(cmd), stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{what} failed (exit {rc}); last lines of {log}:\n"
                           + "\n".join(tail))


@contextlib.contextmanager
def timed_step(progress: Progress, what: str) -> Iterator[None]:
    progress(f"{what} ...")
    start = time.monotonic()
    yield
    progress(f"{what}: done in {time.monotonic() - start:.0f} s")


def du_mb(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total // 2**20


def _is_root() -> bool:
    return os.geteuid() == 0


def apt_install_host(packages: Sequence[str], progress: Progress, log: Path) -> None:
    if not _is_root():
        raise RuntimeError(f"need {' '.join(packages)}: run as root or "
                           f"apt-get install them")
    env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
    with timed_step(progress, f"host: apt-get install {' '.join(packages)}"):
        run_logged(env_cmd + ["apt-get", "update"], log, "apt-get update")
        run_logged(env_cmd + ["apt-get", "install", "-y", "--no-install-recommends",
                              *packages], log, "apt-get install")


# ---------------------------------------------------------------- Caffe root

PACKAGES_FILE = RECIPES / "debian-packages.txt"


def read_packages(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt uses (not its security one)."""
    if os.environ.get("TF2CAFFE_DEBIAN_MIRROR"):
        return os.environ["TF2CAFFE_DEBIAN_MIRROR"]
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.strip().lower().startswith("uris:"):
                for uri in line.split(":", 1)[1].split():
                    if "security" not in uri:
                        return uri.rstrip("/")
    one_line = Path("/etc/apt/sources.list")
    if one_line.exists():
        for line in one_line.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 2 and words[0] == "deb" and "security" not in words[1]:
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def _caffe_root_path() -> Path:
    key = cache_key(PACKAGES_FILE.read_bytes(), CAFFE_RECIPE.encode())
    return cache_dir() / f"caffe-root-{key}"


def built_caffe_root() -> Path | None:
    """The Caffe root if it has been built (never builds it): it is renamed into place only
    once complete."""
    final = _caffe_root_path()
    return final if final.is_dir() else None


def caffe_root_unusable() -> str:
    """"" if this user can use the Caffe root, building it if needed; else why not, in words."""
    if _is_root():
        return ""
    if built_caffe_root() is None:
        return (f"{_caffe_root_path()} is not built, and building it (debootstrap, chroot) needs root: "
                "`make env` as root builds it (with TF2CAFFE_CACHE a shared folder, for every user)")
    return userns_error()


def _chroot_env(root: Path) -> list[str]:
    return ["chroot", str(root), "/usr/bin/env", "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C",
            "DEBIAN_FRONTEND=noninteractive"]


def ensure_caffe_root(progress: Progress = print) -> Path:
    """Return a bullseye root filesystem with tf2caffe/recipes/debian-packages.txt installed.

    Built once into ``<final>.partial`` under a lock, then renamed, so a
    half-built root never looks ready; a ``.partial`` left by a killed run
    is deleted and rebuilt.
    """
    final = _caffe_root_path()
    if final.is_dir():
        return final
    if not _is_root():
        raise RuntimeError(f"the Caffe root {final} does not exist yet and "
                           f"building it (debootstrap, chroot) needs root")
    packages = read_packages(PACKAGES_FILE)
    with locked(final.with_name(final.name + ".lock"), progress):
        if final.is_dir():  # another process built it while we waited
            return final
        start = time.monotonic()
        partial = final.with_name(final.name + ".partial")
        log = final.with_name(final.name + ".log")
        remove_interrupted("caffe-root-*.partial", partial, progress)
        log.write_text("")
        progress(f"caffe root: building {final} (log: {log})")

        debootstrap = shutil.which("debootstrap") or (
            "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None)
        if debootstrap is None:
            apt_install_host(["debootstrap", "debian-archive-keyring"], progress, log)
            debootstrap = "/usr/sbin/debootstrap"

        mirror = debian_mirror()
        # unshare -m: whatever debootstrap mounts in the target dies with it.
        with timed_step(progress, f"caffe root: debootstrap {SUITE} from {mirror}"):
            run_logged(["unshare", "-m", debootstrap, "--variant=minbase", SUITE,
                        str(partial), mirror], log, "debootstrap")

        # apt needs /proc and /dev; mount them only in a private namespace
        # that ends with this shell, so no mount outlives the install.
        chroot = " ".join(shlex.quote(a) for a in _chroot_env(partial))
        r = shlex.quote(str(partial))
        script = "\n".join([
            "set -e",
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /dev {r}/dev",
            f"{chroot} apt-get update",
            f"{chroot} apt-get install -y --no-install-recommends "
            + " ".join(shlex.quote(p) for p in packages),
            f"{chroot} apt-get clean",
        ])
        with timed_step(progress, f"caffe root: apt-get install {len(packages)} packages"):
            run_logged(["unshare", "-m", "sh", "-c", script], log, "apt-get in the Caffe root")
        for lists in (partial / "var/lib/apt/lists").glob("*"):
            if lists.is_file():
                lists.unlink()

        os.rename(partial, final)
        progress(f"caffe root: ready in {time.monotonic() - start:.0f} s, "
                 f"{du_mb(final)} MB: {final}")
    return final


# Host directories that must never be bound over the root's own system dirs.
_SYSTEM_DIRS = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
                "boot", "proc", "sys", "dev", "run"}


def _bind_dirs(dirs: Iterable[str]) -> list[str]:
    """Real paths, deduplicated, with directories nested in another dropped."""
    kept: list[str] = []
    for d in sorted({os.path.realpath(d) for d in dirs}):
        parts = Path(d).parts
        if len(parts) < 2 or parts[1] in _SYSTEM_DIRS:
            raise ValueError(f"cannot bind {d} into the Caffe root: it would hide "
                             f"the root's own system files")
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


# Where the root's view is assembled: an empty directory of the root itself (of every Debian
# root), so that nothing is left on the host.
VIEW = "/mnt"


def caffe_command(argv: Sequence[str], paths: Iterable[str | os.PathLike] = (),
                  cwd: str | os.PathLike | None = None,
                  root: str | os.PathLike | None = None) -> list[str]:
    """Argv for subprocess that runs ``argv`` inside the Caffe root.

    This package's folder (on ``PYTHONPATH``, alone: a pip-installed tf2caffe's site-packages
    would shadow the root's numpy), ``cwd`` and the directories of all ``paths`` are
    bind-mounted at the same absolute path inside the root, so file names mean the same thing
    on both sides.  A path that is an existing directory is bound itself; otherwise its parent
    is bound (created first, so output files and output directories can be written).

    The root itself is never written: its view is assembled on a tmpfs (at ``VIEW`` in the
    root), its top-level folders bound in and the mount points made there.  So a root that root
    built in a shared cache serves any user, in an unprivileged user namespace
    (``unshare -rm``; ``userns_error`` says whether this kernel allows one).  The mounts live in
    a private mount namespace and vanish with the command.  Stdin/stdout/stderr and the exit
    status pass through.
    """
    root_path = os.path.realpath(root if root is not None else ensure_caffe_root())
    cwd = os.path.realpath(cwd if cwd is not None else os.getcwd())
    dirs = [str(PACKAGE_DIR), cwd]
    for p in map(os.path.abspath, paths):
        # A symlink's own directory and its target's: both names then work.
        for name in {p, os.path.realpath(p)}:
            if os.path.isdir(name):
                dirs.append(name)
            else:
                os.makedirs(os.path.dirname(name), exist_ok=True)
                dirs.append(os.path.dirname(name))
    binds = _bind_dirs(dirs)

    env = ["PATH=/usr/bin:/bin", "HOME=/tmp", "MPLCONFIGDIR=/tmp", "GLOG_minloglevel=2",
           f"PYTHONPATH={PACKAGE_DIR.parent}", "PYTHONDONTWRITEBYTECODE=1"]
    env += [f"{k}={os.environ[k]}" for k in ("TERM", "COLUMNS") if k in os.environ]

    q = shlex.quote
    view = root_path + VIEW
    lines = ["set -e", f"mount -t tmpfs tf2caffe-view {q(view)}"]
    # Top-level folders that hold a bound directory are empty ones of the view (/tmp, /home,
    # /work ...: the root's have nothing the Caffe side needs); the others are the root's.
    hosting = {Path(d).parts[1] for d in binds} | {VIEW.strip("/"), "tmp"}
    for entry in sorted(os.listdir(root_path)):
        source, target = os.path.join(root_path, entry), os.path.join(view, entry)
        if os.path.islink(source):
            lines.append(f"ln -s {q(os.readlink(source))} {q(target)}")
        elif not os.path.isdir(source):
            continue
        elif entry in hosting:
            lines.append(f"mkdir -m 1777 {q(target)}")
        else:
            lines.append(f"mkdir {q(target)} && mount --rbind {q(source)} {q(target)}")
    for d in binds:
        # --rbind: a file system mounted below d (an output folder on its own disk) shows too.
        lines.append(f"mkdir -p {q(view + d)} && mount --rbind {q(d)} {q(view + d)}")
    inner = f'cd {q(cwd)} && exec "$@"'
    # argv travels as positional parameters ("$@") through both shells, so
    # it needs no quoting at all.
    lines.append(f"exec chroot {q(view)} env -i {' '.join(q(e) for e in env)} "
                 f"sh -c {q(inner)} sh \"$@\"")
    unshare = ["unshare", "-m"] if _is_root() else ["unshare", "-rm"]
    return unshare + ["sh", "-c", "\n".join(lines), "sh", *argv]


def userns_error() -> str:
    """"" if this user can enter the Caffe root (root, or a kernel that allows unprivileged user
    namespaces), else why not."""
    if _is_root():
        return ""
    return _unprivileged_unshare_error()


@functools.lru_cache(maxsize=None)
def _unprivileged_unshare_error() -> str:
    try:
        tried = subprocess.run(["unshare", "-rm", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               universal_newlines=True)
    except OSError as error:
        return f"unshare: {error.strerror}"
    if tried.returncode == 0:
        return ""
    return ("this kernel does not allow unprivileged user namespaces (`unshare -rm` failed: "
            f"{tried.stderr.strip() or 'exit %d' % tried.returncode}), which a user other than root "
            "needs to enter the Caffe root")


# ---------------------------------------------------------------- TF venv

def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _base_python() -> str:
    # Through a venv's bin/python symlink to the real interpreter, so the
    # key (and the venv's home) name the interpreter that actually runs.
    return os.path.realpath(sys.executable)


def _tf_venv_path(project_root: Path) -> Path:
    key = cache_key((project_root / "requirements.txt").read_bytes(),
                    (project_root / "export" / "requirements.txt").read_bytes(),
                    (project_root / "requirements-no-deps.txt").read_bytes(),
                    TF_RECIPE.encode(), _base_python().encode(), sys.version.encode())
    return cache_dir() / f"tf-venv-{key}"


def _ensure_heavy_venv(project_root: Path, progress: Progress) -> Path:
    """The cached venv with TensorFlow etc.

    Venvs embed their own path, so this one is built in place (not renamed):
    under a lock, with a ``.complete`` marker written last.  A directory
    without the marker is an interrupted build and is rebuilt.
    """
    venv = _tf_venv_path(project_root)
    if (venv / COMPLETE).exists():
        return venv
    with locked(venv.with_name(venv.name + ".lock"), progress):
        if (venv / COMPLETE).exists():
            return venv
        start = time.monotonic()
        log = venv.with_name(venv.name + ".log")
        remove_interrupted("tf-venv-*", venv, progress)
        log.write_text("")
        progress(f"tf venv: building {venv} (log: {log})")
        python = _base_python()
        if subprocess.call([python, "-c", "import ensurepip, venv"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            # Debian splits venv's pip bootstrap into python3-venv.
            apt_install_host(["python3-venv"], progress, log)
        with timed_step(progress, "tf venv: python -m venv"):
            run_logged([python, "-m", "venv", str(venv)], log, "python -m venv")
        vpy = str(venv / "bin" / "python")
        with timed_step(progress, "tf venv: pip install -r requirements.txt"):
            run_logged([vpy, "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                        "-r", str(project_root / "requirements.txt")], log, "pip install")
        with timed_step(progress, "tf venv: pip install --no-deps -r requirements-no-deps.txt"):
            run_logged([vpy, "-m", "pip", "install", "--no-input", "--progress-bar", "off", "--no-deps",
                        "-r", str(project_root / "requirements-no-deps.txt")], log, "pip install --no-deps")
        with timed_step(progress, "tf venv: checking imports"):
            run_logged([vpy, "-c", "import tensorflow, h5py, cv2, tf_slim, sklearn, pytest, tf_keras"],
                       log, "import check")
        (venv / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        progress(f"tf venv: ready in {time.monotonic() - start:.0f} s, "
                 f"{du_mb(venv)} MB: {venv}")
    return venv


def _console_script(python: Path) -> str:
    # What pip writes for a console_scripts entry point.  Kernels cap the
    # shebang's length and split it at spaces: then use pip's sh trampoline.
    if len(str(python)) < 120 and " " not in str(python):
        head = f"#!{python}\n"
    else:
        head = f"#!/bin/sh\n'''exec' {shlex.quote(str(python))} \"$0\" \"$@\"\n' '''\n"
    return head + ("# -*- coding: utf-8 -*-\n"
                   "import re\n"
                   "import sys\n"
                   "from tf2caffe.command import main\n"
                   "if __name__ == \"__main__\":\n"
                   "    sys.argv[0] = re.sub(r\"(-script\\.pyw|\\.exe)?$\", \"\", sys.argv[0])\n"
                   "    sys.exit(main())\n")


def ensure_tf_env(project_root: str | os.PathLike = PROJECT_ROOT,
                  progress: Progress = print) -> Path:
    """Return ``<project_root>/.venv/bin/python`` with TensorFlow etc. importable.

    ``.venv`` is a tiny pip-less venv whose site-packages points (via .pth
    files) at the cached heavy venv and at the project root, plus the
    ``tf2caffe`` console script.  It is recreated when it points elsewhere.
    """
    project_root = Path(project_root).resolve()
    heavy = _ensure_heavy_venv(project_root, progress)
    dot = project_root / ".venv"
    python = dot / "bin" / "python"
    site = _site_packages(dot)
    wanted = {
        # addsitedir (not a bare path) also runs the heavy venv's own .pth files.
        site / "_tf2caffe_tf_venv.pth":
            f"import site; site.addsitedir({str(_site_packages(heavy))!r})\n",
        site / "_tf2caffe_project.pth": f"{project_root}\n",
        dot / "bin" / "tf2caffe": _console_script(python),
    }

    def current() -> bool:
        try:
            return python.exists() and all(p.read_text() == t for p, t in wanted.items())
        except OSError:
            return False

    if current():
        return python
    # A lock of the checkout's own (the cache may be a shared one this user cannot write).
    with locked(project_root / ".venv.lock", progress):
        if current():
            return python
        with timed_step(progress, f"tf venv: linking {dot}"):
            remove_tree(dot)
            subprocess.check_call([_base_python(), "-m", "venv", "--without-pip", str(dot)])
            for path, text in wanted.items():
                path.write_text(text)
            (dot / "bin" / "tf2caffe").chmod(0o755)
            # Cheap check (finds the packages without importing TensorFlow);
            # on failure remove .venv so that it does not look current.
            check = ("import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None "
                     "for m in ('tensorflow', 'tflearn', 'h5py', 'tf2caffe')))")
            if subprocess.call([str(python), "-c", check]) != 0:
                remove_tree(dot)
                raise RuntimeError(f"{dot} cannot find tensorflow/tflearn/h5py/tf2caffe")
    return python


# ---------------------------------------------------------------- CLI

def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tf2caffe.environments",
        description="Create tf2caffe's environments, or run a command in the Caffe root.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tf", help="create the TensorFlow venv and .venv")
    sub.add_parser("caffe", help="create the Caffe root filesystem")
    sub.add_parser("all", help="both")
    sub.add_parser("caffe-root", help="print the Caffe root's path (building it if needed)")
    sub.add_parser("caffe-source", help="print the python of the Caffe built from source "
                                        "(tf2caffe/source_caffe.py; building it if needed)")
    run = sub.add_parser("caffe-run", help="run a command inside the Caffe root")
    run.add_argument("--bind", action="append", default=[], metavar="PATH",
                     help="also make PATH (or its directory) visible inside")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    ns = parser.parse_args(args)

    def say(msg: str) -> None:
        print(msg, flush=True)

    if ns.command in ("tf", "all"):
        ensure_tf_env(PROJECT_ROOT, say)
    if ns.command in ("caffe", "all"):
        unusable = caffe_root_unusable()
        if unusable:
            say(f"caffe root: {unusable}; tf2caffe writes natively and verifies in OpenCV")
        else:
            ensure_caffe_root(say)
    if ns.command == "caffe-root":
        print(ensure_caffe_root(_stderr))
    if ns.command == "caffe-source":
        from .source_caffe import built_source_caffe_python, source_caffe_python  # it imports this module
        if _is_root() or built_source_caffe_python() is not None:
            print(source_caffe_python(_stderr))
        else:
            _stderr("caffe source: not built, and building it (apt-get) needs root: `make env CAFFE=source` "
                    "as root builds it; tf2caffe uses the other runtimes")
    if ns.command == "caffe-run":
        cmd = ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd
        if not cmd:
            parser.error("caffe-run needs a command after --")
        argv = caffe_command(cmd, ns.bind, os.getcwd(), ensure_caffe_root(_stderr))
        sys.stdout.flush()
        os.execvp(argv[0], argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
