"""Deployment options (tf2caffe/caffe/deploy.py): each case converted with its options and
verified in pycaffe and OpenCV as deployed: fed BGR for --bgr, raw values for --mean/--scale."""
from __future__ import annotations

from collections import Counter

import keras
import numpy as np
import pytest

from harness import assert_exact, convert_h5_batch
from handlers.handler_batch import batch_norm, build, chain
from tf2caffe import intermediate
from tf2caffe.export.keras import model_to_intermediate

L = keras.layers
MEAN = "123.7,116.3,103.5"
SCALE = "0.0171,0.0175,0.0174"


def image(*layers, size=(15, 16), channels=3):
    return chain((size[0], size[1], channels), *layers)


def normalization():
    return L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5])


def input_concat():
    inputs = keras.Input((15, 16, 3))
    return keras.Model(inputs, L.Conv2D(6, 3)(L.Concatenate(name="joined")([inputs, L.Conv2D(3, 1)(inputs)])))


# option set -> case -> (model builder, what the passes must have done: Caffe type -> count
# expected in the net, or None for a refusal)
BGR = {
    "conv": lambda: image(L.Conv2D(8, 3, padding="same", activation="relu"), L.Conv2D(4, 3)),
    "flatten_dense": lambda: image(L.Flatten(), L.Dense(10)),
    "rescaling_normalization_conv": lambda: image(L.Rescaling(1 / 127.5, offset=-1.0), normalization(),
                                                  L.Conv2D(8, 3, strides=2, padding="same")),
    "batch_norm_relu_conv": lambda: image(batch_norm(), L.ReLU(), L.Conv2D(8, 3)),
    "pad_asym_crop_then_conv": lambda: image(L.ZeroPadding2D(((1, 0), (2, 1))), L.Conv2D(8, 3, strides=2)),
    "depthwise_first": lambda: image(L.DepthwiseConv2D(3, padding="same"), L.ReLU(), L.Conv2D(8, 1)),
    "pad_then_depthwise_after_conv": lambda: image(L.Conv2D(8, 1), L.ZeroPadding2D(1), L.DepthwiseConv2D(3)),
}
PREPROCESS = {
    "conv_valid_folded": lambda: image(L.Conv2D(8, 3, strides=2), L.ReLU(), L.Conv2D(4, 3)),
    "conv_same_scale_layer": lambda: image(L.Conv2D(8, 3, padding="same"), L.Conv2D(4, 3)),
    "conv_valid_no_bias_folded": lambda: image(L.Conv2D(8, 5, use_bias=False)),
    "flatten_dense_scale_layer": lambda: image(L.Flatten(), L.Dense(10)),
}
FOLD_BN = {
    "conv_bn_relu": lambda: image(L.Conv2D(8, 3, padding="same"), batch_norm(), L.ReLU(), L.Conv2D(4, 3)),
    "conv_no_bias_bn_no_scale": lambda: image(L.Conv2D(8, 3, use_bias=False),
                                              batch_norm(center=False, scale=False), L.Conv2D(4, 3)),
    "conv_odd_same_crop_bn": lambda: image(L.Conv2D(8, 3, strides=2, padding="same"), batch_norm(), L.ReLU(),
                                           size=(16, 16)),
    "dense_bn": lambda: image(L.Flatten(), L.Dense(12), batch_norm(), L.ReLU(), L.Dense(5)),
    "bn_after_relu_not_folded": lambda: image(L.Conv2D(8, 3, activation="relu"), batch_norm(), L.Conv2D(4, 3)),
}
PADDING = {
    "pad_sym_conv": lambda: image(L.ZeroPadding2D(2), L.Conv2D(12, 5, strides=2)),
    "pad_sym_conv_same": lambda: image(L.ZeroPadding2D(1), L.Conv2D(12, 3, strides=2, padding="same")),
    "pad_2x1_depthwise": lambda: image(L.ZeroPadding2D((2, 1)), L.DepthwiseConv2D(3, strides=2)),
    "pad_sym_max_pool_kept": lambda: image(L.ZeroPadding2D(1), L.MaxPooling2D(3, strides=2)),
    "relu_pad_max_pool": lambda: image(L.Conv2D(8, 3), L.ReLU(), L.ZeroPadding2D(1), L.MaxPooling2D(3, strides=2)),
    "relu_pad_max_pool_even": lambda: image(L.Conv2D(8, 3), L.ReLU(), L.ZeroPadding2D(1), L.MaxPooling2D(2),
                                            size=(17, 18)),
    "relu_pad_avg_pool_kept": lambda: image(L.Conv2D(8, 3), L.ReLU(), L.ZeroPadding2D(1),
                                            L.AveragePooling2D(3, strides=2)),
    "pad_asym_conv_kept": lambda: image(L.ZeroPadding2D(((0, 1), (0, 1))), L.Conv2D(12, 3, strides=2)),
    "pad_two_consumers_kept": lambda: _pad_feeding_two(),
}
REFUSED_BGR = {
    "bgr_depthwise_multiplier": (lambda: image(L.DepthwiseConv2D(3, depth_multiplier=2), L.Conv2D(4, 1)),
                                 "(Convolution), a grouped convolution"),
    "bgr_input_concat": (input_concat, "--bgr: the input's channels reach layer 'joined' (Concat)"),
    "bgr_gray_input": (lambda: image(L.Conv2D(4, 3), channels=1), "a 3-channel image is needed"),
}


