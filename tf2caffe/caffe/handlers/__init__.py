"""The layer registry: one handler per intermediate layer type.

A handler owns both halves of its job: the Caffe layers a layer becomes, and how its weights
move into Caffe's layout (as blob callables on those layers). Handlers live in one module per
family beside this file; `register` is also the extension point for user-supplied handlers.
"""
from __future__ import annotations

import importlib
from typing import Dict, Optional

from ...errors import ConversionError

HANDLERS: Dict[str, "Handler"] = {}
FAMILIES = ("io", "conv", "pooling", "dense", "activation", "elementwise", "normalization", "shape",
            "reduction")


class Handler:
    """Base class. Subclasses set `caffe_layers` (the Caffe types they may emit, for the docs
    and the target profile) and implement `emit`; `check` returns why a layer cannot be
    converted exactly (None when it can), before anything is written."""

    caffe_layers = ()
    summary = ""

    def check(self, layer, model, profile) -> Optional[str]:
        return None

    def emit(self, layer, ctx) -> None:
        raise NotImplementedError


def register(*types, override=False):
    """Class decorator: `@register("conv2d")` makes the class handle those layer types."""
    def decorate(cls):
        for kind in types:
            if kind in HANDLERS and not override:
                raise ValueError("a handler for '%s' is already registered (pass override=True)" % kind)
            HANDLERS[kind] = cls()
        return cls
    return decorate


def handler_for(kind) -> Handler:
    load_builtin()
    if kind not in HANDLERS:
        raise ConversionError("no handler for layer type '%s'" % kind)
    return HANDLERS[kind]


def load_builtin() -> None:
    for family in FAMILIES:
        importlib.import_module("%s.%s" % (__name__, family))
