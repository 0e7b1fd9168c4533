"""Scripts that work on run folders and on the published results, run as ``python tools/NAME.py ...``.

They are not part of the installed ``minarn`` package; this file makes them importable as ``tools.NAME``
for the tests (pytest puts the repository root on ``sys.path``, ``pythonpath`` in pyproject.toml).

- ``publish.py``: copy a run folder into ``results/`` and regenerate the tables of ``results/README.md``;
- ``trace_epoch.py``: watch one epoch of a run from inside (validation loss with and without batch-norm lag);
- ``robustness.py``: the model card's robustness table (``results/MODEL_CARD.md``).
"""
