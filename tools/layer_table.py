"""The tables generated from the handler registry and the profile table: the README's target
profiles and supported layer types, and the intermediate format's vocabulary
(docs/intermediate-format.md).

    .venv/bin/python tools/layer_table.py            # print both
    .venv/bin/python tools/layer_table.py --update   # rewrite them between their markers
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tf2caffe.caffe.handlers import HANDLERS, load_builtin  # noqa: E402
from tf2caffe.caffe.profiles import DEFAULT_PROFILE, PROFILES  # noqa: E402

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


# The profiles after the default one: each gets a column of the Caffe layers it adds.
EXTRA_PROFILES = [name for name in PROFILES if name != DEFAULT_PROFILE]


def profile_table() -> str:
    base = PROFILES[DEFAULT_PROFILE]
    lines = ["| Profile | For | Caffe layer types |", "|---|---|---|"]
    for name, profile in PROFILES.items():
        kinds = ", ".join(sorted(profile.layers)) if profile is base else "`%s` + %s" % (
            DEFAULT_PROFILE, ", ".join(sorted(profile.layers - base.layers)))
        lines.append("| `%s` | %s | %s |" % (name, profile.description, kinds))
    return "\n".join(lines)


def layer_table() -> str:
    """One row per handler: the Caffe layers it emits in the default profile, those it adds
    where each other profile allows them, and how it converts."""
    extra = ["+ in `%s`" % name for name in EXTRA_PROFILES]
    lines = ["| Layer type | Caffe layers (`%s`) | %s | Conversion |" % (DEFAULT_PROFILE, " | ".join(extra)),
             "|---|---|%s---|" % ("---|" * len(extra))]
    base = PROFILES[DEFAULT_PROFILE]
    for handler, kinds in handler_rows():
        caffe = ", ".join(kind for kind in handler.caffe_layers if base.allows(kind)) or "(none)"
        added = [", ".join(kind for kind in handler.caffe_layers
                           if PROFILES[name].allows(kind) and not base.allows(kind)) for name in EXTRA_PROFILES]
        lines.append("| %s | %s | %s | %s |" % (types_cell(kinds), caffe, " | ".join(added), handler.summary))
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


# file -> its tables: (start marker, end marker, table)
TABLES = {README: [("<!-- profile-table:start -->", "<!-- profile-table:end -->", profile_table),
                   ("<!-- layer-table:start -->", "<!-- layer-table:end -->", layer_table)],
          FORMAT_DOC: [("<!-- vocabulary:start -->", "<!-- vocabulary:end -->", vocabulary_table)]}


def with_table(path: str, text: str) -> str:
    for start, end, table in TABLES[path]:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = "%s%s\n%s\n%s%s" % (head, start, table(), end, tail)
    return text


if __name__ == "__main__":
    for path, tables in TABLES.items():
        if sys.argv[1:] == ["--update"]:
            with open(path) as f:
                text = with_table(path, f.read())  # before opening for writing: a failure keeps the file
            with open(path, "w") as f:
                f.write(text)
        else:
            for _, _, table in tables:
                print(table() + "\n")
