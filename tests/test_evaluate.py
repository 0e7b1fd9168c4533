"""python -m minarn.evaluate, in-process on a tiny trained run: report.md, figures, --data, --compare, errors."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from run_fixture import assert_png, tiny_cache, tiny_run  # noqa: F401 - tiny_run is a fixture

from minarn import figures, metrics
from minarn.data import sample_path, scale_images
from minarn.evaluate import (
    PREDICTIONS,
    EvaluationError,
    evaluate_run,
    load_run_splits,
    main,
    mcnemar_runs,
    read_predictions,
    run_predictions,
)
from minarn.model import load_model

SINGLE_RUN_FIGURES = [k for k in figures.FIGURE_FILES if k != "dense_activations"]


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    """A copy of the tiny run, evaluated once with figures (the shared run folder stays untouched)."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("figures", "report.md"))
    lines: list[str] = []
    return run, evaluate_run(run, report=lines.append, cache_dir=tiny_cache(tiny_run))


def test_split_is_the_training_split(tiny_run: Path) -> None:  # noqa: F811
    splits, _, config, warnings = load_run_splits(tiny_run, cache_dir=tiny_cache(tiny_run))
    assert warnings == []
    for name, part in splits._asdict().items():
        assert len(part) == config["split"][name]["total"]
        assert list(part.class_counts()) == [config["split"][name][c] for c in config["class_names"]]


def test_metrics_match_a_direct_computation(evaluated: tuple[Path, dict], tiny_run: Path) -> None:  # noqa: F811
    run, result = evaluated
    splits, _, config, _ = load_run_splits(run, cache_dir=tiny_cache(tiny_run))
    probs = load_model(run / "model.npz").predict(scale_images(splits.test.images)).astype(np.float64)
    y = splits.test.labels
    assert result["n_test"] == len(y) == 6
    expected = metrics.summary(y, probs, config["class_names"])
    for key, value in expected.items():
        assert result["summary"][key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True)
    assert result["ece"] == pytest.approx(metrics.expected_calibration_error(y, probs), abs=1e-6)
    np.testing.assert_array_equal(result["confusion_matrix"], metrics.confusion_matrix(y, probs.argmax(1), 6))
    assert result["duplicates_in_train"] == config["duplicates_in_train"]


def test_report_has_every_section(evaluated: tuple[Path, dict]) -> None:
    run, result = evaluated
    text = (run / "report.md").read_text()
    assert result["report"] == run / "report.md"
    for heading in ("Table 2", "Table 3: uncertainty (entropy)", "Table 4: standard deviation", "Per-class report",
                    "Confusion matrix", "Calibration", "Duplicate leakage"):
        assert heading in text, heading
    assert "| Precision | Recall | F1-score | Accuracy | Kappa | Log loss |" in text
    table2 = text.split("| Precision |")[1].splitlines()[2]
    assert len(re.findall(r"\d\.\d{4}\b|nan", table2)) == 6, table2  # 4 decimals
    for name in json.loads((run / "config.json").read_text())["class_names"]:
        assert text.count(f"| {name} |") >= 3  # Tables 3, 4 and the confusion matrix
    assert "precision    recall  f1-score   support" in text
    for key in result["figures"]:
        assert f"figures/{figures.FIGURE_FILES[key]}" in text


def test_report_lists_the_misclassified_images(evaluated: tuple[Path, dict], tiny_run: Path) -> None:  # noqa: F811
    run, result = evaluated
    splits, _, config, _ = load_run_splits(run, cache_dir=tiny_cache(tiny_run))
    probs = load_model(run / "model.npz").predict(scale_images(splits.test.images))
    names = config["class_names"]
    section = (run / "report.md").read_text().split("## Misclassified test images")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    C = result["confusion_matrix"]
    assert len(rows) == int(C.sum() - np.trace(C))
    listed = {row.split("`")[1]: row for row in rows}
    for i in np.flatnonzero(probs.argmax(1) != splits.test.labels):
        row = listed[splits.test.paths[i]]
        assert f"| {names[splits.test.labels[i]]} | {names[probs[i].argmax()]} |" in row
    if not rows:
        assert "every test image is classified correctly" in section


