"""What the lessons share: where their figures go, and showing a figure inline when a lesson runs as a notebook.

A lesson (``lessons/NN_*.py``, jupytext "percent" format) runs two ways:
- as a script (``python lessons/02_im2col_conv.py``): matplotlib draws off-screen (Agg) and every figure is
  saved to the figure folder, its path printed;
- as a notebook (Jupyter, VS Code, ``jupytext --to notebook``): the same file is saved and printed, and the
  figure is also shown inline under its cell.

The figure folder is ``$MINARN_LESSON_OUT`` if set, else ``lesson_figures/`` in the current folder.

Use, at the top of a lesson::

    from minarn import lesson_support
    lesson_support.use_matplotlib()      # before pyplot is imported
    import matplotlib.pyplot as plt
    OUT = lesson_support.figure_folder()
    ...
    lesson_support.save(fig, "02_im2col.png")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib


def in_notebook() -> bool:
    """True when running inside a Jupyter kernel (the kernel imports ``ipykernel`` before any cell runs)."""
    return "ipykernel" in sys.modules


def use_matplotlib() -> None:
    """Off-screen drawing (Agg) for a script; a notebook keeps its own inline backend."""
    if not in_notebook():
        matplotlib.use("Agg")


def figure_folder() -> Path:
    """``$MINARN_LESSON_OUT`` or ``./lesson_figures``, created if missing."""
    out = Path(os.environ.get("MINARN_LESSON_OUT", "lesson_figures"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def save(fig, name: str, **savefig_kwargs) -> Path:
    """Save ``fig`` as ``figure_folder() / name`` and print the path; in a notebook, also show it inline.

    Returns the path. The figure is closed afterwards (a lesson draws many; open figures hold memory).
    """
    import matplotlib.pyplot as plt  # after use_matplotlib(): the backend is chosen by then

    path = figure_folder() / name
    fig.savefig(path, **savefig_kwargs)
    print(f"   figure saved: {path}")
    if in_notebook():
        plt.show()
    plt.close(fig)
    return path


def saved(path: Path | str) -> Path:
    """For a figure that a minarn function already wrote to ``path``: print it, and show it in a notebook."""
    path = Path(path)
    print(f"   figure saved: {path}")
    if in_notebook():
        from IPython.display import Image, display  # present in every Jupyter kernel

        display(Image(filename=str(path)))
    return path
