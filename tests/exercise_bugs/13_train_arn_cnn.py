"""Planted bugs for lesson 13's exercise: each must fail its grader with a message that points at it."""

import math

BUGS = []  # (function name, short description, buggy function, substring the failure message must contain)


def _controller(state, epoch, acc, v_loss, lr, threshold, factor, stop_patience, halve=True, restore=True,
                at_threshold_accuracy=False, reset_stop=True):
    state = dict(state)
    accuracy = acc <= threshold if at_threshold_accuracy else acc < threshold
    monitor = "accuracy" if accuracy else "val_loss"
    if accuracy:
        best, gain, improved = state["highest_tracc"], acc - state["highest_tracc"], acc > state["highest_tracc"]
    else:
        best, gain, improved = state["lowest_vloss"], state["lowest_vloss"] - v_loss, v_loss < state["lowest_vloss"]
    improvement = 0.0 if epoch == 0 or best == 0 or not math.isfinite(best) else 100.0 * gain / best
    next_lr = lr
    if improved:
        if accuracy:
            state["highest_tracc"], state["lowest_vloss"] = acc, min(state["lowest_vloss"], v_loss)
        else:
            state["lowest_vloss"] = v_loss
        state["best_epoch"] = epoch + 1
        if reset_stop:
            state["stop_count"] = 0
    else:
        next_lr = lr * factor if halve else lr
        state["stop_count"] += 1
        if not accuracy:
            state["highest_tracc"] = max(state["highest_tracc"], acc)
    return state, {"monitor": monitor, "improvement": improvement, "improved": improved, "next_lr": next_lr,
                   "restore": (not improved) and restore, "stop": state["stop_count"] >= stop_patience}


def controller_never_halves(state, epoch, acc, v_loss, lr, threshold=0.9, factor=0.5, stop_patience=3):
    return _controller(state, epoch, acc, v_loss, lr, threshold, factor, stop_patience, halve=False)


BUGS.append(("controller_step", "does not halve the learning rate", controller_never_halves, "halves the learning"))


def controller_never_restores(state, epoch, acc, v_loss, lr, threshold=0.9, factor=0.5, stop_patience=3):
    return _controller(state, epoch, acc, v_loss, lr, threshold, factor, stop_patience, restore=False)


BUGS.append(("controller_step", "never restores the best weights (no dwell)", controller_never_restores,
             "restore is True exactly when"))


def controller_accuracy_at_threshold(state, epoch, acc, v_loss, lr, threshold=0.9, factor=0.5, stop_patience=3):
    return _controller(state, epoch, acc, v_loss, lr, threshold, factor, stop_patience, at_threshold_accuracy=True)


BUGS.append(("controller_step", "monitors accuracy at acc == 0.9 (acc <= threshold)", controller_accuracy_at_threshold,
             "at acc == threshold"))


def controller_no_stop_reset(state, epoch, acc, v_loss, lr, threshold=0.9, factor=0.5, stop_patience=3):
    return _controller(state, epoch, acc, v_loss, lr, threshold, factor, stop_patience, reset_stop=False)


BUGS.append(("controller_step", "an improvement does not reset stop_count", controller_no_stop_reset,
             "back to 0 at every improvement"))
