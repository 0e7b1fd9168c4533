"""Graders of lesson 13's exercise (the paper's epoch-end controller): epoch by epoch against
minarn.controller.EpochEndController on the paper's V_loss column, the lesson's made-up run, a run that reaches
accuracy 0.9 exactly, and runs that hypothesis draws (with ties, switches back and forth, stops)."""

import math
import traceback
from pathlib import Path

from hypothesis import strategies as st

from minarn.controller import EpochEndController
from minarn.exercises.grading import Failure, exercise, falsify

LESSON = "13_train_arn_cnn"
START = {"highest_tracc": 0.0, "lowest_vloss": math.inf, "best_epoch": 1, "stop_count": 0}
DECISION = ("monitor", "improvement", "improved", "next_lr", "restore", "stop")

HINTS = {
    "monitor": "monitor is 'accuracy' while acc < threshold and 'val_loss' from acc >= threshold on",
    "improvement": ("% Improv = 100 (acc - highest_tracc) / highest_tracc (accuracy) or 100 (lowest_vloss - v_loss) / "
                    "lowest_vloss (val_loss), computed before the bests change; 0.0 in epoch 0 and while the best "
                    "is 0 or inf"),
    "improved": "improved strictly: acc > highest_tracc (accuracy) or v_loss < lowest_vloss (val_loss); a tie is not",
    "next_lr": "an epoch that does not improve halves the learning rate: next_lr = lr * factor; one that improves "
               "keeps lr",
    "restore": "restore is True exactly when the learning rate is cut (dwell: the best epoch's weights go back)",
    "stop": "stop = stop_count >= stop_patience, stop_count counting the cuts since the last improvement",
    "highest_tracc": "highest_tracc takes acc when accuracy improves; in val_loss mode a non-improving epoch raises it "
                     "to max(highest_tracc, acc)",
    "lowest_vloss": "lowest_vloss takes v_loss when val_loss improves; an improving epoch in accuracy mode lowers it "
                    "to min(lowest_vloss, v_loss)",
    "best_epoch": "best_epoch = epoch + 1 of the last improving epoch",
    "stop_count": "stop_count: + 1 for every cut, back to 0 at every improvement",
}


class Run:
    """A sequence of epochs (training accuracy, validation loss) and the controller's parameters."""

    def __init__(self, epochs, threshold=0.9, factor=0.5, stop_patience=3, lr=0.001, name="a run"):
        self.epochs, self.threshold, self.factor, self.stop_patience = list(epochs), threshold, factor, stop_patience
        self.lr, self.name = lr, name

    def text(self, upto):
        rows = ", ".join(f"({a:g}, {v:g})" for a, v in self.epochs[: upto + 1])
        return (f"{self.name}, epochs (acc, v_loss) = [{rows}], threshold={self.threshold:g}, factor={self.factor:g}, "
                f"stop_patience={self.stop_patience}, first lr {self.lr:g}")

    def __repr__(self):
        return self.text(len(self.epochs) - 1)


PAPER = Run([(0.99, v) for v in (0.12981, 0.08788, 0.06450, 0.05427, 0.04867)], name="the paper's first 5 epochs")
MADE_UP = Run([(0.60, 1.20), (0.85, 0.90), (0.93, 0.50), (0.95, 0.55), (0.95, 0.45), (0.96, 0.47), (0.96, 0.46),
               (0.97, 0.455)], name="the lesson's made-up run")
AT_THRESHOLD = Run([(0.6, 1.2), (0.9, 0.8), (0.9, 0.8), (0.85, 0.7), (0.85, 0.6), (0.95, 0.65)],
                   name="a run that reaches accuracy 0.9 exactly (and falls back below it)")
FIXED = [PAPER, MADE_UP, AT_THRESHOLD]

EPOCHS = st.lists(st.tuples(st.sampled_from([0.5, 0.6, 0.85, 0.9, 0.93, 0.97]),
                            st.sampled_from([1.0, 0.8, 0.5, 0.45, 0.3])), min_size=1, max_size=9)
RUNS = st.builds(Run, EPOCHS, st.sampled_from([0.9, 0.8]), st.sampled_from([0.5, 0.25]), st.sampled_from([3, 1, 2]))


def _call(fn, args, case_text):
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the student's code crashed: say where
        code = getattr(fn, "__code__", None)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if code and f.filename == code.co_filename]
        where = f" (line {frames[-1].lineno} of {Path(frames[-1].filename).name})" if frames else ""
        raise Failure(f"raised {type(exc).__name__}: {exc}{where}\n    input: {case_text}") from None


def _same(expected, got):
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return got == expected or (math.isfinite(expected) and abs(got - expected) <= 1e-9 * max(1.0, abs(expected)))
    return got == expected


@exercise(LESSON, "controller_step")
def grade_controller_step(controller_step) -> None:
    """controller_step(state, epoch, acc, v_loss, lr, threshold, factor, stop_patience) -> (state, decision)."""

    def check(run):
        ctrl = EpochEndController({}, patience=1, stop_patience=run.stop_patience, threshold=run.threshold,
                                  factor=run.factor, dwell=True)
        state, lr = dict(START), run.lr
        for epoch, (acc, v_loss) in enumerate(run.epochs):
            d = ctrl.on_epoch_end(epoch, acc, v_loss, lr, snapshot=dict)
            text = run.text(epoch)
            got = _call(controller_step, (dict(state), epoch, acc, v_loss, lr, run.threshold, run.factor,
                                          run.stop_patience), text)
            if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(g, dict) for g in got):
                raise Failure(f"controller_step must return the tuple (state, decision) of two dicts, got "
                              f"{type(got).__name__}\n    input: {text}")
            state, decision = got
            expected = {k: getattr(d, k) for k in DECISION}
            expected_state = {"highest_tracc": ctrl.highest_tracc, "lowest_vloss": ctrl.lowest_vloss,
                              "best_epoch": ctrl.best_epoch, "stop_count": ctrl.stop_count}
            for where, want, have in (("decision", expected, decision), ("state", expected_state, state)):
                for key, value in want.items():
                    if key not in have:
                        raise Failure(f"the {where} has no key {key!r} (it has {sorted(have)})\n    input: {text}")
                    if not _same(value, have[key]):
                        hint = HINTS[key]
                        if key == "monitor" and acc == run.threshold:
                            hint = (f"at acc == threshold ({acc:g}) the monitor is already 'val_loss': 'accuracy' "
                                    f"only while acc < threshold")
                        raise Failure(f"epoch {epoch} (0-based; acc {acc:g}, v_loss {v_loss:g}, lr {lr:g}): "
                                      f"{where}[{key!r}] expected {value!r}, got {have[key]!r}\n    input: {text}\n"
                                      f"    hint: {hint}")
            lr = d.next_lr
            if d.stop:
                break

    for run in FIXED:
        check(run)
    falsify(check, RUNS, max_examples=40)
