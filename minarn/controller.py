"""The epoch-end controller of the paper's training recipe ("LRA" in the Keras template it follows).

Once per epoch, after validation, it picks what to monitor (training accuracy until it reaches ``threshold``,
then validation loss), measures the improvement over the best value so far, halves the learning rate after
``patience`` epochs without improvement (putting back the best weights when ``dwell`` is on), and asks to stop
after ``stop_patience`` learning-rate cuts without an improvement in between. At the end of training the best
weights are always restored. The rules are those of ``docs/training-spec.md`` section 1, step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Decision:
    """What the controller decided at the end of one epoch (one row of the per-epoch table)."""

    monitor: str  # "accuracy" or "val_loss"
    improvement: float  # % Improv: positive = better than the best so far (0.0 in the first epoch)
    improved: bool
    lr: float  # the learning rate used in this epoch
    next_lr: float  # the learning rate after this epoch's decision
    restore: bool  # put the best weights back now (dwell)
    stop: bool  # stop training after this epoch


class EpochEndController:
    """Learning-rate halving, dwell and early stopping on accuracy, then validation loss.

    Parameters are the paper's: ``patience=1``, ``stop_patience=3``, ``threshold=0.9``, ``factor=0.5``,
    ``dwell=True``. ``best_weights`` starts as the weights at construction (the model's initial state).
    """

    def __init__(
        self,
        initial_weights: Weights,
        patience: int = 1,
        stop_patience: int = 3,
        threshold: float = 0.9,
        factor: float = 0.5,
        dwell: bool = True,
    ) -> None:
        if patience < 1 or stop_patience < 1:
            raise ValueError(f"patience and stop_patience must be >= 1, got {patience} and {stop_patience}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.patience, self.stop_patience = int(patience), int(stop_patience)
        self.threshold, self.factor, self.dwell = float(threshold), float(factor), bool(dwell)
        self.count = 0  # non-improving epochs not yet acted on
        self.stop_count = 0  # learning-rate cuts since the last improvement
        self.best_epoch = 1
        self.highest_tracc = 0.0
        self.lowest_vloss = math.inf
        self.best_weights: Weights = initial_weights

    def on_epoch_end(
        self,
        epoch: int,
        acc: float,
        v_loss: float,
        lr: float,
        snapshot: Callable[[], Weights],
    ) -> Decision:
        """Decide after epoch ``epoch`` (0-based) from its training accuracy, validation loss and learning rate.

        ``snapshot()`` returns a copy of the current weights; it is called only when the epoch improved.
        """
        monitor = "accuracy" if acc < self.threshold else "val_loss"
        if monitor == "accuracy":
            improvement = _relative_change(acc - self.highest_tracc, self.highest_tracc, epoch)
            improved = acc > self.highest_tracc
        else:
            improvement = _relative_change(self.lowest_vloss - v_loss, self.lowest_vloss, epoch)
            improved = v_loss < self.lowest_vloss
        next_lr, restore = lr, False
        if improved:
            if monitor == "accuracy":
                self.highest_tracc = acc
                self.lowest_vloss = min(self.lowest_vloss, v_loss)
            else:
                self.lowest_vloss = v_loss
            self.best_weights = snapshot()
            self.best_epoch = epoch + 1
            self.count = self.stop_count = 0
        else:
            if self.count >= self.patience - 1:
                next_lr = lr * self.factor
                self.count = 0
                self.stop_count += 1
                restore = self.dwell
                if monitor == "accuracy" and not self.dwell:
                    self.lowest_vloss = min(self.lowest_vloss, v_loss)
            else:
                self.count += 1
            if monitor == "val_loss":
                self.highest_tracc = max(self.highest_tracc, acc)
        return Decision(monitor, improvement, improved, lr, next_lr, restore, self.stop_count >= self.stop_patience)

    def state_dict(self) -> dict[str, Any]:
        """Counters, bests and best weights (keys ``best/<weight>``), for a checkpoint."""
        state: dict[str, Any] = {
            "count": self.count,
            "stop_count": self.stop_count,
            "best_epoch": self.best_epoch,
            "highest_tracc": self.highest_tracc,
            "lowest_vloss": self.lowest_vloss,
        }
        state.update({f"best/{k}": v for k, v in self.best_weights.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (also after a round trip through ``np.savez``)."""
        self.count = int(state["count"])
        self.stop_count = int(state["stop_count"])
        self.best_epoch = int(state["best_epoch"])
        self.highest_tracc = float(state["highest_tracc"])
        self.lowest_vloss = float(state["lowest_vloss"])
        self.best_weights = {k[len("best/"):]: np.array(v) for k, v in state.items() if k.startswith("best/")}


def _relative_change(gain: float, best: float, epoch: int) -> float:
    """100 * gain / best; 0.0 in the first epoch and while there is no finite, non-zero best yet."""
    if epoch == 0 or best == 0 or not math.isfinite(best):
        return 0.0
    return 100.0 * gain / best
