"""The README's table of supported layer types, generated from the handler registry.

    python3 tools/layer_table.py            # print it
    python3 tools/layer_table.py --update   # rewrite it between the markers in README.md
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tf2caffe.caffe.handlers import HANDLERS, load_builtin  # noqa: E402

README = os.path.join(ROOT, "README.md")
START, END = "<!-- layer-table:start -->", "<!-- layer-table:end -->"


def layer_table() -> str:
    load_builtin()
    # `register` makes one instance per type: group the types by handler class.
    kinds_of = {}
    for kind, handler in sorted(HANDLERS.items()):
        kinds_of.setdefault(type(handler), []).append(kind)
    lines = ["| Layer type | Caffe layers | Conversion |", "|---|---|---|"]
    for handler, kinds in sorted(kinds_of.items(), key=lambda item: item[1][0]):
        caffe = ", ".join(handler.caffe_layers) or "(none)"
        lines.append("| %s | %s | %s |" % (", ".join("`%s`" % k for k in kinds), caffe, handler.summary))
    return "\n".join(lines)


def readme_with_table(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return "%s%s\n%s\n%s%s" % (head, START, layer_table(), END, tail)


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        with open(README) as f:
            text = f.read()
        with open(README, "w") as f:
            f.write(readme_with_table(text))
    else:
        print(layer_table())
