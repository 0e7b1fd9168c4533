"""The exercises (``minarn.exercises``): the graders bite, the stubs match the lessons, the CLI hands out and grades.

- Every stub is "not implemented"; every lesson's reference solution passes its grader.
- Every planted bug (``tests/exercise_bugs/NN_name.py``: a typical student mistake) fails its grader with a
  message that points at the mistake.
- The stubs have the lessons' names and signatures and bodies that only raise ``NotImplementedError``.
- The grading core (compare, falsify's shrinking, crashes, missing functions, endless loops) on a demo exercise.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from minarn.exercises import grading
from minarn.exercises.__main__ import main as exercises_main

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "lessons"
BUGS_DIR = Path(__file__).resolve().parent / "exercise_bugs"
EXERCISES = grading.all_exercises()
ALL = [(lesson, e.name) for lesson, exercises in EXERCISES.items() for e in exercises]


def _ids(pairs):
    return [f"{lesson[:2]}-{name}" for lesson, name in pairs]


def _lesson_functions(lesson: str) -> dict:
    return grading.load_functions(LESSONS_DIR / f"{lesson}.py", definitions_only=True)


def _load_bugs() -> list[tuple[str, str, str, object, str]]:
    bugs = []
    for path in sorted(BUGS_DIR.glob("[0-9][0-9]_*.py")):
        spec = importlib.util.spec_from_file_location(f"exercise_bugs_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        bugs += [(path.stem, name, what, fn, hint) for name, what, fn, hint in module.BUGS]
    return bugs


BUGS = _load_bugs()


# -- the lessons' exercises ----------------------------------------------------------------------------------
def test_there_are_exercises_for_the_lessons() -> None:
    assert len(ALL) >= 20, f"only {len(ALL)} exercise functions"
    assert {lesson[:2] for lesson in EXERCISES} >= {f"{n:02d}" for n in range(2, 12)}, sorted(EXERCISES)
    for lesson in EXERCISES:
        assert (LESSONS_DIR / f"{lesson}.py").exists(), f"graders for {lesson}, but no lessons/{lesson}.py"


@pytest.mark.parametrize(("lesson", "name"), ALL, ids=_ids(ALL))
def test_reference_solution_passes(lesson: str, name: str) -> None:
    result = grading.grade_function(lesson, name, _lesson_functions(lesson).get(name))
    assert result.status == grading.PASSED, f"lessons/{lesson}.py's {name}: {result.status}: {result.message}"


@pytest.mark.parametrize(("lesson", "name"), ALL, ids=_ids(ALL))
def test_stub_matches_the_lesson_and_is_not_implemented(lesson: str, name: str) -> None:
    stub_path = grading.STUB_DIR / f"{lesson}.py"
    stub = grading.load_functions(stub_path).get(name)
    reference = _lesson_functions(lesson).get(name)
    assert stub is not None, f"{stub_path.name} has no function {name}"
    assert reference is not None, f"lessons/{lesson}.py has no top-level function {name}"
    assert inspect.signature(stub) == inspect.signature(reference), (
        f"{name}: stub {inspect.signature(stub)} vs lesson {inspect.signature(reference)}")
    assert inspect.getdoc(stub), f"{stub_path.name}: {name} has no docstring for the student"
    tree = ast.parse(stub_path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    body = node.body[1:] if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
        else node.body
    assert len(body) == 1 and isinstance(body[0], ast.Raise), f"{name}: a stub's body only raises"
    assert "NotImplementedError" in ast.unparse(body[0]), f"{name}: the stub must raise NotImplementedError"
    assert grading.grade_function(lesson, name, stub).status == grading.NOT_IMPLEMENTED


def test_the_readmes_count_the_exercises() -> None:
    assert f"{len(ALL)} of their functions" in (REPO / "README.md").read_text()
    assert f"({len(ALL)} functions in all" in (LESSONS_DIR / "README.md").read_text()


def test_every_exercise_has_a_planted_bug() -> None:
    covered = {(lesson, name) for lesson, name, *_ in BUGS}
    assert not set(ALL) - covered, f"exercises without a planted bug: {sorted(set(ALL) - covered)}"
    assert covered <= set(ALL), f"bugs for exercises that do not exist: {sorted(covered - set(ALL))}"


@pytest.mark.parametrize(("lesson", "name", "what", "bug", "hint"), BUGS,
                         ids=[f"{b[0][:2]}-{b[1]}-{b[2]}" for b in BUGS])
def test_planted_bug_fails_with_a_message_that_points_at_it(lesson, name, what, bug, hint) -> None:
    result = grading.grade_function(lesson, name, bug)
    assert result.status == grading.FAILED, f"{name} with the bug '{what}' was {result.status}"
    assert hint in result.message, f"{name} ('{what}'): the message does not say {hint!r}:\n{result.message}"


# -- the command line ------------------------------------------------------------------------------------------
def test_new_then_check_lists_every_function_as_not_implemented(tmp_path: Path, capsys) -> None:
    assert exercises_main(["new", str(tmp_path / "s")]) == 0
    written = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert written == sorted(f"{lesson}.py" for lesson in EXERCISES)
    capsys.readouterr()
    assert exercises_main(["check", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    for _lesson, name in ALL:
        assert any(line.split()[:3] == [name, "not", "implemented"] for line in out.splitlines()), name
    assert f"0 of {len(ALL)} passed, 0 failed, {len(ALL)} not implemented" in out


def test_new_never_overwrites_a_students_work(tmp_path: Path, capsys) -> None:
    first = sorted(EXERCISES)[0]
    work = tmp_path / f"{first}.py"
    work.write_text("# my answers\n")
    assert exercises_main(["new", str(tmp_path)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert work.read_text() == "# my answers\n"


def test_new_works_without_hypothesis_and_check_says_what_to_install(tmp_path: Path) -> None:
    block = "import sys; sys.modules['hypothesis'] = None; from minarn.exercises.__main__ import main; "
    new = subprocess.run([sys.executable, "-c", block + f"raise SystemExit(main(['new', {str(tmp_path)!r}]))"],
                         capture_output=True, text=True, timeout=120)
    assert new.returncode == 0, new.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{lesson}.py" for lesson in EXERCISES)
    check = subprocess.run([sys.executable, "-c", block + f"raise SystemExit(main(['check', {str(tmp_path)!r}]))"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode != 0 and "pip install 'minarn[exercises]'" in check.stderr, check.stderr


def test_check_reference_passes_from_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "minarn.exercises", "check", "--reference"], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(ALL)} of {len(ALL)} passed" in done.stdout


def test_check_grades_a_half_done_file_function_by_function(tmp_path: Path, capsys) -> None:
    """softmax right (the lesson's own), cross_entropy wrong (a sum, not a mean), the third left as the stub."""
    reference = inspect.getsource(_lesson_functions("10_softmax_ce")["softmax"])
    stub = (grading.STUB_DIR / "10_softmax_ce.py").read_text()
    tree = ast.parse(stub)
    start = {n.name: (n.lineno, n.end_lineno) for n in tree.body if isinstance(n, ast.FunctionDef)}
    lines = stub.splitlines()
    wrong = ("def cross_entropy(z, y):\n    z = z - z.max(axis=1, keepdims=True)\n"
             "    return float(-(y * (z - np.log(np.exp(z).sum(axis=1, keepdims=True)))).sum())\n")
    replaced = {"softmax": reference, "cross_entropy": wrong}
    out_lines, skip_to = [], 0
    for number, line in enumerate(lines, 1):
        for name, (first, last) in start.items():
            if number == first and name in replaced:
                out_lines.append(replaced[name])
                skip_to = last
        if number > skip_to:
            out_lines.append(line)
    student = tmp_path / "10_softmax_ce.py"
    student.write_text("\n".join(out_lines) + "\n")
    assert exercises_main(["check", str(student)]) == 1
    out = capsys.readouterr().out
    assert "softmax" in out and any(line.split()[:2] == ["softmax", "passed"] for line in out.splitlines())
    assert any(line.split()[:2] == ["cross_entropy", "FAILED:"] for line in out.splitlines()), out
    assert "1 of 3 passed, 1 failed, 1 not implemented" in out


def test_check_needs_something_to_grade(tmp_path: Path, capsys) -> None:
    assert exercises_main(["check", str(tmp_path)]) == 2
    assert "no exercise files" in capsys.readouterr().err
    assert exercises_main(["check", str(tmp_path / "absent")]) == 2


# -- the grading core, on a demo exercise ----------------------------------------------------------------------
DEMO = "98_demo"
CASES = st.lists(st.integers(-5, 5), min_size=1, max_size=6).map(lambda v: np.array(v, dtype=np.float64))


def _grade_cube(cube) -> None:
    def check(x):
        grading.compare("cube(x)", x**3, cube(x), case=grading.describe(x), hint="x ** 3, entry by entry")

    check(np.array([0.0, 1.0, 2.0]))
    grading.falsify(check, CASES, max_examples=50)


DEMO_CUBE = grading.Exercise(DEMO, "cube", _grade_cube)  # not registered: it has no stub or lesson


def _cube(x):
    return x**3


def _cube_wrong_for_negatives(x):
    return np.abs(x) ** 3


def _cube_crashes_on_long_input(x):
    if x.size > 3:
        raise ValueError("too long")
    return x**3


def _cube_stub(x):
    raise NotImplementedError


def _cube_loops_forever(x):
    while True:
        time.sleep(0.01)


def test_demo_right_answer_passes() -> None:
    assert grading.grade_with(DEMO_CUBE, _cube).status == grading.PASSED


def test_demo_wrong_answer_shows_the_simplest_input_that_fails() -> None:
    result = grading.grade_with(DEMO_CUBE, _cube_wrong_for_negatives)
    assert result.status == grading.FAILED
    assert "cube(x): max abs error 2" in result.message  # hypothesis shrank to a single -1: |(-1)^3 - 1| = 2
    assert "input: [-1.]" in result.message and "hint: x ** 3" in result.message


def test_demo_crash_names_the_exception_and_the_students_line() -> None:
    result = grading.grade_with(DEMO_CUBE, _cube_crashes_on_long_input)
    assert result.status == grading.FAILED
    assert "raised ValueError: too long (line" in result.message and "test_exercises.py" in result.message
    assert "input: [0., 0., 0., 0.]" in result.message  # the shortest input that crashes


def test_demo_stub_missing_and_endless_loop() -> None:
    assert grading.grade_with(DEMO_CUBE, _cube_stub).status == grading.NOT_IMPLEMENTED
    assert grading.grade_with(DEMO_CUBE, None).status == grading.MISSING
    slow = grading.grade_with(DEMO_CUBE, _cube_loops_forever, timeout_s=0.3)
    assert slow.status == grading.FAILED and "still running after" in slow.message


def test_compare_reports_shapes_and_overflow() -> None:
    with pytest.raises(grading.Failure, match=r"expected shape \(2, 3\), got shape \(3, 2\)"):
        grading.compare("out", np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(grading.Failure, match="got None"):
        grading.compare("out", np.zeros(2), None)
    with pytest.raises(grading.Failure, match="an overflow"):
        grading.compare("p", np.ones(2), np.array([1.0, np.nan]))
    grading.compare("out", np.ones(3), np.ones(3) + 1e-12)  # within the default tolerance


def test_load_functions_skips_a_lessons_script_part(tmp_path: Path) -> None:
    lesson = tmp_path / "97_lesson.py"
    lesson.write_text("import math\nSCALE = 2.0\nxs = [1]\nxs[0] = 5\n"  # xs[0] = 5 is a computation: skipped
                      "print('running the lesson')\nraise SystemExit(3)\n"
                      "def double(x):\n    return SCALE * x * xs[0]\n")
    functions = grading.load_functions(lesson, definitions_only=True)
    assert functions["double"](3) == 6.0
    with pytest.raises(SystemExit):
        grading.load_functions(lesson)  # a student's file runs as a whole


def test_numeric_gradient_of_a_known_function() -> None:
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    np.testing.assert_allclose(grading.numeric_gradient(lambda v: float((v**3).sum()), x), 3 * x**2, rtol=1e-8)
