"""intermediate.check_readable() interrupted while it forks its reading child: the Ctrl-C is not
lost. (Python runs the handler of a signal that comes during os.fork() in an at-fork hook, such as
logging's, and ignores the KeyboardInterrupt it raises there: the import then ran to its end.)"""
import subprocess
import sys

import intermediate_models
from test_bad_input import PROJECT_ROOT

# The Ctrl-C comes in an at-fork hook of the parent, as it did in a loaded machine's race.
INTERRUPTED_WHILE_FORKING = """
import os, signal, sys
from tf2caffe import intermediate
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
try:
    intermediate.check_readable(sys.argv[1])
except KeyboardInterrupt:
    print("interrupted")
else:
    print("read to its end")
"""


def test_ctrl_c_while_forking_the_reader_is_not_lost(tmp_path):
    h5 = intermediate_models.write(intermediate_models.mlp(), tmp_path)
    completed = subprocess.run([sys.executable, "-c", INTERRUPTED_WHILE_FORKING, h5], cwd=str(PROJECT_ROOT),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert (completed.stdout, completed.stderr) == ("interrupted\n", "")
