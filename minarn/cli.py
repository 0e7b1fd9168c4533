"""What minarn's command lines share: a parser whose errors are one line, and the usage error of a run.

Every ``python -m minarn.X`` reports a bad command line as one line on stderr with its own exit status, never
argparse's usage block and ``SystemExit``: :class:`Parser` raises the command's own exception instead, which its
``main`` turns into that line.
"""

from __future__ import annotations

import argparse
from typing import Any


class UsageError(Exception):
    """A wrong command-line value, or a run folder that cannot be used as asked: reported as one line, exit
    status 2."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``error`` raises ``error_type(message)`` (one line, no usage block).

    ``Parser(prog=..., error_type=EvaluationError, description=...)``; the other arguments are argparse's."""

    def __init__(self, *args: Any, error_type: type[Exception] = UsageError, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_type = error_type

    def error(self, message: str) -> Any:  # argparse declares NoReturn; raising is the point
        raise self.error_type(message)
