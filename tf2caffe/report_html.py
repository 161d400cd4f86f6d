"""The conversion report as one self-contained HTML page (TensorFlow side), from the import
report (report.py, which alone knows its keys: read here through FileResult's attributes).

What it shows: source, profile and the runtimes the net was verified in; the input and output
blobs; copy-paste snippets running the net in OpenCV and pycaffe; the per-layer table; an error
plot; a diagram of the Caffe net in the style of Caffe's draw_net.py, drawn by Graphviz `dot`
where it is installed, else by the small layered layout here. Everything is inline (SVG, CSS).
"""
from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import report
from .caffe.deploy import DeployOptions

# draw_net.py's colours: layer types, and blobs.
LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
DEFAULT_LAYER_COLOUR = "#6495ED"
BLOB_COLOUR = "#E0E0E0"
REFERENCE_TIFF = ".reference.tiff"  # the reference input as an image file cv2.imread reads (float32)
REFERENCE_NPY = ".reference.npy"  # the reference input as TensorFlow took it (NHWC)


class CaffeNetLayer:
    def __init__(self, name: str, type: str, bottoms: List[str], tops: List[str]):
        self.name, self.type, self.bottoms, self.tops = name, type, bottoms, tops


def read_layers(prototxt_text: str) -> List[CaffeNetLayer]:
    """Each top-level `layer { ... }` of a prototxt: name, type, bottoms and tops (enough to draw)."""
    layers, depth, block = [], 0, []
    for line in prototxt_text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if depth == 0 and re.match(r"^layers?\s*\{", stripped):
            block, depth = [], 1
            continue
        if depth == 0:
            continue
        if depth == 1:
            block.append(stripped)
        depth += stripped.count("{") - stripped.count("}")
        if depth == 0:
            layers.append(_layer_of(block))
    return layers


def _layer_of(block: List[str]) -> CaffeNetLayer:
    """A layer from the top-level `key: value` lines of its block."""
    fields = [re.match(r'^(\w+)\s*:\s*"?([^"]*)"?$', item) for item in block]
    values = [(m.group(1), m.group(2)) for m in fields if m]

    def get(key: str) -> List[str]:
        return [value for k, value in values if k == key]

    return CaffeNetLayer((get("name") or ["?"])[0], (get("type") or ["?"])[0], get("bottom"), get("top"))


# ---------------------------------------------------------------- the diagram

