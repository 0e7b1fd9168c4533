"""Test configuration: hypothesis profiles, and ``tests/`` on ``sys.path`` for the shared ``strategies`` module.

Profiles (pick one with ``HYPOTHESIS_PROFILE=dev|ci``; the default is ``ci`` when ``CI`` is set, else ``dev``):
- ``dev``: few examples, random each run, failures remembered in the local example database;
- ``ci``: more examples, ``derandomize=True`` so every CI run tries the same cases, no database.
``deadline=None`` in both: the first call of a Numba kernel compiles (or loads its cache) and takes seconds.
"""

from __future__ import annotations

import os
import sys

from hypothesis import settings

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:  # `import strategies` works whatever pytest's import mode is
    sys.path.insert(0, _TESTS_DIR)

settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, database=None, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
