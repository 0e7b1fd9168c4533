"""``python -m minarn.near_duplicates``: byte-identical and near-identical images, and the split's leakage.

Usage::

    python -m minarn.near_duplicates [DATA] [--out DIR] [--threshold D] [--max-distance D] [--cache-dir DIR]

Finds, in a MedNIST-style image set (the shipped sample without DATA), the byte-identical files (equal SHA-1, as
``minarn.data.duplicate_groups``) and the near-identical images, groups them per class, and counts the
validation and test images that have a near-copy in the training part, for the paper's split and for the
split of ``python -m minarn.train --dedupe`` (byte-identical copies removed before splitting). Writes into
``--out`` (default ``near-duplicates/``): ``near_duplicates.md`` (the report), ``near_duplicates.json`` (its
numbers), ``near_copies.csv`` (every validation / test image whose nearest training image lies within
``--max-distance``: split, part, path, class, that training image and the distance) and ``near_duplicates.png``
(the distance histogram with the threshold, and example pairs).

Distance. Each 64x64 image x is standardised, u = (x - mean x) / sqrt(var x + 1) (grey levels; the +1 keeps
blank images finite), and d(a, b) = RMSE(u_a, u_b) = ||u_a - u_b|| / 64, in units of the images' own standard
deviation: 0 for equal pixels (or pixels equal up to brightness and contrast), about 0.01-0.05 for a JPEG
re-encoding, sqrt(2 (1 - rho)) for two images of correlation rho.

Search, exact for every pair with d <= ``max_distance`` (no hash that could miss a pair): the block means of u
on a 16x16 grid give a lower bound, d16(a, b) <= d(a, b) (in each 4x4 block the mean of the squared differences
is at least the square of their mean); the images are swept in order of their projection on the first principal
axis of the block means, |p . (s_a - s_b)| <= ||s_a - s_b|| being a second lower bound, so each image is compared
only with the neighbours the bounds allow, 512 rows at a time (vectorised NumPy, one matrix product per chunk);
the pairs that pass are measured exactly on the 64x64 pixels.

Threshold, chosen from the data: the histogram of every image's distance to its nearest other image (log bins,
exact copies left out) rises into a broad mode of ordinary similar images (neighbouring CT slices, images of
the same anatomy); re-encoded copies sit below it. The threshold is the centre of the first empty bin below that
mode's peak (the gap), else of its least-filled bin; ``--threshold`` overrides it. The report shows the
histogram and the leakage at looser thresholds too.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from minarn.cli import Parser
from minarn.data import (
    DataError,
    Dataset,
    Splits,
    duplicate_groups,
    load_mednist,
    split_dataset,
)
from minarn.figures import _figure, _image_axis, _save

__all__ = ["Audit", "Pairs", "ThresholdChoice", "audit", "choose_threshold", "close_pairs", "main",
           "nearest_distances", "standardized_distance"]

Report = Callable[[str], Any]
GRID = 16  # block-mean grid of the lower bound (4x4 pixel blocks on 64x64 images)
CHUNK = 512  # rows per matrix product in the sweep
MAX_DISTANCE = 0.2  # search radius: every pair closer than this is found
HISTOGRAM_BINS = 40
LOOSER = (0.1, 0.15, 0.2)  # the leakage is also shown at these distances (neighbouring slices and the like)
FILES = {"report": "near_duplicates.md", "json": "near_duplicates.json", "csv": "near_copies.csv",
         "figure": "near_duplicates.png"}
SPLITS = ("paper", "dedupe")


class AuditError(ValueError):
    """Bad arguments or data: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------
# distance and the exact search
# ---------------------------------------------------------------------------------------------------------


