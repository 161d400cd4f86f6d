"""`reduce` (sum, mean, max, min, prod over any non-batch axes) and `l2_normalize`.

Keras has no reduction layer, so `reduce` is tested on intermediate models whose TensorFlow
reference is numpy's (float32, as TensorFlow computes it); `l2_normalize` on Keras's
UnitNormalization. Each is converted exactly or refused with its reason. Where the profile has
SSD's Normalize layer (ssd, opencv), `l2_normalize` over the channels or over C, H, W is that one
layer: no Caffe in the chroot has it, so those cases run in OpenCV only (written natively).
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from handler_batch import assert_refused, build, chain
from harness import assert_exact, convert_intermediate_batch, convert_keras_batch
from tf2caffe.intermediate import Layer, Model

L = keras.layers
NUMPY = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


def reduction(name, shape, *steps, seed=0) -> Model:
    """input of `shape` (batch first) -> one reduce layer per (operation, axes, keepdims) step.
    Magnitudes in [0.7, 1.4] with random signs: a product of many stays finite and far from
    zero, a sum does not cancel to nothing."""
    rng = np.random.RandomState(seed)
    x = (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.7, 1.4, shape)).astype(np.float32)
    layers = [Layer("input", "input", [], {"shape": [None] + list(shape[1:])}, list(shape))]
    activations = {"input": x}
    for index, (operation, axes, keepdims) in enumerate(steps):
        y = NUMPY[operation](x, axis=tuple(axes), keepdims=keepdims).astype(np.float32)
        layer_name = "reduce" if index == len(steps) - 1 else "reduce%d" % index
        layers.append(Layer(layer_name, "reduce", [layers[-1].name], {
            "operation": operation, "axes": list(axes), "keepdims": keepdims}, list(y.shape)))
        activations[layer_name], x = y, y
    return Model(name, layers, ["reduce"], {"source_framework": "numpy", "source_version": "test",
                                            "tensorflow_version": "none", "source_path": "numpy",
                                            "created_by": "tests"},
                 {"input": activations["input"]}, activations)


IMAGE, VECTORS = (3, 4, 5, 6), (3, 7)
SEQUENCE = ("mean", [3], False)  # (N, H, W, C) -> a 3-D (N, H, W), held in that order
# name -> (input shape, steps before, axes, keepdims); every one with every operation.
REDUCTIONS = {
    "channels": (IMAGE, [], [3], False),             # (N, H, W): Caffe's order agrees
    "rows_kept": (IMAGE, [], [1], True),
    "columns_kept": (IMAGE, [], [2], True),
    "spatial": (IMAGE, [], [1, 2], False),           # (N, C)
    "rows_and_channels": (IMAGE, [], [1, 3], True),  # two separate runs of Caffe axes
    "all": (IMAGE, [], [1, 2, 3], False),            # (N,)
    "vectors": (VECTORS, [], [1], False),
    "vectors_kept": (VECTORS, [], [1], True),
    "sequence_last": (IMAGE, [SEQUENCE], [2], False),
    "sequence_first_kept": (IMAGE, [SEQUENCE], [1], True),
}
CASES = {"%s_%s" % (operation, name): reduction("%s_%s" % (operation, name), shape, *before,
                                                (operation, axes, keepdims))
         for operation in sorted(NUMPY) for name, (shape, before, axes, keepdims) in REDUCTIONS.items()}
REFUSED = {
    "rows_dropped": (reduction("rows_dropped", IMAGE, ("max", [1], False)), "Caffe holds in C,H,W order"),
    "batch": (reduction("batch", IMAGE, ("sum", [0, 1], True)), "other than the batch axis"),
}

L2_CASES = {
    "l2_channels": lambda: chain((5, 6, 4), L.Conv2D(4, 3, padding="same"), L.UnitNormalization()),
    "l2_spatial": lambda: chain((5, 6, 4), L.Conv2D(4, 3), L.UnitNormalization(axis=[1, 2])),
    "l2_rows": lambda: chain((5, 6, 4), L.Conv2D(4, 3), L.UnitNormalization(axis=1)),
    "l2_all": lambda: chain((5, 5, 4), L.Conv2D(4, 3), L.UnitNormalization(axis=[1, 2, 3])),  # 3x3
    "l2_vectors": lambda: chain((8,), L.Dense(6), L.UnitNormalization(), L.Dense(3)),
    "l2_flattened": lambda: chain((3, 4, 5), L.Conv2D(4, 1), L.Flatten(), L.UnitNormalization(),
                                  L.Dense(3)),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tf2caffe.export.keras import model_to_intermediate
    models = dict(CASES, **{name: model for name, (model, _) in REFUSED.items()})
    models.update({name: model_to_intermediate(keras_model, name, per_layer=True)
                   for name, keras_model in build(L2_CASES).items()})
    return convert_intermediate_batch(models, tmp_path_factory.mktemp("reduction"))


@pytest.mark.parametrize("name", sorted(CASES) + sorted(L2_CASES))
def test_exact(results, name):
    assert_exact(results[name])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(results, name):
    assert_refused(results[name], "reduce", REFUSED[name][1])


def test_spatial_reductions_pool_in_place(results):
    """A window over H and/or W needs no Reshape; the channels are viewed as rows first."""
    assert "Reshape" not in results["max_columns_kept"].caffe_types
    assert "Reshape" in results["max_channels"].caffe_types


# l2_normalize cases that become one Normalize layer (across_spatial) in the ssd and opencv profiles.
NORMALIZE_LAYER = {"l2_channels": False, "l2_all": True}


@pytest.mark.parametrize("profile", ["ssd", "opencv"])
@pytest.mark.parametrize("name", sorted(NORMALIZE_LAYER))
def test_l2_normalize_is_one_normalize_layer(tmp_path, name, profile):
    result = convert_keras_batch(build({name: L2_CASES[name]}), tmp_path, profile=profile)[name]
    assert_exact(result)
    prototxt = result.prototxt
    assert prototxt.count('type: "Normalize"') == 1 and "Eltwise" not in prototxt
    assert "across_spatial: %s" % str(NORMALIZE_LAYER[name]).lower() in prototxt


def test_l2_normalize_over_other_axes_stays_composed(tmp_path):
    result = convert_keras_batch(build({"l2_spatial": L2_CASES["l2_spatial"]}), tmp_path, profile="ssd")["l2_spatial"]
    assert_exact(result)
    assert "Normalize" not in result.prototxt


@pytest.mark.parametrize("profile", ["ssd", "opencv"])
def test_order_changing_reduction_permutes_where_the_profile_can(tmp_path, profile):
    """(N, H, W, C) reduced over H is (N, W, C), which Caffe holds as (N, C, W): refused in bvlc
    (REFUSED), Permute then Reshape where the profile has Permute."""
    model = reduction("rows_dropped", IMAGE, ("max", [1], False))
    result = convert_intermediate_batch({"rows_dropped": model}, tmp_path, profile=profile)["rows_dropped"]
    assert_exact(result)
    assert 'type: "Permute"' in result.prototxt
