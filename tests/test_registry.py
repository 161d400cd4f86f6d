"""The handler registry's contracts, without Caffe: every handler declares the shapes of the
arrays its layer type holds, and the check pass refuses wrong shapes before anything is
written."""
import numpy as np
import pytest

from tf2caffe.caffe import emit
from tf2caffe.caffe.handlers import HANDLERS, Handler, vocabulary
from tf2caffe.caffe.profiles import get_profile
from tf2caffe.intermediate import Layer, Model

WITH_ARRAYS = sorted(kind for kind, (_, required, optional) in vocabulary().items() if required + optional)


@pytest.mark.parametrize("kind", WITH_ARRAYS)
def test_every_handler_with_arrays_declares_their_shapes(kind):
    assert type(HANDLERS[kind]).array_shapes is not Handler.array_shapes, (
        "the '%s' handler must declare array_shapes" % kind)


def batch_norm_model(mean_values: int, channels: int = 5) -> Model:
    rng = np.random.RandomState(0)
    shape = [1, 4, 4, channels]
    stats = {"moving_mean": rng.randn(mean_values).astype(np.float32),
             "moving_variance": rng.rand(channels).astype(np.float32) + 0.5}
    return Model("bn", [Layer("x", "input", [], {"shape": shape}, shape),
                        Layer("bn", "batch_norm", ["x"], {"epsilon": 1e-3}, shape, stats)], ["bn"])


def test_a_statistic_of_the_wrong_length_is_refused_in_the_check_pass():
    problems = emit.unsupported_layers(batch_norm_model(mean_values=4), get_profile("bvlc"))
    assert problems == ["'bn' (batch_norm): array 'moving_mean' has shape [4]; its config and input "
                        "imply [5]"]
    assert emit.unsupported_layers(batch_norm_model(mean_values=5), get_profile("bvlc")) == []