def dot_source(layers: List[CaffeNetLayer], name: str) -> str:
    """The net as draw_net.py draws it: layers as coloured boxes, blobs as grey octagons, in-place
    layers beside the blob they change."""
    lines = ['digraph "%s" {' % name, "  rankdir=TB; node [fontname=Helvetica fontsize=10];"]
    blobs = set()
    for index, layer in enumerate(layers):
        lines.append('  "L%d" [shape=record style=filled fillcolor="%s" label="%s\\n%s"];' % (
            index, LAYER_COLOURS.get(layer.type, DEFAULT_LAYER_COLOUR), _dot(layer.type), _dot(layer.name)))
        for bottom in layer.bottoms:
            if bottom not in blobs:
                blobs.add(bottom)
                lines.append('  "B_%s" [shape=octagon style=filled fillcolor="%s" label="%s"];' % (
                    _dot(bottom), BLOB_COLOUR, _dot(bottom)))
            lines.append('  "B_%s" -> "L%d";' % (_dot(bottom), index))
        for top in layer.tops:
            if top not in blobs:
                blobs.add(top)
                lines.append('  "B_%s" [shape=octagon style=filled fillcolor="%s" label="%s"];' % (
                    _dot(top), BLOB_COLOUR, _dot(top)))
            lines.append('  "L%d" -> "B_%s";' % (index, _dot(top)))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def diagram_svg(layers: List[CaffeNetLayer], name: str, use_dot: Optional[bool] = None) -> Tuple[str, str]:
    """(inline SVG of the net, what drew it: "Graphviz dot" or "built-in layout")."""
    dot = shutil.which("dot") if use_dot is not False else None
    if dot:
        drawn = subprocess.run([dot, "-Tsvg"], input=dot_source(layers, name), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
        if drawn.returncode == 0 and "<svg" in drawn.stdout:
            return drawn.stdout[drawn.stdout.index("<svg"):], "Graphviz dot"
    return layered_svg(layers), "built-in layout"


BOX_W, BOX_H, GAP_X, GAP_Y = 170, 34, 20, 26


def layered_svg(layers: List[CaffeNetLayer]) -> str:
    """draw_net's picture without Graphviz: every layer and blob a node, each node one row below
    the lowest node it reads from (longest path), nodes of a row side by side."""
    nodes: List[Tuple[str, str, str]] = []  # (id, label, colour)
    rows: Dict[str, int] = {}
    edges: List[Tuple[str, str]] = []
    blob_node: Dict[str, str] = {}  # blob -> the node holding its latest value

    def blob(name: str, row: int) -> str:
        node = "B%d" % len(nodes)
        nodes.append((node, name, BLOB_COLOUR))
        rows[node] = row
        blob_node[name] = node
        return node

    for index, layer in enumerate(layers):
        sources = [blob_node.get(bottom) or blob(bottom, 0) for bottom in layer.bottoms]
        node = "L%d" % index
        nodes.append((node, "%s (%s)" % (layer.name, layer.type),
                      LAYER_COLOURS.get(layer.type, DEFAULT_LAYER_COLOUR)))
        rows[node] = 1 + max([rows[source] for source in sources], default=-1)
        edges += [(source, node) for source in sources]
        for top in layer.tops:
            edges.append((node, blob(top, rows[node] + 1)))
    by_row: Dict[int, List[str]] = {}
    for node, _, _ in nodes:
        by_row.setdefault(rows[node], []).append(node)
    position = {}
    width = max(len(row) for row in by_row.values()) * (BOX_W + GAP_X) + GAP_X
    for row, members in by_row.items():
        left = (width - len(members) * (BOX_W + GAP_X) + GAP_X) / 2.0
        for column, node in enumerate(members):
            position[node] = (left + column * (BOX_W + GAP_X), GAP_Y + row * (BOX_H + GAP_Y))
    height = GAP_Y + (max(by_row) + 1) * (BOX_H + GAP_Y)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" class="diagram" width="%d" height="%d" '
             'viewBox="0 0 %d %d" font-family="Helvetica" font-size="10">' % (width, height, width, height),
             '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
             '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>']
    for source, target in edges:
        (x1, y1), (x2, y2) = position[source], position[target]
        parts.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#555" marker-end="url(#arrow)"/>' % (
            x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2))
    for node, label, colour in nodes:
        x, y = position[node]
        shape = ('<rect x="%.1f" y="%.1f" width="%d" height="%d" fill="%s" stroke="#333"/>' % (
            x, y, BOX_W, BOX_H, colour) if node.startswith("L") else _octagon(x, y, colour))
        parts.append('%s<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>' % (
            shape, x + BOX_W / 2, y + BOX_H / 2 + 4, html.escape(_fit(label))))
    parts.append("</svg>")
    return "\n".join(parts)


def _octagon(x: float, y: float, colour: str) -> str:
    c = 8
    points = [(x + c, y), (x + BOX_W - c, y), (x + BOX_W, y + c), (x + BOX_W, y + BOX_H - c),
              (x + BOX_W - c, y + BOX_H), (x + c, y + BOX_H), (x, y + BOX_H - c), (x, y + c)]
    return '<polygon points="%s" fill="%s" stroke="#333"/>' % (
        " ".join("%.1f,%.1f" % point for point in points), colour)


def _fit(label: str, limit: int = 30) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "…"


# ---------------------------------------------------------------- the error plot

