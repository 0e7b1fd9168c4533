"""``python -m minarn.exercises``: hand out the exercise stubs, and grade them.

    python -m minarn.exercises new DIR              copy every stub file into DIR (for a student)
    python -m minarn.exercises check PATH           grade a file or a folder of them; exit 0 only if all pass
    python -m minarn.exercises check --reference    grade the lessons' own solutions (lessons/ of a clone)
    python -m minarn.exercises list                 the lessons and functions there are exercises for
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from pathlib import Path
from types import ModuleType

STUB_DIR = Path(__file__).resolve().parent
REPO_LESSONS = STUB_DIR.parents[1] / "lessons"  # the lessons beside the package in a clone of the repository


def stub_files() -> list[Path]:
    """The stub files shipped in the package, one per lesson with exercises (``02_im2col_conv.py``, ...)."""
    return sorted(STUB_DIR.glob("[0-9][0-9]_*.py"))


def _grading() -> ModuleType:
    """The grading core; it needs hypothesis (the ``exercises`` extra), which handing out the stubs does not."""
    try:
        from minarn.exercises import grading
    except ModuleNotFoundError as exc:
        if exc.name != "hypothesis":
            raise
        raise SystemExit("error: grading needs hypothesis, which searches for the smallest input that shows a "
                         "bug: pip install 'minarn[exercises]'") from None
    return grading


def new(folder: Path, force: bool) -> int:
    """Copy the stubs into ``folder`` (created); never overwrites a student's file unless ``force``."""
    stubs = stub_files()
    existing = [folder / s.name for s in stubs if (folder / s.name).exists()]
    if existing and not force:
        print(f"error: {folder} already holds {', '.join(p.name for p in existing)}; a student's work is not "
              f"overwritten (use another folder, or --force to replace them with fresh stubs)", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    for stub in stubs:
        shutil.copyfile(stub, folder / stub.name)
    count = sum(isinstance(node, ast.FunctionDef) for stub in stubs for node in ast.parse(stub.read_text()).body)
    print(f"wrote {len(stubs)} exercise files ({count} functions) to {folder}:")
    for stub in stubs:
        print(f"  {stub.name}")
    print(f"fill in the functions, then grade them with: python -m minarn.exercises check {folder}")
    return 0


def _print_results(path: Path, results: list) -> None:
    print(path.name)
    width = max(len(r.name) for r in results)
    grading = _grading()
    for r in results:
        label = "FAILED" if r.status == grading.FAILED else r.status
        lines = r.message.splitlines() if r.status in (grading.FAILED, grading.MISSING) and r.message else []
        print(f"  {r.name:<{width}}  {label}" + (f": {lines[0]}" if lines else ""))
        for line in lines[1:]:
            print(f"  {'':<{width}}  {line.strip()}")


def check(path: Path | None, reference: bool, timeout_s: float) -> int:
    """Grade ``path`` (a file or a folder; with ``reference`` lessons, by default the clone's lessons/).

    Exit status 0 only if every function passed, 1 if any did not, 2 if there was nothing to grade.
    """
    grading = _grading()
    root = path if path is not None else (REPO_LESSONS if reference else None)
    if root is None:
        print("error: give a file or folder to check, or --reference", file=sys.stderr)
        return 2
    if not root.exists():
        hint = " (give the lessons/ folder of a clone of minarn)" if reference else ""
        print(f"error: {root} does not exist{hint}", file=sys.stderr)
        return 2
    files = [root] if root.is_file() else grading.exercise_files(root)
    if not files:
        print(f"error: no exercise files in {root} (names like 02_im2col_conv.py; "
              f"python -m minarn.exercises new DIR writes them)", file=sys.stderr)
        return 2
    results = []
    for file in files:
        try:
            file_results = grading.grade_file(file, definitions_only=reference, timeout_s=timeout_s)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _print_results(file, file_results)
        results += file_results
    statuses = (grading.PASSED, grading.FAILED, grading.NOT_IMPLEMENTED, grading.MISSING)
    passed, failed, not_implemented, missing = (sum(r.status == s for r in results) for s in statuses)
    print(f"\n{passed} of {len(results)} passed, {failed} failed, {not_implemented} not implemented"
          + (f", {missing} missing" if missing else ""))
    return 0 if passed == len(results) else 1


def list_exercises() -> int:
    for lesson, exercises in _grading().all_exercises().items():
        print(f"{lesson}.py: {', '.join(e.name for e in exercises)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minarn.exercises", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    new_cmd = commands.add_parser("new", help="copy the exercise stubs into DIR")
    new_cmd.add_argument("dir", type=Path)
    new_cmd.add_argument("--force", action="store_true", help="replace files of the same names in DIR")
    check_cmd = commands.add_parser("check", help="grade a file or a folder of exercise files")
    check_cmd.add_argument("path", type=Path, nargs="?",
                           help="an exercise file or a folder of them (with --reference: lessons, default "
                                f"{REPO_LESSONS})")
    check_cmd.add_argument("--reference", action="store_true",
                           help="PATH holds lessons: grade their top-level functions, the reference solutions, "
                                "without running the lessons")
    check_cmd.add_argument("--timeout", type=float, default=120.0,
                           help="seconds one function may take before it counts as failed (default 120)")
    commands.add_parser("list", help="the lessons and functions there are exercises for")
    args = parser.parse_args(argv)
    if args.command == "new":
        return new(args.dir, args.force)
    if args.command == "check":
        return check(args.path, args.reference, args.timeout)
    return list_exercises()


if __name__ == "__main__":
    sys.exit(main())
