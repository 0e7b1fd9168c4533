"""Every lesson (``lessons/NN_*.py``) runs to the end in its fast setting: each asserts what it teaches.

Each lesson runs in a subprocess with the installed minarn (``sys.executable``), from an empty temporary
folder, with ``MINARN_LESSON_FAST=1`` and its figures sent to the temporary folder (``MINARN_LESSON_OUT``).
The list comes from a glob, so a new lesson is tested as soon as it exists. ``lessons/README.md`` must list
every lesson it finds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parents[1] / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 300  # a lesson should take well under a minute; this only stops a hung one


def test_lessons_exist() -> None:
    assert LESSONS, f"no lessons found in {LESSONS_DIR}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(lesson: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    env = {
        **os.environ,
        "MINARN_LESSON_FAST": "1",
        "MINARN_LESSON_OUT": str(out),
        "MINARN_CACHE": str(tmp_path / "cache"),  # keep the decoded-image cache out of the home folder
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [sys.executable, str(lesson)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{lesson.name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
        f"\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    saved = sorted(out.glob("*.png")) if out.exists() else []
    for png in saved:
        assert png.stat().st_size > 1000, f"{lesson.name}: {png.name} looks empty"
        assert str(png) in result.stdout, f"{lesson.name}: prints no path for {png.name}"
    assert not (tmp_path / "lesson_figures").exists(), f"{lesson.name} ignored MINARN_LESSON_OUT"


def test_readme_lists_every_lesson() -> None:
    readme = (LESSONS_DIR / "README.md").read_text()
    missing = [p.name for p in LESSONS if p.name not in readme]
    assert not missing, f"lessons/README.md does not list {missing}"
