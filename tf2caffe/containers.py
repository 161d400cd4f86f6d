"""Build and run the two stage images, tf2caffe-export and tf2caffe-import.

    python3 -m tf2caffe.containers build export|import
    python3 -m tf2caffe.containers run export|import [--user UID:GID] -- ARGS...
    python3 -m tf2caffe.containers engine [-- ENGINE-ARGS...]

The engine is Docker when a daemon answers (``docker info``), else podman.
Podman needs no daemon and no registry: it is installed with apt-get when
missing, and everything it keeps lives in ``cache_dir()/containers`` (outside
the checkout, so a fresh clone reuses it): its storage, its configuration,
the Debian base images made locally with debootstrap (``FROM debian:*-slim``
cannot be pulled here) and the export image's wheels.  pip inside a build
may not reach PyPI, so the wheels are downloaded on the host and lent to the
build in ``export/wheels`` (hard links into the cache, removed afterwards).

``run`` mounts the working folder at /work, runs as the invoking user (so
outputs belong to them) and without network.

Standard library only, like ``environments``: it runs on the system python3.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from . import environments
from .environments import PROJECT_ROOT, Progress, cache_key, locked, run_logged, timed_step

# Bump when a recipe changes in a way its inputs do not show.
BASE_RECIPE = "debootstrap-minbase-slim/1"
WHEELS_RECIPE = "cp311-manylinux_2_36_x86_64/1"

# The export image's Python (Debian bookworm's python3): the wheels must fit it.
WHEELS_PYTHON = "3.11"
# Bookworm has glibc 2.36: every manylinux tag up to it fits (pip does not expand them itself).
WHEELS_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]

# Default rlimits are refused here and crun fails on hybrid cgroups (measured).
PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=1024:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

# What Debian's official -slim images leave out (debuerreotype's slimify).
SLIM_DPKG_CFG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""
SLIM_REMOVED = ("usr/share/man", "usr/share/groff", "usr/share/info", "usr/share/lintian",
                "usr/share/linda", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists")


class Stage(NamedTuple):
    image: str
    dockerfile: str
    suite: str  # Debian suite of the base image, debian:<suite>-slim


STAGES: Dict[str, Stage] = {
    "export": Stage("tf2caffe-export", "export/Dockerfile", "bookworm"),
    "import": Stage("tf2caffe-import", "import/Dockerfile", "bullseye"),
}
WHEELS_IN_CONTEXT = "export/wheels"


def containers_dir() -> Path:
    return environments.cache_dir() / "containers"


def _fresh_log(name: str) -> Path:
    """An emptied log file for one activity (the logs do not grow run after run)."""
    containers_dir().mkdir(parents=True, exist_ok=True)
    log = containers_dir() / f"{name}.log"
    log.write_text("")
    return log


# ---------------------------------------------------------------- engine

def pick_engine() -> str:
    """``docker`` when a Docker daemon answers, else ``podman``."""
    if shutil.which("docker"):
        answered = subprocess.call(["docker", "info"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        if answered == 0:
            return "docker"
    return "podman"


def engine_command(engine: str) -> List[str]:
    """The engine's argv prefix: podman with the project's storage and configuration."""
    if engine == "docker":
        return ["env", "DOCKER_BUILDKIT=1", "docker"]  # BuildKit: RUN --mount
    root = containers_dir()
    return ["env", f"CONTAINERS_CONF={root / 'containers.conf'}", "podman",
            "--root", str(root / "storage"), "--runroot", str(root / "run")]


def ensure_podman(progress: Progress) -> None:
    """podman, runc and debootstrap on the host, and podman's configuration file."""
    missing = [package for program, packages in (("podman", ["podman"]), ("runc", ["runc"]), (
        "debootstrap", ["debootstrap", "debian-archive-keyring"]))
        if not (shutil.which(program) or os.path.exists("/usr/sbin/" + program))
        for package in packages]
    if missing:
        environments.apt_install_host(missing, progress, _fresh_log("apt-get"))
    containers_dir().mkdir(parents=True, exist_ok=True)
    conf = containers_dir() / "containers.conf"
    if not conf.exists() or conf.read_text() != PODMAN_CONF:
        conf.write_text(PODMAN_CONF)


