"""Shared by the handler-family tests: build seeded Keras cases, convert them in one batch."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import keras
import pytest

from harness import Result, assert_exact, convert_keras_batch


def chain(shape, *layers) -> keras.Model:
    """Input of `shape` (without batch) through `layers` in sequence."""
    inputs = keras.Input(shape)
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


def batch_norm(**options) -> keras.layers.BatchNormalization:
    """BatchNormalization with random moving statistics (default ones would hide bugs)."""
    init = keras.initializers
    return keras.layers.BatchNormalization(
        moving_mean_initializer=init.RandomNormal(0.0, 0.5),
        moving_variance_initializer=init.RandomUniform(0.2, 2.0),
        gamma_initializer=init.RandomNormal(1.0, 0.3), beta_initializer=init.RandomNormal(0.0, 0.3),
        **options)


def build(cases: Dict[str, Callable[[], keras.Model]], seed: int = 0) -> Dict[str, keras.Model]:
    """Each case's model, built with the same seed, so weights do not depend on case order."""
    models = {}
    for name, make in cases.items():
        keras.utils.set_random_seed(seed)
        models[name] = make()
    return models


def convert(cases: Dict[str, Callable[[], keras.Model]], tmp_dir) -> Dict[str, Result]:
    return convert_keras_batch(build(cases), tmp_dir)


def assert_refused(result: Result, layer: str, reason: str) -> None:
    """The conversion stopped before writing anything, naming `layer` and saying why."""
    assert result.error is not None, "%s: converted, but should have been refused" % result.name
    message = result.error
    assert "'%s'" % layer in message and reason in message, "%s: unexpected error: %s" % (result.name, message)


def family_tests(cases: Dict[str, Callable[[], keras.Model]],
                 refused: Dict[str, Tuple[Callable[[], keras.Model], str, str]], label: str):
    """The module fixture and tests of a handler family: `cases` (name -> model builder) and
    `refused` (name -> (builder, layer, reason)) all converted in one batch, then every case
    asserted exact and every refusal asserted to name its layer and reason. Use as
    `results, test_exact, test_refused = family_tests(CASES, REFUSED, "dense")`."""

    @pytest.fixture(scope="module")
    def results(tmp_path_factory):
        every = dict(cases, **{name: make for name, (make, _, _) in refused.items()})
        return convert(every, tmp_path_factory.mktemp(label))

    @pytest.mark.parametrize("name", sorted(cases))
    def test_exact(results, name):
        assert_exact(results[name])

    @pytest.mark.parametrize("name", sorted(refused))
    def test_refused(results, name):
        _, layer, reason = refused[name]
        assert_refused(results[name], layer, reason)

    return results, test_exact, test_refused
