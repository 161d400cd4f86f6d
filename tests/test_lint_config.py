"""The two lists of what runs in the Caffe chroot (Python 3.9) agree: the Makefile's CHROOT_PYTHON
(vermin) and ruff's per-file-target-version in pyproject.toml."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_and_vermin_check_the_same_chroot_files():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^CHROOT_PYTHON := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE).group(1)
    for_vermin = {path if path.endswith(".py") else path + "/**" for path in listed.replace("\\\n", " ").split()}
    with open(ROOT / "pyproject.toml", "rb") as f:
        targets = tomllib.load(f)["tool"]["ruff"]["per-file-target-version"]
    assert set(targets.values()) == {"py39"}
    assert set(targets) == for_vermin
