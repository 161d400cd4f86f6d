"""tflearn 0.5.0 structural constructs from every source: each construct is built by tflearn in a
small, seeded network with its own head, saved with `model.save`, converted from the checkpoint
alone (read from its meta graph) and from an architecture module restoring it (some also from
the graph frozen into a .pb), all through the generic graph mapper and one Caffe subprocess,
then checked exact in pycaffe and OpenCV, or refused naming the layer and the reason. The
machinery is in tflearn_cases.py.
"""
import numpy as np
import pytest

from tflearn_cases import (FROZEN_SOURCE, SOURCES, Construct, convert_constructs, described_layers,
                           exact_keys, mapped_layers, refused_keys)

BATCH = 4  # a reduction over all features leaves one number per sample: several make it a test


# --------------------------------------------------------------------------- constructs
def conv(tflearn, x, filters, size=3, **options):
    return tflearn.layers.conv.conv_2d(x, filters, size, activation="relu", **options)


def branches(tflearn, x, count=2, filters=4):
    """`count` conv branches of `x`, each with its own kernel size."""
    return [conv(tflearn, x, filters, size) for size in (3, 1, 5)[:count]]


def head(tflearn, x, classes=5):
    return tflearn.layers.core.fully_connected(x, classes, activation="softmax")


def merged(mode, axis=1, count=2, vectors=False):
    """tflearn's merge of conv branches (or of dense vectors), then a dense head (when the
    result still has features)."""
    def build(tflearn, x):
        merge = tflearn.layers.merge_ops.merge
        if vectors:
            parts = [tflearn.layers.core.fully_connected(x, 6, activation="tanh") for _ in range(count)]
            return merge(parts, mode, axis=axis)
        return head(tflearn, merge(branches(tflearn, x, count), mode, axis=axis))
    return build


def sequence(*steps):
    """Apply `steps` (each tflearn, x -> y) in order, then the dense head."""
    def build(tflearn, x):
        for step in steps:
            x = step(tflearn, x)
        return head(tflearn, x)
    return build


def layers(name, *args, **options):
    """A step calling tflearn.layers.<name>(x, *args, **options)."""
    def step(tflearn, x):
        module, function = name.split(".")
        return getattr(getattr(tflearn.layers, module), function)(x, *args, **options)
    return step


def CONV(filters=6, **options):
    """A step: a relu conv_2d."""
    return lambda tflearn, x: conv(tflearn, x, filters, **options)


BUILDERS = {
    "merge_concat_channels": merged("concat", axis=3, count=3),
    "merge_concat_rows": merged("concat", axis=1),
    "merge_concat_columns": merged("concat", axis=2),
    "merge_concat_vectors": merged("concat", axis=1, vectors=True),
    "merge_elemwise_sum": merged("elemwise_sum", count=3),
    "merge_elemwise_mul": merged("elemwise_mul"),
    "merge_sum_channels": merged("sum", axis=3),
    "merge_mean_channels": merged("mean", axis=3),
    "merge_prod_channels": merged("prod", axis=3),
    "merge_max_channels": merged("max", axis=3),
    "merge_min_channels": merged("min", axis=3),
    "merge_sum_vectors": merged("sum", axis=1, vectors=True),
    "merge_mean_vectors": merged("mean", axis=1, vectors=True),
    "merge_prod_vectors": merged("prod", axis=1, vectors=True),
    "merge_max_vectors": merged("max", axis=1, vectors=True),
    "global_avg_pool": sequence(CONV(), layers("conv.global_avg_pool")),
    "global_max_pool": sequence(CONV(), layers("conv.global_max_pool")),
    "conv_2d_transpose_same": sequence(CONV(), layers("conv.conv_2d_transpose", 4, 3, [16, 16],
                                                      strides=2, activation="relu")),
    "conv_2d_transpose_valid": sequence(CONV(), layers("conv.conv_2d_transpose", 4, 3, [17, 17],
                                                       strides=2, padding="valid")),
    "upscore_layer": sequence(CONV(), layers("conv.upscore_layer", 4, kernel_size=4, strides=2)),
    "upsample_2d": sequence(CONV(), layers("conv.upsample_2d", 2)),
    "atrous_conv_2d_same": sequence(layers("conv.atrous_conv_2d", 6, 3, rate=2, activation="relu")),
    "atrous_conv_2d_valid": sequence(layers("conv.atrous_conv_2d", 6, 3, rate=2, padding="valid")),
    # 7x7: space-to-batch pads to a multiple of the rate, batch-to-space crops it off again
    "atrous_conv_2d_odd_size": sequence(CONV(4, size=2, padding="valid"),
                                        layers("conv.atrous_conv_2d", 6, 3, rate=3)),
    "grouped_conv_2d": sequence(CONV(), layers("conv.grouped_conv_2d", 2, 3, activation="relu")),
    "highway_conv_2d": sequence(CONV(), layers("conv.highway_conv_2d", 6, 3, activation="relu")),
    "highway": sequence(layers("core.fully_connected", 12, activation="tanh"),
                        layers("core.highway", 12, activation="relu")),
    "l2_normalize_channels": sequence(CONV(), layers("normalization.l2_normalize", 3)),
    "l2_normalize_vectors": sequence(layers("core.fully_connected", 12),
                                     layers("normalization.l2_normalize", 1)),
    "reshape_flatten_dropout": sequence(layers("core.fully_connected", 64, activation="relu"),
                                        layers("core.reshape", [-1, 8, 8, 1]), CONV(4),
                                        layers("core.flatten"), layers("core.dropout", 0.5)),
    # DCGAN's generator: a dense vector (with batch norm, tanh) reshaped to an image; the dense
    # layer emits its columns in Caffe's C,H,W order
    "fully_connected_to_image": sequence(layers("core.fully_connected", 60),
                                         layers("normalization.batch_normalization"),
                                         lambda tflearn, x: tflearn.activations.tanh(x),
                                         layers("core.reshape", [-1, 3, 5, 4]), CONV(4)),
    # the blocks' default initializer, variance_scaling, is tflearn_compat's shim
    "residual_block": sequence(CONV(8), layers("conv.residual_block", 2, 8)),
    "residual_block_downsample": sequence(CONV(4), layers("conv.residual_block", 1, 8, downsample=True)),
    "residual_bottleneck": sequence(CONV(8), layers("conv.residual_bottleneck", 1, 4, 16)),
    "residual_bottleneck_downsample": sequence(CONV(8), layers("conv.residual_bottleneck", 1, 4, 16,
                                                               downsample=True)),
    "resnext_block": sequence(CONV(8), layers("conv.resnext_block", 1, 16, 2, downsample=True)),
    "densenet_block": sequence(CONV(8), layers("conv.densenet_block", 2, 4, downsample=True,
                                               dropout=True)),
    # (N, H, W, C) summed over H leaves (N, W, C): Caffe holds it C,W and has no Permute.
    "merge_sum_rows": merged("sum", axis=1),
}
# Also converted from the tflearn graph frozen into a .pb (TF 2's freezing leaves batch norm's
# conditional reads and updates half-converted: the loader repairs them).
FROZEN = ["residual_block_downsample", "densenet_block", "l2_normalize_channels", "highway",
          "atrous_conv_2d_odd_size", "upscore_layer", "merge_prod_channels", "fully_connected_to_image"]