def test_report_gives_the_intervals_and_the_predictions_file(evaluated: tuple[Path, dict],
                                                              tiny_run: Path) -> None:  # noqa: F811
    run, result = evaluated
    splits, _, config, _ = load_run_splits(run, cache_dir=tiny_cache(tiny_run))
    probs = load_model(run / "model.npz").predict(scale_images(splits.test.images)).astype(np.float64)
    y = splits.test.labels
    acc, ll = metrics.accuracy_interval(y, probs.argmax(1)), metrics.log_loss_interval(y, probs)
    assert result["accuracy_interval"].method == "clopper-pearson"
    assert (result["accuracy_interval"].low, result["accuracy_interval"].high) == pytest.approx((acc.low, acc.high))
    assert result["log_loss_interval"].low <= result["summary"]["log_loss"] <= result["log_loss_interval"].high
    text = (run / "report.md").read_text()
    a, b = result["accuracy_interval"], result["log_loss_interval"]
    assert (f"95 % intervals: accuracy {a.low:.4f}-{a.high:.4f} (Clopper-Pearson, exact binomial over the 6 test "
            f"images), log loss {b.low:.4f}-{b.high:.4f} (percentile bootstrap") in text
    assert f"{ll.low:.4f}-{ll.high:.4f}" in text
    pred = read_predictions(run / PREDICTIONS)
    names = np.array(config["class_names"])
    np.testing.assert_array_equal(pred.paths, splits.test.paths)
    np.testing.assert_array_equal(pred.labels, names[y])
    np.testing.assert_array_equal(pred.predicted, names[probs.argmax(1)])
    # the log loss recomputed from the file's p(true) is report.md's
    assert -np.mean(np.log(np.clip(pred.p_true, 1e-15, 1))) == pytest.approx(result["summary"]["log_loss"], rel=1e-6)


