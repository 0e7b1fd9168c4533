"""How a trained model behaves away from its data: transformed images, noise and blank images.

Usage::

    python tools/robustness.py            # print the table for results/default-seed123/model.npz
    python tools/robustness.py --write    # put it into results/MODEL_CARD.md (between the markers)
    python tools/robustness.py --check    # exit 1 if MODEL_CARD.md's table is out of date

The images are the 600 of the sample shipped in minarn (``minarn.data.load_mednist()``): as they are, with the
contrast inverted (255 - x), turned 90 degrees, upside down and mirrored left-right; then 100 images of uniform
noise (seed 0) and three constant images (black, mid-grey, white), which belong to no class at all. For each
set: how many the model classifies as their folder's class, the mean probability of the predicted class, and
that mean over the wrong answers only. A closed-set classifier always names one of its classes; this table
shows how confident it is while doing so.

Most of the sample (546 of the 600 for the default run) lies in the full set's training split, so the first
row is not a test score (``report.md`` has that); the transformed rows measure what changes when the input
does.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minarn.data import load_mednist, scale_images
from minarn.model import ARNCNN, load_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = RESULTS / "default-seed123" / "model.npz"
CARD = RESULTS / "MODEL_CARD.md"
NOISE_IMAGES, NOISE_SEED = 100, 0
BLOCK = re.compile(r"(<!-- generated:robustness -->\n)(.*?)(<!-- end:robustness -->)", re.DOTALL)

TRANSFORMS = {
    "sample as it is": lambda x: x,
    "contrast inverted (255 - x)": lambda x: 255 - x,
    "turned 90 degrees": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "upside down": lambda x: x[:, ::-1],
    "mirrored left-right": lambda x: x[:, :, ::-1],
}


def _predict(model: ARNCNN, images: np.ndarray) -> np.ndarray:
    return model.predict(scale_images(np.ascontiguousarray(images)))


def robustness_table(model: ARNCNN) -> str:
    """The markdown table described in the module docstring."""
    ds = load_mednist()
    names = list(ds.class_names)
    rows = []
    for name, transform in TRANSFORMS.items():
        probs = _predict(model, transform(ds.images))
        top, right = probs.max(axis=1), probs.argmax(axis=1) == ds.labels
        wrong_p = f"{top[~right].mean():.3f}" if (~right).any() else "-"
        rows.append(f"| {name} | {right.sum()} of {len(right)} | {top.mean():.3f} | {wrong_p} |")
    noise = np.random.default_rng(NOISE_SEED).integers(0, 256, (NOISE_IMAGES, *ds.images.shape[1:]), dtype=np.uint8)
    probs = _predict(model, noise)
    counts = np.bincount(probs.argmax(axis=1), minlength=len(names))
    called = ", ".join(f"{names[k]} {c}" for k, c in enumerate(counts) if c)
    mean_top = f"{probs.max(axis=1).mean():.3f}"  # every answer is wrong: both columns are the same mean
    rows.append(f"| uniform noise ({NOISE_IMAGES} images, seed {NOISE_SEED}): called {called} | no class | "
                f"{mean_top} | {mean_top} |")
    for name, value in (("black", 0), ("mid-grey (128)", 128), ("white", 255)):
        p = _predict(model, np.full((1, *ds.images.shape[1:]), value, np.uint8))[0]
        rows.append(f"| constant {name}: called {names[int(p.argmax())]} | no class | {p.max():.3f} | "
                    f"{p.max():.3f} |")
    header = ("| images | classified as their class | mean p(predicted) | mean p(predicted) when wrong |\n"
              "|---|---:|---:|---:|\n")
    return header + "\n".join(rows) + "\n"


def render(card: Path, table: str) -> tuple[str, str]:
    """(current text, text with the table put between the markers) of the model card."""
    text = card.read_text(encoding="utf-8")
    if len(BLOCK.findall(text)) != 1:
        raise SystemExit(f"{card}: needs exactly one <!-- generated:robustness --> ... <!-- end:robustness --> block")
    return text, BLOCK.sub(lambda m: m.group(1) + table + m.group(3), text)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done (or up to date), 1 ``--check`` found the card out of date."""
    p = argparse.ArgumentParser(prog="python tools/robustness.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=MODEL, help="model.npz (default: %(default)s)")
    p.add_argument("--card", type=Path, default=CARD, help="model card to --write or --check (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="put the table into the model card")
    mode.add_argument("--check", action="store_true", help="exit 1 if the model card's table is out of date")
    args = p.parse_args(argv)
    table = robustness_table(load_model(args.model))
    if not (args.write or args.check):
        print(table, end="")
        return 0
    old, new = render(args.card, table)
    if args.check:
        if old != new:
            print(f"{args.card}: the robustness table is out of date; run python tools/robustness.py --write",
                  file=sys.stderr)
            return 1
        print(f"{args.card}: up to date")
        return 0
    if new != old:
        args.card.write_text(new, encoding="utf-8")
    print(f"{args.card}: " + ("updated" if new != old else "already up to date"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
