"""The import stage's two backends: the only switch in its pipeline.

- pycaffe (`pycaffe_backend.Pycaffe`, inside the Caffe environment): Caffe's own schema parses
  and checks the prototxt (generated or hand-written), pycaffe holds and saves the weights, and
  Caffe's forward pass is what verification measures.
- native (`native_backend.Native`, anywhere, no Caffe): the generated prototxt, the
  `.caffemodel` streamed by `caffemodel.write_caffemodel`, and OpenCV 4.x for verification.

Each backend `describe`s the net (its prototxt text, layers and how TF layers map onto blobs),
`write`s the weights (returning what `run` needs) and `run`s the reference input.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from ..errors import ConversionError

# Refusing is simpler than the alternative: patching a hand-written prototxt's input shapes and
# matching its layers needs a parser for Caffe's schema, which only the Caffe environment has.
PROTOTXT_NEEDS_PYCAFFE = ("%s: a hand-written prototxt needs the pycaffe backend (Caffe's own schema "
                          "parses it); drop --prototxt to write the generated one")


class NetDescription:
    """What verification needs to know about the net a backend writes."""

    def __init__(self, text: str, layer_tops: List[Tuple[str, List[str]]], types: List[str],
                 inputs: Dict[str, str], targets_in: Callable):
        self.text = text
        self.layer_tops = layer_tops  # (Caffe layer, its tops), TEST phase
        self.types = types
        self.inputs = inputs  # TF input layer -> Caffe input blob
        self.targets_in = targets_in  # verify.generated_targets or verify.handwritten_targets


def generated_inputs(model, blobs) -> Dict[str, str]:
    return {name: blobs[name].name for name in model.inputs}


def get_backend(name: str):
    if name == "native":
        from .native_backend import Native
        return Native()
    try:
        from .pycaffe_backend import Pycaffe  # imports caffe: only where it exists
    except ImportError as error:
        raise ConversionError("the pycaffe backend needs Caffe's Python module (%s): run `tf2caffe "
                              "import`, which uses the Caffe environment, or pass --backend native"
                              % error) from None
    return Pycaffe()
