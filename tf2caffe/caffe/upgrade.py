"""Legacy V1 prototxts (`layers { type: CONVOLUTION ... }`) upgraded in memory, as Caffe upgrades
them when it loads one (src/caffe/util/upgrade_proto.cpp: UpgradeNetDataTransformation, then
UpgradeV1Net / UpgradeV1LayerParameter / UpgradeV1LayerType).

Written out here because pycaffe offers no way to get the upgraded definition back: `caffe.Net`
upgrades a V1 file internally, but returns it only inside a saved `.caffemodel` with every weight
allocated (about 550 MB for the VGG release's deploy file), and aborts the whole process on any
CHECK failure; Caffe's `upgrade_net_proto_text` tool is not in Debian's python3-caffe.
The older V0 format (`layers { layer { ... } }`) is refused: no deploy file still uses it.
Caffe side only (uses Caffe's own protobuf schema).
"""
from __future__ import annotations

from caffe.proto import caffe_pb2

from ..errors import ConversionError

V1 = caffe_pb2.V1LayerParameter
# UpgradeV1LayerType: V1 enum name -> layer type string.
LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
# The layer-specific parameter messages UpgradeV1LayerParameter copies unchanged.
COPIED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param", "image_data_param",
    "infogain_loss_param", "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param", "slice_param",
    "tanh_param", "threshold_param", "window_data_param", "transform_param", "loss_param",
)
# UpgradeNetDataTransformation: data layers that once held their transformation fields.
DATA_LAYERS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
               "WINDOW_DATA": "window_data_param"}
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
SHARE_MODES = {V1.STRICT: caffe_pb2.ParamSpec.STRICT, V1.PERMISSIVE: caffe_pb2.ParamSpec.PERMISSIVE}


def upgrade_v1(net: caffe_pb2.NetParameter, path: str) -> caffe_pb2.NetParameter:
    """The V2 (`layer`) form of a net given with the V1 `layers` field."""
    if net.layer:
        raise ConversionError("%s: mixes the legacy V1 'layers' field with 'layer'; Caffe would "
                              "ignore the 'layer' entries" % path)
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    upgraded.ClearField("layers")
    for index, old in enumerate(net.layers):
        name = old.name or "#%d" % index
        if old.HasField("layer"):
            raise ConversionError("%s: layer '%s' uses the V0 format (layers { layer { ... } }), "
                                  "which is not supported; upgrade it with Caffe's "
                                  "upgrade_net_proto_text" % (path, name))
        _upgrade_layer(_with_transform_upgraded(old), upgraded.layer.add())
    return upgraded


def _with_transform_upgraded(old):
    """UpgradeNetDataTransformation: scale, mean_file, crop_size and mirror move from a data
    layer's own parameters into transform_param."""
    kind = V1.LayerType.Name(old.type)
    if kind not in DATA_LAYERS:
        return old
    layer = V1()
    layer.CopyFrom(old)
    params = getattr(layer, DATA_LAYERS[kind])
    for field in TRANSFORM_FIELDS:
        if params.HasField(field):
            setattr(layer.transform_param, field, getattr(params, field))
            params.ClearField(field)
    return layer


def _upgrade_layer(old, layer) -> None:
    """UpgradeV1LayerParameter."""
    layer.bottom.extend(old.bottom)
    layer.top.extend(old.top)
    if old.HasField("name"):
        layer.name = old.name
    layer.include.extend(old.include)
    layer.exclude.extend(old.exclude)
    if old.HasField("type"):
        layer.type = LAYER_TYPES[V1.LayerType.Name(old.type)]
    layer.blobs.extend(old.blobs)
    # Per-parameter settings become one ParamSpec per blob.
    for values, assign in ((old.param, lambda spec, v: setattr(spec, "name", v)),
                           (old.blob_share_mode, lambda spec, v: setattr(spec, "share_mode", SHARE_MODES[v])),
                           (old.blobs_lr, lambda spec, v: setattr(spec, "lr_mult", v)),
                           (old.weight_decay, lambda spec, v: setattr(spec, "decay_mult", v))):
        for index, value in enumerate(values):
            while len(layer.param) <= index:
                layer.param.add()
            assign(layer.param[index], value)
    layer.loss_weight.extend(old.loss_weight)
    for field in COPIED_PARAMS:
        if old.HasField(field):
            getattr(layer, field).CopyFrom(getattr(old, field))
