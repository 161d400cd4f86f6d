"""Shared by both test environments: must import neither TensorFlow nor Caffe.

tests/caffe_side/ needs pycaffe: it runs inside the Caffe chroot (tests/test_caffe_side_units.py
starts it from the TensorFlow side), so the TensorFlow-side pytest does not collect it.
"""
import importlib.util

collect_ignore = [] if importlib.util.find_spec("caffe") else ["caffe_side"]

