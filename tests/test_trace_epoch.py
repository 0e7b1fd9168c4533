"""tools/trace_epoch.py: one epoch watched from inside, the same epoch that --resume trains."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from run_fixture import assert_png, tiny_cache, tiny_run  # noqa: F401

from minarn.train import main as train_main
from tools import trace_epoch


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def history_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "duration"} for row in csv.DictReader(f)]


def test_trace_follows_the_epoch_that_resume_trains(tiny_run, tmp_path):  # noqa: F811
    before = digests(tiny_run)
    out = tmp_path / "trace"
    status = trace_epoch.main([str(tiny_run), "--out", str(out), "--every", "10", "--images", "5",
                               "--cache-dir", tiny_cache(tiny_run)])
    assert status == 0
    assert digests(tiny_run) == before  # the run folder is not touched

    resumed = tmp_path / "resumed"
    shutil.copytree(tiny_run, resumed)
    assert train_main(["--resume", "--out", str(resumed), "--epochs", "2", "--cache-dir", tiny_cache(tiny_run)],
                      stream=open(tmp_path / "log.txt", "w")) == 0
    assert history_rows(out / "history.csv") == history_rows(resumed / "history.csv")  # epoch 2, bit for bit

    with open(out / "trace.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    batch_size = json.loads((tiny_run / "config.json").read_text())["options"]["batch_size"]
    steps = -(-135 // batch_size)  # the tiny run's 135 training images
    assert steps % 10 and [int(r["batch"]) for r in rows] == [*range(0, steps, 10), steps]
    assert {r["epoch"] for r in rows} == {"2"}
    assert rows[0]["train_loss"] == "nan" and float(rows[-1]["train_loss"]) > 0
    for r in rows:
        assert 0 <= float(r["val_accuracy"]) <= 1 and 0 <= float(r["recomputed_accuracy"]) <= 1
        assert float(r["val_loss"]) > 0 and float(r["recomputed_loss"]) > 0
        lags = [float(v) for k, v in r.items() if "_lag_" in k]
        assert len(lags) == 4 and all(np.isfinite(lags)) and all(v >= 0 for v in lags)
    assert list(rows[0])[-4:] == [f"{kind}_lag_{bn}" for kind in ("mean", "var")
                                  for bn in ("batch_normalization", "batch_normalization_1")]
    assert any(float(v) > 0 for r in rows for k, v in r.items() if "_lag_" in k)
    assert not (out / "checkpoint.npz").exists()
    assert_png(out / "trace.png")


def test_mid_epoch_checkpoint_and_same_folder_are_refused(tiny_run, tmp_path, monkeypatch):  # noqa: F811
    with pytest.raises(SystemExit):
        trace_epoch.main([str(tiny_run), "--out", str(tiny_run)])
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    from minarn import train

    real_load = train.load_checkpoint

    def mid_epoch(*args, **kwargs):
        state = real_load(*args, **kwargs)
        state.batch = 3
        return state

    monkeypatch.setattr(trace_epoch, "load_checkpoint", mid_epoch)
    with pytest.raises(SystemExit, match=r"in the middle of epoch 2 \(batch 3\); trace from an epoch boundary"):
        trace_epoch.main([str(copy), "--out", str(tmp_path / "t"), "--cache-dir", tiny_cache(tiny_run)])


def test_stratified_sample_keeps_class_proportions():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = trace_epoch.stratified_sample(labels, 10, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert np.array_equal(idx, np.sort(idx)) and len(set(idx)) == 10
    assert np.array_equal(idx, trace_epoch.stratified_sample(labels, 10, seed=0))
    assert np.array_equal(trace_epoch.stratified_sample(labels, 500, seed=0), np.arange(100))