def error_plot_svg(order: List[str], per_layer: Dict[str, Dict[str, float]]) -> str:
    """log10(relative error) per mapped layer in model order, one line per runtime, with the
    per-layer tolerance."""
    from .measure import LAYER_TOLERANCE
    width, height, left, bottom = 760, 260, 50, 30
    layers = [name for name in order if any(name in errors for errors in per_layer.values())]
    if not layers:
        return "<p>No per-layer errors were recorded (converted with --no-per-layer).</p>"
    lowest, highest = -9, 1

    def y(error: float) -> float:
        value = highest if not error > 0 or math.isinf(error) or math.isnan(error) else math.log10(error)
        value = min(max(value, lowest), highest)
        return (highest - value) / (highest - lowest) * (height - bottom - 10) + 10

    step = (width - left - 10) / max(len(layers) - 1, 1)
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="%d" height="%d" '
             'font-family="Helvetica" font-size="10">' % (width, height)]
    for exponent in range(lowest, highest + 1, 2):
        parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="5" y="%.1f">1e%d</text>' % (
            left, width - 10, y(10.0 ** exponent), y(10.0 ** exponent), y(10.0 ** exponent) + 3, exponent))
    parts.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c00" stroke-dasharray="4"/>'
                 '<text x="%d" y="%.1f" fill="#c00">per-layer tolerance %g</text>' % (
                     left, width - 10, y(LAYER_TOLERANCE), y(LAYER_TOLERANCE), width - 170,
                     y(LAYER_TOLERANCE) - 3, LAYER_TOLERANCE))
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for number, (runtime, errors) in enumerate(sorted(per_layer.items())):
        points = ["%.1f,%.1f" % (left + index * step, y(errors[name]))
                  for index, name in enumerate(layers) if name in errors]
        colour = colours[number % len(colours)]
        parts.append('<polyline fill="none" stroke="%s" points="%s"/>' % (colour, " ".join(points)))
        parts.append('<text x="%d" y="%d" fill="%s">%s</text>' % (left + 10 + 150 * number, height - 8,
                                                                   colour, html.escape(runtime)))
    parts.append("</svg>")
    return "\n".join(parts)


# ---------------------------------------------------------------- the snippets

def opencv_snippet(result: report.FileResult) -> str:
    """Python that runs the net in OpenCV on the reference input (as an image file, in BGR like
    any cv2.imread image) and prints each output; run as written it reproduces TensorFlow's
    reference output."""
    stem = os.path.splitext(os.path.basename(result.prototxt))[0]
    outputs = [entry["blob"] for entry in result.deployment["outputs"]]
    options = DeployOptions.from_json(result.deploy_options)
    lines = ["import cv2", "import numpy as np", "",
             'net = cv2.dnn.readNetFromCaffe("%s", "%s")' % (os.path.basename(result.prototxt),
                                                             os.path.basename(result.caffemodel))]
    for entry in result.deployment["inputs"]:
        shape = entry["shape"]
        if len(shape) == 4 and shape[1] in (1, 3):
            lines += ["# Your image: cv2.imread(\"photo.jpg\") (BGR, resized to %dx%d). Here: the reference input." % (
                          shape[3], shape[2]),
                      'image = cv2.imread("%s%s", cv2.IMREAD_UNCHANGED)' % (stem, REFERENCE_TIFF),
                      "# swapRB: %s" % ("the net takes BGR (--bgr), as cv2 reads it." if options.bgr else
                                        "the net takes the TensorFlow model's channel order (RGB), cv2 reads BGR."),
                      "# scalefactor, mean: %s" % (
                          "the net scales its input itself (%s): feed pixels as read" % ", ".join(
                              step["layer"] for step in entry["preprocessing_inside"])
                          if entry["preprocessing_inside"] else
                          "the model's own preprocessing is not in the net; put its scale and mean here"),
                      "blob = cv2.dnn.blobFromImage(image, scalefactor=1.0, size=(%d, %d), mean=(0, 0, 0), "
                      "swapRB=%s, crop=False)" % (shape[3], shape[2], shape[1] == 3 and not options.bgr)]
        else:
            lines += ["# An array in TensorFlow's layout (N, H, W, C or N, D), as the net takes it: channels first for Caffe.",
                      'x = np.load("%s%s")' % (stem, REFERENCE_NPY),
                      "blob = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x"]
        lines.append('net.setInput(np.ascontiguousarray(blob, dtype=np.float32), "%s")' % entry["blob"])
    lines += ["outputs = net.forward(%r)  # by name: %s" % (outputs, ", ".join(
                  "%s = TensorFlow's %s" % (entry["blob"], entry["tf_name"]) for entry in result.deployment["outputs"])),
              "for name, value in zip(%r, outputs):" % (outputs,),
              "    print(name, value.shape, value.reshape(-1)[:5])"]
    return "\n".join(lines) + "\n"


