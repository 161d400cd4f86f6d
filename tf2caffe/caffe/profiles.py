"""Target profiles: which Caffe layer types an emitted prototxt may use. The one table of them.

- `bvlc` (the default): the inference layers of BVLC Caffe 1.0 that OpenCV 4.x's Caffe importer
  also loads and runs, so output of the default profile runs everywhere. It deliberately excludes
  layers the Debian test build happens to have (Clip, Swish) and ones OpenCV 4.x cannot create
  (DummyData, Bias, Threshold).
- `opencv`: every layer type that OpenCV 4.x's Caffe importer (`cv2.dnn.readNetFromCaffe`) loads
  AND computes as Caffe (or, for types no Caffe has, as the type's usual definition) does.
- `ssd`: `bvlc` plus the four layers SSD-Caffe adds for detection heads, which NPU toolchains
  accept too; none of the SSD fork's other extras (ReLU6, Upsample, ...).

The lists were not copied from documentation: each type was run as a one-layer net against a
numpy reference in OpenCV 4.14, in Debian bullseye's pycaffe and in the source-built Caffe
(tf2caffe/source_caffe.py). tests/test_layer_types.py re-checks every type of every profile in
every runtime that has it, and that each type in NOT_IN_OPENCV still fails in OpenCV as recorded,
so the lists cannot drift silently.
"""
from __future__ import annotations

from ..errors import ConversionError

BVLC_INFERENCE = frozenset([
    "Input", "Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "PReLU", "ELU",
    "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL", "Softmax", "BatchNorm", "Scale",
    "LRN", "MVN", "Eltwise", "Concat", "Slice", "Split", "Silence", "Flatten", "Reshape", "Dropout",
])
# OpenCV caveats within these: Log computes ln(x) only (it ignores base, scale and shift), and a
# Split's tops are one blob to OpenCV (it fetches a single output for the layer).

# OpenCV 4.x beyond BVLC_INFERENCE. HardSigmoid is clip(0.2·x + 0.5, 0, 1) (OpenCV's defaults: a
# prototxt has no field for its slope and offset); HardSwish is x · clip(x/6 + 1/2, 0, 1); Gelu is
# the exact (erf) one; Interp is PSPNet's bilinear resize with aligned corners.
OPENCV_EXTRAS = frozenset([
    "ReLU6", "Swish", "Mish", "HardSwish", "HardSigmoid", "Gelu", "Erf", "Crop", "Permute",
    "Normalize", "Interp", "ShuffleChannel", "PriorBox", "DetectionOutput",
])

# Caffe layer types tried for the opencv profile, and how OpenCV 4.x fails them.
NOT_IN_OPENCV = {
    "Clip": "cannot create the layer",
    "Upsample": "cannot create the layer",
    "Threshold": "cannot create the layer",
    "Bias": "cannot create the layer",
    "DummyData": "cannot create the layer",
    "Reduction": "cannot create the layer",
    "ArgMax": "cannot create the layer",
    "Tile": "refuses to run it (its Tile expects ONNX's repeats input)",
}

# What SSD-Caffe adds to BVLC for detection heads.
SSD_EXTRAS = frozenset(["Permute", "Normalize", "PriorBox", "DetectionOutput"])


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


PROFILES = {profile.name: profile for profile in (
    Profile("bvlc", BVLC_INFERENCE, "BVLC Caffe 1.0's inference layers that OpenCV 4.x also runs (the default)"),
    Profile("opencv", BVLC_INFERENCE | OPENCV_EXTRAS,
            "OpenCV dnn: every layer type its Caffe importer runs correctly (bvlc plus ReLU6, Swish, "
            "Mish, HardSwish, Gelu, Permute, Normalize, Interp, PriorBox, ...)"),
    Profile("ssd", BVLC_INFERENCE | SSD_EXTRAS,
            "SSD-Caffe and NPU toolchains: bvlc plus Permute, Normalize, PriorBox, DetectionOutput"),
)}
DEFAULT_PROFILE = "bvlc"


def get_profile(name) -> Profile:
    if name not in PROFILES:
        raise ConversionError("unknown target profile '%s' (known: %s)" % (name, ", ".join(sorted(PROFILES))))
    return PROFILES[name]
