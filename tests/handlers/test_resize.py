"""`resize_bilinear` and `resize_nearest` from frozen graphs' ResizeBilinear and
ResizeNearestNeighbor in TensorFlow's three samplings (TF2's half-pixel centres, TF1's
align_corners and its legacy asymmetric default), up and down, to sizes that are no multiple of
the input: exact in bvlc in pycaffe (bullseye) and OpenCV. In the opencv
profile align_corners is one Interp layer, checked where it runs (OpenCV: no Caffe here has Interp).
Keras's bilinear UpSampling2D is tested with the other upsamplings in test_conv.py."""
from __future__ import annotations

import pytest
import tensorflow as tf

from harness import assert_exact, convert_intermediate_batch
from test_graph_export import conv, frozen_pb
from tf2caffe.export import graph

v1 = tf.compat.v1
IMAGE = (None, 7, 9, 3)


def resized(size, align_corners=False, half_pixel_centers=False, method=v1.image.resize_bilinear):
    def build(x):
        y = method(conv(x, 4, "c"), size, align_corners=align_corners, half_pixel_centers=half_pixel_centers)
        return [tf.identity(conv(y, 3, "d"), name="out")]
    return build


def nearest(size, **sampling):
    return resized(size, method=v1.image.resize_nearest_neighbor, **sampling)


# name -> (build, expected config); the resize_nearest ones are NEAREST
CASES = {
    "half_pixel_up": (resized((13, 20), half_pixel_centers=True), {"size": [13, 20], "mode": "half_pixel"}),
    "half_pixel_x2": (resized((14, 18), half_pixel_centers=True), {"size": [14, 18], "mode": "half_pixel"}),
    "half_pixel_down": (resized((4, 5), half_pixel_centers=True), {"size": [4, 5], "mode": "half_pixel"}),
    "tf2_image_resize": (lambda x: [tf.identity(tf.image.resize(conv(x, 4, "c"), (11, 30)), name="out")],
                         {"size": [11, 30], "mode": "half_pixel"}),
    "align_corners_x4": (resized((25, 33), align_corners=True), {"size": [25, 33], "mode": "align_corners"}),
    "align_corners_any": (resized((10, 16), align_corners=True), {"size": [10, 16], "mode": "align_corners"}),
    "asymmetric_up": (resized((12, 20)), {"size": [12, 20], "mode": "asymmetric"}),
    "asymmetric_down": (resized((5, 4)), {"size": [5, 4], "mode": "asymmetric"}),
    "nearest_half_pixel": (nearest((13, 20), half_pixel_centers=True), {"size": [13, 20], "mode": "half_pixel"}),
    "nearest_half_pixel_down": (nearest((4, 6), half_pixel_centers=True), {"size": [4, 6], "mode": "half_pixel"}),
    "nearest_align_corners": (nearest((14, 18), align_corners=True), {"size": [14, 18], "mode": "align_corners"}),
    "nearest_asymmetric": (nearest((10, 20)), {"size": [10, 20], "mode": "asymmetric"}),
}
NEAREST = {name for name in CASES if name.startswith("nearest")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resize")
    return {name: graph.source_to_intermediate(frozen_pb(folder, name, build, IMAGE), per_layer=True)
            for name, (build, _) in CASES.items()}


@pytest.fixture(scope="module")
def results(models, tmp_path_factory):
    return convert_intermediate_batch(models, tmp_path_factory.mktemp("resize_caffe"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact(models, results, name):
    kind = "resize_nearest" if name in NEAREST else "resize_bilinear"
    (layer,) = [layer for layer in models[name].layers if layer.type == kind]
    assert layer.config == CASES[name][1]
    assert_exact(results[name])


@pytest.mark.parametrize("name", ["align_corners_x4", "align_corners_any"])
def test_align_corners_is_one_interp_in_opencv(models, tmp_path, name):
    result = convert_intermediate_batch({name: models[name]}, tmp_path, profile="opencv")[name]
    assert_exact(result)
    assert result.caffe_types.count("Interp") == 1 and "InnerProduct" not in result.caffe_types