def pycaffe_snippet(result: report.FileResult) -> str:
    stem = os.path.splitext(os.path.basename(result.prototxt))[0]
    lines = ["import caffe", "import numpy as np", "",
             'net = caffe.Net("%s", "%s", caffe.TEST)' % (os.path.basename(result.prototxt),
                                                          os.path.basename(result.caffemodel))]
    for entry in result.deployment["inputs"]:
        lines += ['x = np.load("%s%s")  # the reference input as the net takes it, in NHWC layout' % (stem, REFERENCE_NPY),
                  'net.blobs["%s"].data[...] = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x' % entry["blob"]]
    lines.append("net.forward()")
    for entry in result.deployment["outputs"]:
        lines.append('print("%s", net.blobs["%s"].data.reshape(-1)[:5])' % (entry["blob"], entry["blob"]))
    return "\n".join(lines) + "\n"


def write_reference_files(result: report.FileResult, reference: Dict[str, np.ndarray], folder: str) -> List[str]:
    """The reference input the snippets read, as the net takes it (raw values, BGR under the
    deployment options): `<stem>.reference.npy` (in TensorFlow's layout) and, for a 1- or
    3-channel image, `<stem>.reference.tiff` (float32, BGR: what cv2.imread gives)."""
    import cv2
    options = DeployOptions.from_json(result.deploy_options)
    stem = os.path.splitext(os.path.basename(result.prototxt))[0]
    written = []
    for entry in result.deployment["inputs"]:
        value = np.asarray(reference[entry["tf_layer"]], dtype=np.float32)
        if value.ndim == 4:
            value = options.raw_input(value.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        path = os.path.join(folder, stem + REFERENCE_NPY)
        np.save(path, value)
        written.append(path)
        if value.ndim == 4 and value.shape[3] in (1, 3):
            image = value[0] if options.bgr else value[0][..., ::-1]
            path = os.path.join(folder, stem + REFERENCE_TIFF)
            cv2.imwrite(path, np.ascontiguousarray(image))
            written.append(path)
    return written


# ---------------------------------------------------------------- the page

def page(imported: report.Report, result: report.FileResult, layer_order: List[str],
         use_dot: Optional[bool] = None) -> str:
    with open(result.prototxt) as f:
        layers = read_layers(f.read())
    diagram, drawn_by = diagram_svg(layers, result.model, use_dot)
    e = html.escape
    runtimes_rows = "".join(
        "<tr><td>%s</td><td>%s</td><td>%s</td></tr>" % (
            e(runtime), ", ".join("%s %.3g" % (e(name), value["max_rel"]) for name, value in errors["compared"].items()),
            ", ".join("%s %.3g" % (e(name), value["max_rel"]) for name, value in errors.get("deployed", {}).items())
            or "(the same run)")
        for runtime, errors in result.runtimes.items())
    inputs_rows = "".join(
        "<tr><td>%s</td><td><code>%s</code></td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>"
        % (e(entry["tf_layer"]), e(entry["blob"]), entry["shape"], e(entry["dtype"]),
           e(entry["channel_order"] or "not an image"), e(str(entry["value_range"] or "not known from the model")),
           e("; ".join(_step(step) for step in entry["preprocessing_inside"]) or "none"), e(entry["left_to_user"]))
        for entry in result.deployment.get("inputs", []))
    outputs_rows = "".join(
        "<tr><td>%s</td><td><code>%s</code></td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
            e(entry["tf_name"]), e(entry["blob"]), entry["shape"], e(entry["holds"]),
            "<code>%s</code>" % e(entry["logits_blob"]) if entry["logits_blob"] else "")
        for entry in result.deployment.get("outputs", []))
    per_layer = {runtime: errors["per_layer"] for runtime, errors in result.runtimes.items() if errors["per_layer"]}
    table_rows = "".join(
        "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>%s</tr>" % (
            e(row["tf_layer"]), e(row["tf_type"]), e(", ".join(
                "%s (%s)" % item for item in zip(row["caffe_layers"], row["caffe_types"])) or
                ", ".join(row["caffe_layers"]) or "none"),
            row["tf_shape"], e(row["blob"] or ""), row["blob_shape"] or "",
            "".join("<td>%s</td>" % _error_cell(errors.get(row["tf_layer"])) for errors in per_layer.values()))
        for row in result.layer_table)
    verdict = {True: "verified", False: "VERIFICATION FAILED", None: "not verified"}[result.verified]
    return PAGE % dict(
        model=e(result.model), verdict=verdict, source=e(str(result.source.get("path", ""))),
        framework=e("%s %s" % (result.source.get("framework", ""), result.source.get("version", ""))),
        profile=e(result.profile), tolerance=imported.tolerance, runtimes_rows=runtimes_rows,
        prototxt=e(result.prototxt), caffemodel=e(result.caffemodel),
        inputs_rows=inputs_rows, outputs_rows=outputs_rows,
        opencv=e(opencv_snippet(result)), pycaffe=e(pycaffe_snippet(result)),
        runtime_headers="".join("<th>max rel. error, %s</th>" % e(runtime) for runtime in per_layer),
        table_rows=table_rows, plot=error_plot_svg(layer_order, per_layer), diagram=diagram,
        drawn_by=e(drawn_by), caffe_layers=len(layers), deploy_options=deploy_options_html(result))


