"""The batches tests/test_zoo.py converts its 40 classifiers in, apart from it (it imports Keras)
so that conftest.py can give each batch to a test worker of its own."""

# Converted together (one Caffe subprocess each): small batches of a family keep the weights held
# at once small and spread over the test workers (each batch is a work unit of its own, see
# conftest.py); the two largest ConvNeXts (0.8 and 1.4 GB of .caffemodel) go alone.
BATCHES = [
    ["convnext_tiny", "convnext_small", "convnext_base"], ["convnext_large"], ["convnext_xlarge"],
    ["densenet121", "densenet169", "densenet201"],
    ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"], ["efficientnet_b3", "efficientnet_b4", "efficientnet_b5"],
    ["efficientnet_b6", "efficientnet_b7"],
    ["efficientnet_v2_b0", "efficientnet_v2_b1", "efficientnet_v2_b2"], ["efficientnet_v2_b3", "efficientnet_v2_s"],
    ["efficientnet_v2_m"], ["efficientnet_v2_l"],
    ["inception_resnet_v2", "inception_v3", "xception"],
    ["mobilenet", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"],
    ["nasnet_large", "nasnet_mobile"],
    ["resnet50", "resnet101", "resnet152"], ["resnet50_v2", "resnet101_v2", "resnet152_v2"],
    ["vgg16", "vgg19"],
]


def batch_of(name: str):
    """The batch holding classifier `name`; None for a name that is none of the 40."""
    return next((batch for batch in BATCHES if name in batch), None)
