"""The generated tables (README's supported layers, the format's vocabulary) are the registry's,
and .ci/run runs the README's test command."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import pytest  # noqa: E402
from layer_table import README, TABLES, with_table  # noqa: E402


@pytest.mark.parametrize("path", sorted(TABLES))
def test_generated_tables_are_current(path):
    with open(path) as f:
        text = f.read()
    assert text == with_table(path, text), "run: python3 tools/layer_table.py --update"


def test_ci_runs_the_readme_test_command():
    with open(README) as f:
        assert "make test" in f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert f.read().strip().endswith("make test")