def _engine_ok(engine: str, *args: str) -> bool:
    return subprocess.call(engine_command(engine) + list(args), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL) == 0


def _engine_logged(engine: str, args: Sequence[str], log: Path, what: str) -> None:
    run_logged(engine_command(engine) + list(args), log, what)


# ---------------------------------------------------------------- base images

def base_image(suite: str) -> str:
    return f"docker.io/library/debian:{suite}-slim"


def ensure_base_image(suite: str, progress: Progress, log: Path) -> None:
    """debian:<suite>-slim in podman's storage, made with debootstrap from this
    machine's Debian mirror.  Tagged also with a key of the recipe, so a changed
    recipe or mirror makes a new one."""
    mirror = environments.debian_mirror()
    keyed = f"localhost/tf2caffe-base:{suite}-{cache_key(suite.encode(), mirror.encode(), BASE_RECIPE.encode())}"
    if not _engine_ok("podman", "image", "exists", keyed):
        with locked(containers_dir() / f"base-{suite}.lock", progress):
            if not _engine_ok("podman", "image", "exists", keyed):
                _make_base_image(suite, mirror, keyed, progress)
    _engine_logged("podman", ["tag", keyed, base_image(suite)], log, "podman tag")


def _make_base_image(suite: str, mirror: str, tag: str, progress: Progress) -> None:
    log = _fresh_log(f"base-{suite}")
    rootfs = containers_dir() / f"base-{suite}.partial"
    environments.remove_tree(rootfs)
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    try:
        with timed_step(progress, f"containers: debootstrap {suite} from {mirror}"):
            run_logged(["unshare", "-m", debootstrap, "--variant=minbase", suite, str(rootfs),
                        mirror], log, "debootstrap")
        for removed in SLIM_REMOVED:
            environments.remove_tree(rootfs / removed)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG_CFG)
        for path in (rootfs / "usr/share/doc").glob("*/*"):
            if path.name == "copyright":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        with timed_step(progress, f"containers: podman import {tag}"):
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE)
            with open(log, "ab") as out:
                imported = subprocess.call(engine_command("podman") + ["import", "-", tag],
                                           stdin=tar.stdout, stdout=out, stderr=out)
            tar.stdout.close()
            if tar.wait() != 0 or imported != 0:
                raise RuntimeError(f"podman import of {rootfs} failed")
    finally:
        environments.remove_tree(rootfs)


# ---------------------------------------------------------------- wheels

def ensure_wheels(progress: Progress) -> Path:
    """The export image's wheels (export/requirements.txt, for CPython 3.11 on
    x86_64 Linux) in the cache, downloaded once with the host's pip."""
    requirements = PROJECT_ROOT / "export" / "requirements.txt"
    key = cache_key(requirements.read_bytes(), WHEELS_RECIPE.encode())
    wheels = containers_dir() / f"wheels-{key}"
    if wheels.is_dir():
        return wheels
    with locked(containers_dir() / "wheels.lock", progress):
        if wheels.is_dir():
            return wheels
        partial = wheels.with_name(wheels.name + ".partial")
        environments.remove_tree(partial)
        log = _fresh_log(wheels.name)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
        with timed_step(progress, f"containers: pip download the export image's wheels into {wheels}"):
            # Requirements published only as sources (tflearn) become wheels here
            # first; a cross-platform download below accepts nothing else.
            run_logged(pip + ["wheel", "--no-deps", "--progress-bar", "off", "--wheel-dir",
                              str(partial), "-r", str(requirements)], log, "pip wheel")
            run_logged(pip + ["download", "--progress-bar", "off", "--only-binary=:all:",
                              "--python-version", WHEELS_PYTHON, "--implementation", "cp",
                              *(f"--platform={tag}" for tag in WHEELS_PLATFORMS),
                              "--find-links", str(partial),
                              "--dest", str(partial), "-r", str(requirements)],
                       log, "pip download")
        os.rename(partial, wheels)
    return wheels


class _lent_wheels:
    """Hard links to the cached wheels in the build context for one build."""

    def __init__(self, wheels: Path):
        self.wheels = wheels
        self.target = PROJECT_ROOT / WHEELS_IN_CONTEXT

    def __enter__(self) -> None:
        environments.remove_tree(self.target)
        self.target.mkdir()
        for wheel in self.wheels.iterdir():
            try:
                os.link(wheel, self.target / wheel.name)
            except OSError:  # another file system
                shutil.copy2(wheel, self.target / wheel.name)

    def __exit__(self, *exc) -> None:
        environments.remove_tree(self.target)


