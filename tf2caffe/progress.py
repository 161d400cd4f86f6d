"""Progress on the long steps of the TensorFlow side (the export's forward pass, the
verification in each other runtime; the import stage has its own, import_stage.Progress): a
tqdm bar on stderr when stdout is a terminal, else one plain line on stdout per step;
steps that cannot count (one subprocess) print their line either way.
"""
from __future__ import annotations

import sys
from typing import Iterable, List


def on_a_terminal() -> bool:
    return sys.stdout.isatty()


def each(items: Iterable, label: str, unit: str) -> Iterable:
    """`items`, with a bar `label` counting `unit`s on a terminal; else a line 'label: N units'."""
    items: List = list(items)
    if on_a_terminal():
        try:
            from tqdm import tqdm
        except ImportError:  # the plain line then
            pass
        else:
            return tqdm(items, desc=label, unit=unit, leave=False, file=sys.stderr)
    print("%s: %d %s%s" % (label, len(items), unit, "" if len(items) == 1 else "s"), flush=True)
    return items


def note(label: str) -> None:
    """A step that reports nothing while it runs (one process doing it all): its line."""
    print(label, flush=True)
