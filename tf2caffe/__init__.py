"""tf2caffe: convert TensorFlow/tflearn models to Caffe."""
__version__ = "0.1.0"