def deploy_options_html(result: report.FileResult) -> str:
    """The options the net was built with (caffe/deploy.py) and what each pass changed."""
    options = DeployOptions.from_json(result.deploy_options)
    chosen = " ".join(options.argv()) or "none"
    applied = result.deploy_options.get("applied") or []
    return "<p>Options: <code>%s</code>.</p>\n<ul>%s</ul>" % (html.escape(chosen), "".join(
        "<li>%s</li>" % html.escape(line) for line in applied) or "<li>nothing changed</li>")


def _step(step: Dict) -> str:
    return "%s: %s (%s)" % (step["layer"], step["operation"], ", ".join(
        "%s=%s" % (key, value) for key, value in step.items() if key not in ("layer", "operation")))


def _error_cell(error: Optional[float]) -> str:
    if error is None:
        return ""
    from .measure import LAYER_TOLERANCE
    return '<span class="%s">%.2g</span>' % ("bad" if not error <= LAYER_TOLERANCE else "ok", error)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tf2caffe: %(model)s</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.ok { color: #060; } .bad { color: #c00; font-weight: bold; } .scroll { overflow: auto; max-height: 60em; }
</style></head><body>
<h1>%(model)s: %(verdict)s</h1>
<p>Source: <code>%(source)s</code> (%(framework)s); profile <code>%(profile)s</code>; files
<code>%(prototxt)s</code>, <code>%(caffemodel)s</code>.</p>
<h2 id="runtimes">Verified in</h2>
<p>Relative error max|caffe - tf| / max|tf| per compared layer, tolerance %(tolerance)g; as deployed:
the runtime's default settings, asked for the model's outputs only.</p>
<table><tr><th>runtime</th><th>layer by layer (fusion off)</th><th>as deployed</th></tr>%(runtimes_rows)s</table>
<h2 id="inputs">Inputs</h2>
<table><tr><th>TensorFlow input</th><th>Caffe blob</th><th>shape (NCHW)</th><th>dtype</th><th>channel order</th>
<th>value range</th><th>preprocessing inside the net</th><th>left to you</th></tr>%(inputs_rows)s</table>
<h2 id="outputs">Outputs</h2>
<table><tr><th>TensorFlow output</th><th>Caffe blob</th><th>shape</th><th>holds</th><th>logits blob</th></tr>%(outputs_rows)s</table>
<h2 id="deployment-options">Deployment options</h2>
%(deploy_options)s
<h2 id="snippets">Running it</h2>
<h3>OpenCV</h3>
<pre id="opencv-snippet">%(opencv)s</pre>
<h3>pycaffe</h3>
<pre id="pycaffe-snippet">%(pycaffe)s</pre>
<h2 id="layers">Layers</h2>
<div class="scroll"><table><tr><th>TensorFlow layer</th><th>type</th><th>Caffe layers</th><th>TensorFlow shape</th>
<th>Caffe blob</th><th>blob shape</th>%(runtime_headers)s</tr>%(table_rows)s</table></div>
<h2 id="errors">Per-layer error</h2>
%(plot)s
<h2 id="diagram">The Caffe net (%(caffe_layers)d layers; drawn by %(drawn_by)s)</h2>
<div class="scroll">%(diagram)s</div>
</body></html>
"""


def write(path: str, imported: report.Report, result: report.FileResult, layer_order: List[str],
          use_dot: Optional[bool] = None) -> None:
    from .atomic import atomic_file
    with atomic_file(path, failure="cannot write the report", mode="w") as out:
        out.write(page(imported, result, layer_order, use_dot))
