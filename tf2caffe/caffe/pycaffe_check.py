"""Measure converted files again in this Caffe:
`python3 -m tf2caffe.caffe.pycaffe_check REPORT.json FILE.h5...`.

For a Caffe other than the one that wrote them (tf2caffe/runtimes.py): loads each file's
prototxt and .caffemodel as written, runs the reference input once and prints
{file: report.runtime_errors} as JSON on stdout. Runs in either Caffe (Python 3.9 in bullseye's).
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional

from .. import intermediate, report
from ..errors import ConversionError, reported_errors
from . import pycaffe_backend, verify


def measure(result: report.FileResult) -> Dict[str, Dict]:
    net = pycaffe_backend.load(result.prototxt, result.caffemodel)

    def run(feeds, targets):
        pycaffe_backend.forward(net, feeds)
        return pycaffe_backend.fetch(net, targets)

    model = intermediate.read(result.file)
    try:
        return verify.measure_again(result, model, run, result.prototxt)
    finally:
        model.file.close()


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with reported_errors():
        if len(argv) < 2:
            raise ConversionError("usage: python3 -m tf2caffe.caffe.pycaffe_check REPORT.json FILE.h5...")
        written = report.read(argv[0])
        measured = {path: measure(written.results[path]) for path in argv[1:]}
    json.dump(measured, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
