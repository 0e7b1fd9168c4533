"""Every lesson (``lessons/NN_*.py``) runs to the end as a script and as a notebook: each asserts what it teaches.

- As a script: a subprocess with the running interpreter (``sys.executable``), from an empty temporary folder.
- As a notebook: the file read by jupytext ("percent" format) into a notebook in memory and executed by
  nbclient on an ipykernel kernel whose kernelspec (written to a temporary folder) starts ``sys.executable``,
  so the notebook sees the same minarn as the script; figures must then also be shown inline.
- Both with ``MINARN_LESSON_FAST=1`` (the short setting) and the figures sent to the temporary folder
  (``MINARN_LESSON_OUT``); every figure saved must be a real PNG whose path the lesson prints.
- Format: every lesson is a valid percent-format file (jupytext reads it and writes it back unchanged) that
  opens with a markdown header: "# Lesson N: ...", the prerequisites, the time it takes and two "Try this"
  edits; no ``__file__`` (a notebook has none) and no ``matplotlib.use`` (``minarn.lesson_support`` chooses).

The list comes from a glob, so a new lesson is tested as soon as it exists. ``lessons/README.md`` must list
every lesson it finds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = ROOT / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))
IDS = [p.stem for p in LESSONS]
TIMEOUT_S = 300  # a lesson should take well under a minute; this only stops a hung one
MAX_CELL_LINES = 60  # a code cell small enough to step through
KERNEL_NAME = "minarn-lesson"


def lesson_env(tmp_path: Path) -> dict[str, str]:
    """What a lesson run gets on top of the environment: the fast setting, figures and caches in tmp."""
    return {
        "MINARN_LESSON_FAST": "1",
        "MINARN_LESSON_OUT": str(tmp_path / "figures"),
        "MINARN_CACHE": str(tmp_path / "cache"),  # keep the decoded-image cache out of the home folder
        "MINARN_RESULTS": str(ROOT / "results"),  # the published runs (lesson 14's trained model)
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def check_figures(lesson: Path, tmp_path: Path, printed: str) -> list[Path]:
    """Every PNG in the figure folder is a real image whose path the lesson printed; nothing in ./lesson_figures."""
    out = tmp_path / "figures"
    saved = sorted(out.glob("*.png")) if out.exists() else []
    for png in saved:
        assert png.stat().st_size > 1000, f"{lesson.name}: {png.name} looks empty"
        assert str(png) in printed, f"{lesson.name}: prints no path for {png.name}"
    assert not (tmp_path / "lesson_figures").exists(), f"{lesson.name} ignored MINARN_LESSON_OUT"
    return saved


def test_lessons_exist() -> None:
    assert LESSONS, f"no lessons found in {LESSONS_DIR}"


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_lesson_runs(lesson: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(lesson)],
        check=False,
        cwd=tmp_path,
        env={**os.environ, **lesson_env(tmp_path)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{lesson.name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
        f"\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    check_figures(lesson, tmp_path, result.stdout)


def kernel_manager(tmp_path: Path) -> KernelManager:
    """A kernel manager for an ipykernel on ``sys.executable`` with the lesson environment.

    The kernelspec is written to ``tmp_path / "kernels"``, so neither a user's nor the venv's ``python3``
    kernelspec (which may point at another interpreter) is used. The inline matplotlib backend is set
    explicitly: an ``MPLBACKEND=Agg`` from the surrounding environment would otherwise hide the figures.
    """
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "minarn lessons (test)",
        "language": "python",
        "env": {**lesson_env(tmp_path), "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_lesson_runs_as_notebook(lesson: Path, tmp_path: Path) -> None:
    nb = jupytext.read(lesson, fmt="py:percent")
    client = NotebookClient(nb, km=kernel_manager(tmp_path), timeout=TIMEOUT_S,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    shown = sum("image/png" in o.get("data", {}) for o in outputs)
    saved = check_figures(lesson, tmp_path, printed)
    assert shown >= len(saved), f"{lesson.name}: saved {len(saved)} figures but showed {shown} inline"
    number = int(lesson.name[:2])
    assert f"Lesson {number} done" in printed, f"{lesson.name}: the last cell's 'Lesson {number} done' is missing"


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_lesson_format(lesson: Path) -> None:
    """Valid jupytext percent format that opens with the header (see the module docstring)."""
    text = lesson.read_text()
    assert text.startswith("# %% [markdown]\n"), f"{lesson.name}: must open with a '# %% [markdown]' cell"
    nb = jupytext.reads(text, fmt="py:percent")
    assert jupytext.writes(nb, fmt="py:percent") == text, (
        f"{lesson.name}: jupytext does not write the file back unchanged (not clean percent format)")
    header = nb.cells[0].source
    first = header.splitlines()[0]
    number = int(lesson.name[:2])
    match = re.match(r"# Lesson (\d+)\b", first)
    assert match and int(match.group(1)) == number, f"{lesson.name}: header must start '# Lesson {number}: ...'"
    lower = header.lower()
    assert "prerequisite" in lower, f"{lesson.name}: header names no prerequisites"
    assert re.search(r"\b\d+\s*(min|minutes|s|seconds)\b", header), f"{lesson.name}: header says no time"
    assert "try this" in lower, f"{lesson.name}: header has no 'Try this' edits"
    after = header[lower.index("try this"):].splitlines()
    items = [line for line in after if re.match(r"\s*(\d+\.|-|\*)\s", line)]
    assert len(items) >= 2, f"{lesson.name}: 'Try this' needs two edits, found {len(items)}"
    assert "__file__" not in text, f"{lesson.name}: uses __file__, which a notebook does not have"
    assert "matplotlib.use(" not in text, f"{lesson.name}: call lesson_support.use_matplotlib() instead"
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > MAX_CELL_LINES]
    assert not long, f"{lesson.name}: code cells (index, lines) longer than {MAX_CELL_LINES} lines: {long}"


def test_readme_lists_every_lesson() -> None:
    readme = (LESSONS_DIR / "README.md").read_text()
    missing = [p.name for p in LESSONS if p.name not in readme]
    assert not missing, f"lessons/README.md does not list {missing}"
