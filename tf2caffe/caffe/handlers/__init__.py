"""The layer registry: one handler per intermediate layer type.

A handler owns both halves of its job: the Caffe layers a layer becomes, and how its weights
move into Caffe's layout (as blob callables on those layers). Handlers live in one module per
family beside this file, all of which `load_builtin` imports (a new family file needs no list);
`register` is also the extension point for user-supplied handlers.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from ...errors import ConversionError
from ..profiles import PROFILES

HANDLERS: Dict[str, "Handler"] = {}
# A handler may declare a type only some profiles allow (ReLU6): it then chooses by profile.
PROFILE_TYPES = frozenset().union(*(profile.layers for profile in PROFILES.values()))


class BroadcastsTo(tuple):
    """A declared array shape that also admits every shape numpy broadcasts to it (a PReLU's
    alpha with shared axes, a Normalization mean of shape (1, 1, 1, C))."""

    def admits(self, shape: Sequence[int]) -> bool:
        return len(shape) <= len(self) and all(
            have in (1, want) for have, want in zip(reversed(shape), reversed(self)))


class Handler:
    """Base class: the one declaration of its layer types.

    The class attributes declare the types' entry in the intermediate vocabulary (which the
    reader enforces and docs/intermediate-format.md tabulates) and the Caffe side (`caffe_layers`,
    every Caffe type it may emit: the docs and the target profiles rely on it, and emitting
    another is an error; `summary`, for the README). Subclasses implement `emit`;
    `array_shapes` gives the shape (in TensorFlow's layout) that a layer's config and input
    imply for each array it holds; `check` returns why a layer cannot be converted exactly
    (None when it can). The check pass runs both before anything is written, so `emit` never
    meets an array of the wrong shape."""

    config_keys = ()    # config keys every layer of the type has
    array_layouts = {}  # array role -> its layout, for the docs; a role ending in '?' is optional
    notes = ""          # what the config means, for the docs
    caffe_layers = ()
    summary = ""

    def array_shapes(self, layer, model) -> Dict[str, Sequence[int]]:
        return {}

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


class LayerType(NamedTuple):
    """A type's entry in the intermediate vocabulary."""
    config_keys: Tuple[str, ...]
    required_arrays: Tuple[str, ...]
    optional_arrays: Tuple[str, ...]


def vocabulary() -> Dict[str, LayerType]:
    """Every layer type an intermediate file may hold, from the handlers' declarations."""
    load_builtin()
    return {kind: LayerType(tuple(handler.config_keys),
                            tuple(role for role in handler.array_layouts if not role.endswith("?")),
                            tuple(role[:-1] for role in handler.array_layouts if role.endswith("?")))
            for kind, handler in HANDLERS.items()}


def handler_for(kind) -> Handler:
    load_builtin()
    if kind not in HANDLERS:
        raise ConversionError("no handler for layer type '%s'" % kind)
    return HANDLERS[kind]


def load_builtin() -> None:
    """Import every module of this package (each family registers its handlers on import)."""
    _import_modules_of(tuple(__path__))


# Once per package path: listing its modules again at each of a net's layers took a tenth of an import.
@functools.lru_cache(maxsize=None)
def _import_modules_of(path: Tuple[str, ...]) -> None:
    for module in pkgutil.iter_modules(path):
        importlib.import_module("%s.%s" % (__name__, module.name))
