"""Target profiles: which Caffe layer types an emitted prototxt may use.

The default, `bvlc`, is the inference layers of BVLC Caffe 1.0 that OpenCV 4.x's Caffe importer
also loads. It deliberately excludes layers the Debian test build happens to have (Clip, Swish)
and ones OpenCV 4.x cannot create (DummyData, Bias, Threshold), so output of the default profile
runs everywhere.
"""
from __future__ import annotations

from ..errors import ConversionError

BVLC_INFERENCE = frozenset([
    "Input", "Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU", "ELU",
    "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL", "Softmax", "BatchNorm", "Scale",
    "LRN", "MVN", "Eltwise", "Concat", "Slice", "Split", "Silence", "Flatten", "Reshape", "Dropout",
])


class Profile:
    def __init__(self, name, layers, description):
        self.name = name
        self.layers = frozenset(layers)
        self.description = description

    def allows(self, caffe_type) -> bool:
        return caffe_type in self.layers

    def enforce(self, net) -> None:
        """Refuse a net that uses a layer type outside the profile (a handler bug if it happens)."""
        outside = sorted({layer.type for layer in net.layers if not self.allows(layer.type)})
        if outside:
            raise ConversionError("target profile '%s' does not allow Caffe layer type(s) %s" % (
                self.name, ", ".join(outside)))


PROFILES = {
    "bvlc": Profile("bvlc", BVLC_INFERENCE,
                    "BVLC Caffe 1.0 inference layers that OpenCV 4.x also loads (default)"),
    "opencv": Profile("opencv", BVLC_INFERENCE | {"ReLU6", "Swish"},
                      "bvlc plus ReLU6 and Swish, for OpenCV dnn and Caffe forks that have them"),
}


def get_profile(name) -> Profile:
    if name not in PROFILES:
        raise ConversionError("unknown target profile '%s' (known: %s)" % (name, ", ".join(sorted(PROFILES))))
    return PROFILES[name]
