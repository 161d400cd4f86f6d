"""`slice` from frozen graphs' StridedSlice, Slice, Split and SplitV: channels, H and W, strides,
shrink and new axes, 2-D and 3-D tensors. bvlc cases run exact in pycaffe (bullseye) and OpenCV; a slice whose
dropped axis changes Caffe's element order is refused in bvlc and, in the opencv and ssd
profiles, ends with Permute -> Reshape -> Permute (verified in every runtime with Permute)."""
from __future__ import annotations

import pytest
import tensorflow as tf

from handler_batch import assert_refused
from harness import assert_exact, convert_intermediate_batch
from test_graph_export import conv, frozen_pb
from tf2caffe.export import graph

IMAGE, SEQUENCE, VECTOR = (None, 7, 8, 6), (None, 6, 9), (None, 10)


def out(y):
    return [tf.identity(y, name="out")]


# name -> (input shape, build(images) -> outputs, expected (begin, end, strides) of each slice)
CASES = {
    "channels": (IMAGE, lambda x: out(conv(x, 6, "c")[..., 2:5]), ([0, 0, 2], [7, 8, 5], [1, 1, 1])),
    "channels_strided": (IMAGE, lambda x: out(conv(x, 8, "c")[..., 1:8:3]), ([0, 0, 1], [7, 8, 8], [1, 1, 3])),
    "rows_and_columns": (IMAGE, lambda x: out(conv(x, 4, "c")[:, 1:5, 2:]), ([1, 2, 0], [5, 8, 4], [1, 1, 1])),
    "rows_and_columns_strided": (IMAGE, lambda x: out(tf.nn.relu(conv(x, 4, "c")[:, ::2, 1::3])),
                                 ([0, 1, 0], [7, 8, 4], [2, 3, 1])),
    "slice_op": (IMAGE, lambda x: out(tf.slice(conv(x, 4, "c"), [0, 1, 1, 1], [-1, 4, 5, 2])),
                 ([1, 1, 1], [5, 6, 3], [1, 1, 1])),
    "shrink_channel": (IMAGE, lambda x: out(conv(x, 4, "c")[..., 3]), ([0, 0, 3], [7, 8, 4], [1, 1, 1])),
    "sequence_new_axis": (SEQUENCE, lambda x: out(conv(x[:, 1:, ::2, tf.newaxis], 3, "c")),
                          ([1, 0], [6, 9], [1, 2])),
    "sequence_strided": (SEQUENCE, lambda x: out(tf.nn.relu(x[:, 1::2, 2:8:3])), ([1, 2], [6, 6], [2, 3])),
    "vector_strided": (VECTOR, lambda x: out(tf.nn.relu(x[:, 2:9:2])), ([2], [9], [2])),
    # YOLOv4-tiny's route: the second half of the channels
    "split_halves": (IMAGE, lambda x: out(conv(tf.split(conv(x, 8, "c"), 2, axis=-1)[1], 4, "d")),
                     ([0, 0, 4], [7, 8, 8], [1, 1, 1])),
    "splitv_columns": (IMAGE, lambda x: out(tf.concat(tf.split(conv(x, 4, "c"), [3, 1, 4], axis=2)[::2], 2)),
                       ([0, 0, 0], [7, 3, 4], [1, 1, 1]), ([0, 4, 0], [7, 8, 4], [1, 1, 1])),
}
# A dropped H axis leaves (N, W, C), which Caffe holds as (N, C, W): the order differs.
PERMUTED = {"shrink_row": (IMAGE, lambda x: out(conv(x, 4, "c")[:, 2]), ([2, 0, 0], [3, 8, 4], [1, 1, 1]))}


def intermediate(name, tmp_path, shape, build):
    return graph.source_to_intermediate(frozen_pb(tmp_path, name, build, shape), per_layer=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slicing")
    return {name: intermediate(name, folder, shape, build)
            for name, (shape, build, *_) in dict(CASES, **PERMUTED).items()}


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    return convert_intermediate_batch(models, tmp_path_factory.mktemp("slicing_caffe"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact(models, converted, name):
    slices = [tuple(layer.config[key] for key in ("begin", "end", "strides"))
              for layer in models[name].layers if layer.type == "slice"]
    assert slices == [tuple(expected) for expected in CASES[name][2:]]
    assert_exact(converted[name])


def test_order_changing_slice_is_refused_in_bvlc(converted):
    assert_refused(converted["shrink_row"], "strided_slice", "has no Permute")


@pytest.mark.parametrize("profile", ["opencv", "ssd"])
def test_order_changing_slice_with_permute(models, tmp_path, profile):
    result = convert_intermediate_batch({"shrink_row": models["shrink_row"]}, tmp_path, profile=profile)["shrink_row"]
    assert_exact(result)
    assert "Permute" in result.caffe_types
