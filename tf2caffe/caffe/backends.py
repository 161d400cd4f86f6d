"""The import stage's two backends: the only switch in its pipeline.

- pycaffe (`pycaffe_backend.Pycaffe`, inside the Caffe environment): Caffe's own schema parses
  and checks the prototxt (generated or hand-written), pycaffe holds and saves the weights, and
  Caffe's forward pass is what verification measures.
- native (`native_backend.Native`, anywhere, no Caffe): the generated prototxt, the
  `.caffemodel` streamed by `caffemodel.write_caffemodel`, and OpenCV 4.x for verification.

Both implement `Backend`: `describe` the net (its prototxt text, layers and how TF layers map
onto blobs), `write` the weights (returning what `run` needs) and `run` the reference input.
Every argument is keyword-only: the calls name what each path is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

import numpy as np

from ..errors import ConversionError

if TYPE_CHECKING:
    from ..intermediate import Model
    from .deploy import DeployOptions
    from .emit import Blob
    from .netspec import NetSpec
    from .verify import Target

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


class Progress(Protocol):
    """What a backend reports its work to (import_stage.Progress)."""

    def stage(self, name: str) -> None: ...

    def each(self, items: Iterable) -> Iterable: ...


class Backend(Protocol):
    name: str  # the --backend value
    verifier: str  # the runtime verification measures in, as reports name it ("pycaffe", "OpenCV")

    def describe(self, *, model: "Model", net_spec: "NetSpec", blobs: Dict[str, "Blob"], h5_path: str,
                 prototxt: Optional[str], prototxt_out: str) -> NetDescription:
        """The net to write: the generated one, or the hand-written `prototxt` with its input
        shapes set from `model`. `prototxt_out`: where the generated one will be saved (for
        messages)."""

    def write(self, *, net_spec: "NetSpec", prototxt_file: str, caffemodel_file: str, h5_path: str,
              prototxt_shown: str, caffemodel_shown: str, progress: Progress) -> Any:
        """Write the weights to `caffemodel_file` (a scratch file; `*_shown`: what messages call
        the files), the prototxt being at `prototxt_file`. Returns what `run` needs."""

    def run(self, *, written: Any, prototxt: str, caffemodel: str, feeds: Dict[str, np.ndarray],
            targets: Dict[str, "Target"]) -> Dict[str, np.ndarray]:
        """Forward `feeds` (Caffe input blob -> array in Caffe's layout) once through the saved
        net; each target's output."""

    def deployed(self, *, model: "Model", inputs: Dict[str, str], outputs: Dict[str, "Target"], prototxt: str,
                 caffemodel: str, deployment: "DeployOptions") -> Tuple[Dict[str, Dict[str, float]], List[List[str]]]:
        """The model's `outputs` measured as a user runs the net (fed as the net built with
        `deployment` takes its input), where that differs from `run`
        (OpenCV fuses layers unless they are fetched): ({output: report.layer_error}, the fused
        groups of Caffe layers); ({}, []) where it does not."""


def generated_inputs(model, blobs) -> Dict[str, str]:
    return {name: blobs[name].name for name in model.inputs}


def get_backend(name: str) -> Backend:
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