# construct -> (layer, reason): what cannot be exact is refused, naming the layer.
REFUSED = {"merge_sum_rows": ("Merge", "Caffe holds in C,H,W order")}
# Each builder ends its net itself (its own head, or none).
CONSTRUCTS = {name: Construct(build, head=False, frozen=name in FROZEN, refused=REFUSED.get(name))
              for name, build in BUILDERS.items()}
# construct -> (layer type, config items) of the layer it must map to.
MAPPED = {
    "merge_prod_channels": ("reduce", {"operation": "prod", "axes": [3], "keepdims": False}),
    "merge_min_channels": ("reduce", {"operation": "min", "axes": [3], "keepdims": False}),
    "merge_mean_vectors": ("reduce", {"operation": "mean", "axes": [1], "keepdims": False}),
    "global_max_pool": ("global_max_pool2d", {"keepdims": False}),
    "atrous_conv_2d_same": ("conv2d", {"dilation": [2, 2], "padding": "same", "strides": [1, 1]}),
    "atrous_conv_2d_valid": ("conv2d", {"dilation": [2, 2], "padding": "valid"}),
    "atrous_conv_2d_odd_size": ("conv2d", {"dilation": [3, 3], "padding": "same"}),
    "upscore_layer": ("conv2d_transpose", {"padding": "same", "strides": [2, 2], "kernel_size": [4, 4]}),
    "l2_normalize_channels": ("l2_normalize", {"axes": [3], "epsilon": float(np.float32(1e-12))}),
    "residual_block_downsample": ("pad_channels", {"padding": [2, 2], "value": 0.0}),
    "grouped_conv_2d": ("depthwise_conv2d", {"depth_multiplier": 2}),
}


# --------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return convert_constructs(__name__, CONSTRUCTS, tmp_path_factory.mktemp("tflearn_structures"),
                              batch=BATCH)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(MAPPED))
def test_construct_maps_to_its_layer(results, name, source):
    kind, config = MAPPED[name]
    mapped = mapped_layers(results[name + source])
    matching = [layer for layer in mapped
                if layer.type == kind and {key: layer.config.get(key) for key in config} == config]
    assert len(matching) == 1, [(layer.type, layer.config) for layer in mapped]


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_graph_maps_like_the_checkpoint(results, name):
    checkpoint, frozen = (mapped_layers(results[key]) for key in (name, name + FROZEN_SOURCE))
    # A frozen graph has lost tflearn's layer collections: its layers take the ops' names.
    assert [(l.type, l.config) for l in frozen] == [(l.type, l.config) for l in checkpoint]


@pytest.mark.parametrize("source", SOURCES)
def test_atrous_convolution_keeps_its_variables_and_bias(results, source):
    mapped = mapped_layers(results["atrous_conv_2d_same" + source])
    conv = next(layer for layer in mapped if layer.type == "conv2d")
    assert conv.tf_names == {"kernel": "AtrousConv2D/W:0", "bias": "AtrousConv2D/b:0"}
    assert [layer.type for layer in mapped][:3] == ["input", "conv2d", "activation"]


@pytest.mark.parametrize("key", exact_keys(CONSTRUCTS))
def test_construct_is_exact_in_pycaffe_and_opencv(results, key):
    import harness
    harness.assert_exact(results[key])


@pytest.mark.parametrize("name", sorted(name for name, construct in CONSTRUCTS.items() if not construct.refused))
def test_architecture_and_checkpoint_give_the_same_layers(results, name):
    assert described_layers(results[name + ".architecture"]) == described_layers(results[name])


@pytest.mark.parametrize("key, refusal", sorted(refused_keys(CONSTRUCTS).items()))
def test_construct_is_refused_with_its_reason(results, key, refusal):
    layer, reason = refusal
    error = results[key].error
    assert error is not None and "'%s'" % layer in error and reason in error, error
