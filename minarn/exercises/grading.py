"""The grader's core: the registry of exercises, loading a student's file, and the checks graders are built from.

An exercise is one function of a lesson (``lessons/NN_name.py``) that a student writes again from its stub
(``minarn/exercises/NN_name.py``). Its grader (``minarn/exercises/graders/lessonNN.py``) receives the
student's function and either returns (right) or raises ``Failure`` with a message that says what is wrong:
which output, the shapes, the largest error and where, the smallest input that shows it (hypothesis finds and
shrinks it, ``falsify``), and a hint at the usual cause.

Results: ``passed``, ``failed``, ``not implemented`` (the stub's ``NotImplementedError``), ``missing`` (no
function of that name in the file).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import signal
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import numpy as np
from hypothesis import HealthCheck, Verbosity, find, settings
from hypothesis.errors import NoSuchExample

STUB_DIR = Path(__file__).resolve().parent


def _package_dir(package: types.ModuleType) -> str:
    assert package.__file__ is not None, f"{package.__name__} is installed as a regular package (has __init__.py)"
    return str(Path(package.__file__).resolve().parent)


# Frames in these folders are not the student's: an error message points at the last line of the student's file.
_LIBRARY_DIRS = tuple(_package_dir(m) for m in (np, hypothesis)) + (str(STUB_DIR.parent),)
PASSED, FAILED, NOT_IMPLEMENTED, MISSING = "passed", "failed", "not implemented", "missing"


class Failure(Exception):
    """The student's function gives a wrong answer; the message says what, where, and for which input."""


@dataclass(frozen=True)
class Exercise:
    lesson: str  # the lesson file's stem, e.g. "02_im2col_conv"
    name: str  # the function's name, the same in the lesson, the stub and the student's file
    grade: Callable[[Callable], None]


@dataclass(frozen=True)
class Result:
    lesson: str
    name: str
    status: str  # PASSED, FAILED, NOT_IMPLEMENTED or MISSING
    message: str = ""


_REGISTRY: dict[str, dict[str, Exercise]] = {}


def exercise(lesson: str, name: str) -> Callable[[Callable], Callable]:
    """Register the decorated ``grade(fn) -> None`` as the grader of function ``name`` of ``lesson``."""

    def register(grade: Callable) -> Callable:
        exercises = _REGISTRY.setdefault(lesson, {})
        if name in exercises:
            raise ValueError(f"two graders for {lesson}.{name}")
        exercises[name] = Exercise(lesson, name, grade)
        return grade

    return register


def all_exercises() -> dict[str, list[Exercise]]:
    """Every registered exercise by lesson (lessons in order, functions in the order their graders are written)."""
    graders = importlib.import_module("minarn.exercises.graders")  # its modules register themselves on import
    for module in pkgutil.iter_modules(graders.__path__):
        importlib.import_module(f"{graders.__name__}.{module.name}")
    return {lesson: list(_REGISTRY[lesson].values()) for lesson in sorted(_REGISTRY)}


def lesson_of(path: Path) -> str | None:
    """The lesson a file belongs to: its stem (``02_im2col_conv``), or failing that its number (``02_mine.py``)."""
    lessons = all_exercises()
    if path.stem in lessons:
        return path.stem
    number = path.stem.split("_", 1)[0]
    matches = [lesson for lesson in lessons if lesson.split("_", 1)[0] == number]
    return matches[0] if len(matches) == 1 else None


