"""The tables generated from the handler registry: the README's supported layer types and the
intermediate format's vocabulary (docs/intermediate-format.md).

    .venv/bin/python tools/layer_table.py            # print both
    .venv/bin/python tools/layer_table.py --update   # rewrite them between their markers
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tf2caffe.caffe.handlers import HANDLERS, load_builtin  # noqa: E402

README = os.path.join(ROOT, "README.md")
FORMAT_DOC = os.path.join(ROOT, "docs", "intermediate-format.md")


def handler_rows():
    """(handler, its types) in type order; `register` makes one instance per type."""
    load_builtin()
    kinds_of = {}
    for kind, handler in sorted(HANDLERS.items()):
        kinds_of.setdefault(type(handler), (handler, []))[1].append(kind)
    return sorted(kinds_of.values(), key=lambda item: item[1][0])


def types_cell(kinds) -> str:
    return ", ".join("`%s`" % kind for kind in kinds)


def layer_table() -> str:
    lines = ["| Layer type | Caffe layers | Conversion |", "|---|---|---|"]
    for handler, kinds in handler_rows():
        caffe = ", ".join(handler.caffe_layers) or "(none)"
        lines.append("| %s | %s | %s |" % (types_cell(kinds), caffe, handler.summary))
    return "\n".join(lines)


def vocabulary_table() -> str:
    lines = ["| type | config | arrays (TF layout) |", "|---|---|---|"]
    for handler, kinds in handler_rows():
        config = ", ".join("`%s`" % key for key in handler.config_keys)
        notes = "; ".join(part for part in (config, handler.notes) if part)
        arrays = ", ".join("`%s`%s %s" % (role.rstrip("?"), "?" if role.endswith("?") else "", layout)
                           for role, layout in handler.array_layouts.items())
        lines.append("| %s | %s | %s |" % (types_cell(kinds), notes, arrays))
    return "\n".join(lines)


# file -> (start marker, end marker, table)
TABLES = {README: ("<!-- layer-table:start -->", "<!-- layer-table:end -->", layer_table),
          FORMAT_DOC: ("<!-- vocabulary:start -->", "<!-- vocabulary:end -->", vocabulary_table)}


def with_table(path: str, text: str) -> str:
    start, end, table = TABLES[path]
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return "%s%s\n%s\n%s%s" % (head, start, table(), end, tail)


if __name__ == "__main__":
    for path, (_, _, table) in TABLES.items():
        if sys.argv[1:] == ["--update"]:
            with open(path) as f:
                text = with_table(path, f.read())  # before opening for writing: a failure keeps the file
            with open(path, "w") as f:
                f.write(text)
        else:
            print(table() + "\n")
