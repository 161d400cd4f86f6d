"""GoogLeNet (Inception v1) as tflearn's example builds it (examples/images/googlenet.py, 17
flower classes), with the example's layer names and its quirks: the 4b module's 1x1 convolution
is also named 'inception_4a_1_1' (tflearn makes its scope 'inception_4a_1_1_1'), the 3b module's
5x5 convolution has no activation, and some poolings and merges keep tflearn's default names.

Same layers and widths; the input is 33x33 instead of 227x227: the smallest input after whose
five stride-2 stages (17, 9, 5, 3, 2) the final 7x7 average pooling still averages more than one
cell. Every stage of it sees an odd size, so every 'same' convolution and pooling pads
symmetrically (the hand-written prototxt relies on it).

CAFFE_NAMES maps the layers onto tflearn_googlenet.prototxt, a hand-written deploy net with the
layer names of BVLC's bvlc_googlenet ('inception_3a/1x1', 'inception_3a/output', ...). Its keys
are tflearn's layer names ('conv1_7_7_s2', 'MaxPool2D', 'Merge'; a conv's split activation
'conv1_7_7_s2/relu'). Weights are
seeded and conditioned like trained ones (tf2caffe/export/conditioned.py).
"""
import tflearn

from tf2caffe.export.conditioned import conditioned_weights

DEFAULT_INPUT_SHAPE = (2, 33, 33, 3)
CLASSES = 17
# module: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection) filters.
INCEPTION = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
# The example's naming quirks (see the docstring).
ONE_BY_ONE_NAME = {"4b": "inception_4a_1_1"}
LINEAR_5X5 = {"3b"}
DEFAULT_POOL_NAME = {"4c"}
NAMED_OUTPUT = {"3b", "4a", "4b", "4c", "4d"}
# A stride-2 max pooling after these modules, with the example's name.
REDUCTION = {"3b": "pool3_3_3", "4e": "pool_3_3"}


def _caffe_names():
    """tflearn layer -> layer of tflearn_googlenet.prototxt."""
    names = {"InputData": "data", "conv1_7_7_s2": "conv1/7x7_s2", "conv1_7_7_s2/relu": "conv1/relu_7x7",
             "MaxPool2D": "pool1/3x3_s2", "LocalResponseNormalization": "pool1/norm1",
             "conv2_3_3_reduce": "conv2/3x3_reduce", "conv2_3_3_reduce/relu": "conv2/relu_3x3_reduce",
             "conv2_3_3": "conv2/3x3", "conv2_3_3/relu": "conv2/relu_3x3",
             "LocalResponseNormalization_1": "conv2/norm2",
             "pool2_3_3_s2": "pool2/3x3_s2", "pool3_3_3": "pool3/3x3_s2",
             "pool_3_3": "pool4/3x3_s2", "AvgPool2D": "pool5/7x7_s1",
             "FullyConnected": "loss3/classifier", "FullyConnected/softmax": "prob"}
    default_pools, default_merges = iter(["MaxPool2D_1"]), iter(["Merge", "Merge_1", "Merge_2", "Merge_3"])
    for module, _ in INCEPTION:
        prefix, caffe = "inception_" + module, "inception_%s/" % module
        one = ONE_BY_ONE_NAME[module] + "_1" if module in ONE_BY_ONE_NAME else prefix + "_1_1"
        branches = ((one, "1x1"), (prefix + "_3_3_reduce", "3x3_reduce"), (prefix + "_3_3", "3x3"),
                    (prefix + "_5_5_reduce", "5x5_reduce"), (prefix + "_5_5", "5x5"),
                    (prefix + "_pool_1_1", "pool_proj"))
        for scope, branch in branches:
            names[scope] = caffe + branch
            if not (branch == "5x5" and module in LINEAR_5X5):
                names[scope + "/relu"] = caffe + "relu_" + branch
        pool = next(default_pools) if module in DEFAULT_POOL_NAME else prefix + "_pool"
        names[pool] = caffe + "pool"
        output = prefix + "_output" if module in NAMED_OUTPUT else next(default_merges)
        names[output] = caffe + "output"
    return names


CAFFE_NAMES = _caffe_names()


def inception(net, module, filters):
    one, reduce3, three, reduce5, five, project = filters
    prefix = "inception_" + module
    branch1 = tflearn.conv_2d(net, one, 1, activation="relu",
                              name=ONE_BY_ONE_NAME.get(module, prefix + "_1_1"))
    branch3 = tflearn.conv_2d(net, reduce3, 1, activation="relu", name=prefix + "_3_3_reduce")
    branch3 = tflearn.conv_2d(branch3, three, 3, activation="relu", name=prefix + "_3_3")
    branch5 = tflearn.conv_2d(net, reduce5, 1, activation="relu", name=prefix + "_5_5_reduce")
    branch5 = tflearn.conv_2d(branch5, five, 5, activation="linear" if module in LINEAR_5X5 else "relu",
                              name=prefix + "_5_5")
    pool_name = {} if module in DEFAULT_POOL_NAME else {"name": prefix + "_pool"}
    pool = tflearn.max_pool_2d(net, 3, strides=1, **pool_name)
    pool = tflearn.conv_2d(pool, project, 1, activation="relu", name=prefix + "_pool_1_1")
    output_name = {"name": prefix + "_output"} if module in NAMED_OUTPUT else {}
    return tflearn.merge([branch1, branch3, branch5, pool], mode="concat", axis=3, **output_name)


def build(input_shape):
    network = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    network = tflearn.conv_2d(network, 64, 7, strides=2, activation="relu", name="conv1_7_7_s2")
    network = tflearn.max_pool_2d(network, 3, strides=2)
    network = tflearn.local_response_normalization(network)
    network = tflearn.conv_2d(network, 64, 1, activation="relu", name="conv2_3_3_reduce")
    network = tflearn.conv_2d(network, 192, 3, activation="relu", name="conv2_3_3")
    network = tflearn.local_response_normalization(network)
    network = tflearn.max_pool_2d(network, 3, strides=2, name="pool2_3_3_s2")
    for module, filters in INCEPTION:
        network = inception(network, module, filters)
        if module in REDUCTION:
            network = tflearn.max_pool_2d(network, 3, strides=2, name=REDUCTION[module])
    network = tflearn.avg_pool_2d(network, 7, strides=1)
    network = tflearn.dropout(network, 0.4)
    return tflearn.fully_connected(network, CLASSES, activation="softmax")


def train(seed):
    """Seeded random weights conditioned like trained ones; no data, no fitting."""
    return conditioned_weights(build, DEFAULT_INPUT_SHAPE, seed)
