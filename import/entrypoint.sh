#!/bin/sh
# The import image is the Caffe environment itself: `import` runs the import stage directly
# (`tf2caffe import` on a host re-executes the same module inside a chroot).
# Anything else runs as a command, e.g. `python3 -c 'import caffe'`.
case "$1" in
  import) shift; exec python3 -m tf2caffe.import_stage "$@" ;;
  -h|--help) exec python3 -m tf2caffe.import_stage --help ;;
  *) exec "$@" ;;
esac
