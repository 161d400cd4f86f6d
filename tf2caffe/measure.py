"""The project's error measure and its tolerances, shared by both stages.

Imported on the TensorFlow side (numpy 2) and in the Caffe environment (Python 3.9, numpy 1.19):
numpy only.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

# A compared output (logits) must be within this relative error (`--tolerance`'s default).
DEFAULT_TOLERANCE = 1e-4
# A mapped layer is exact when its relative error is at most this (the project's bar).
LAYER_TOLERANCE = 1e-5
# With a float64 truth, Caffe may be this many times further from it than TensorFlow's own
# float32 run is before the difference counts against the conversion: float32 rounding in two
# different orders (im2col + GEMM vs Eigen) lands apart by a few times either's distance.
FLOAT32_NOISE_MULTIPLE = 3.0


def max_abs_error(value, reference) -> float:
    """max|value - reference| (0 for empty arrays)."""
    difference = np.abs(np.asarray(value, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return float(np.max(difference)) if difference.size else 0.0


def relative_error(value, reference) -> float:
    """max|value - reference| / max|reference|, the project's error measure. Edge cases: arrays
    of different shapes are infinitely apart; empty arrays agree (0); a reference that is all
    zeros gives 0 when `value` is all zeros too, else infinity (no scale to hide a difference)."""
    value, reference = np.asarray(value), np.asarray(reference)
    if value.shape != reference.shape:
        return float("inf")
    worst = max_abs_error(value, reference)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    if scale == 0.0:
        return 0.0 if worst == 0.0 else float("inf")
    return worst / scale


def within(error: float, tolerance: float, float64: Optional[Dict[str, float]] = None) -> bool:
    """The verdict on one layer. `error`: Caffe against TensorFlow's float32 output. `float64`, where
    the export computed the truth: {"caffe": Caffe's, "tensorflow": TensorFlow float32's relative
    error against it}. Caffe passes within `tolerance` of TensorFlow float32 (the bar), and where
    it is not, when it is within `tolerance` of the truth or no further from it than
    FLOAT32_NOISE_MULTIPLE times TensorFlow's float32 run (the model's own noise): the truth only
    tells float32 noise from a conversion error; a layer as close to TensorFlow as the bar asks
    is no error, whichever of the two float32 runs happens to round closer to float64."""
    if error <= tolerance:
        return True
    return bool(float64) and float64["caffe"] <= max(tolerance, FLOAT32_NOISE_MULTIPLE * float64["tensorflow"])


def detection_rows(rows) -> np.ndarray:
    """DetectionOutput-style rows (image, label, score, xmin, ymin, xmax, ymax) in one order
    (image, label, falling score), without padding: SSD-Caffe writes a row of -1 when it finds
    nothing, OpenCV pads to keep_top_k rows per image with zeros; label 0 is the background,
    never a detection."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] > 0)]
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def detection_error(value, reference) -> float:
    """How far detections are from the reference's: the largest difference of a score or a box
    coordinate (boxes are normalised: a fraction of the image size) when both found the same
    (image, label) rows; infinite when they did not."""
    value, reference = detection_rows(value), detection_rows(reference)
    if value.shape != reference.shape or np.any(value[:, :2] != reference[:, :2]):
        return float("inf")
    return max_abs_error(value[:, 2:], reference[:, 2:])
