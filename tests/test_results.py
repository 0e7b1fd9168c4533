"""results/: publish.py copies run folders and keeps the generated tables of results/README.md up to date."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from run_fixture import tiny_cache, tiny_run  # noqa: F401 - tiny_run is a fixture

from minarn import metrics
from minarn.evaluate import _uncertainty_tables
from minarn.train import HISTORY_COLUMNS, _options_from_args, build_parser
from tools import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DATA = (ROOT.parent / "shared" / "data" / "MedNIST.tar.gz").resolve()
CLASSES = ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]



# -- a synthetic run folder -------------------------------------------------------------------------------
def make_run(folder: Path, epochs_done: int, finished: bool, **options: object) -> Path:
    """A run folder as minarn.train writes it: config.json, history.csv, train.log, checkpoint.npz and, for a
    finished run, a test block, report.md (Tables 2-4 in minarn.evaluate's format), figures/ and model.npz."""
    folder.mkdir(parents=True)
    opts = {"data": "/data/MedNIST.tar.gz", **publish.PAPER_RECIPE, **options}
    split = {k: {"total": n} for k, n in (("train", 53058), ("valid", 3537), ("test", 2359))}
    config = {"options": opts, "class_names": CLASSES, "data_source": opts["data"], "data_identity": "ab" * 20,
              "split": split, "duplicates_in_train": {"valid": 41, "test": 32}, "skipped_files": [],
              "versions": {"minarn": "0.1.0", "python": "3.11.7", "numpy": "2.4.6"}, "backend": "numpy"}
    if finished:
        config["test"] = {"best_epoch": epochs_done, "accuracy": 2357 / 2359, "log_loss": 0.00612, "errors": 2}
        summary = {"precision": 0.99912, "recall": 0.99913, "f1": 0.99911, "accuracy": 2357 / 2359,
                   "kappa": 0.99898, "log_loss": 0.00612}
        (folder / "report.md").write_text(report_text(summary))
        (folder / "figures").mkdir()
        (folder / "figures" / "fig7_learning_curves.png").write_bytes(b"\x89PNG fig7")
        (folder / "figures" / "fig8_confusion_confidence.png").write_bytes(b"\x89PNG fig8")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    with open(folder / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for e in range(1, epochs_done + 1):
            writer.writerow({"epoch": e, "loss": 0.4 / e, "accuracy": 0.983697, "val_loss": 0.13 / e,
                             "val_accuracy": 0.998304, "lr": 0.001, "next_lr": 0.001, "monitor": "val_loss",
                             "improvement": 0, "duration": 600.5})
    (folder / "train.log").write_text(f"minarn 0.1.0: ARN-CNN training, kernels: numpy, run folder: {folder}\n")
    (folder / "checkpoint.npz").write_bytes(b"checkpoint")
    (folder / "model.npz").write_bytes(b"weights")
    return folder


def report_text(summary: dict[str, float], scale: float = 1.0) -> str:
    """report.md's Tables 2-4 in minarn.evaluate's format; ``scale`` multiplies the uncertainty values."""
    rows = [metrics.ClassUncertainty(i, c, 400, scale * 0.01 * (i + 1), scale * 0.001 * (i + 1), "low")
            for i, c in enumerate(CLASSES)]
    t3, t4 = _uncertainty_tables(rows)
    return (f"# Evaluation\n\n## Table 2: test metrics\n\n{metrics.summary_markdown(summary)}\nPaper: ...\n\n"
            f"## Table 3: uncertainty (entropy) per class\n\nMean ...\n\n{t3}\n"
            f"## Table 4: standard deviation of the normalized maximum probability per class\n\nStd ...\n\n{t4}\n")


def add_interim(run: Path, epochs_finished: int, best_epoch: int) -> None:
    """An interim/ folder as ``python -m minarn.evaluate RUN --checkpoint --no-figures`` writes it."""
    summary = {"precision": 0.99955, "recall": 0.99956, "f1": 0.99954, "accuracy": 2358 / 2359, "kappa": 0.99949,
               "log_loss": 0.00171}
    (run / "interim" / "figures").mkdir(parents=True)
    for key in publish.INTERIM_FIGURES:
        (run / "interim" / "figures" / publish.FIGURE_FILES[key]).write_bytes(b"\x89PNG " + key.encode())
    (run / "interim" / "report.md").write_text(report_text(summary, scale=0.5))
    (run / "interim" / "test.json").write_text(json.dumps({**summary, "errors": 1, "images": 2359,
                                                           "best_epoch": best_epoch,
                                                           "epochs_finished": epochs_finished}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """An empty results folder whose README.md holds every generated block between hand-written lines."""
    folder = tmp_path / "results"
    folder.mkdir()
    blocks = "".join(f"text before {name}\n<!-- generated:{name} -->\nstale\n<!-- end:{name} -->\n"
                     for name in publish.BLOCKS)
    (folder / "README.md").write_text("# Results\n\n" + blocks + "closing text\n")
    return folder


def block(readme: Path, name: str) -> str:
    return re.search(rf"<!-- generated:{name} -->\n(.*?)<!-- end:{name} -->", readme.read_text(), re.DOTALL)[1]


# -- the published results ------------------------------------------------------------------------------
def test_generated_parts_of_results_readme_are_up_to_date() -> None:
    assert publish.outdated(RESULTS) == [], "run: python tools/publish.py --tables"
    assert publish.main(["--check"]) == 0


def test_results_hold_no_checkpoint_and_weights_only_of_finished_runs() -> None:
    assert not list(RESULTS.rglob("checkpoint.npz"))
    for weights in RESULTS.glob("*/model.npz"):
        assert publish.read_run(weights.parent).finished, f"{weights}: the run is not finished"
    for png in RESULTS.rglob("*.png"):
        assert png.stat().st_size < 400_000, f"{png}: {png.stat().st_size:,} bytes; keep the repository small"


def test_published_commands_parse_back_to_the_runs_options() -> None:
    runs = publish.read_published(RESULTS)
    assert runs
    for run in runs:
        argv = shlex.split(publish.command(run))
        assert argv[:3] == ["python", "-m", "minarn.train"]
        args = build_parser().parse_args(argv[3:])
        assert _options_from_args(args, args.data) == run.options, run.name
        assert args.out == f"runs/{run.name}"


def test_commands_with_own_data_options_parse_back(tmp_path: Path) -> None:
    argv = ["--data", "/d", "--epochs", "2", "--batch-size", "8", "--split", "0.7,0.2,0.1", "--image-size", "32",
            "--channels", "3", "--class-weight", "balanced"]
    args = build_parser().parse_args(argv)
    options = _options_from_args(args, args.data)
    assert {"split", "image_size", "channels", "class_weight"} <= options.keys()
    again = build_parser().parse_args(shlex.split(publish.command(publish.Run("x", tmp_path, {"options": options},
                                                                               [], None)))[3:])
    assert _options_from_args(again, again.data) == options


def test_readme_archive_checksum_is_the_data_checksum() -> None:
    sha_file = ROOT.parent / "shared" / "data" / "MedNIST.sha256"
    if not sha_file.is_file():
        pytest.skip(f"{sha_file} is not on this machine")
    digest = sha_file.read_text().split()[0]
    assert digest in (RESULTS / "README.md").read_text()


# -- publishing -------------------------------------------------------------------------------------------
def test_finished_run_is_copied_with_report_and_figures_but_no_checkpoint(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "runs" / "train-42", epochs_done=7, finished=True, epochs=7)
    dest = publish.publish(run, results, name="short-seed123", say=lambda _: None)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["config.json", "figures/fig7_learning_curves.png", "figures/fig8_confusion_confidence.png",
                     "history.csv", "report.md", "train.log"]
    assert (dest / "history.csv").read_bytes() == (run / "history.csv").read_bytes()
    assert (run / "checkpoint.npz").is_file() and (run / "model.npz").is_file()  # copied, not moved

    publish.publish(run, results, name="short-seed123", weights=True, say=lambda _: None)
    assert (dest / "model.npz").read_bytes() == b"weights"
    assert not (dest / "checkpoint.npz").exists()


def test_finished_run_fills_the_tables(tmp_path: Path, results: Path) -> None:
    assert publish.main([str(make_run(tmp_path / "a", 7, True)), "--name", "default-seed123", "--results",
                         str(results)]) == 0
    readme = results / "README.md"
    assert publish.outdated(results) == []
    assert "text before table2" in readme.read_text() and readme.read_text().endswith("closing text\n")
    table2 = block(readme, "table2")
    assert "| paper |  | 1.0000 | 1.0000 | 1.0000 | 0.9996 | 0.99 | 0.0037 | 1 of 2,359 |" in table2
    assert "| 0.9991 | 0.9991 | 0.9991 | 0.9992 | 0.9990 | 0.0061 | 2 of 2,359 |" in table2
    assert "7 epochs (stopped by the controller)" in table2
    assert "| ChestCT | 400 | 0.0400 | 0.0040 |" in block(readme, "tables34")
    assert "![Fig. 7, default-seed123](default-seed123/figures/fig7_learning_curves.png)" in block(readme, "fig7")
    assert "not run yet" in block(readme, "table6") and "not run yet" in block(readme, "dedupe")
    assert "| 1 | 0.400 | 98.370 | 0.13000 | 99.830 | 0.001 | 0.001 | val_loss | 0.00 | 600.50 s |" in \
        block(readme, "table1")
    assert "--epochs 100 --batch-size 40 --lr 0.001 --seed 123 --out runs/default-seed123" in block(readme, "commands")


def test_in_progress_run_is_shown_as_in_progress(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "runs" / "default-seed123", epochs_done=3, finished=False)
    (run / "report.md").write_text("# a report of an earlier, shorter session\n")
    (run / "figures").mkdir()
    (run / "figures" / "fig7_learning_curves.png").write_bytes(b"\x89PNG old")
    dest = publish.publish(run, results, say=lambda _: None)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "history.csv", "train.log"]
    publish.write_tables(results, say=lambda _: None)
    readme = results / "README.md"
    for name in ("runs", "table2", "table6", "fig7", "seeds", "tables34"):
        assert "in progress, 3 epochs so far" in block(readme, name), name
    assert "0:30:02 so far" in block(readme, "times")
    with pytest.raises(publish.PublishError, match="--weights needs a finished run"):
        publish.publish(run, results, weights=True, say=lambda _: None)


def test_interim_evaluation_fills_the_tables_marked_interim(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "runs" / "default-seed123", epochs_done=32, finished=False)
    add_interim(run, epochs_finished=32, best_epoch=31)
    dest = publish.publish(run, results, say=lambda _: None)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["config.json", "history.csv", "interim/figures/fig7_learning_curves.png",
                     "interim/figures/misclassified_gradcam.png", "interim/report.md", "interim/test.json",
                     "train.log"]
    publish.write_tables(results, say=lambda _: None)
    readme = results / "README.md"
    assert ("| in progress, 32 epochs so far (interim, best epoch 31) | 0.9996 | 0.9996 | 0.9995 | 0.9996 | 0.9995 "
            "| 0.0017 | 1 of 2,359 |") in block(readme, "table2")
    for name in ("runs", "seeds"):
        assert "99.958 % (1 of 2,359 wrong) (interim, best epoch 31) | 0.0017 |" in block(readme, name), name
    assert "| in progress, 32 epochs so far (interim, best epoch 31) | 0.9996 | 0.0017 |" in block(readme, "table6")
    tables34 = block(readme, "tables34")
    assert "| ChestCT | 400 | 0.0200 | 0.0020 |" in tables34
    assert "columns are interim, from the best weights of epoch 31" in tables34
    assert "[report](default-seed123/interim/report.md)" in tables34
    assert "![Fig. 7 so far, default-seed123](default-seed123/interim/figures/fig7_learning_curves.png)" in \
        block(readme, "fig7")
    # the finished run replaces the interim numbers; its copy drops interim/
    finished = make_run(tmp_path / "later" / "default-seed123", epochs_done=40, finished=True)
    add_interim(finished, epochs_finished=38, best_epoch=37)
    publish.publish(finished, results, say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    assert not (dest / "interim").exists() and "interim" not in block(readme, "table2")


def test_stale_interim_evaluation_is_not_copied(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "runs" / "default-seed7", epochs_done=10, finished=False, seed=7)
    add_interim(run, epochs_finished=9, best_epoch=9)  # made before the 10th epoch finished
    said: list[str] = []
    dest = publish.publish(run, results, say=said.append)
    assert not (dest / "interim").exists()
    assert any("made after epoch 9, but the run has finished 10" in line for line in said)
    publish.write_tables(results, say=lambda _: None)
    assert "interim" not in block(results / "README.md", "seeds")


def test_interim_option_needs_a_run_in_progress_with_a_checkpoint(tmp_path: Path, results: Path, capsys) -> None:
    finished = make_run(tmp_path / "done", 7, True)
    assert publish.main([str(finished), "--interim", "--results", str(results)]) == 2
    assert "--interim is for a run in progress" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: --interim needs RUN_DIR
        publish.main(["--tables", "--interim", "--results", str(results)])
    assert exit_info.value.code == 2 and "--interim need RUN_DIR" in capsys.readouterr().err
    running = make_run(tmp_path / "running", 3, False)  # neither its data path nor its checkpoint.npz is real
    assert publish.main([str(running), "--interim", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python tools/publish.py: error: --interim:") and err.count("\n") == 1


def test_interim_option_evaluates_a_real_checkpoint(tiny_run: Path, tmp_path: Path, results: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on a real run made to look unfinished: --interim evaluates its checkpoint, publishes interim/
    and the tables show the checkpoint's numbers, which equal the finished run's evaluation."""
    monkeypatch.setenv("MINARN_CACHE", tiny_cache(tiny_run))
    run = tmp_path / "runs" / "default-seed123"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model.npz", "report.md", "figures", "interim"))
    config = json.loads((run / "config.json").read_text())
    finished_test = config.pop("test")
    (run / "config.json").write_text(json.dumps(config))
    assert publish.main([str(run), "--interim", "--results", str(results)]) == 0
    dest = results / "default-seed123"
    interim = json.loads((dest / "interim" / "test.json").read_text())
    expected = ["figures/fig7_learning_curves.png", "report.md", "test.json"]
    expected += ["figures/misclassified_gradcam.png"] * (interim["errors"] > 0)
    assert sorted(str(p.relative_to(dest / "interim")) for p in (dest / "interim").rglob("*") if p.is_file()) == \
        sorted(expected)
    assert interim["accuracy"] == pytest.approx(finished_test["accuracy"], abs=1e-12)
    assert interim["log_loss"] == pytest.approx(finished_test["log_loss"], rel=1e-6)
    n = config["split"]["test"]["total"]
    row = (f"{100 * interim['accuracy']:.3f} % ({interim['errors']} of {n:,} wrong) (interim, best epoch 1) | "
           f"{interim['log_loss']:.4f} |")
    assert row in block(results / "README.md", "runs")


def test_dedupe_run_joins_table1_but_not_the_ablations(tmp_path: Path, results: Path) -> None:
    publish.publish(make_run(tmp_path / "dedupe-seed123", epochs_done=5, finished=False, dedupe=True), results,
                    say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    readme = results / "README.md"
    assert "| [`dedupe-seed123`](dedupe-seed123/) | 5 | 0.080 |" in block(readme, "table1")
    assert "dedupe-seed123" not in block(readme, "table6")


def test_one_epoch_is_singular(tmp_path: Path) -> None:
    one = publish.read_run(make_run(tmp_path / "a", epochs_done=1, finished=False))
    assert one.status == "in progress, 1 epoch so far"
    two = publish.read_run(make_run(tmp_path / "b", epochs_done=2, finished=False))
    assert two.status == "in progress, 2 epochs so far"


def test_republishing_replaces_the_earlier_copy(tmp_path: Path, results: Path) -> None:
    finished = make_run(tmp_path / "old", 2, True)
    publish.publish(finished, results, name="default-seed123", weights=True, say=lambda _: None)
    dest = publish.publish(make_run(tmp_path / "new", 3, False), results, name="default-seed123", say=lambda _: None)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "history.csv", "train.log"]


def test_two_dense_activations_give_the_fig10_table_and_figure(tmp_path: Path, results: Path) -> None:
    for act in ("gelu", "relu"):
        run = make_run(tmp_path / act, 2, True, epochs=2, dense_activation=act)
        assert publish.main([str(run), "--name", f"fig10-{act}", "--results", str(results)]) == 0
    assert (results / publish.FIG10).stat().st_size > 10_000  # drawn by minarn.evaluate.compare_runs
    fig10 = block(results / "README.md", "fig10")
    assert "| epoch | gelu ([`fig10-gelu`](fig10-gelu/)) | relu ([`fig10-relu`](fig10-relu/)) |" in fig10
    assert "| 2 | 0.2000 | 0.2000 |" in fig10 and "Not run yet" not in fig10
    assert f"![Fig. 10]({publish.FIG10})" in fig10
    assert "`--epochs 2`, `--dense-activation relu`" in block(results / "README.md", "runs")


def test_two_seeds_give_the_spread_table_and_figure(tmp_path: Path, results: Path) -> None:
    runs = [make_run(tmp_path / "s123", 4, True), make_run(tmp_path / "s7", 3, False, seed=7)]
    assert publish.main([str(runs[0]), "--name", "default-seed123", "--results", str(results)]) == 0
    seeds = block(results / "README.md", "seeds")
    assert "Second seed: not run yet." in seeds and not (results / publish.SEEDS_FIG).exists()
    assert publish.main([str(runs[1]), "--name", "default-seed7", "--results", str(results)]) == 0
    assert (results / publish.SEEDS_FIG).stat().st_size > 10_000  # drawn by minarn.evaluate.compare_runs
    seeds = block(results / "README.md", "seeds")
    # the finished run: best epoch 4 and its validation row (0.13 / 4; 3,531 of 3,537 images right)
    assert "| [`default-seed123`](default-seed123/) | 123 | 4 epochs (stopped by the controller) | 4 | 0.03250 | " \
           "99.830 | 99.915 % (2 of 2,359 wrong) | 0.0061 |" in seeds
    # the run in progress has no evaluation yet: no best epoch, no test numbers
    assert "| [`default-seed7`](default-seed7/) | 7 | in progress, 3 epochs so far |  |  |  | - |  |" in seeds
    assert f"![Loss per epoch by seed]({publish.SEEDS_FIG})" in seeds and "--by seed" in seeds
    assert "not run yet" not in seeds


def test_ablations_are_compared_with_arn_cnn_at_the_same_epochs(tmp_path: Path, results: Path) -> None:
    for name, epochs, options in (("no-attention", 3, {"attention": False, "epochs": 3}),
                                  ("no-residual", 2, {"residual": False, "epochs": 2}),
                                  ("default-seed123", 5, {}), ("short", 2, {"epochs": 2})):
        publish.publish(make_run(tmp_path / name, epochs, True, **options), results, say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    table6 = block(results / "README.md", "table6")
    assert "in the first 3 epochs, every variant with at least 3:" in table6
    # the 2-epoch runs are left out; values: val_loss 0.13 / epoch, val_accuracy 3,531 of 3,537
    assert "| epoch | [`no-attention`](no-attention/) | [`default-seed123`](default-seed123/) |" in table6
    assert "| 3 | 0.04333 / 99.830 | 0.04333 / 99.830 |" in table6
    assert "[`short`](short/) |" not in table6.partition("in the first")[2]


def test_run_folder_without_history_names_the_file(tmp_path: Path, results: Path, capsys) -> None:
    run = make_run(tmp_path / "broken", 2, True)
    (run / "history.csv").unlink()
    with pytest.raises(publish.PublishError, match=re.escape(str(run / "history.csv")) + ": missing"):
        publish.publish(run, results, say=lambda _: None)
    assert not (results / "broken").exists()
    assert publish.main([str(run), "--results", str(results)]) == 2
    assert str(run / "history.csv") in capsys.readouterr().err


def test_report_disagreeing_with_config_is_an_error(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "run", 2, True)
    config = json.loads((run / "config.json").read_text())
    config["test"]["accuracy"] = 0.9950
    (run / "config.json").write_text(json.dumps(config))
    publish.publish(run, results, say=lambda _: None)
    with pytest.raises(publish.PublishError, match="different evaluations"):
        publish.write_tables(results, say=lambda _: None)


def test_check_fails_on_a_stale_or_hand_edited_block(tmp_path: Path, results: Path) -> None:
    publish.publish(make_run(tmp_path / "run", 2, True), results, say=lambda _: None)
    assert publish.main(["--check", "--results", str(results)]) == 1  # still "stale" from the fixture
    publish.write_tables(results, say=lambda _: None)
    assert publish.main(["--check", "--results", str(results)]) == 0
    readme = results / "README.md"
    readme.write_text(readme.read_text().replace("| paper |", "| the paper |", 1))
    assert publish.outdated(results) == ["table1"]


def test_unknown_or_unbalanced_markers_are_errors(results: Path) -> None:
    readme = results / "README.md"
    text = readme.read_text()
    readme.write_text(text + "<!-- generated:table9 -->\n<!-- end:table9 -->\n")
    with pytest.raises(publish.PublishError, match="unknown generated block"):
        publish.outdated(results)
    readme.write_text(text.replace("<!-- end:table2 -->", ""))
    with pytest.raises(publish.PublishError, match="unbalanced"):
        publish.outdated(results)


# -- statistics: intervals, McNemar, near-duplicates, time to accuracy -----------------------------------------
COUNTS = [400, 359, 400, 400, 400, 400]


def add_predictions(run: Path, wrong: Sequence[int], p_wrong: float | None = 0.3, log_loss: float = 0.00612,
                    paths_offset: int = 0) -> None:
    """A test_predictions.csv for a make_run folder: 2,359 images, the ``wrong`` ones predicted as another class;
    p(true) chosen so that the mean log loss is ``log_loss`` (None: p_true left empty). config.json follows."""
    labels = np.repeat(np.arange(6), COUNTS)
    lines = ["path,label,predicted,p_true"]
    x = (log_loss * len(labels) + len(wrong) * np.log(p_wrong)) / (len(labels) - len(wrong)) if p_wrong else 0
    for i in range(len(labels)):
        g = i + paths_offset  # image number g has class labels[g % 2359] in every run
        y = labels[g % len(labels)]
        pred = (y + 1) % 6 if i in wrong else y
        p = "" if p_wrong is None else repr(p_wrong if i in wrong else float(np.exp(-x)))
        lines.append(f"{CLASSES[y]}/{g:06d}.jpeg,{CLASSES[y]},{CLASSES[pred]},{p}")
    (run / "predictions.tmp").write_text("\n".join(lines) + "\n")
    (run / "predictions.tmp").rename(run / publish.PREDICTIONS)
    config = json.loads((run / "config.json").read_text())
    config["test"].update(errors=len(wrong), accuracy=1 - len(wrong) / 2359, log_loss=log_loss)
    (run / "config.json").write_text(json.dumps(config))
    summary = {"precision": 0.999, "recall": 0.999, "f1": 0.999, "accuracy": 1 - len(wrong) / 2359, "kappa": 0.999,
               "log_loss": log_loss}
    (run / "report.md").write_text(report_text(summary))


def add_confusion_matrix(run: Path, errors_per_class: Sequence[int]) -> None:
    """report.md's confusion matrix with ``errors_per_class`` (each predicted as the next class); config follows."""
    from minarn.evaluate import _confusion_markdown

    C = np.diag(COUNTS) - np.diag(errors_per_class)
    for k, e in enumerate(errors_per_class):
        C[k, (k + 1) % 6] += e
    accuracy = 1 - sum(errors_per_class) / 2359
    config = json.loads((run / "config.json").read_text())
    config["test"].update(errors=int(sum(errors_per_class)), accuracy=accuracy)
    (run / "config.json").write_text(json.dumps(config))
    summary = {"precision": 0.999, "recall": 0.999, "f1": 0.999, "accuracy": accuracy, "kappa": 0.999,
               "log_loss": config["test"]["log_loss"]}
    matrix = _confusion_markdown(C, CLASSES)
    (run / "report.md").write_text(report_text(summary) + "\n## Confusion matrix (rows: true class, columns: "
                                   f"predicted class)\n\n{matrix}")


def test_intervals_table_gives_clopper_pearson_and_the_bootstrap(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "a", 4, True)
    add_predictions(run, wrong=[0, 500])
    publish.publish(run, results, name="default-seed123", say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    acc = metrics.clopper_pearson_interval(2357, 2359)
    pred = publish.read_predictions(results / "default-seed123" / publish.PREDICTIONS)
    losses = -np.log(pred.p_true)
    assert losses.mean() == pytest.approx(0.00612)
    ll = metrics.bootstrap_mean_interval(losses)
    row = f"| 2,359 | 2 | 99.915 % | {100 * acc.low:.3f}-{100 * acc.high:.3f} % | 0.0061 | {ll.low:.4f}-{ll.high:.4f} |"
    assert row in block(results / "README.md", "intervals")
    # a predictions file that disagrees with config.json is an error naming the file
    config = json.loads((results / "default-seed123" / "config.json").read_text())
    config["test"]["errors"] = 3
    (results / "default-seed123" / "config.json").write_text(json.dumps(config))
    with pytest.raises(publish.PublishError, match=r"test_predictions.csv: 2,359 images, 2 wrong, but config.json"):
        publish.write_tables(results, say=lambda _: None)


def test_mcnemar_table_pairs_known_predictions_and_bounds_unknown_ones(tmp_path: Path, results: Path) -> None:
    a = make_run(tmp_path / "s123", 4, True)
    add_predictions(a, wrong=[0, 1, 2, 3, 4, 5])  # six AbdomenCT errors
    b = make_run(tmp_path / "s7", 4, True, seed=7)
    add_predictions(b, wrong=[0], p_wrong=None)  # one of the same images; no probabilities
    gelu = make_run(tmp_path / "gelu", 2, True, epochs=2)
    add_confusion_matrix(gelu, [0, 0, 2, 0, 1, 0])  # which images is not known
    relu = make_run(tmp_path / "relu", 2, True, epochs=2, dense_activation="relu")
    add_confusion_matrix(relu, [0, 0, 1, 0, 2, 0])
    for run, name in ((a, "default-seed123"), (b, "default-seed7"), (gelu, "short-gelu"), (relu, "fig10-relu")):
        publish.publish(run, results, name=name, say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    table = block(results / "README.md", "mcnemar")
    exact = metrics.binomial_two_sided_p(0, 5)  # b is right on five images a gets wrong, never the reverse
    assert (f"| seed | [`default-seed123`](default-seed123/) | [`default-seed7`](default-seed7/) | 2,359 | 6 / 1 | "
            f"0 / 5 | {exact:.3g} | no |") in table
    low, high = metrics.mcnemar_exact_range([0, 0, 1, 0, 2, 0], [0, 0, 2, 0, 1, 0], COUNTS)
    assert (f"| dense activation | [`fig10-relu`](fig10-relu/) | [`short-gelu`](short-gelu/) | 2,359 | 3 / 3 | ? | "
            f"{publish.p_cell(publish.Comparison(0, 0, 0, None, None, low, high, ''))} | no |") in table
    # a = six errors, gelu = three elsewhere: the pairing does not matter, no image can be wrong in both of them
    assert "| 2,359 | 6 / 3 |" in table
    five, six = metrics.binomial_two_sided_p(0, 5), metrics.binomial_two_sided_p(0, 6)  # 0.0625, 0.03125
    assert publish.verdict(publish.Comparison(1, 0, 5, 0, 5, five, five, "")) == "no"
    assert publish.verdict(publish.Comparison(1, 0, 6, 0, 6, six, six, "")) == "yes"
    assert publish.verdict(publish.Comparison(1, 0, 0, None, None, 0.01, 0.2, "")) == \
        "depends on which images are wrong"


def test_dedupe_run_is_compared_on_the_test_images_both_splits_hold(tmp_path: Path, results: Path) -> None:
    default = make_run(tmp_path / "d", 4, True)
    add_predictions(default, wrong=[3])
    dedupe = make_run(tmp_path / "dd", 4, True, dedupe=True)
    add_predictions(dedupe, wrong=[], paths_offset=2000)  # images 2000-2358 of the default split are in both
    publish.publish(default, results, name="default-seed123", say=lambda _: None)
    publish.publish(dedupe, results, name="dedupe-seed123", say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    row = "| `--dedupe` | [`dedupe-seed123`](dedupe-seed123/) | [`default-seed123`](default-seed123/) | 359 | 0 / 0 |"
    assert row in block(results / "README.md", "mcnemar")


def test_optimizers_are_compared_at_the_same_epoch_budget(tmp_path: Path, results: Path) -> None:
    say = lambda _: None
    publish.publish(make_run(tmp_path / "default", 5, True), results, name="default-seed123", say=say)
    publish.write_tables(results, say=say)
    assert "Not run yet" in block(results / "README.md", "optimizers")  # Adamax alone is no comparison
    adamax = make_run(tmp_path / "adamax", 3, True, epochs=3)
    add_predictions(adamax, wrong=[7])
    sgd = make_run(tmp_path / "sgd", 3, True, epochs=3, optimizer="sgd")
    add_predictions(sgd, wrong=[7, 8, 9, 10, 11, 12, 13])
    adam = make_run(tmp_path / "adam", 2, False, epochs=3, optimizer="adam")  # still training
    for run, name in ((sgd, "sgd-3"), (adam, "adam-3"), (adamax, "adamax-3")):
        assert publish.main([str(run), "--name", name, "--results", str(results)]) == 0
    # one figure for the 3-epoch budget, drawn by minarn.evaluate.compare_runs; none for default-seed123's 100
    assert (results / publish.OPTIMIZER_FIG.format(epochs=3)).stat().st_size > 10_000
    assert not (results / publish.OPTIMIZER_FIG.format(epochs=100)).exists()
    table = block(results / "README.md", "optimizers")
    assert table.startswith("`--epochs 3`:\n") and "--epochs 100" not in table and "default-seed123" not in table
    # Adamax, Adam, SGD in that order; validation at the best epoch 3 (0.13 / 3; 3,531 of 3,537 right)
    acc = metrics.clopper_pearson_interval(2358, 2359)
    assert (f"| adamax | [`adamax-3`](adamax-3/) | 3 epochs (`--epochs 3` reached) | 3 | 0.04333 | 99.830 | "
            f"99.958 % (1 of 2,359 wrong) | {100 * acc.low:.3f}-{100 * acc.high:.3f} % | 0.0061 |") in table
    assert "| adam | [`adam-3`](adam-3/) | in progress, 2 epochs so far |  |  |  | - |  |  |  |" in table
    assert table.index("| adamax |") < table.index("| adam |") < table.index("| sgd |")
    assert ("| epoch | adamax ([`adamax-3`](adamax-3/)) | adam ([`adam-3`](adam-3/)) | sgd ([`sgd-3`](sgd-3/)) |"
            in table)
    assert "| 3 | 0.04333 / 99.830 |  | 0.04333 / 99.830 |" in table  # Adam has no third epoch yet
    assert "--compare results/adamax-3 results/adam-3 results/sgd-3 --by optimizer" in table
    # McNemar: the finished pair at the same budget, Adamax right on six images SGD gets wrong
    mcnemar = block(results / "README.md", "mcnemar")
    p = metrics.binomial_two_sided_p(0, 6)
    assert (f"| optimizer (`--epochs 3`) | [`adamax-3`](adamax-3/) | [`sgd-3`](sgd-3/) | 2,359 | 1 / 7 | 6 / 0 | "
            f"{p:.3g} | yes |") in mcnemar
    assert "optimizer (`--epochs 100`)" not in mcnemar and "[`adam-3`]" not in mcnemar


def test_a_run_the_controller_stopped_joins_every_larger_budget(tmp_path: Path, results: Path) -> None:
    say = lambda _: None
    default = make_run(tmp_path / "default", 12, True)  # the paper's --epochs 100, stopped after 12
    add_predictions(default, wrong=[3])
    sgd = make_run(tmp_path / "sgd", 2, True, epochs=10, optimizer="sgd")  # stopped after 2 of its 10
    add_predictions(sgd, wrong=[3, 4])
    for run, name in ((default, "default-seed123"), (sgd, "optimizer-sgd")):
        publish.publish(run, results, name=name, say=say)
    publish.write_tables(results, say=say)
    table = block(results / "README.md", "optimizers")
    # within --epochs 10 only SGD stopped (the default run took 12): one optimizer; --epochs 100 has both
    assert table.startswith("`--epochs 100`:\n") and "`--epochs 10`:" not in table
    assert "| sgd | [`optimizer-sgd`](optimizer-sgd/) | 2 epochs (stopped by the controller) |" in table
    assert "| adamax | [`default-seed123`](default-seed123/) | 12 epochs (stopped by the controller) |" in table
    assert "| optimizer (`--epochs 100`) | [`default-seed123`](default-seed123/) | [`optimizer-sgd`](optimizer-sgd/) " \
           "| 2,359 | 1 / 2 | 1 / 0 |" in block(results / "README.md", "mcnemar")
    # a run that reached its --epochs is not taken into a larger budget; SGD's 2 epochs join Adam's 3
    publish.publish(make_run(tmp_path / "adam", 3, True, epochs=3, optimizer="adam"), results, say=say)
    publish.write_tables(results, say=say)
    three, _, hundred = block(results / "README.md", "optimizers").partition("`--epochs 100`:")
    assert three.startswith("`--epochs 3`:") and "[`adam`]" in three and "[`optimizer-sgd`]" in three
    assert "[`adam`]" not in hundred and "[`optimizer-sgd`]" in hundred


def write_audit(results: Path, near: dict[str, list[tuple[str, float]]], threshold: float = 0.05) -> None:
    """A minimal results/near-duplicates/ (near_duplicates.json, near_copies.csv) with the test images ``near``."""
    folder = results / publish.AUDIT
    folder.mkdir()
    parts = {"valid": {"images": 3537, "exact": 1, "near": {"0.05": 2}},
             "test": {"images": 2359, "exact": 1, "near": {"0.05": 2}}}
    summary = {"images": 58954, "threshold": threshold, "threshold_rule": "the gap", "max_distance": 0.2,
               "seconds": 12.5, "classes": [{"class": c, "images": 10, "exact_groups": 1, "exact_extra": 1,
                                            "near_groups": 2, "near_images": 4} for c in CLASSES],
               "splits": {"paper": parts, "dedupe": parts}}
    (folder / "near_duplicates.json").write_text(json.dumps(summary))
    rows = ["split,part,path,label,train_path,train_label,distance"]
    rows += [f"{split},test,{path},AbdomenCT,AbdomenCT/x.jpeg,AbdomenCT,{d}" for split, items in near.items()
             for path, d in items]
    (folder / "near_copies.csv").write_text("\n".join(rows) + "\n")


def test_near_duplicate_table_scores_the_runs_without_the_copied_test_images(tmp_path: Path,
                                                                            results: Path) -> None:
    run = make_run(tmp_path / "d", 4, True)
    add_predictions(run, wrong=[0, 1])
    publish.publish(run, results, name="default-seed123", say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    assert "Not run yet" in block(results / "README.md", "neardup")
    # image 0 (wrong) and image 7 (right) have a copy within the threshold, image 9 only a looser one
    write_audit(results, {"paper": [("AbdomenCT/000000.jpeg", 0.0), ("AbdomenCT/000007.jpeg", 0.03),
                                    ("AbdomenCT/000009.jpeg", 0.09)]})
    publish.write_tables(results, say=lambda _: None)
    table = block(results / "README.md", "neardup")
    pred = publish.read_predictions(results / "default-seed123" / publish.PREDICTIONS)
    keep = np.ones(2359, bool)
    keep[[0, 7]] = False
    acc = metrics.clopper_pearson_interval(2356, 2357)
    loss = -np.log(pred.p_true[keep])
    ll = metrics.bootstrap_mean_interval(loss)
    assert (f"| [`default-seed123`](default-seed123/) | paper | 2 | 2,356 of 2,357 | {100 * acc.low:.3f}-"
            f"{100 * acc.high:.3f} % | {loss.mean():.4f} | {ll.low:.4f}-{ll.high:.4f} |") in table
    assert "threshold 0.0500 (the gap)" in table and "| paper | test | 2,359 | 1 | 2 |" in table


def test_time_to_accuracy_sums_the_epochs_to_the_first_one_at_99_9(tmp_path: Path, results: Path) -> None:
    run = make_run(tmp_path / "d", 5, True)
    history = (run / "history.csv").read_text().splitlines()
    history[3] = history[3].replace("0.998304", "0.999152")  # epoch 3: 3,534 of 3,537 right = 99.915 %
    (run / "history.csv").write_text("\n".join(history) + "\n")
    publish.publish(run, results, name="default-seed123", say=lambda _: None)
    slow = make_run(tmp_path / "s", 2, True, epochs=2)  # never reaches 99.9 %
    publish.publish(slow, results, name="short", say=lambda _: None)
    publish.write_tables(results, say=lambda _: None)
    table = block(results / "README.md", "timetoacc")
    assert "| paper | GPU (not stated here) |  | 2 | 0:03:18 |" in table  # 104.09 + 93.52 s
    assert ("| [`default-seed123`](default-seed123/) | `?`, numpy | not recorded (1 start) | 3 | 0:30:02 | 5 | "
            "0:50:02 | 5 epochs (stopped by the controller) | 0:50:02 | 600 s |") in table  # 600.5 s per epoch
    assert "| [`short`](short/) | `?`, numpy | not recorded (1 start) | not reached |" in table


def test_zero_error_predictions_are_the_rebuilt_test_split(tiny_run: Path, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARN_CACHE", tiny_cache(tiny_run))
    run = tmp_path / "no-weights"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model.npz", publish.PREDICTIONS))
    assert publish.main([str(run), "--zero-error-predictions"]) == 2  # the tiny run has test errors
    config = json.loads((run / "config.json").read_text())
    config["test"]["errors"] = 0
    (run / "config.json").write_text(json.dumps(config))
    assert publish.main([str(run), "--zero-error-predictions"]) == 0
    from minarn.evaluate import load_run_splits

    splits, _, _, _ = load_run_splits(run, cache_dir=tiny_cache(tiny_run))
    pred = publish.read_predictions(run / publish.PREDICTIONS)
    np.testing.assert_array_equal(pred.paths, splits.test.paths)
    np.testing.assert_array_equal(pred.labels, np.array(config["class_names"])[splits.test.labels])
    assert pred.correct.all() and np.isnan(pred.p_true).all()
    shutil.copy(tiny_run / "model.npz", run / "model.npz")
    with pytest.raises(publish.PublishError, match="has model.npz; python -m minarn.evaluate RUN_DIR writes"):
        publish.write_zero_error_predictions(run, say=lambda _: None)


def test_published_predictions_agree_with_the_runs_and_the_audit() -> None:
    runs = {r.name: r for r in publish.read_published(RESULTS)}
    with_file = {name: publish.run_predictions(r) for name, r in runs.items()
                 if (r.folder / publish.PREDICTIONS).is_file()}  # run_predictions checks them against config.json
    assert "default-seed123" in with_file and not np.isnan(with_file["default-seed123"].p_true).any()
    for name, pred in with_file.items():
        assert len(set(pred.paths.tolist())) == len(pred.paths), name
        assert int((~pred.correct).sum()) == runs[name].test["errors"], name  # the file and config.json agree
        if np.isnan(pred.p_true).any():  # written by --zero-error-predictions: only a run without a test error
            assert runs[name].test["errors"] == 0 and pred.correct.all(), name
        if not runs[name].options["dedupe"]:  # the paper's split: the same test images as the default run
            assert set(pred.paths.tolist()) == set(with_file["default-seed123"].paths.tolist()), name
    audit = publish.read_audit(RESULTS)
    assert audit is not None
    summary, copies = audit
    for r in runs.values():
        split = "dedupe" if r.options["dedupe"] else "paper"
        assert summary["splits"][split]["test"]["images"] == r.config["split"]["test"]["total"]
        assert summary["splits"][split]["test"]["exact"] == r.config["duplicates_in_train"]["test"]
    test_paths = set(with_file["default-seed123"].paths.tolist())
    assert all(c["path"] in test_paths for c in copies if c["split"] == "paper" and c["part"] == "test")


# -- the published default model reproduces its numbers (needs the data and the published weights) ----------
PUBLISHED_MODELS = sorted(p.parent.name for p in RESULTS.glob("*/model.npz")) or ["default-seed123"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED_MODELS)
def test_published_model_reproduces_its_test_metrics(name: str, tmp_path: Path) -> None:
    from minarn.evaluate import evaluate_run

    published = RESULTS / name
    if not DATA.is_file() or not (published / "model.npz").is_file():
        pytest.skip(f"needs {DATA} and {published / 'model.npz'}")
    result = evaluate_run(published, data=str(DATA), report=None, make_figures=False, out_dir=tmp_path / "check")
    expected = json.loads((published / "config.json").read_text())["test"]
    fresh, kept = (publish.read_predictions(folder / publish.PREDICTIONS) for folder in (tmp_path / "check", published))
    np.testing.assert_array_equal(fresh.paths, kept.paths)
    np.testing.assert_array_equal(fresh.predicted, kept.predicted)
    np.testing.assert_allclose(fresh.p_true, kept.p_true, rtol=1e-5)
    assert result["warnings"] == []
    assert int(result["confusion_matrix"].sum() - result["confusion_matrix"].trace()) == expected["errors"]
    assert result["summary"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert result["summary"]["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-3)
