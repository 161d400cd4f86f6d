"""`python -m tf2caffe` = the `tf2caffe` command."""
import sys

from .cli import main

sys.exit(main())
