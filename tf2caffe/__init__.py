"""tf2caffe: convert TensorFlow/tflearn models to Caffe.

The Python API (tf2caffe/api.py): `tf2caffe.convert(src, out_dir, **options)`,
`tf2caffe.export(src, out_dir, **options)`, `tf2caffe.import_(files, out_dir, **options)` and
`tf2caffe.check(src, **options)`, each returning a report object. They are loaded on first use,
so that the Caffe side (Python 3.9), which imports this package too, never loads the TensorFlow
side's modules.
"""
__version__ = "0.1.0"

API = ("check", "convert", "import_")


def __getattr__(name):
    if name in API:
        from . import api
        return getattr(api, name)
    if name == "export":
        # The export package itself: calling it is `api.export` (see tf2caffe/export/__init__.py).
        import importlib
        return importlib.import_module(".export", __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
