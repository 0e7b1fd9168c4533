"""minarn.near_duplicates: the exact pair search against brute force, the distance by hand, the threshold rule,
and the audit / command line on the shipped sample with planted near-copies."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from run_fixture import assert_png

from minarn import near_duplicates as nd
from minarn.data import Dataset, load_mednist, sample_path


def _smooth_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """n random smooth 64x64 uint8 images (bilinear upsampling of 8x8 noise), values 20..230."""
    coarse = rng.uniform(20, 230, (n, 8, 8))
    return np.stack([np.asarray(Image.fromarray(c.astype(np.uint8)).resize((64, 64), Image.BILINEAR)) for c in coarse])


def _family(rng: np.random.Generator, bases: int = 30, copies: int = 4) -> np.ndarray:
    """Images in families: each base with noisy copies at noise levels that put pairs on both sides of 0.2."""
    base = _smooth_images(bases, rng).astype(np.float64)
    out = [base]
    for k in range(copies):
        noise = rng.normal(0, 2 + 5 * k, base.shape)
        out.append(np.clip(base + noise, 0, 255))
    return np.concatenate(out).round().astype(np.uint8)


def _brute_force(images: np.ndarray, max_distance: float) -> set[tuple[int, int]]:
    n = len(images)
    i, j = np.triu_indices(n, 1)
    d = nd.standardized_distance(images[i], images[j])
    return {(int(a), int(b)) for a, b in zip(i[d <= max_distance], j[d <= max_distance])}


@pytest.mark.parametrize("seed", [0, 1])
def test_close_pairs_finds_exactly_the_brute_force_pairs(seed: int) -> None:
    images = _family(np.random.default_rng(seed))
    expected = _brute_force(images, 0.2)
    assert 20 < len(expected) < len(images) * (len(images) - 1) // 2  # pairs on both sides of the radius
    pairs = nd.close_pairs(images, 0.2, chunk=16)  # small chunks: the sweep's window moves many times
    assert set(zip(pairs.i.tolist(), pairs.j.tolist())) == expected
    assert np.all(pairs.i < pairs.j) and pairs.candidates >= len(pairs.i)
    np.testing.assert_allclose(pairs.distance, nd.standardized_distance(images[pairs.i], images[pairs.j]),
                               rtol=1e-5)
    nearest = nd.nearest_distances(len(images), pairs)
    for k in range(len(images)):
        mine = [d for a, b, d in zip(pairs.i, pairs.j, pairs.distance) if k in (a, b)]
        assert nearest[k] == (min(mine) if mine else np.inf)


def test_standardized_distance_by_hand() -> None:
    board = (np.indices((4, 4)).sum(axis=0) % 2 * 2).astype(np.uint8)  # 0/2 checkerboard: mean 1, var 1
    flipped = (2 - board).astype(np.uint8)
    # u = (x - 1) / sqrt(2) = -+1/sqrt(2), the difference is +-sqrt(2) everywhere: RMSE sqrt(2)
    assert nd.standardized_distance(board[None], flipped[None])[0] == pytest.approx(np.sqrt(2), rel=1e-6)
    assert nd.standardized_distance(board[None], board[None])[0] == 0.0
    blank = np.zeros((1, 4, 4), np.uint8)
    assert nd.standardized_distance(blank, blank + 7)[0] == 0.0  # constant images differ only in brightness
    rng = np.random.default_rng(3)
    x = rng.integers(0, 100, (2, 64, 64)).astype(np.uint8)
    brighter = (2 * x.astype(np.int64) + 10).astype(np.uint8)  # the same image, other brightness and contrast
    assert np.all(nd.standardized_distance(x, brighter) < 0.01)
    with pytest.raises(nd.AuditError, match="expected uint8"):
        nd.standardized_distance(x.astype(np.float32), x)


def test_threshold_is_the_gap_below_the_mode() -> None:
    rng = np.random.default_rng(0)
    copies = rng.uniform(0.008, 0.03, 40)  # re-encodings
    similar = np.exp(rng.uniform(np.log(0.07), np.log(0.2), 3000))  # the broad mode, from 0.07 up
    choice = nd.choose_threshold(np.r_[copies, similar, 0.0, 0.0, np.inf], 0.2)
    assert 0.03 < choice.threshold < 0.07 and "empty bin" in choice.rule
    k = int(np.searchsorted(choice.edges, choice.threshold)) - 1
    assert choice.counts[k] == 0 and choice.counts[k + 1:].sum() > 0  # an empty bin, just below the mode
    assert choice.threshold == pytest.approx(np.sqrt(choice.edges[k] * choice.edges[k + 1]))
    assert choice.counts.sum() == 3040  # exact copies (0) and images without a neighbour (inf) are left out
    no_gap = nd.choose_threshold(np.exp(rng.uniform(np.log(0.002), np.log(0.2), 20000)), 0.2, bins=10)
    assert "least-filled" in no_gap.rule
    with pytest.raises(nd.AuditError, match="pass --threshold"):
        nd.choose_threshold(np.array([0.0, np.inf]), 0.2)


def _reencoded(image: np.ndarray, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))[..., None]


def test_audit_finds_a_planted_copy_and_counts_the_leakage() -> None:
    ds = load_mednist(sample_path(), cache=False)
    source = int(np.flatnonzero(ds.labels == 2)[5])  # a CXR image
    images = np.concatenate([ds.images, _reencoded(ds.images[source])[None]])
    extra = f"CXR/{Path(ds.paths[source]).stem}-copy.jpeg"
    planted = Dataset(images, np.append(ds.labels, 2), np.append(ds.paths, extra), np.append(ds.sha1, "f" * 40),
                      ds.class_names, ds.source)
    result = nd.audit(planted, threshold=0.05)  # 601 images have no mode to read a threshold from
    pair = {(int(a), int(b)) for a, b in zip(result.pairs.i, result.pairs.j)}
    assert (source, len(ds)) in pair  # the re-encoded copy is found, below the threshold
    d = nd.standardized_distance(images[[source]], images[[len(ds)]])[0]
    assert 0 < d <= result.threshold
    groups = result.groups()
    assert any(set(g.tolist()) == {source, len(ds)} for g in groups)
    # leakage: recount from the split itself and the pair list
    for name in nd.SPLITS:
        splits = result.splits[name]
        part = {p: k for k, s in splits._asdict().items() for p in s.paths.tolist()}
        close = [(planted.paths[a], planted.paths[b]) for a, b, dist in
                 zip(result.pairs.i, result.pairs.j, result.pairs.distance) if dist <= result.threshold]
        for held in ("valid", "test"):
            expected = {x for a, b in close for x, y in ((a, b), (b, a)) if part.get(x) == held
                        and part.get(y) == "train"}
            assert result.leakage(name, held) == len(expected), (name, held)
    rows = nd.summary_dict(result)["classes"]
    cxr = next(r for r in rows if r["class"] == "CXR")
    assert cxr["near_groups"] >= 1 and cxr["near_images"] >= 2


def test_command_line_writes_the_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "MedNIST"
    shutil.copytree(sample_path(), data)
    original = sorted((data / "HeadCT").glob("*.jpeg"))[3]
    with Image.open(original) as img:
        img.convert("L").save(data / "HeadCT" / "copy-reencoded.jpeg", quality=85)
    shutil.copy(original, data / "HeadCT" / "copy-bytes.jpeg")
    out = tmp_path / "audit"
    assert nd.main([str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "paper split: test images with a near-copy in train" in printed and "report:" in printed
    summary = json.loads((out / nd.FILES["json"]).read_text())
    assert summary["images"] == 602 and summary["threshold"] == summary["chosen_threshold"] > 0
    head = next(r for r in summary["classes"] if r["class"] == "HeadCT")
    assert head["exact_extra"] >= 1 and head["near_images"] >= 3  # the original, its byte copy, its re-encoding
    text = (out / nd.FILES["report"]).read_text()
    assert "## Threshold" in text and "## Groups per class" in text and "near-copy in train" in text
    with open(out / nd.FILES["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["distance"]) <= 0.2 and r["part"] in ("valid", "test") for r in rows)
    for name in nd.SPLITS:
        for part in ("valid", "test"):
            near = summary["splits"][name][part]["near"][f"{summary['threshold']:.4g}"]
            assert near == sum(1 for r in rows if r["split"] == name and r["part"] == part
                               and float(r["distance"]) <= summary["threshold"])
    assert_png(out / nd.FILES["figure"])
    # a given threshold is used as given
    assert nd.main([str(data), "--out", str(out), "--threshold", "0.1", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((out / nd.FILES["json"]).read_text())["threshold"] == 0.1


@pytest.mark.parametrize("argv, message", [(["--threshold", "0.5"], "--threshold: expected 0 <= threshold <= "),
                                           (["--no-such"], "unrecognized arguments"),
                                           (["/no/such/data"], "no such file")])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert nd.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m minarn.near_duplicates: error:") and message in err and err.count("\n") == 1
