"""glibc's allocator tuned at run time for the training step: freed blocks are kept for the next step.

A training step allocates and frees the same few dozen large arrays (activation maps, gradients, 1-80 MB) every
step. glibc serves blocks above its mmap threshold (128 kB, growing to at most 32 MB) with ``mmap`` and gives them
back with ``munmap`` when freed, and trims the top of its heap as soon as 128 kB are free there: so every step
page-faults its working memory in again and the kernel zeroes it. PyTorch's CPU tuning guide avoids this with
jemalloc / TCMalloc, or with glibc's tunables
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`` (what ``benchmarks/run.py``
gives every framework). ``tune_glibc_malloc`` makes the same two settings from inside the process with
``mallopt``, so ``python -m minarn.train`` and ``ARNCNN.predict`` get them without an environment variable:

- ``mallopt(M_MMAP_MAX, 0)``: no block comes from ``mmap``; large arrays come from the heap and go back to it;
- ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``: freed memory at the top of the heap is kept, not returned.

The process' resident memory then stays at its peak instead of falling between steps (the peak itself does
not grow: the same arrays are reused). ``ARNCNN.loss_and_grads`` and ``ARNCNN.predict`` call it once per process.
Opt out with ``MINARN_MALLOC=default``; it is also left alone when the user already tuned glibc
(``GLIBC_TUNABLES`` naming ``glibc.malloc``, or one of the ``MALLOC_*_`` variables), and it does nothing off
glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping

ENV_VAR = "MINARN_MALLOC"  # "tuned" (default) or "default" (glibc as shipped)
CHOICES = ("tuned", "default")
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # INT_MAX: never trim (the tunable's value in benchmarks/fairness.py)
_USER_MALLOC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: str | None = None  # what the first call decided; later calls return it


def _user_tuned(environ: Mapping[str, str]) -> bool:
    """Whether the environment already sets glibc's malloc (then the user's choice stands)."""
    return "glibc.malloc" in environ.get("GLIBC_TUNABLES", "") or any(v in environ for v in _USER_MALLOC_VARS)


def tune_glibc_malloc(environ: Mapping[str, str] | None = None) -> str:
    """Apply the two ``mallopt`` settings once per process (see the module docstring); return what happened:
    ``"tuned"``, or why not: ``"opted out"``, ``"user settings"``, ``"not glibc"``. Bad ``MINARN_MALLOC``
    values raise ``ValueError`` naming the variable and the accepted values."""
    global _applied
    if _applied is not None:
        return _applied
    env = os.environ if environ is None else environ
    choice = env.get(ENV_VAR, "tuned").strip().lower() or "tuned"
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={env[ENV_VAR]!r}: expected one of {', '.join(CHOICES)} "
                         "(tuned: keep freed memory for the next step; default: glibc as shipped)")
    if choice == "default":
        _applied = "opted out"
    elif _user_tuned(env):
        _applied = "user settings"
    else:
        _applied = "tuned" if _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)) else "not glibc"
    return _applied


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Call glibc's ``mallopt(param, value)`` for each pair; False (nothing done) when the C library is not
    glibc or refuses a setting (``mallopt`` returns 0 on error)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in settings)
