"""The project's one error type, the command-line wrapper that turns it into one line, and how
messages name a crash's signal."""
from __future__ import annotations

import contextlib
import signal
import sys
from typing import Dict, List

from . import interrupts


class ConversionError(Exception):
    """A problem the user can act on; its message is one line naming the file/layer at fault."""


class Refusal(str):
    """One layer that cannot be converted: the line "'name' (Type): reason", which also keeps its
    parts so that refusals of one type and reason are reported as one group."""

    def __new__(cls, name: str, kind: str, reason: str) -> "Refusal":
        self = super().__new__(cls, "'%s' (%s): %s" % (name, kind, reason))
        self.name, self.kind, self.reason = name, kind, str(reason)
        return self


# Names listed for a group of refusals; more are counted, not listed.
GROUP_NAMES = 3


def grouped(problems) -> List[str]:
    """Refusals of one type and reason as one line, `Type ×N (a, b, c, …): reason`, in the order
    of their first occurrence; other lines as they are."""
    groups: Dict[object, List[str]] = {}
    for problem in problems:
        key = (problem.kind, problem.reason) if isinstance(problem, Refusal) else problem
        groups.setdefault(key, []).append(problem)
    lines = []
    for key, members in groups.items():
        if len(members) == 1 or not isinstance(key, tuple):
            lines.append(members[0])
            continue
        names = [member.name for member in members]
        listed = ", ".join(names[:GROUP_NAMES]) + (", …" if len(names) > GROUP_NAMES else "")
        lines.append("%s ×%d (%s): %s" % (key[0], len(names), listed, key[1]))
    return lines


class UnsupportedError(ConversionError):
    """Layers that cannot be converted (`problems`), and supported layers whose export failed
    (`failures`: an exception, its traceback kept as the error's cause for --debug); lists all
    of them at once, one line, refusals of one type and reason grouped."""

    def __init__(self, problems, partial_model=None, failures=()):
        self.problems = list(problems)
        self.failures = list(failures)
        # What could be mapped, refused layers standing in as inputs: lets `--check-only`
        # run the import side's checks on the rest and list everything at once.
        self.partial_model = partial_model
        parts = []
        if self.problems:
            parts.append("%d unsupported layer(s): %s" % (len(self.problems), "; ".join(grouped(self.problems))))
        if self.failures:
            parts.append("export failed: %s" % "; ".join(grouped(self.failures)))
        super().__init__("; ".join(parts))


def signal_name(number: int) -> str:
    """How messages name the signal that ended a process: "SIGSEGV", or "signal 99"."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


class Unmappable(Exception):
    """One layer (or one of its options) that has no exact vocabulary mapping; the exporters
    collect every layer's reason into one UnsupportedError."""


# A module an optional part of tf2caffe needs -> the pip extra that installs it (pyproject.toml).
EXTRA_OF_MODULE = {"tensorflow": "tensorflow", "keras": "tensorflow", "cv2": "opencv", "tflearn": "tflearn",
                   "PIL": "tflearn"}


def missing_extra(error: ModuleNotFoundError) -> str:
    """The one line for an optional dependency that is not installed, naming the extra; "" for
    any other missing module (a bug, shown as a traceback)."""
    module = (error.name or "").split(".")[0]
    if module not in EXTRA_OF_MODULE:
        return ""
    return "the Python module '%s' is not installed: pip install 'tf2caffe[%s]' (in a checkout: make env)" % (
        module, EXTRA_OF_MODULE[module])


@contextlib.contextmanager
def reported_errors(debug: bool = False, prog: str = "tf2caffe"):
    """Exit with one line and status 2 on a ConversionError or a missing optional dependency
    (status 130 on Ctrl-C).

    With debug=True the exception propagates unchanged, traceback included.
    """
    interrupts.watch()
    interrupted_before = interrupts.seen()
    if debug:
        yield
        return
    try:
        yield
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(interrupt, prog)
    except Exception as error:
        if interrupts.seen() > interrupted_before:
            _exit_interrupted(KeyboardInterrupt(), prog)
        if isinstance(error, ConversionError):
            sys.stderr.write("%s: error: %s\n" % (prog, " ".join(str(error).split())))
            sys.exit(2)
        if isinstance(error, ModuleNotFoundError) and missing_extra(error):
            sys.stderr.write("%s: error: %s\n" % (prog, missing_extra(error)))
            sys.exit(2)
        raise


def _exit_interrupted(interrupt: KeyboardInterrupt, prog: str) -> None:
    # Ctrl-C's own KeyboardInterrupt has no message; a caller that knows better gives one.
    sys.stderr.write("%s: %s\n" % (prog, interrupt.args[0] if interrupt.args else
                                    "interrupted; no output was written"))
    sys.exit(130)