# -- the checks graders use ------------------------------------------------------------------------------------
def describe(value, limit: int = 12) -> str:
    """A short text for an input case: small arrays in full, large ones by shape and dtype."""
    if isinstance(value, np.ndarray):
        if value.size <= limit:
            return np.array2string(value, precision=4, separator=", ").replace("\n", "")
        return f"array of shape {value.shape} ({value.dtype})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v, limit)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v, limit) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def compare(what: str, expected, got, *, atol: float = 1e-10, rtol: float = 0.0, case: str = "",
            hint: str = "") -> None:
    """Raise ``Failure`` unless ``got`` has ``expected``'s shape and |got - expected| <= atol + rtol |expected|.

    The message names ``what``, the shapes or the largest error with its index and both values, the tolerance,
    the input ``case`` and a ``hint``.
    """
    expected = np.asarray(expected)
    suffix = (f"\n    input: {case}" if case else "") + (f"\n    hint: {hint}" if hint else "")
    if got is None:
        raise Failure(f"{what}: expected an array of shape {expected.shape}, got None (a missing return?){suffix}")
    try:
        got_array = np.asarray(got, dtype=np.float64 if expected.dtype.kind in "fc" else None)
    except (TypeError, ValueError) as exc:
        raise Failure(f"{what}: expected an array of shape {expected.shape}, got {type(got).__name__} "
                      f"({exc}){suffix}") from None
    if got_array.shape != expected.shape:
        raise Failure(f"{what}: expected shape {expected.shape}, got shape {got_array.shape}{suffix}")
    if expected.size == 0:
        return
    exp64, got64 = expected.astype(np.float64), got_array.astype(np.float64)
    if not np.isfinite(got64).all() and np.isfinite(exp64).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(got64))[0])
        raise Failure(f"{what}: got {got64[index]} at index {index} where {exp64[index]:.6g} was expected "
                      f"(an overflow?){suffix}")
    error = np.abs(got64 - exp64)
    tolerance = atol + rtol * np.abs(exp64)
    excess = error - tolerance
    if (excess > 0).any():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(error)), error.shape))
        raise Failure(f"{what}: max abs error {error[worst]:.3g} at index {worst} (expected {exp64[worst]:.6g}, "
                      f"got {got64[worst]:.6g}); {int((excess > 0).sum())} of {error.size} entries beyond the "
                      f"tolerance {tolerance[index]:.1g}{suffix}")


