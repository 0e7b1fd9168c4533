"""Test configuration: hypothesis profiles, and ``tests/`` on ``sys.path`` for the shared ``strategies`` module.

Profiles (pick one with ``HYPOTHESIS_PROFILE=dev|ci``; the default is ``ci`` when ``CI`` is set, else ``dev``):
- ``dev``: few examples, random each run, failures remembered in the local example database;
- ``ci``: more examples, ``derandomize=True`` so every CI run tries the same cases, no database.
``deadline=None`` in both: the first call of a Numba kernel compiles (or loads its cache) and takes seconds.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import settings

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:  # `import strategies` works whatever pytest's import mode is
    sys.path.insert(0, _TESTS_DIR)

settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, database=None, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


# -- In CI the Keras cross-checks must run: a skip of one of them fails the run. -------------------------------
def _keras_skip_fails() -> bool:
    return bool(os.environ.get("CI"))


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped test marked ``keras`` becomes a failure in CI."""
    outcome = yield
    report = outcome.get_result()
    if (_keras_skip_fails() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("keras") is not None):
        report.outcome = "failed"
        report.longrepr = f"Keras cross-check skipped in CI, which must run it: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole Keras test module skipped at import (importorskip, a module-level skip) fails in CI."""
    outcome = yield
    report = outcome.get_result()
    if (_keras_skip_fails() and report.skipped and isinstance(collector, pytest.Module)
            and collector.path.name.startswith("test_keras")):
        report.outcome = "failed"
        report.longrepr = (f"Keras test module {collector.path.name} skipped in CI, which must run it: "
                           f"{_skip_reason(report)}")
