"""VGG-19 (Simonyan & Zisserman, 2014) as the classic tflearn example builds it.

Layers keep tflearn's default names (Conv2D ... Conv2D_15, MaxPool2D ... MaxPool2D_4,
FullyConnected ... FullyConnected_2; dropout is the identity at inference and becomes no
layer); CAFFE_NAMES maps them onto the standard Caffe deploy net in vgg19.prototxt. Any input size that survives five 2x2 poolings
works; the fully connected layers follow from it.
"""
import tflearn

DEFAULT_INPUT_SHAPE = (1, 112, 112, 3)
CLASSES = 1000
# (filters, convolutions) per block.
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _caffe_names():
    names = {"InputData": "data"}
    conv = 0
    for block, (_, count) in enumerate(BLOCKS, start=1):
        for index in range(1, count + 1):
            scope = "Conv2D" + ("_%d" % conv if conv else "")
            names[scope] = "conv%d_%d" % (block, index)
            names[scope + "/relu"] = "relu%d_%d" % (block, index)
            conv += 1
        names["MaxPool2D" + ("_%d" % (block - 1) if block > 1 else "")] = "pool%d" % block
    for scope, caffe in (("FullyConnected", "6"), ("FullyConnected_1", "7")):
        names[scope] = "fc" + caffe
        names[scope + "/relu"] = "relu" + caffe
    names["FullyConnected_2"], names["FullyConnected_2/softmax"] = "fc8", "prob"
    return names


CAFFE_NAMES = _caffe_names()


def build(input_shape):
    net = tflearn.input_data(shape=[None] + list(input_shape[1:]))
    for filters, count in BLOCKS:
        for _ in range(count):
            net = tflearn.conv_2d(net, filters, 3, activation="relu")
        net = tflearn.max_pool_2d(net, 2, strides=2)
    net = tflearn.fully_connected(net, 4096, activation="relu")
    net = tflearn.dropout(net, 0.5)
    net = tflearn.fully_connected(net, 4096, activation="relu")
    net = tflearn.dropout(net, 0.5)
    return tflearn.fully_connected(net, CLASSES, activation="softmax")