def _pad_feeding_two():
    inputs = keras.Input((15, 16, 3))
    padded = L.ZeroPadding2D(1)(inputs)
    return keras.Model(inputs, L.Add()([L.Conv2D(4, 3)(padded), L.Conv2D(4, 3)(padded)]))


OPTION_SETS = {
    "bgr": (["--bgr"], BGR),
    "preprocess": (["--mean", MEAN, "--scale", SCALE], PREPROCESS),
    "bgr_preprocess": (["--bgr", "--mean", MEAN, "--scale", "0.017"], PREPROCESS),
    "fold_bn": (["--fold-bn"], FOLD_BN),
    "padding": ([], PADDING),
    "no_fold_padding": (["--no-fold-padding"], {name: PADDING[name] for name in ("pad_sym_conv", "pad_2x1_depthwise")}),
    "bgr_refused": (["--bgr"], {name: make for name, (make, _) in REFUSED_BGR.items()}),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each option set's cases exported once and imported in one batch with its options."""
    every = {}
    for label, (options, cases) in OPTION_SETS.items():
        folder = tmp_path_factory.mktemp(label)
        files = {}
        for name, model in build(cases).items():
            files[name] = folder / ("%s.h5" % name)
            intermediate.write(str(files[name]), model_to_intermediate(model, name, per_layer=True))
        for name, result in convert_h5_batch(files, folder, extra=options).items():
            every[label, name] = result
    return every


CONVERTED = [(label, name) for label, (_, cases) in OPTION_SETS.items() if label != "bgr_refused" for name in cases]


def applied(result) -> str:
    return "\n".join(result.report["deploy_options"]["applied"])


@pytest.mark.parametrize("label,name", CONVERTED, ids=["%s-%s" % pair for pair in CONVERTED])
def test_exact_as_deployed(results, label, name):
    """Verified in every runtime here (pycaffe and OpenCV) on the input as the deployed net takes it."""
    result = results[label, name]
    assert_exact(result)
    assert result.report["deploy_options"]["bgr"] == ("bgr" in label)


@pytest.mark.parametrize("name", sorted(REFUSED_BGR))
def test_bgr_refused(results, name):
    """Nothing written, one line naming the layer and the problem."""
    error = results["bgr_refused", name].error
    assert error is not None and REFUSED_BGR[name][1] in error and "\n" not in error, error


def test_bgr_reaches_the_first_weights(results):
    for name in BGR:
        assert "takes BGR: channels reversed in '" in applied(results["bgr", name]), name


@pytest.mark.parametrize("label", ["preprocess", "bgr_preprocess"])
def test_preprocessing_folded_where_exact(results, label):
    """Into a convolution without padding or an InnerProduct on the input; else a Scale layer."""
    for name in ("conv_valid_folded", "conv_valid_no_bias_folded"):
        result = results[label, name]
        assert "folded into Convolution" in applied(result) and "Scale" not in result.caffe_types, name
    for name in ("conv_same_scale_layer", "flatten_dense_scale_layer"):
        result = results[label, name]
        assert "as Scale layer" in applied(result) and result.caffe_types.count("Scale") == 1, name


def test_fold_bn_removes_batch_norm(results):
    for name in ("conv_bn_relu", "conv_no_bias_bn_no_scale", "conv_odd_same_crop_bn", "dense_bn"):
        types = Counter(results["fold_bn", name].caffe_types)
        assert types["BatchNorm"] == 0 and types["Scale"] == 0, (name, types)
    # BatchNorm after a ReLU has nothing to merge into
    assert Counter(results["fold_bn", "bn_after_relu_not_folded"].caffe_types)["BatchNorm"] == 1


def test_symmetric_zero_padding_folded_into_convolutions(results):
    for name in ("pad_sym_conv", "pad_sym_conv_same", "pad_2x1_depthwise"):
        assert results["padding", name].caffe_types.count("Convolution") == 1, name
    for name in OPTION_SETS["no_fold_padding"][1]:
        assert results["no_fold_padding", name].caffe_types.count("Convolution") == 2, name
    prototxt = results["padding", "pad_2x1_depthwise"].prototxt
    assert "pad_h: 2" in prototxt and "pad_w: 1" in prototxt
    for name in ("pad_sym_max_pool_kept", "pad_asym_conv_kept", "pad_two_consumers_kept", "relu_pad_avg_pool_kept"):
        assert applied(results["padding", name]) == "", name
    assert "folded into Pooling" in applied(results["padding", "relu_pad_max_pool"])


def test_raw_input_inverts_the_preprocessing():
    from tf2caffe.caffe.deploy import DeployOptions
    options = DeployOptions(bgr=True, mean=[100.0, 110.0, 120.0], scale=[0.5, 0.25, 2.0])
    source = np.random.RandomState(0).randn(2, 3, 4, 5).astype(np.float32)
    raw = options.raw_input(source)
    mean, scale = np.array(options.mean).reshape(1, 3, 1, 1), np.array(options.scale).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(((raw - mean) * scale)[:, ::-1], source, atol=1e-5)


@pytest.mark.slow
def test_resnet50_deployed(tmp_path):
    """The zoo's ResNet50: its two ZeroPadding2D folded by default (into conv1's pad, and into
    pool1's after the ReLU), every option together exact too, in every runtime here."""
    from test_zoo import conditioned_zoo_model
    h5 = tmp_path / "resnet50.h5"
    intermediate.write(str(h5), model_to_intermediate(conditioned_zoo_model("resnet50"), "resnet50", per_layer=True))
    deployed = {}
    for label, options in (("kept", ["--no-fold-padding"]), ("default", []),
                           ("all", ["--bgr", "--mean", MEAN, "--scale", SCALE, "--fold-bn"])):
        deployed[label] = convert_h5_batch({"resnet50": h5}, tmp_path / label, extra=options)["resnet50"]
        assert_exact(deployed[label])
    kept, default, every = (Counter(deployed[label].caffe_types) for label in ("kept", "default", "all"))
    assert sum(default.values()) == sum(kept.values()) - 2 and default["Convolution"] == kept["Convolution"] - 2
    assert every["BatchNorm"] == 0 and every["Scale"] == 1  # the preprocessing: conv1 pads, so no fold


@pytest.mark.parametrize("call", ["import_", "convert"])
def test_options_on_a_handwritten_prototxt_refused_before_any_work(tmp_path, call):
    import tf2caffe
    from tf2caffe.caffe.deploy import DeployOptions
    from tf2caffe.errors import ConversionError
    source = [str(tmp_path / "missing.h5")] if call == "import_" else str(tmp_path / "missing.keras")
    with pytest.raises(ConversionError, match="--fold-bn rewrite the generated prototxt"):
        getattr(tf2caffe, call)(source, str(tmp_path), prototxt="hand.prototxt", deploy=DeployOptions(fold_bn=True))


@pytest.mark.slow
def test_efficientnet_b0_takes_raw_bgr_through_its_rescaling(tmp_path):
    """The reversal passes through EfficientNet's Rescaling, Normalization and asymmetric stem
    padding (kept: a grouped ones Convolution and a Slice) into stem_conv; exact."""
    from test_zoo import conditioned_zoo_model
    h5 = tmp_path / "efficientnet_b0.h5"
    intermediate.write(str(h5), model_to_intermediate(conditioned_zoo_model("efficientnet_b0"), "efficientnet_b0",
                                                      per_layer=True))
    result = convert_h5_batch({"efficientnet_b0": h5}, tmp_path, extra=["--bgr", "--mean", MEAN, "--scale", SCALE])
    assert_exact(result["efficientnet_b0"])
    assert "channels reversed in 'stem_conv'" in applied(result["efficientnet_b0"])
