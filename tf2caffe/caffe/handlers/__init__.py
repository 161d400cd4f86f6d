"""The layer registry: one handler per intermediate layer type.

A handler owns both halves of its job: the Caffe layers a layer becomes, and how its weights
move into Caffe's layout (as blob callables on those layers). Handlers live in one module per
family beside this file, all of which `load_builtin` imports (a new family file needs no list);
`register` is also the extension point for user-supplied handlers.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Optional

from ...errors import ConversionError
from ..profiles import PROFILES

HANDLERS: Dict[str, "Handler"] = {}
# A handler may declare a type only some profiles allow (ReLU6): it then chooses by profile.
PROFILE_TYPES = frozenset().union(*(profile.layers for profile in PROFILES.values()))


class Handler:
    """Base class. Subclasses set `caffe_layers` (every Caffe type they may emit: the docs and
    the target profiles rely on it, and emitting another is an error) and implement `emit`;
    `check` returns why a layer cannot be converted exactly (None when it can), before anything
    is written."""

    caffe_layers = ()
    summary = ""

    def check(self, layer, model, profile) -> Optional[str]:
        return None

    def emit(self, layer, ctx) -> None:
        raise NotImplementedError


def register(*types, override=False):
    """Class decorator: `@register("conv2d")` makes the class handle those layer types."""
    def decorate(cls):
        unknown = sorted(set(cls.caffe_layers) - PROFILE_TYPES)
        if unknown:
            raise ValueError("%s declares Caffe layer type(s) %s, which no target profile allows" % (
                cls.__name__, ", ".join(unknown)))
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
    """Import every module of this package (each family registers its handlers on import)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module("%s.%s" % (__name__, module.name))
