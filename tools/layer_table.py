"""Print the README's table of supported layer types, generated from the handler registry.

    python3 tools/layer_table.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf2caffe.caffe.handlers import HANDLERS, load_builtin  # noqa: E402


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


if __name__ == "__main__":
    print(layer_table())
