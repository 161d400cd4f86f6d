"""The handler registry: every module of tf2caffe/caffe/handlers/ is loaded without a list, and a
handler emits only the Caffe types its `caffe_layers` declares, each one a target profile allows.

The emit context checks every layer a handler adds, so each conversion of the handler suites
(tests/handlers/, every case of every family) also checks that each emitted type is declared.
"""
from __future__ import annotations

import sys

import pytest

import intermediate_models
from tf2caffe.caffe import emit, handlers
from tf2caffe.caffe.handlers import HANDLERS, Handler, load_builtin, register
from tf2caffe.caffe.netspec import CaffeLayer
from tf2caffe.caffe.profiles import PROFILES
from tf2caffe.errors import ConversionError
from tf2caffe.intermediate import Layer, Model

FAMILY = '''
from tf2caffe.caffe.handlers import Handler, register


@register("test_new_family_layer")
class NewFamily(Handler):
    caffe_layers = ("TanH",)
'''


@pytest.fixture
def registry_restored():
    """HANDLERS and the handler modules as they were before the test registered its own."""
    handlers_before = dict(HANDLERS)
    modules_before = set(sys.modules)
    yield
    HANDLERS.clear()
    HANDLERS.update(handlers_before)
    for name in set(sys.modules) - modules_before:
        del sys.modules[name]


def test_a_new_family_file_is_loaded_without_being_listed(tmp_path, monkeypatch, registry_restored):
    (tmp_path / "new_family.py").write_text(FAMILY)
    monkeypatch.setattr(handlers, "__path__", list(handlers.__path__) + [str(tmp_path)])
    load_builtin()
    assert type(HANDLERS["test_new_family_layer"]).__name__ == "NewFamily"


def test_every_family_registers_handlers():
    load_builtin()
    families = {type(handler).__module__.rpartition(".")[2] for handler in HANDLERS.values()}
    assert {"activation", "conv", "dense", "elementwise", "io", "normalization", "pooling", "shape"} <= families


def test_every_declared_type_is_allowed_by_a_target_profile():
    load_builtin()
    allowed = set().union(*(profile.layers for profile in PROFILES.values()))
    for kind, handler in HANDLERS.items():
        assert set(handler.caffe_layers) <= allowed, (kind, sorted(set(handler.caffe_layers) - allowed))


def test_declaring_a_type_no_profile_allows_is_refused(registry_restored):
    with pytest.raises(ValueError, match="Upsample, which no target profile allows"):
        @register("test_upsample")
        class Upsampling(Handler):
            caffe_layers = ("Upsample",)


def test_emitting_an_undeclared_type_is_an_error(registry_restored):
    @register("test_undeclared")
    class Undeclared(Handler):
        caffe_layers = ("TanH",)

        def emit(self, layer, ctx):
            bottom = ctx.bottom(layer)
            ctx.add(CaffeLayer(ctx.name(layer), "ReLU", [bottom.name], [ctx.name(layer)]))
            ctx.produce(layer, ctx.name(layer))

    mlp = intermediate_models.mlp(name="model")
    layers = mlp.layers[:2] + [Layer("odd", "test_undeclared", ["dense_1"], {}, [4, 5])]
    model = Model("model", layers, ["odd"])
    model.source = "model.h5"
    with pytest.raises(ConversionError) as refused:
        emit.build_net(model)
    assert str(refused.value) == ("model.h5: layer 'odd' (test_undeclared): handler Undeclared emitted Caffe "
                                  "layer type 'ReLU', which its caffe_layers (TanH) do not declare")
