"""The `tf2caffe` command's entry point: the console script's and `python -m tf2caffe`'s.

It watches for Ctrl-C before it loads the command's modules (numpy among them: a few hundred
milliseconds, longer on a busy machine). A Ctrl-C while they load then ends the command as a later
one does, even where numpy has turned its KeyboardInterrupt into an ImportError.
"""
from __future__ import annotations

from typing import List, Optional

from .errors import reported_errors


def main(argv: Optional[List[str]] = None) -> int:
    with reported_errors():
        from .cli import main as run
    return run(argv)
