"""The README's supported-layer table is the registry's, and .ci/run runs the README's test command."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from layer_table import README, readme_with_table  # noqa: E402


def test_layer_table_is_current():
    with open(README) as f:
        text = f.read()
    assert text == readme_with_table(text), "run: python3 tools/layer_table.py --update"


def test_ci_runs_the_readme_test_command():
    with open(README) as f:
        assert "make test" in f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert f.read().strip().endswith("make test")