# ---------------------------------------------------------------- build, run

def build_command(engine: str, dockerfile: Path, tag: str) -> List[str]:
    """argv that builds ``dockerfile`` with the project root as context."""
    offline = ["--pull=never", "--layers"] if engine == "podman" else []  # local base images
    return engine_command(engine) + ["build", *offline, "-f", str(dockerfile), "-t", tag,
                                     str(PROJECT_ROOT)]


def build(stage_name: str, engine: Optional[str] = None, progress: Progress = print) -> str:
    """Build the stage's image from its Dockerfile; returns the tag."""
    stage = STAGES[stage_name]
    engine = engine or pick_engine()
    wheels = ensure_wheels(progress) if stage_name == "export" else None
    if engine == "podman":
        ensure_podman(progress)
    with locked(containers_dir() / "build.lock", progress):
        log = _fresh_log(f"build-{stage_name}")
        if engine == "podman":
            ensure_base_image(stage.suite, progress, log)
        lent = _lent_wheels(wheels) if wheels else contextlib.nullcontext()
        with lent, timed_step(progress, f"containers: {engine} build {stage.image} (log: {log})"):
            run_logged(build_command(engine, PROJECT_ROOT / stage.dockerfile, stage.image), log,
                       f"{engine} build {stage.image}")
        if engine == "podman":
            # The previous image's layers (each code change makes a new image; the layers
            # that the build cache still uses are kept).
            _engine_logged(engine, ["image", "prune", "--force"], log, "podman image prune")
    return stage.image


def run_command(stage_name: str, args: Sequence[str], engine: str,
                workdir: Optional[str] = None, user: Optional[str] = None,
                entrypoint: Optional[str] = None) -> List[str]:
    """argv that runs the stage's image on ``args`` with ``workdir`` (default:
    the current folder) mounted at /work, as ``user`` (default: ours), offline."""
    workdir = os.path.realpath(workdir or os.getcwd())
    user = user or f"{os.getuid()}:{os.getgid()}"
    other = ["--entrypoint", entrypoint] if entrypoint else []
    return engine_command(engine) + [
        "run", "--rm", "--network", "none", "--user", user, *other,
        "-v", f"{workdir}:/work", "-w", "/work", STAGES[stage_name].image, *args]


def run(stage_name: str, args: Sequence[str], engine: Optional[str] = None,
        workdir: Optional[str] = None, user: Optional[str] = None) -> int:
    engine = engine or pick_engine()
    if not _engine_ok(engine, "image", "inspect", STAGES[stage_name].image):
        raise RuntimeError(f"no image {STAGES[stage_name].image}: build it first "
                           f"(make docker-{stage_name})")
    return subprocess.call(run_command(stage_name, args, engine, workdir, user))


# ---------------------------------------------------------------- CLI

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tf2caffe.containers",
        description="Build and run tf2caffe's stage images (Docker if a daemon answers, else podman).")
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="build tf2caffe-export or tf2caffe-import")
    build_parser.add_argument("stage", choices=sorted(STAGES))
    run_parser = sub.add_parser("run", help="run a stage's image in the current folder (at /work)")
    run_parser.add_argument("stage", choices=sorted(STAGES))
    run_parser.add_argument("--user", metavar="UID:GID", help="default: the invoking user")
    sub.add_parser("engine", help="print the engine, or run it with the project's storage "
                   "and configuration: engine -- images")
    argv = list(sys.argv[1:] if argv is None else argv)
    # What follows "--" belongs to the image (or the engine), whatever it looks like.
    split = argv.index("--") if "--" in argv else len(argv)
    argv, rest = argv[:split], argv[split + 1:]
    ns = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if ns.command == "build":
            build(ns.stage, progress=say)
            return 0
        if ns.command == "run":
            return run(ns.stage, rest, user=ns.user)
        engine = pick_engine()
        if not rest:
            print(engine)
            return 0
        if engine == "podman":
            ensure_podman(say)
        return subprocess.call(engine_command(engine) + rest)
    except RuntimeError as error:
        say(f"tf2caffe.containers: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
