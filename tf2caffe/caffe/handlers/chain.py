"""The chain of Caffe layers one TensorFlow layer becomes, from its input blob to its output blob.

Handlers build a `Chain`: `then` appends one operation that may change the shape (convolution,
pooling), `follow` appends `Step`s (a table of layers that keep the shape: activations,
normalizations, merges), `crop` cuts rows/columns off with Slice layers, and `produce` names the
result after the TensorFlow layer, adds everything to the net and declares the output blob.
Nothing reaches the net before `produce`, so the final name is chosen last.

Naming: the TensorFlow layer's output is the first top of a Caffe layer named like the
TensorFlow layer (`ctx.name(layer)`), because OpenCV's `Net.forward(name)` fetches a layer's
FIRST output, and `Net.forward()` returns the last layer's output. Intermediate layers are
suffixed (`<name>/conv`, `<name>/crop_h`); no layer works in place. A Slice lists its tops in
axis order, so a Slice that drops leading rows holds the kept part in its second top: the chain
then ends with a one-top Split named `<name>` (a zero-copy identity in Caffe; a one-top Slice
would do in pycaffe, but OpenCV rejects it). Discarded Slice tops go to one Silence layer, so
pycaffe does not list them as net outputs; OpenCV treats Silence as a pass-through whose output
`Net.forward()` would return if it were the net's last layer, so a model output never ends with
one.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ...errors import ConversionError
from ..emit import nchw
from ..netspec import CaffeLayer

AXES = ("h", "w")


class Earlier(str):
    """In a chain, the top of the earlier step with this suffix (or the chain's input for "")."""


class Step(NamedTuple):
    """One layer of a chain: it takes the previous layer's top, or `source` when given (a blob
    name or an `Earlier` step), plus `extra_bottoms`."""
    suffix: str
    type: str
    params: Optional[Dict] = None
    blobs: Sequence = ()
    extra_bottoms: Sequence[str] = ()
    source: Optional[str] = None


def power(suffix, scale=1.0, shift=0.0, exponent=1.0) -> Step:
    """Power layer computing (shift + scale·x)^exponent (Caffe multiplies first, then adds,
    like TF)."""
    params = {}
    if exponent != 1.0:
        params["power"] = float(exponent)
    if scale != 1.0:
        params["scale"] = float(scale)
    if shift != 0.0:
        params["shift"] = float(shift)
    return Step(suffix, "Power", {"power_param": params})


class Chain:
    """The Caffe layers one TensorFlow layer becomes, in order, starting from blob `bottom`
    (default: the layer's first input) of Caffe shape `shape` (default: that blob's)."""

    def __init__(self, ctx, layer, bottom: Optional[str] = None, shape: Optional[Sequence[int]] = None):
        self.ctx = ctx
        self.layer = layer
        first = ctx.bottom(layer)
        self.top = first.name if bottom is None else bottom
        self.shape = [int(d) for d in (first.shape if shape is None else shape)]
        # A Dense after a Flatten needs to know the flattened blob's order; only layers that
        # keep the shape keep it.
        self.flattened_from = first.flattened_from
        self.tops: Dict[str, str] = {"": self.top}
        self.layers: List[CaffeLayer] = []
        self.silence_after: Optional[CaffeLayer] = None
        self.discarded: List[str] = []

    def then(self, suffix: str, caffe_type: str, params: Dict, shape: Sequence[int], blobs=()) -> None:
        """One operation on the current top, whose output has Caffe shape `shape`."""
        self._add(Step(suffix, caffe_type, params, blobs))
        self.shape = [int(d) for d in shape]
        self.flattened_from = None

    def follow(self, steps: Sequence[Step]) -> None:
        """Layers that keep the shape, each on the previous top (or its `source`)."""
        for step in steps:
            self._add(step)

    def _add(self, step: Step) -> None:
        name = self.ctx.name(self.layer, step.suffix)
        bottoms = [self.top if step.source is None else self._resolve(step.source)]
        bottoms += [self._resolve(blob) for blob in step.extra_bottoms]
        self.layers.append(CaffeLayer(name, step.type, bottoms, [name], step.params, step.blobs))
        self.top = self.tops[step.suffix] = name

    def _resolve(self, blob: str) -> str:
        return self.tops[blob] if isinstance(blob, Earlier) else blob

    def crop(self, cuts: Sequence[Tuple[int, int]]) -> None:
        """Drop cuts[a] = (lead, trail) rows (a = 0) and columns (a = 1) of a 4-D blob."""
        self.cut({2 + axis: cut for axis, cut in enumerate(cuts)})

    def cut(self, cuts: Dict[int, Tuple[int, int]]) -> None:
        """Drop cuts[a] = (lead, trail) elements along Caffe axis a, one Slice per axis that
        needs it. An axis without a leading cut goes last: its kept part is the Slice's first
        top, so it can be the chain's final layer."""
        axes = sorted((a for a, (lead, trail) in cuts.items() if lead or trail), key=lambda a: cuts[a][0] == 0)
        for axis in axes:
            lead, trail = (int(n) for n in cuts[axis])
            size = self.shape[axis]
            label = "crop_" + ("nchw"[axis] if len(self.shape) == 4 else str(axis))
            name = self.ctx.name(self.layer, label)
            points, tops = [], []
            if lead:
                points.append(lead)
                tops.append(name + "/lead")
            tops.append(name)
            if trail:
                points.append(size - trail)
                tops.append(name + "/trail")
            self.discarded.extend(top for top in tops if top != name)
            self.layers.append(CaffeLayer(name, "Slice", [self.top], tops,
                                          {"slice_param": {"axis": axis, "slice_point": points}}))
            self.top = name
            self.shape[axis] = size - lead - trail
            self.flattened_from = None
        if axes:
            self.silence_after = self.layers[-1]

    def produce(self) -> None:
        expected = nchw(self.layer.output_shape)
        if self.shape[1:] != expected[1:]:  # the batch size is the runtime's
            raise ConversionError("layer '%s' (%s): the Caffe layers compute shape %s, TensorFlow's "
                                  "output is %s (NCHW)" % (self.layer.name, self.layer.type,
                                                           self.shape, expected))
        final = self.ctx.name(self.layer)
        if not self.layers:
            self.ctx.produce(self.layer, self.top, self.shape, self.flattened_from)
            return
        last = self.layers[-1]
        ends_with_silence = self.silence_after is last
        if last.tops.index(self.top) == 0 and not (
                ends_with_silence and self.layer.name in self.ctx.model.outputs):
            last.name, last.tops[0] = final, final
        else:
            self.layers.append(CaffeLayer(final, "Split", [self.top], [final]))
        for caffe_layer in self.layers:
            self.ctx.add(caffe_layer)
            if caffe_layer is self.silence_after:
                self.ctx.add(CaffeLayer(self.ctx.name(self.layer, "silence"), "Silence",
                                        list(self.discarded), []))
        self.ctx.produce(self.layer, final, self.shape, self.flattened_from)