def _standardize(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat float32 pixels (N, H*W), mean (N,), scale sqrt(var + 1) (N,)) of uint8 images (N, H, W[, 1])."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.dtype != np.uint8:
        raise AuditError(f"images: expected uint8 (N, H, W) or (N, H, W, 1), got {x.dtype} {x.shape}")
    flat = x.reshape(len(x), -1).astype(np.float32)
    mean = flat.mean(axis=1, dtype=np.float64)
    scale = np.sqrt(flat.var(axis=1, dtype=np.float64) + 1.0)
    return flat, mean.astype(np.float32), scale.astype(np.float32)


def standardized_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d between images a[k] and b[k]: RMSE of the standardised pixels (module docstring). Shapes: a, b uint8
    (M, H, W[, 1]) -> (M,) float64."""
    fa, ma, sa = _standardize(a)
    fb, mb, sb = _standardize(b)
    if fa.shape != fb.shape:
        raise AuditError(f"a, b: expected the same shape, got {fa.shape}, {fb.shape}")
    diff = (fa - ma[:, None]) / sa[:, None] - (fb - mb[:, None]) / sb[:, None]
    return np.sqrt(np.mean(diff.astype(np.float64) ** 2, axis=1))


@dataclass(frozen=True)
class Pairs:
    """Every pair of images (i < j, indices into the searched images) with d <= ``max_distance``; shapes (P,)."""

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray
    max_distance: float
    candidates: int  # pairs that passed the lower bounds and were measured exactly


def close_pairs(images: np.ndarray, max_distance: float = MAX_DISTANCE, chunk: int = CHUNK) -> Pairs:
    """All pairs with standardised distance d <= max_distance (exact: the bounds only skip pairs that are farther).

    Shapes: images uint8 (N, H, W[, 1]) with H and W multiples of 16.
    """
    flat, mean, scale = _standardize(images)
    n, hw = flat.shape
    side = round(hw ** 0.5)
    if side * side != hw or side % GRID:
        raise AuditError(f"images: expected square images whose side is a multiple of {GRID}, got {hw} pixels")
    if not 0 < max_distance:
        raise AuditError(f"max_distance: expected > 0, got {max_distance}")
    f = side // GRID
    blocks = flat.reshape(n, GRID, f, GRID, f).mean(axis=(2, 4)).reshape(n, GRID * GRID)
    s = ((blocks - mean[:, None]) / scale[:, None]).astype(np.float32)  # block means of u
    # lower bound: ||s_a - s_b||^2 / GRID^2 <= d^2, so candidates have ||s_a - s_b|| <= GRID * max_distance
    radius = GRID * max_distance
    centred = s - s.mean(axis=0)
    _, _, vt = np.linalg.svd(centred[:: max(1, n // 4000)].astype(np.float64), full_matrices=False)
    proj = centred @ vt[0].astype(np.float32)
    order = np.argsort(proj, kind="stable")
    s, proj = s[order], proj[order]
    sq = np.einsum("ij,ij->i", s, s)
    limit = np.float32(radius * radius + 1e-2)  # float32 rounding margin; the exact check decides
    found_i, found_j = [], []
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        hi = int(np.searchsorted(proj, proj[b - 1] + radius * (1 + 1e-6) + 1e-4, side="right"))
        d2 = s[a:b] @ s[a:hi].T
        d2 *= -2
        d2 += sq[a:b, None]
        d2 += sq[None, a:hi]
        ii, jj = np.nonzero(d2 <= limit)  # rows and columns both start at a: keep j > i of the sorted order
        upper = jj > ii
        found_i.append(ii[upper] + a)
        found_j.append(jj[upper] + a)
    si, sj = np.concatenate(found_i), np.concatenate(found_j)
    gi, gj = order[si], order[sj]
    dist = np.empty(len(gi))
    step = 4096
    for c in range(0, len(gi), step):
        a_, b_ = gi[c:c + step], gj[c:c + step]
        diff = (flat[a_] - mean[a_, None]) / scale[a_, None] - (flat[b_] - mean[b_, None]) / scale[b_, None]
        dist[c:c + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64) / hw)
    keep = dist <= max_distance
    lo, hi_ = np.minimum(gi, gj)[keep], np.maximum(gi, gj)[keep]
    by = np.lexsort((hi_, lo))
    return Pairs(lo[by].astype(np.int64), hi_[by].astype(np.int64), dist[keep][by], float(max_distance), len(gi))


def nearest_distances(n: int, pairs: Pairs) -> np.ndarray:
    """Each image's distance to its nearest other image (inf when none is within ``pairs.max_distance``): (n,)."""
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, pairs.i, pairs.distance)
    np.minimum.at(nearest, pairs.j, pairs.distance)
    return nearest