def falsify(check: Callable, strategy, *, max_examples: int = 40, describe_case: Callable = describe) -> None:
    """Run ``check(case)`` on cases drawn from ``strategy``; raise the Failure of the simplest failing case.

    Hypothesis searches (derandomized: the same cases every run) and, once a case fails, shrinks it to the
    simplest one that still fails. ``check`` raises ``Failure`` (or the student's function raises anything)
    for a wrong case. ``NotImplementedError`` is passed on, so a stub reads "not implemented".
    """

    def fails(case) -> bool:
        try:
            check(case)
        except Exception:  # noqa: BLE001 - a wrong answer or a crash of the student's code: both fail the case
            return True
        return False

    search = settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    try:
        minimal = find(strategy, fails, settings=search)
    except NoSuchExample:
        return
    try:
        check(minimal)
    except (Failure, NotImplementedError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise Failure(f"raised {_exception_text(exc)}\n    input: {describe_case(minimal)}") from None
    raise Failure(f"fails on some inputs but not reproducibly (is it random without a seed?); "
                  f"input: {describe_case(minimal)}")


def call_student(fn: Callable, args: tuple, case: str, hint: str = ""):
    """``fn(*args)`` with floating-point warnings silenced (an overflow shows up in the comparison instead).

    A crash other than ``NotImplementedError`` becomes a ``Failure`` naming the exception, the line of the
    student's file it came from, the input ``case`` and a ``hint``.
    """
    try:
        with np.errstate(all="ignore"):
            return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the student's code crashed: say where, and what to look at
        raise Failure(f"raised {_exception_text(exc)}\n    input: {case}\n    hint: {hint}") from None


def resembles(got, candidate: Callable, *, atol: float = 1e-10, rtol: float = 0.0) -> bool:
    """Is ``got`` what ``candidate()`` (a likely mistake) gives? False when either does not compute.

    For choosing a hint: a wrong answer that equals a known mistake names that mistake.
    """
    try:
        with np.errstate(all="ignore"):
            a, b = np.asarray(got, dtype=np.float64), candidate()
    except (TypeError, ValueError, ZeroDivisionError):
        return False
    return a.shape == np.shape(b) and bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


def numeric_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f(x)`` with respect to every entry of the float64 array ``x``.

    g_i = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps); ``x`` itself is not changed.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        original = x[index]
        x[index] = original + eps
        plus = float(f(x.copy()))
        x[index] = original - eps
        minus = float(f(x.copy()))
        x[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


# -- loading files -----------------------------------------------------------------------------------------------
def _is_definition(node: ast.stmt) -> bool:
    """Imports, ``def``/``class`` and assignments of literals: what a lesson's reference functions may rely on."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not all(isinstance(t, ast.Name) for t in targets):  # `xs[mask] = 0.5` changes an array: a computation
            return False
        try:
            ast.literal_eval(node.value)
        except ValueError:
            return False
        return True
    return False


def load_functions(path: Path, definitions_only: bool = False) -> dict[str, Callable]:
    """The top-level functions of the Python file ``path``, by name.

    A student's file runs as a whole (it is their own code). With ``definitions_only`` (a lesson, whose
    reference solutions are graded with ``--reference``) only its imports, ``def``/``class`` statements and
    literal assignments run, so the lesson itself (its prints, training, figures) does not.
    Raises ``SyntaxError`` or whatever the file raises while it loads.
    """
    path = Path(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if definitions_only:
        tree.body = [node for node in tree.body if _is_definition(node)]
    module = types.ModuleType(f"minarn_exercise_{path.stem}")
    module.__file__ = str(path)
    exec(compile(tree, str(path), "exec"), module.__dict__)  # noqa: S102 - the student's own file, or a lesson
    return {name: value for name, value in vars(module).items()
            if inspect.isfunction(value) and value.__module__ == module.__name__}


def stub_signature(lesson: str, name: str) -> inspect.Signature | None:
    """The signature the stub of ``lesson`` gives ``name`` (what a student's function must take)."""
    stub = STUB_DIR / f"{lesson}.py"
    if not stub.exists():
        return None
    fn = load_functions(stub).get(name)
    return inspect.signature(fn) if fn is not None else None


# -- grading -----------------------------------------------------------------------------------------------------
class _TimeUp(Exception):
    pass


def _exception_text(exc: BaseException) -> str:
    """``ValueError: message (line 12 of 02_im2col_conv.py)``: the exception and the student's line it came from."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_LIBRARY_DIRS)]
    where = f" (line {frames[-1].lineno} of {Path(frames[-1].filename).name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def grade_function(lesson: str, name: str, fn: Callable | None, timeout_s: float = 120.0) -> Result:
    """Grade one function of ``lesson`` (``fn`` None: the file has no function of that name)."""
    exercises = all_exercises()
    if lesson not in exercises or name not in {e.name for e in exercises[lesson]}:
        raise KeyError(f"no exercise {name!r} in lesson {lesson!r}")
    return grade_with(next(e for e in exercises[lesson] if e.name == name), fn, timeout_s)


def grade_with(grader: Exercise, fn: Callable | None, timeout_s: float = 120.0) -> Result:
    """Run ``grader`` on the student's ``fn``: passed, failed (with the grader's message), not implemented, missing.

    A function that runs longer than ``timeout_s`` seconds (0: no limit) fails; the signature must be the stub's.
    """
    lesson, name = grader.lesson, grader.name
    if fn is None:
        return Result(lesson, name, MISSING, f"no function named {name} in the file")
    expected = stub_signature(lesson, name)
    if expected is not None and list(inspect.signature(fn).parameters) != list(expected.parameters):
        return Result(lesson, name, FAILED, f"takes {inspect.signature(fn)}, the exercise asks for {name}{expected}")

    def time_up(signum, frame):
        raise _TimeUp

    use_alarm = timeout_s > 0 and hasattr(signal, "setitimer")
    previous = signal.signal(signal.SIGALRM, time_up) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        grader.grade(fn)
    except NotImplementedError:
        return Result(lesson, name, NOT_IMPLEMENTED)
    except Failure as failure:
        return Result(lesson, name, FAILED, str(failure))
    except _TimeUp:
        return Result(lesson, name, FAILED, f"still running after {timeout_s:.0f} s (an endless loop?)")
    except Exception as exc:  # noqa: BLE001 - the student's code crashed on the grader's first inputs
        return Result(lesson, name, FAILED, f"raised {_exception_text(exc)}")
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return Result(lesson, name, PASSED)


def grade_file(path: Path, definitions_only: bool = False, timeout_s: float = 120.0) -> list[Result]:
    """Grade every exercise of the lesson that ``path`` belongs to (see ``lesson_of``)."""
    path = Path(path)
    lesson = lesson_of(path)
    if lesson is None:
        raise ValueError(f"{path.name}: not an exercise file (its name must start like a lesson's, e.g. "
                         f"02_im2col_conv.py; lessons with exercises: {', '.join(all_exercises())})")
    exercises = all_exercises()[lesson]
    try:
        functions = load_functions(path, definitions_only)
    except Exception as exc:  # noqa: BLE001 - a file that does not load fails every exercise in it
        reason = f"{path.name} does not load: {_exception_text(exc)}"
        return [Result(lesson, e.name, FAILED, reason) for e in exercises]
    return [grade_function(lesson, e.name, functions.get(e.name), timeout_s) for e in exercises]


def exercise_files(folder: Path) -> list[Path]:
    """The files in ``folder`` that belong to a lesson with exercises, in lesson order."""
    files = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.py") if lesson_of(p) is not None)
    return files