def _with_predictions(source: Path, dest: Path, flip: Sequence[int]) -> Path:
    """A copy of an evaluated run whose test_predictions.csv has the images at ``flip`` made right / wrong."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("figures", "model.npz"))
    lines = (dest / PREDICTIONS).read_text().splitlines()
    for i in flip:
        path, label, predicted, p_true = lines[i + 1].split(",")
        wrong = "Hand" if label != "Hand" else "CXR"
        lines[i + 1] = ",".join([path, label, wrong if predicted == label else label, p_true])
    (dest / PREDICTIONS).write_text("\n".join(lines) + "\n")
    return dest


def test_compare_tests_each_pair_with_mcnemar(evaluated: tuple[Path, dict], tiny_run: Path,  # noqa: F811
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = evaluated
    base = read_predictions(run / PREDICTIONS)
    other = _with_predictions(run, tmp_path / "other", [0, 1, 2])  # right <-> wrong on the first three images
    out = tmp_path / "fig.png"
    assert main(["--compare", str(run), str(other), "--out", str(out), "--cache-dir", tiny_cache(tiny_run)]) == 0
    printed = capsys.readouterr().out
    e = metrics.mcnemar_exact(base.correct, read_predictions(other / PREDICTIONS).correct)
    assert e.discordant == 3 and e.only_a == int(base.correct[:3].sum())
    assert (f"McNemar's exact test, run vs other on the same 6 test images: right only by run {e.only_a}, only by "
            f"other {e.only_b}, wrong by both {e.both_wrong}; p = {e.p_value:.4g} (not distinguishable from chance "
            "at the 5% level)") in printed
    # a run folder without test_predictions.csv: the predictions of its model.npz on the rebuilt split
    weights_only = tmp_path / "weights-only"
    shutil.copytree(tiny_run, weights_only, ignore=shutil.ignore_patterns("figures", "report.md", PREDICTIONS))
    recomputed = run_predictions(weights_only, cache_dir=tiny_cache(tiny_run))
    np.testing.assert_array_equal(recomputed.predicted, base.predicted)
    np.testing.assert_allclose(recomputed.p_true, base.p_true, rtol=1e-6)
    (weights_only / "model.npz").unlink()
    printed_lines: list[str] = []
    results = mcnemar_runs([run, other, weights_only], cache_dir=tiny_cache(tiny_run), report=printed_lines.append)
    assert [(a, b) for a, b, _ in results] == [("run", "other")]
    assert any("weights-only left out: it has neither test_predictions.csv nor model.npz" in x for x in printed_lines)


def test_compare_of_runs_on_different_test_images_is_a_one_line_error(
        evaluated: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = evaluated
    other = _with_predictions(run, tmp_path / "other", [])
    lines = (other / PREDICTIONS).read_text().splitlines()
    (other / PREDICTIONS).write_text("\n".join(lines[:-1]) + "\n")  # one test image fewer
    assert main(["--compare", str(run), str(other), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "run and other were tested on different images (6 and 5 test images, 5 in common)" in err
    assert err.count("\n") == 1
    (other / PREDICTIONS).write_text("path,label\n")
    with pytest.raises(EvaluationError, match="test_predictions.csv: unreadable test predictions"):
        read_predictions(other / PREDICTIONS)


def test_errors_table_orders_and_caps() -> None:
    from minarn.evaluate import _errors_markdown

    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.95, 0.05], [0.2, 0.8]])
    text = _errors_markdown(["a.jpeg", "b.jpeg", "c.jpeg", "d.jpeg"], y, probs, ["A", "B"], most=2)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == ["| `c.jpeg` | B | A | 0.9500 | 0.0500 |", "| `d.jpeg` | A | B | 0.8000 | 0.2000 |"]
    assert "1 more not listed" in text
    assert "every test image" in _errors_markdown(["a"], np.array([0]), np.array([[1.0, 0.0]]), ["A", "B"])


def test_score_without_copies_splits_the_test_images_by_leakage() -> None:
    from minarn.evaluate import _score_without_copies

    copied = np.array([True, False, False, True])  # the first and the last image also occur in train
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])  # right, right, wrong, wrong
    text = _score_without_copies(copied, y, probs)
    expected_loss = -(np.log(0.8) + np.log(0.4)) / 2
    assert text == f"Without them: 1 of 2 right (1 error, log loss {expected_loss:.4f}); on them: 1 of 2 right."


def test_every_figure_is_written(evaluated: tuple[Path, dict]) -> None:
    run, result = evaluated
    C = result["confusion_matrix"]
    expected = [k for k in SINGLE_RUN_FIGURES if k != "misclassified" or C.sum() > np.trace(C)]
    assert sorted(result["figures"]) == sorted(expected)
    for key in expected:
        path = run / "figures" / figures.FIGURE_FILES[key]
        assert result["figures"][key] == path
        assert_png(path)


def test_cli_in_process(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("figures", "report.md"))  # if train evaluated
    assert main([str(run), "--no-figures", "--cache-dir", tiny_cache(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and (run / "report.md").is_file() and not (run / "figures").exists()


def test_report_dir_leaves_the_run_folder_unchanged(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "published"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("figures", "report.md"))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    check = tmp_path / "check"
    assert main([str(run), "--report-dir", str(check), "--cache-dir", tiny_cache(tiny_run)]) == 0
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert (check / "report.md").is_file() and any((check / "figures").glob("*.png"))
    # several runs: one subfolder each
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    assert main([str(run), str(twin), "--no-figures", "--report-dir", str(tmp_path / "both"),
                 "--cache-dir", tiny_cache(tiny_run)]) == 0
    assert (tmp_path / "both" / "published" / "report.md").is_file()
    assert (tmp_path / "both" / "twin" / "report.md").is_file()


def test_checkpoint_evaluates_the_best_weights_so_far_into_interim(
        evaluated: tuple[Path, dict], tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    """--checkpoint reads the controller's best weights from checkpoint.npz (after the tiny run's single epoch:
    the weights of model.npz) and writes interim/ only; the numbers equal the finished run's."""
    run = tmp_path / "in-progress"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("figures", "report.md", "model.npz"))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main([str(run), "--checkpoint", "--no-figures", "--cache-dir", tiny_cache(tiny_run)]) == 0
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert sorted(set(after) - set(before)) == [Path("interim/report.md"), Path("interim/test.json"),
                                                Path("interim/test_predictions.csv")]
    assert all(after[k] == v for k, v in before.items())
    interim = json.loads((run / "interim" / "test.json").read_text())
    _, finished = evaluated
    for key in metrics.SUMMARY_COLUMNS:
        assert interim[key] == pytest.approx(finished["summary"][key], rel=1e-6, abs=1e-9, nan_ok=True), key
    C = finished["confusion_matrix"]
    assert interim["errors"] == int(C.sum() - np.trace(C)) and interim["images"] == 6
    assert interim["best_epoch"] == 1 and interim["epochs_finished"] == 1
    text = (run / "interim" / "report.md").read_text()
    assert text.startswith("# Interim evaluation of `in-progress`") and "checkpoint.npz" in text
    assert "best epoch 1 of the 1 finished so far" in text


