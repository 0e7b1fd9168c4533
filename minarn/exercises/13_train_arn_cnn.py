"""Lesson 13 exercise: the paper's epoch-end learning-rate controller, one epoch's decision.

Fill in the function, then grade it:  python -m minarn.exercises check 13_train_arn_cnn.py
Lesson: lessons/13_train_arn_cnn.py (sections 1 and 2).
"""

import math


def controller_step(state, epoch, acc, v_loss, lr, threshold=0.9, factor=0.5, stop_patience=3):
    """The controller's rules after one epoch (the paper's values: patience 1, dwell on): returns (state, decision).

    state: a dict {"highest_tracc": best training accuracy so far, "lowest_vloss": best validation loss so far,
        "best_epoch": the (1-based) number of the last improving epoch, "stop_count": learning-rate cuts since the
        last improvement}; before the first epoch {"highest_tracc": 0.0, "lowest_vloss": math.inf,
        "best_epoch": 1, "stop_count": 0}. Return the new state (a new dict, or the given one updated).
    epoch: the epoch's 0-based index; acc: its training accuracy; v_loss: its validation loss; lr: the learning
        rate it used.
    decision: a dict {"monitor": "accuracy" or "val_loss", "improvement": % Improv (a float), "improved": bool,
        "next_lr": the learning rate for the next epoch, "restore": bool (put the best epoch's weights back),
        "stop": bool (stop training)}.

    The rules, in order:
    1. monitor = "accuracy" while acc < threshold, else "val_loss" (decided afresh every epoch).
    2. % Improv, computed BEFORE the bests change: accuracy: 100 (acc - highest_tracc) / highest_tracc;
       val_loss: 100 (lowest_vloss - v_loss) / lowest_vloss; 0.0 in epoch 0, and while the best is 0 or inf.
    3. Improved = acc > highest_tracc (accuracy) or v_loss < lowest_vloss (val_loss): strictly, a tie is no
       improvement. On improvement: the monitored best takes the epoch's value (in accuracy mode lowest_vloss
       also becomes min(lowest_vloss, v_loss)); best_epoch = epoch + 1; stop_count = 0; next_lr = lr; no restore.
    4. Otherwise: next_lr = lr * factor (the cut); stop_count += 1; restore = True (dwell); in val_loss mode
       highest_tracc becomes max(highest_tracc, acc).
    5. stop = stop_count >= stop_patience.
    """
    raise NotImplementedError("controller_step: write this function (see lesson 13)")
