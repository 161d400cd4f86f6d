"""Runs the Caffe-side unit tests inside the Caffe chroot (Python 3.9, numpy 1.19, pycaffe), so
`make test` covers both environments: tests/test_intermediate.py, tests/test_held_interrupts.py
and tests/caffe_side/."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.chroot
def test_caffe_side_suite_passes_in_the_chroot():
    completed = subprocess.run(
        [sys.executable, "-m", "tf2caffe.environments", "caffe-run", "--",
         "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_intermediate.py", "tests/test_held_interrupts.py", "tests/caffe_side/"],
        cwd=str(PROJECT_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    assert completed.returncode == 0, completed.stdout[-6000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 30, summary
    for outcome in ("failed", "error", "skipped", "xfail", "deselected"):
        assert outcome not in summary, summary
