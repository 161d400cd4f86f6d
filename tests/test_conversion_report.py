"""The conversion report: `tf2caffe convert` writes <stem>.report.json and a self-contained
<stem>.report.html whose snippets, run as written, reproduce TensorFlow's reference output."""
import html
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from harness import PROJECT_ROOT
from handlers.handler_batch import batch_norm
from tf2caffe import intermediate, report, report_html, runtimes
from tf2caffe.measure import relative_error

L = keras.layers


def classifier() -> keras.Model:
    """Pixels 0..255 rescaled inside the model, a conv + BN + ReLU body, output `probs` = Dense +
    softmax: the logits must land in `probs/logits`, the probabilities in `probs`."""
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3), name="image")
    y = L.Rescaling(1.0 / 255, name="scale")(x)
    y = L.ReLU()(batch_norm()(L.Conv2D(6, 3, name="conv")(y)))
    y = L.GlobalAveragePooling2D()(y)
    return keras.Model(x, L.Dense(5, activation="softmax", name="probs")(y))


# As a deployment would ask: BGR input, raw pixels with the mean and scale folded into the net.
DEPLOYMENT_OPTIONS = ["--bgr", "--mean", "10,20,30", "--scale", "0.5,0.25,2"]


def convert_classifier(folder, options):
    src = folder / "classifier.keras"
    classifier().save(src)
    out = folder / "out"
    completed = subprocess.run([sys.executable, "-m", "tf2caffe", "convert", str(src), "-o", str(out), *options],
                               cwd=str(PROJECT_ROOT),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert completed.returncode == 0, completed.stderr
    return out, completed.stdout


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_classifier(tmp_path_factory.mktemp("report"), [])


@pytest.fixture(scope="module")
def converted_for_deployment(tmp_path_factory):
    return convert_classifier(tmp_path_factory.mktemp("report-deployed"), DEPLOYMENT_OPTIONS)


def the_result(out) -> report.FileResult:
    return next(iter(report.read(str(out / "classifier.report.json")).results.values()))


def test_json_report_names_inputs_outputs_and_layers(converted):
    out, stdout = converted
    assert "report: %s" % (out / "classifier.report.json") in stdout
    data = json.loads((out / "classifier.report.json").read_text())
    assert data["format_version"] == report.FORMAT_VERSION == 3
    result = the_result(out)
    assert result.source["framework"] == "keras" and result.profile == "bvlc"
    assert set(result.runtimes) >= {"OpenCV"} and result.runtimes["OpenCV"]["deployed"]
    (image,) = result.deployment["inputs"]
    assert (image["blob"], image["shape"], image["value_range"]) == ("image", [1, 3, 12, 12], [0.0, 255.0])
    assert [step["layer"] for step in image["preprocessing_inside"]] == ["scale"]
    (probs,) = result.deployment["outputs"]
    assert (probs["tf_name"], probs["blob"], probs["logits_blob"]) == ("probs", "probs", "probs/logits")
    assert probs["holds"].startswith("probabilities")
    rows = {row["tf_layer"]: row for row in result.layer_table}
    assert rows["probs"]["caffe_layers"] == ["probs/logits"] and rows["probs/softmax"]["blob"] == "probs"
    assert all(name in result.per_layer for name in rows if rows[name]["tf_type"] != "input")  # per layer by default


def test_html_report_is_self_contained_with_diagram_tables_and_snippets(converted):
    out, _ = converted
    page = (out / "classifier.report.html").read_text()
    assert 'class="diagram"' in page or "<svg" in page.split('id="diagram"')[1]
    assert "probs/logits" in page and "<code>probs</code>" in page and "probabilities (softmax)" in page
    assert 'id="opencv-snippet"' in page and 'id="pycaffe-snippet"' in page and 'class="plot"' in page
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', page)  # nothing loaded from elsewhere


def test_html_report_gives_the_deployment_options_and_what_they_changed(converted_for_deployment):
    out, _ = converted_for_deployment
    section = (out / "classifier.report.html").read_text().split('id="deployment-options"')[1].split("<h2")[0]
    assert "--bgr" in section and "--mean 10.0,20.0,30.0" in section and "--scale 0.5,0.25,2.0" in section
    assert section.count("<li>") >= 2, section  # the reversal and the preprocessing, a line each


def snippet(page: str, which: str) -> str:
    return html.unescape(re.search(r'<pre id="%s-snippet">(.*?)</pre>' % which, page, re.S).group(1))


def reference_output(out) -> np.ndarray:
    model = intermediate.read(str(out / "classifier.h5"))
    try:
        return model.activation(model.outputs[0])
    finally:
        model.file.close()


@pytest.mark.parametrize("conversion", ["converted", "converted_for_deployment"])
def test_opencv_snippet_run_as_written_reproduces_the_reference_output(conversion, request):
    out, _ = request.getfixturevalue(conversion)
    code = snippet((out / "classifier.report.html").read_text(), "opencv")
    namespace = {}
    cwd = os.getcwd()
    os.chdir(out)
    try:
        exec(compile(code, "opencv-snippet", "exec"), namespace)
    finally:
        os.chdir(cwd)
    (probs,) = namespace["outputs"]
    expected = reference_output(out)
    assert relative_error(np.asarray(probs).reshape(expected.shape), expected) <= 1e-5


@pytest.mark.skipif(not runtimes.RUNTIMES["bullseye"].available(), reason="no Caffe chroot")
@pytest.mark.parametrize("conversion", ["converted", "converted_for_deployment"])
def test_pycaffe_snippet_runs_in_caffe_and_prints_the_reference_output(conversion, request):
    out, _ = request.getfixturevalue(conversion)
    code = snippet((out / "classifier.report.html").read_text(), "pycaffe")
    command = runtimes.RUNTIMES["bullseye"].command(["-c", code], [str(out)], str(out))
    completed = subprocess.run(command, cwd=str(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    assert completed.returncode == 0, completed.stderr
    printed = re.search(r"^probs \[(.*?)\]", completed.stdout, re.S | re.M).group(1)
    values = np.array([float(v) for v in printed.split()])
    np.testing.assert_allclose(values, reference_output(out).reshape(-1)[:len(values)], rtol=1e-4, atol=1e-6)


def test_diagram_without_graphviz_is_the_built_in_layout(converted):
    out, _ = converted
    result = the_result(out)
    page = report_html.page(report.read(str(out / "classifier.report.json")), result, [], use_dot=False)
    assert "drawn by built-in layout" in page and 'class="diagram"' in page
    for name in ("probs/logits", "probs (Split)" if "Split" in result.caffe_types else "probs (Softmax)"):
        assert html.escape(name) in page


def test_dot_source_is_draw_net_style():
    layers = report_html.read_layers('name: "n"\nlayer {\n  name: "c"\n  type: "Convolution"\n  bottom: "x"\n'
                                     '  top: "c"\n  convolution_param {\n    num_output: 2\n  }\n}\n')
    assert [(layer.name, layer.type, layer.bottoms, layer.tops) for layer in layers] == [
        ("c", "Convolution", ["x"], ["c"])]
    source = report_html.dot_source(layers, "n")
    assert 'fillcolor="#FF5050"' in source and "shape=octagon" in source and '"B_x" -> "L0"' in source


def test_no_per_layer_still_writes_both_reports(tmp_path):
    from tf2caffe.api import convert
    src = tmp_path / "classifier.keras"
    classifier().save(src)
    converted = convert(str(src), str(tmp_path / "out"), per_layer=False, report=str(tmp_path / "r" / "mine.json"))
    assert converted.status == 0 and converted.report == str(tmp_path / "r" / "mine.json")
    assert converted.result.per_layer == {} and converted.result.layer_table
    assert "No per-layer errors were recorded" in open(converted.html).read()


def test_progress_is_a_bar_on_a_terminal_and_a_plain_line_otherwise(monkeypatch, capsys):
    from tf2caffe import progress
    monkeypatch.setattr(progress, "on_a_terminal", lambda: False)
    assert list(progress.each([1, 2, 3], "forward pass", "layer")) == [1, 2, 3]
    assert capsys.readouterr().out == "forward pass: 3 layers\n"
    monkeypatch.setattr(progress, "on_a_terminal", lambda: True)
    assert list(progress.each([1, 2], "verifying", "file")) == [1, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and "verifying" in captured.err  # tqdm's bar
