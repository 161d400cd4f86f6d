"""Pooling family: max/average with TensorFlow's windows and divisors (Caffe rounds up and counts
pad cells), and global pooling; exact in pycaffe and OpenCV."""
from __future__ import annotations

import itertools

import keras

from handler_batch import chain, family_tests

L = keras.layers
CHANNELS = 8
# Every side length 7, 8 and 9 on both axes, H != W.
SIZES = ((7, 8), (8, 9), (9, 7))


def pooled(layer, size=SIZES[0]):
    return chain(tuple(size) + (CHANNELS,), layer)


def pool_case(kind, kernel, stride, padding, size):
    return lambda: pooled(kind(kernel, strides=stride, padding=padding), size)


KINDS = {"max": L.MaxPooling2D, "avg": L.AveragePooling2D}
CASES = {
    "%s_k%d_s%d_%s_%dx%d" % (kind, k, s, padding, h, w): pool_case(KINDS[kind], k, s, padding, (h, w))
    for kind, k, s, padding, (h, w) in itertools.product(KINDS, (2, 3), (1, 2, 3), ("same", "valid"), SIZES)
}
CASES.update({
    "%s_default_strides" % kind: (lambda kind=kind: pooled(KINDS[kind](2), (9, 8))) for kind in KINDS})
CASES.update({
    "%s_k4_s1_same" % kind: (lambda kind=kind: pooled(KINDS[kind](4, strides=1, padding="same"), (9, 8)))
    for kind in KINDS})
CASES.update({
    "%s_k2x3_s1x2_same" % kind: (
        lambda kind=kind: pooled(KINDS[kind]((2, 3), strides=(1, 2), padding="same"), (9, 8)))
    for kind in KINDS})
CASES.update({
    "global_%s_keepdims_%s" % (kind, keepdims): (
        lambda layer=layer, keepdims=keepdims: pooled(layer(keepdims=keepdims), (7, 9)))
    for (kind, layer), keepdims in itertools.product(
        (("max", L.GlobalMaxPooling2D), ("avg", L.GlobalAveragePooling2D)), (False, True))
})
REFUSED = {
    # Pool 3 stride 4: rows padded (9 -> pad 1), columns not (12); Caffe then clips the empty last
    # column window, OpenCV does not, so the two runtimes would need different crops.
    "max_k3_s4_same_9x12": (lambda: pooled(L.MaxPooling2D(3, strides=4, padding="same", name="sparse_pool"),
                                           (9, 12)),
                            "sparse_pool", "Caffe and OpenCV disagree on the output size"),
}

results, test_exact, test_refused = family_tests(CASES, REFUSED, "pooling")


def test_average_border_divisors_are_corrected(results):
    """'same' with padding on both sides: Caffe divides border windows by pad-inclusive counts."""
    assert "Scale" in results["avg_k3_s2_same_7x8"].caffe_types
    assert "Scale" not in results["avg_k2_s2_valid_8x9"].caffe_types


def test_even_kernel_stride_1_drops_the_first_row(results):
    prototxt = results["max_k2_s1_same_8x9"].prototxt
    assert "pad: 1" in prototxt and prototxt.count("slice_point: 1") == 2
