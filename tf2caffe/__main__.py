"""`python -m tf2caffe` = the `tf2caffe` command."""
import sys

from .command import main

sys.exit(main())