# ---------------------------------------------------------------------------------------------------------
# the threshold
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold and the histogram it was read from: ``edges`` (B+1,), ``counts`` (B,) of the nearest-image
    distances d > 0 (those below the first edge are counted in the first bin); ``rule`` says how it was chosen."""

    threshold: float
    edges: np.ndarray
    counts: np.ndarray
    rule: str


def choose_threshold(nearest: np.ndarray, max_distance: float = MAX_DISTANCE,
                     bins: int = HISTOGRAM_BINS) -> ThresholdChoice:
    """The gap below the mode of the nearest-image distances (module docstring). Shapes: nearest (N,)."""
    d = np.asarray(nearest, dtype=np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    edges = np.geomspace(max_distance / 100, max_distance, bins + 1)
    counts = np.histogram(np.clip(d, edges[0], edges[-1]), edges)[0]
    if counts.sum() == 0:
        raise AuditError(f"no two images are within distance {max_distance} of each other (apart from exact "
                         "copies): nothing to choose a threshold from; pass --threshold")
    peak = int(np.argmax(counts))
    below = counts[:peak]
    empty = np.flatnonzero(below == 0)
    if len(empty):
        k, rule = int(empty[-1]), "centre of the first empty bin below the mode of the nearest-image distances"
    elif peak > 0:
        k, rule = peak - 1 - int(np.argmin(below[::-1])), "centre of the least-filled bin below the mode"
    else:
        k, rule = 0, "the mode is the first bin: its centre"
    return ThresholdChoice(float(np.sqrt(edges[k] * edges[k + 1])), edges, counts, rule)


# ---------------------------------------------------------------------------------------------------------
# the audit
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What :func:`audit` found. Index arrays refer to ``dataset``; see the module docstring for the distance."""

    dataset: Dataset
    pairs: Pairs
    nearest: np.ndarray
    choice: ThresholdChoice
    threshold: float
    seconds: float
    splits: dict[str, Splits] = field(default_factory=dict)
    copies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # split -> near_copies.csv rows

    def groups(self, threshold: float | None = None) -> list[np.ndarray]:
        """Groups of images connected by pairs with d <= threshold (default: the audit's), each of size >= 2."""
        t = self.threshold if threshold is None else threshold
        n = len(self.dataset)
        m = self.pairs.distance <= t
        graph = coo_matrix((np.ones(int(m.sum())), (self.pairs.i[m], self.pairs.j[m])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        sizes = np.bincount(comp)
        members = np.argsort(comp, kind="stable")
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        return [members[s:s + k] for s, k in zip(starts, sizes) if k > 1]

    def leakage(self, split: str, part: str, threshold: float | None = None) -> int:
        """How many images of ``part`` ("valid" / "test") of ``split`` have a training image within threshold."""
        t = self.threshold if threshold is None else threshold
        return sum(1 for r in self.copies[split] if r["part"] == part and r["distance"] <= t)


def _nearest_in_train(ds: Dataset, pairs: Pairs, splits: Splits, name: str) -> list[dict[str, Any]]:
    """For each validation / test image of ``splits`` its nearest training image within pairs.max_distance."""
    index = {p: k for k, p in enumerate(ds.paths.tolist())}
    part_of = np.full(len(ds), "", dtype=object)
    for part, subset in splits._asdict().items():
        part_of[[index[p] for p in subset.paths.tolist()]] = part
    rows = []
    best: dict[int, tuple[float, int]] = {}
    for i, j, d in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.distance.tolist()):
        for held, other in ((i, j), (j, i)):
            if (part_of[held] in ("valid", "test") and part_of[other] == "train"
                    and (held not in best or d < best[held][0])):
                best[held] = (d, other)
    names = ds.class_names
    for held, (d, other) in sorted(best.items(), key=lambda kv: (part_of[kv[0]], ds.paths[kv[0]])):
        rows.append({"split": name, "part": part_of[held], "path": ds.paths[held], "label": names[ds.labels[held]],
                     "train_path": ds.paths[other], "train_label": names[ds.labels[other]], "distance": d})
    return rows


def audit(ds: Dataset, threshold: float | None = None, max_distance: float = MAX_DISTANCE,
          report: Report | None = None) -> Audit:
    """Search the pairs, choose the threshold (unless given), and find the near-copies in train of the paper's
    split and of the ``--dedupe`` split."""
    say: Report = report or (lambda _msg: None)
    if threshold is not None and not 0 <= threshold <= max_distance:
        raise AuditError(f"--threshold: expected 0 <= threshold <= --max-distance = {max_distance}, got {threshold}")
    start = time.perf_counter()
    pairs = close_pairs(ds.images, max_distance)
    nearest = nearest_distances(len(ds), pairs)
    choice = choose_threshold(nearest, max_distance)
    chosen = choice.threshold if threshold is None else float(threshold)
    result = Audit(ds, pairs, nearest, choice, chosen, 0.0)
    for name, dedupe in zip(SPLITS, (False, True)):
        result.splits[name] = split_dataset(ds, dedupe=dedupe)
        result.copies[name] = _nearest_in_train(ds, pairs, result.splits[name], name)
    result.seconds = time.perf_counter() - start
    say(f"{len(ds):,} images: {len(pairs.i):,} pairs within {max_distance} ({pairs.candidates:,} measured) in "
        f"{result.seconds:.1f} s; threshold {chosen:.4f}" + (" (given)" if threshold is not None else ""))
    return result


# ---------------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------------


def _class_rows(result: Audit) -> list[dict[str, Any]]:
    """Per class: byte-identical groups / extra copies, near-identical groups / images in them / extra images."""
    ds = result.dataset
    exact = duplicate_groups(ds)
    near = result.groups()
    rows = []
    for k, name in enumerate(ds.class_names):
        ex = [g for g in exact if ds.labels[g[0]] == k]
        nr = [g for g in near if np.all(ds.labels[g] == k)]
        rows.append({"class": name, "images": int(np.sum(ds.labels == k)), "exact_groups": len(ex),
                     "exact_extra": sum(len(g) - 1 for g in ex), "near_groups": len(nr),
                     "near_images": sum(len(g) for g in nr), "near_extra": sum(len(g) - 1 for g in nr)})
    mixed = [g for g in near if len(set(ds.labels[g].tolist())) > 1]
    rows.append({"class": "several classes", "images": 0, "exact_groups": 0, "exact_extra": 0,
                 "near_groups": len(mixed), "near_images": sum(len(g) for g in mixed),
                 "near_extra": sum(len(g) - 1 for g in mixed)})
    return rows


def _thresholds(result: Audit) -> list[float]:
    return [result.threshold] + [t for t in LOOSER if result.threshold < t <= result.pairs.max_distance]


def summary_dict(result: Audit) -> dict[str, Any]:
    """The numbers of near_duplicates.json."""
    ds = result.dataset
    exact_copies = {}
    for name, splits in result.splits.items():
        seen = set(splits.train.sha1.tolist())
        exact_copies[name] = {part: int(sum(h in seen for h in getattr(splits, part).sha1.tolist()))
                              for part in ("valid", "test")}
    leak = {name: {part: {"images": len(getattr(s, part)), "exact": exact_copies[name][part],
                          "near": {f"{t:.4g}": result.leakage(name, part, t) for t in _thresholds(result)}}
                   for part in ("valid", "test")} for name, s in result.splits.items()}
    return {
        "data": ds.source, "images": len(ds), "seconds": round(result.seconds, 1),
        "distance": "RMSE of the per-image standardised pixels (x - mean) / sqrt(var + 1)",
        "max_distance": result.pairs.max_distance, "pairs": len(result.pairs.i), "measured": result.pairs.candidates,
        "threshold": result.threshold, "threshold_rule": result.choice.rule,
        "chosen_threshold": result.choice.threshold,
        "histogram": {"edges": result.choice.edges.tolist(), "counts": result.choice.counts.tolist(),
                      "exact_zero": int(np.sum(result.nearest == 0)),
                      "none_within_max": int(np.sum(~np.isfinite(result.nearest)))},
        "classes": _class_rows(result), "splits": leak,
    }


def write_copies(result: Audit, path: Path) -> Path:
    columns = ["split", "part", "path", "label", "train_path", "train_label", "distance"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for name in SPLITS:
            for row in result.copies[name]:
                writer.writerow({**row, "distance": f"{row['distance']:.6f}"})
    return path


def draw(result: Audit, path: Path, examples: int = 5) -> Path:
    """The distance histogram with the threshold, then example pairs (test image, its nearest training image)
    just below the threshold and just above it, from the paper's split."""
    ds, choice = result.dataset, result.choice
    rows = sorted(result.copies["paper"], key=lambda r: r["distance"])
    below = [r for r in rows if 0 < r["distance"] <= result.threshold][-examples:]
    above = [r for r in rows if r["distance"] > result.threshold][:examples]
    shown = below + above
    cols = max(len(below), len(above), 1)
    fig = _figure(max(2.6 * cols, 8.0), 3.4 + (2.8 if shown else 0.0))
    grid = fig.add_gridspec(3 if shown else 1, cols, height_ratios=[1.6, 1, 1] if shown else [1])
    ax = fig.add_subplot(grid[0, :])
    centres = np.sqrt(choice.edges[:-1] * choice.edges[1:])
    ax.bar(centres, choice.counts, width=np.diff(choice.edges), align="center", color="#1f77b4", edgecolor="white")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(result.threshold, color="#d62728", lw=1.5, label=f"threshold {result.threshold:.3f}")
    ax.set_xlabel("standardised pixel distance of each image to its nearest other image (log scale)")
    ax.set_ylabel("images")
    exact = int(np.sum(result.nearest == 0))
    ax.set_title(f"{len(ds):,} images: {exact:,} with an identical copy (not shown), "
                 f"{int(np.sum(~np.isfinite(result.nearest))):,} with none within {result.pairs.max_distance}",
                 fontsize=9)
    ax.legend(fontsize=8)
    index = {p: k for k, p in enumerate(ds.paths.tolist())}
    for row_no, group in ((1, below), (2, above)):
        for c, r in enumerate(group):
            pair = np.concatenate([ds.images[index[r["path"]]][..., 0], ds.images[index[r["train_path"]]][..., 0]],
                                  axis=1)
            title = f"{r['part']} {r['path']}\ntrain {r['train_path']}, d = {r['distance']:.3f}"
            _image_axis(fig.add_subplot(grid[row_no, c]), pair, title)
            fig.axes[-1].title.set_fontsize(7)
    return _save(fig, path)


def report_markdown(result: Audit, summary: dict[str, Any]) -> str:
    """near_duplicates.md."""
    h = summary["histogram"]
    given = result.threshold != result.choice.threshold
    lines = [
        f"# Near-duplicate audit of `{summary['data']}`", "",
        (f"{summary['images']:,} images; distance: {summary['distance']} (RMSE over the 64x64 pixels). Every pair "
         f"within {summary['max_distance']} was found (exact search: {summary['measured']:,} pairs measured, "
         f"{summary['pairs']:,} within it) in {summary['seconds']:.1f} s."), "",
        "## Threshold", "",
        (f"Threshold **{result.threshold:.4f}**" + (f" (given; the data's choice: {result.choice.threshold:.4f})"
                                                    if given else "") + f": {result.choice.rule}."),
        (f"Distance of each image to its nearest other image, up to the mode's peak (images with an identical "
         f"copy: {h['exact_zero']:,}; with no other image within {summary['max_distance']}: "
         f"{h['none_within_max']:,}):"), "",
        "| from | to | images |", "|---:|---:|---:|",
    ]
    e, c = result.choice.edges, result.choice.counts
    first, peak = int(np.flatnonzero(c)[0]), int(np.argmax(c))
    lines += [f"| {e[k]:.4f} | {e[k + 1]:.4f} | {c[k]:,} |" for k in range(first, peak + 1)]
    lines += ["", "## Groups per class", "",
              ("| class | images | byte-identical groups | extra copies | near-identical groups | images in them | "
               "extra images |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["classes"]:
        lines.append(f"| {r['class']} | {r['images']:,} | {r['exact_groups']:,} | {r['exact_extra']:,} | "
                     f"{r['near_groups']:,} | {r['near_images']:,} | {r['near_extra']:,} |")
    thresholds = _thresholds(result)
    lines += ["", "Near-identical groups include the byte-identical ones (distance 0).", "",
              "## Validation and test images with a near-copy in train", "",
              ("| split | part | images | byte-identical copy in train | "
               + " | ".join(f"within {t:.4g}" for t in thresholds) + " |"),
              "|---|---|---:|---:|" + "---:|" * len(thresholds)]
    for name, parts in summary["splits"].items():
        for part, v in parts.items():
            lines.append(f"| {name} | {part} | {v['images']:,} | {v['exact']:,} | "
                         + " | ".join(f"{n:,}" for n in v["near"].values()) + " |")
    lines += ["", (f"`{FILES['csv']}` lists each of them with its nearest training image; "
                   f"`{FILES['figure']}` shows the histogram and example pairs."), ""]
    return "\n".join(lines)


def write_outputs(result: Audit, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(result)
    paths = {key: out / name for key, name in FILES.items()}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["report"].write_text(report_markdown(result, summary), encoding="utf-8")
    write_copies(result, paths["csv"])
    draw(result, paths["figure"])
    return paths


# ---------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(error_type=AuditError, prog="python -m minarn.near_duplicates",
                description="Find byte-identical and near-identical images in a MedNIST-style set and count the "
                "validation / test images with a near-copy in train (the paper's split and the --dedupe split). "
                "Writes near_duplicates.md, .json, .png and near_copies.csv into --out.")
    p.add_argument("data", nargs="?", metavar="DATA", help="folder or archive (default: the shipped sample)")
    p.add_argument("--out", default="near-duplicates", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--threshold", type=float, help="near-identical below this distance (default: from the data)")
    p.add_argument("--max-distance", type=float, default=MAX_DISTANCE,
                   help="search radius: every pair closer than this is found (default: %(default)s)")
    p.add_argument("--cache-dir", help="cache folder for decoded images (default ~/.cache/minarn)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad usage or unreadable data (one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
        ds = load_mednist(args.data, cache_dir=args.cache_dir, report=print)
        result = audit(ds, args.threshold, args.max_distance, report=print)
        paths = write_outputs(result, Path(args.out))
        for name in SPLITS:
            print(f"{name} split: test images with a near-copy in train {result.leakage(name, 'test')} of "
                  f"{len(result.splits[name].test):,}, validation {result.leakage(name, 'valid')} of "
                  f"{len(result.splits[name].valid):,}")
        print(f"report: {paths['report']}")
        return 0
    except (AuditError, DataError) as err:
        print(f"python -m minarn.near_duplicates: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
