"""Shared by both test environments: must import neither TensorFlow nor Caffe.

tests/caffe_side/ needs pycaffe: it runs inside the Caffe chroot (tests/test_caffe_side_units.py
starts it from the TensorFlow side), so the TensorFlow-side pytest does not collect it.
"""
import importlib.util

import pytest

collect_ignore = [] if importlib.util.find_spec("caffe") else ["caffe_side"]


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: the chroot's pytest has no xdist
def pytest_xdist_make_scheduler(config, log):
    """`make test` spreads work units over the CPUs: a test file, whole in one process (a module
    fixture converts all its cases at once), except tests/test_zoo.py's batches of classifiers,
    a unit each (tests/zoo_batches.py). Written here because xdist's own grouping by mark
    (--dist loadgroup) renames node ids in a way pytest 9 ignores."""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def work_unit(nodeid: str) -> str:
    path, _, test = nodeid.partition("::")
    if not path.endswith("test_zoo.py"):
        return path
    from zoo_batches import batch_of

    batch = batch_of(test.partition("[")[2][:-1])
    return "%s::%s" % (path, batch[0]) if batch else path


def pytest_collection_modifyitems(items):
    """Work units holding a slow test first (each unit's tests stay together, in order), so
    that no long unit starts last and holds up the end of a parallel run (the Makefile keeps
    this order: --no-loadscope-reorder)."""
    units = [work_unit(item.nodeid) for item in items]
    slow = {unit for unit, item in zip(units, items) if item.get_closest_marker("slow")}
    first_seen = {}
    for unit in units:
        first_seen.setdefault(unit, len(first_seen))
    order = sorted(range(len(items)), key=lambda i: (units[i] not in slow, first_seen[units[i]]))
    items[:] = [items[i] for i in order]