def test_only_the_wanted_figures_are_drawn(tiny_run: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "some"
    result = evaluate_run(tiny_run, report=None, cache_dir=tiny_cache(tiny_run), out_dir=out,
                          make_figures=["learning_curves", "confusion"])
    assert sorted(result["figures"]) == ["confusion", "learning_curves"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["fig7_learning_curves.png",
                                                                    "fig8_confusion_confidence.png"]
    stale = out / "figures" / figures.FIGURE_FILES["misclassified"]  # as if an earlier evaluation had errors
    stale.write_bytes(b"\x89PNG old")
    result = evaluate_run(tiny_run, report=None, cache_dir=tiny_cache(tiny_run), out_dir=out,
                          make_figures=["misclassified"])
    C = result["confusion_matrix"]
    assert stale.exists() == (C.sum() > np.trace(C)) and (not stale.exists() or stale.read_bytes() != b"\x89PNG old")
    with pytest.raises(EvaluationError, match=r"unknown figures \['fig7'\]"):
        evaluate_run(tiny_run, report=None, cache_dir=tiny_cache(tiny_run), out_dir=out, make_figures=["fig7"])


def test_checkpoint_without_checkpoint_is_a_one_line_error(tiny_run: Path, tmp_path: Path,  # noqa: F811
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "no-checkpoint"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoint.npz", "figures", "report.md"))
    assert main([str(run), "--checkpoint", "--cache-dir", tiny_cache(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint.npz" in err and err.count("\n") == 1
    (run / "checkpoint.npz").write_bytes(b"not an npz")
    assert main([str(run), "--checkpoint", "--cache-dir", tiny_cache(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert "unusable checkpoint" in err and err.count("\n") == 1 and not (run / "interim").exists()


def test_moved_run_needs_data(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """A run trained on a data path that does not exist here: a one-line error, then --data fixes it."""
    run = tmp_path / "moved"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["options"]["data"] = config["data_source"] = str(tmp_path / "elsewhere" / "MedNIST")
    (run / "config.json").write_text(json.dumps(config))
    assert main([str(run), "--no-figures", "--cache-dir", tiny_cache(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and err.count("\n") == 1 and "Traceback" not in err
    assert main([str(run), "--no-figures", "--data", str(sample_path()), "--cache-dir", tiny_cache(tiny_run)]) == 0


@pytest.mark.parametrize("case", ["missing", "no-model", "bad-config", "bad-option"])
def test_errors_are_one_line(case: str, tiny_run: Path, tmp_path: Path,  # noqa: F811
                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = [str(run)]
    if case == "no-model":
        run.mkdir()
        shutil.copy(tiny_run / "config.json", run / "config.json")
    elif case == "bad-config":
        run.mkdir()
        (run / "config.json").write_text("{not json")
        shutil.copy(tiny_run / "model.npz", run / "model.npz")
    elif case == "bad-option":
        argv = [str(tiny_run), "--no-such-option"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m minarn.evaluate: error:") and err.count("\n") == 1


def test_compare_runs_draws_fig10(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    other = tmp_path / "relu-run"
    other.mkdir()
    config = json.loads((tiny_run / "config.json").read_text())
    config["model"]["dense_activation"] = config["options"]["dense_activation"] = "relu"
    (other / "config.json").write_text(json.dumps(config))
    rows = figures.read_history(tiny_run / "history.csv")
    lines = ["epoch,loss,accuracy,val_loss,val_accuracy,lr,next_lr,monitor,improvement,duration"]
    for e in range(1, 4):
        r = rows[0]
        lines.append(f"{e},{r['loss'] / e},{r['accuracy']},{r['val_loss'] / e},{r['val_accuracy']},0.001,0.001,"
                     f"accuracy,0,1")
    (other / "history.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "fig10.png"
    assert main(["--compare", str(tiny_run), str(other), "--out", str(out)]) == 0
    assert_png(out)
    assert "gelu, relu" in capsys.readouterr().out
    assert main(["--compare", str(tiny_run), "--out", str(tmp_path / "fig10.jpg")]) == 2
    with pytest.raises(EvaluationError, match="history.csv"):
        shutil.rmtree(other)
        other.mkdir()
        (other / "config.json").write_text(json.dumps(config))
        from minarn.evaluate import compare_runs

        compare_runs([other], tmp_path / "x.png", report=None)


def test_compare_by_seed_labels_the_runs_by_seed(tiny_run: Path, tmp_path: Path,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "seed-7"
    shutil.copytree(tiny_run, other)
    config = json.loads((other / "config.json").read_text())
    config["options"]["seed"] = 7
    (other / "config.json").write_text(json.dumps(config))
    seed = json.loads((tiny_run / "config.json").read_text())["options"]["seed"]
    out = tmp_path / "seeds.png"
    assert main(["--compare", str(tiny_run), str(other), "--by", "seed", "--out", str(out)]) == 0
    assert_png(out)
    assert f"(2 runs: {seed}, 7)" in capsys.readouterr().out
    assert main(["--compare", str(tiny_run), str(tiny_run), "--by", "seed", "--out", str(out)]) == 0
    assert f"{seed} ({tiny_run.name}), {seed} ({tiny_run.name})" in capsys.readouterr().out  # same value: folder
    assert main(["--compare", str(tiny_run), str(other), "--by", "colour", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--by colour: not an option in" in err and "seed" in err and err.count("\n") == 1
    assert main([str(tiny_run), "--by", "seed"]) == 2  # --by without --compare
    assert "--by and --out belong to --compare" in capsys.readouterr().err
