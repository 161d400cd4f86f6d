"""A Ctrl-C whose KeyboardInterrupt a library turns into another exception still ends the command
as an interruption: exit 130, the one line, no traceback. numpy does so when the Ctrl-C comes
while it loads ("PyCapsule_Import could not import module"), at the command's start."""
import subprocess
import sys

from test_bad_input import PROJECT_ROOT

INTERRUPTED = "tf2caffe: interrupted; no output was written\n"

# tf2caffe.cli replaced by a module whose loading is interrupted and fails as numpy's does.
LOADING_INTERRUPTED = '''
import importlib.abc, importlib.util, os, signal, sys, time

class InterruptedLoading(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "tf2caffe.cli" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError('PyCapsule_Import could not import module "datetime"') from None
        raise AssertionError("the Ctrl-C did not come")

sys.meta_path.insert(0, InterruptedLoading())
from tf2caffe import command
sys.exit(command.main(["import", "--help"]))
'''


def test_ctrl_c_while_the_command_loads_is_an_interruption():
    run = subprocess.run([sys.executable, "-c", LOADING_INTERRUPTED], cwd=str(PROJECT_ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert (run.returncode, run.stderr) == (130, INTERRUPTED)


def test_the_same_error_without_a_ctrl_c_is_a_traceback():
    """Only an error after a Ctrl-C is taken for the interruption: a bug stays visible."""
    script = LOADING_INTERRUPTED.replace("os.kill(os.getpid(), signal.SIGINT)", "raise KeyboardInterrupt")
    run = subprocess.run([sys.executable, "-c", script.replace("time.sleep(5)", "")], cwd=str(PROJECT_ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert run.returncode == 1 and run.stderr.rstrip().endswith('ImportError: PyCapsule_Import could not import module "datetime"')
