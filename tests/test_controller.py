"""The epoch-end controller (``minarn.controller``) replayed on given metric sequences.

The rules are those of ``docs/training-spec.md`` section 1. ``ReferenceLRA`` below is an independent,
line-by-line transcription of the template's ``on_epoch_end`` (the Keras "LRA" callback) that the controller is
compared against on hypothesis-drawn sequences; the named tests pin each rule on a hand-made sequence.

A "model" here is a dict of arrays whose single value tells which epoch produced it, so a test can see which
snapshot the controller kept and which one dwell puts back.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from minarn.controller import Decision, EpochEndController

# The paper's first five rows (docs/arn-cnn.md, "Training procedure"): train accuracy, V_loss, printed % Improv.
PAPER_ACC = [0.99129, 0.99945, 0.99972, 0.99987, 0.99932]
PAPER_VLOSS = [0.12981, 0.08788, 0.06450, 0.05427, 0.04867]
PAPER_IMPROV = ["0.00", "32.30", "26.61", "15.86", "10.32"]


def weights_of(tag: float) -> dict[str, np.ndarray]:
    """Distinct weights for each epoch: every array is filled with ``tag``."""
    return {"conv2d/kernel": np.full((2, 3), tag), "batch_normalization/moving_mean": np.full(3, tag)}


def tag_of(weights: dict[str, np.ndarray]) -> float:
    values = {float(v) for a in weights.values() for v in np.ravel(a)}
    assert len(values) == 1, f"weights mix several snapshots: {values}"
    return values.pop()


class ReferenceLRA:
    """The template's ``LRA.on_epoch_end``, transcribed (Keras calls replaced by plain attributes).

    ``self.weights`` plays ``model.get_weights()`` / ``set_weights``; ``self.lr`` the optimizer's LR.
    Only deviation: where the template divides by a best value that is still 0 (accuracy mode, no accuracy
    recorded yet) or +inf (val_loss mode, no val loss recorded yet) after the first epoch, it would raise
    ZeroDivisionError or print nan; the spec does not say, minarn documents 0.0, and so does this reference.
    """

    def __init__(self, weights, lr, patience=1, stop_patience=3, threshold=0.9, factor=0.5, dwell=True):
        self.weights, self.lr = weights, lr
        self.patience, self.stop_patience, self.threshold = patience, stop_patience, threshold
        self.factor, self.dwell = factor, dwell
        self.count = 0
        self.stop_count = 0
        self.best_epoch = 1
        self.highest_tracc = 0.0
        self.lowest_vloss = np.inf
        self.best_weights = self.weights
        self.stop_training = False

    def on_epoch_end(self, epoch, acc, v_loss):
        lr = self.lr
        improved = restored = False
        if acc < self.threshold:
            monitor = "accuracy"
            if epoch == 0 or self.highest_tracc == 0:
                pimprov = 0.0
            else:
                pimprov = 100 * (acc - self.highest_tracc) / self.highest_tracc
            if acc > self.highest_tracc:
                improved = True
                self.highest_tracc = acc
                self.best_weights = self.weights
                self.count = 0
                self.stop_count = 0
                if v_loss < self.lowest_vloss:  # the template's wording (not min())
                    self.lowest_vloss = v_loss
                self.best_epoch = epoch + 1
            else:
                if self.count >= self.patience - 1:
                    lr = lr * self.factor
                    self.lr = lr
                    self.count = 0
                    self.stop_count = self.stop_count + 1
                    if self.dwell:
                        self.weights = self.best_weights
                        restored = True
                    else:
                        if v_loss < self.lowest_vloss:
                            self.lowest_vloss = v_loss
                else:
                    self.count = self.count + 1
        else:
            monitor = "val_loss"
            if epoch == 0 or self.lowest_vloss == np.inf:
                pimprov = 0.0
            else:
                pimprov = 100 * (self.lowest_vloss - v_loss) / self.lowest_vloss
            if v_loss < self.lowest_vloss:
                improved = True
                self.lowest_vloss = v_loss
                self.best_weights = self.weights
                self.count = 0
                self.stop_count = 0
                self.best_epoch = epoch + 1
            else:
                if self.count >= self.patience - 1:
                    lr = lr * self.factor
                    self.stop_count = self.stop_count + 1
                    self.count = 0
                    self.lr = lr
                    if self.dwell:
                        self.weights = self.best_weights
                        restored = True
                else:
                    self.count = self.count + 1
                if acc > self.highest_tracc:
                    self.highest_tracc = acc
        if self.stop_count > self.stop_patience - 1:
            self.stop_training = True
        return monitor, pimprov, improved, restored


class Replay:
    """Drives an ``EpochEndController`` the way ``minarn.train.fit`` does: train (new weights), decide, then
    apply the LR and the dwell restore."""

    def __init__(self, lr: float = 0.001, **kwargs) -> None:
        self.weights = weights_of(0.0)
        self.lr = lr
        self.controller = EpochEndController({k: v.copy() for k, v in self.weights.items()}, **kwargs)
        self.epoch = 0
        self.snapshots = 0
        self.decisions: list[Decision] = []

    def snapshot(self) -> dict[str, np.ndarray]:
        self.snapshots += 1
        return {k: v.copy() for k, v in self.weights.items()}

    def epoch_end(self, acc: float, v_loss: float) -> Decision:
        self.weights = weights_of(float(self.epoch + 1))  # what training this epoch produced
        d = self.controller.on_epoch_end(self.epoch, acc, v_loss, self.lr, snapshot=self.snapshot)
        assert d.lr == self.lr
        if d.restore:
            self.weights = {k: v.copy() for k, v in self.controller.best_weights.items()}
        self.lr = d.next_lr
        self.epoch += 1
        self.decisions.append(d)
        return d

    def run(self, pairs) -> list[Decision]:
        return [self.epoch_end(acc, v) for acc, v in pairs]


# ------------------------------------------------------------------------------------------------------------
# Named rules


def test_defaults_are_the_papers():
    c = EpochEndController(weights_of(0.0))
    assert (c.patience, c.stop_patience, c.threshold, c.factor, c.dwell) == (1, 3, 0.9, 0.5, True)
    assert (c.count, c.stop_count, c.best_epoch, c.highest_tracc, c.lowest_vloss) == (0, 0, 1, 0.0, math.inf)
    assert tag_of(c.best_weights) == 0.0


@pytest.mark.parametrize("kwargs", [{"patience": 0}, {"stop_patience": 0}, {"factor": 1.0}, {"factor": 0.0}])
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        EpochEndController(weights_of(0.0), **kwargs)


def test_lr_halves_at_once_with_patience_1():
    r = Replay(lr=0.001)
    d1, d2, d3 = r.run([(0.5, 1.0), (0.4, 0.9), (0.45, 0.8)])  # accuracy mode: epochs 2 and 3 are worse than 0.5
    assert d1.improved and d1.next_lr == 0.001
    assert not d2.improved and d2.lr == 0.001 and d2.next_lr == 0.0005
    assert not d3.improved and d3.lr == 0.0005 and d3.next_lr == 0.00025
    assert r.controller.count == 0 and r.controller.stop_count == 2


def test_patience_2_waits_one_epoch_before_cutting():
    r = Replay(lr=0.01, patience=2)
    d = r.run([(0.5, 1.0), (0.4, 1.0), (0.4, 1.0), (0.4, 1.0), (0.4, 1.0)])
    assert [x.next_lr for x in d] == [0.01, 0.01, 0.005, 0.005, 0.0025]
    assert [x.restore for x in d] == [False, False, True, False, True]


def test_dwell_restores_the_best_epoch_not_the_previous_one():
    r = Replay()
    d = r.run([(0.5, 1.0), (0.6, 0.9), (0.55, 0.8), (0.58, 0.7)])
    # epoch 2 improved (best), epoch 3 and 4 did not: both put back epoch 2's weights
    assert [x.improved for x in d] == [True, True, False, False]
    assert [x.restore for x in d] == [False, False, True, True]
    assert r.controller.best_epoch == 2
    assert tag_of(r.controller.best_weights) == 2.0
    assert tag_of(r.weights) == 2.0  # not 3.0 (the previous epoch of epoch 4) and not 4.0
    assert r.snapshots == 2  # snapshot() only on improving epochs


def test_dwell_after_a_later_improvement_uses_the_new_best():
    r = Replay()
    r.run([(0.5, 1.0), (0.4, 1.0), (0.7, 1.0), (0.6, 1.0)])
    assert r.controller.best_epoch == 3 and tag_of(r.weights) == 3.0


def test_best_weights_are_a_snapshot_not_the_live_arrays():
    live = weights_of(0.0)
    c = EpochEndController(weights_of(0.0))
    c.on_epoch_end(0, 0.5, 1.0, 0.001, snapshot=lambda: {k: v.copy() for k, v in live.items()})
    live["conv2d/kernel"][...] = 99.0  # training goes on in place
    assert tag_of(c.best_weights) == 0.0


def test_no_dwell_means_no_restore():
    r = Replay(dwell=False)
    d = r.run([(0.5, 1.0), (0.4, 0.9)])
    assert d[1].next_lr == 0.0005 and not d[1].restore
    assert tag_of(r.weights) == 2.0
    # accuracy mode, dwell off: the cutting epoch still lowers lowest_vloss (spec step 4)
    assert r.controller.lowest_vloss == 0.9


def test_stop_after_three_consecutive_non_improving_epochs():
    r = Replay(lr=0.001)
    d = r.run([(0.95, 0.5), (0.95, 0.6), (0.96, 0.5), (0.97, 0.7)])
    assert [x.improved for x in d] == [True, False, False, False]
    assert [x.stop for x in d] == [False, False, False, True]  # on the third cut, not before
    assert [x.next_lr for x in d] == [0.001, 0.0005, 0.00025, 0.000125]  # the third cut is applied
    assert r.controller.stop_count == 3


def test_stop_patience_counts_cuts_not_epochs():
    r = Replay(patience=2, stop_patience=2)
    d = r.run([(0.5, 1.0)] + [(0.4, 1.0)] * 4)
    assert [x.stop for x in d] == [False, False, False, False, True]


def test_any_improvement_resets_both_counters_and_keeps_the_lr():
    r = Replay(lr=0.001)
    d = r.run([(0.95, 0.5), (0.95, 0.6), (0.95, 0.6), (0.95, 0.4)])
    assert r.controller.stop_count == 0 and r.controller.count == 0
    assert d[3].improved and d[3].next_lr == d[3].lr == 0.00025  # an earlier cut is not undone
    # now three more non-improving epochs are needed to stop
    d = r.run([(0.95, 0.4), (0.95, 0.41)])
    assert not any(x.stop for x in d)
    assert r.epoch_end(0.95, 0.4).stop


def test_monitor_is_chosen_afresh_every_epoch():
    r = Replay()
    d = r.run([(0.5, 1.0), (0.9, 0.9), (0.899999, 0.8), (0.95, 0.7), (0.2, 0.6)])
    assert [x.monitor for x in d] == ["accuracy", "val_loss", "accuracy", "val_loss", "accuracy"]


def test_threshold_is_inclusive_for_val_loss():
    c = EpochEndController(weights_of(0.0), threshold=0.75)
    assert c.on_epoch_end(0, 0.75, 1.0, 0.001, snapshot=lambda: weights_of(1.0)).monitor == "val_loss"
    assert c.on_epoch_end(1, 0.7499, 1.0, 0.001, snapshot=lambda: weights_of(2.0)).monitor == "accuracy"


@pytest.mark.parametrize(
    "pairs",
    [[(0.5, 1.0), (0.5, 0.1)],  # accuracy tie (v_loss much better, but the monitor is accuracy)
     [(0.95, 0.3), (0.99, 0.3)]],  # val_loss tie (accuracy better, but the monitor is val_loss)
    ids=["accuracy", "val_loss"],
)
def test_a_tie_is_not_an_improvement(pairs):
    r = Replay()
    d = r.run(pairs)
    assert d[0].improved and not d[1].improved
    assert d[1].next_lr == d[1].lr / 2 and d[1].restore
    assert d[1].improvement == 0.0
    assert r.controller.best_epoch == 1


def test_improving_in_accuracy_mode_also_lowers_lowest_vloss():
    r = Replay()
    r.run([(0.5, 0.8)])
    assert r.controller.lowest_vloss == 0.8
    r.run([(0.6, 0.9)])  # improves accuracy, but the val loss is higher: lowest_vloss stays
    assert r.controller.lowest_vloss == 0.8 and r.controller.highest_tracc == 0.6
    r.run([(0.7, 0.5)])
    assert r.controller.lowest_vloss == 0.5
    r.run([(0.65, 0.1)])  # not improving (accuracy mode, dwell on): lowest_vloss untouched
    assert r.controller.lowest_vloss == 0.5
    # switching to val_loss mode compares against 0.5, the best val loss of an accuracy-improving epoch
    d = r.epoch_end(0.95, 0.4)
    assert d.monitor == "val_loss" and d.improved
    assert d.improvement == pytest.approx(100 * (0.5 - 0.4) / 0.5)


def test_val_loss_mode_raises_highest_tracc_only_on_non_improving_epochs():
    r = Replay()
    r.run([(0.95, 0.5)])
    assert r.controller.highest_tracc == 0.0  # improving val_loss epoch: accuracy not recorded
    r.run([(0.97, 0.6)])
    assert r.controller.highest_tracc == 0.97


@pytest.mark.parametrize("acc", [0.3, 0.95], ids=["accuracy", "val_loss"])
def test_first_epoch_improvement_is_zero(acc):
    d = Replay().epoch_end(acc, 0.7)
    assert d.improvement == 0.0 and d.improved and d.next_lr == d.lr


def test_improvement_is_zero_at_epoch_index_0_even_with_earlier_bests():
    # Keras restarts the epoch index when fit() is called again with the same callback: % Improv is 0 there.
    c = EpochEndController(weights_of(0.0))
    c.on_epoch_end(0, 0.5, 1.0, 0.001, snapshot=lambda: weights_of(1.0))
    c.on_epoch_end(1, 0.95, 0.5, 0.001, snapshot=lambda: weights_of(2.0))
    assert c.on_epoch_end(0, 0.6, 1.0, 0.001, snapshot=lambda: weights_of(3.0)).improvement == 0.0
    assert c.on_epoch_end(0, 0.95, 0.25, 0.001, snapshot=lambda: weights_of(4.0)).improvement == 0.0

def test_improvement_is_relative_and_signed():
    r = Replay()
    d = r.run([(0.5, 1.0), (0.6, 1.0), (0.3, 1.0)])
    assert d[1].improvement == pytest.approx(20.0)  # 100 * (0.6 - 0.5) / 0.5
    assert d[2].improvement == pytest.approx(-50.0)  # worse than the best so far
    r = Replay()
    d = r.run([(0.95, 0.5), (0.95, 0.4), (0.95, 0.6)])
    assert d[1].improvement == pytest.approx(20.0)
    assert d[2].improvement == pytest.approx(-50.0)  # against 0.4, the best, not 0.5


def test_improvement_without_a_finite_best_is_zero():
    # val_loss mode first (accuracy never recorded), then accuracy mode: the template would divide by 0.
    r = Replay()
    d = r.run([(0.95, 0.5), (0.5, 0.4)])
    assert d[1].monitor == "accuracy" and d[1].improvement == 0.0 and d[1].improved


def test_paper_rows_give_the_papers_improvement():
    r = Replay(lr=0.001)
    d = r.run(zip(PAPER_ACC, PAPER_VLOSS))
    assert all(x.monitor == "val_loss" and x.improved and x.next_lr == 0.001 and not x.stop for x in d)
    shown = [f"{x.improvement:.2f}" for x in d]
    # From the 5-decimal V_loss column, rows 2, 4 and 5 come out exactly as printed in the paper.
    assert [shown[i] for i in (0, 1, 3, 4)] == [PAPER_IMPROV[i] for i in (0, 1, 3, 4)]
    # Row 3 gives 26.604 -> "26.60"; the paper printed 26.61 from its unrounded losses. 26.61 is inside the
    # range the +-0.000005 rounding of the two V_loss values allows, 26.605 is not reached from the column.
    assert shown[2] == "26.60"
    a, b = PAPER_VLOSS[1], PAPER_VLOSS[2]
    low = 100 * ((a - 5e-6) - (b + 5e-6)) / (a - 5e-6)
    high = 100 * ((a + 5e-6) - (b - 5e-6)) / (a + 5e-6)
    assert low <= d[2].improvement <= high and low <= float(PAPER_IMPROV[2]) <= high
    assert r.controller.best_epoch == 5 and tag_of(r.controller.best_weights) == 5.0
    assert r.controller.lowest_vloss == PAPER_VLOSS[-1]


# ------------------------------------------------------------------------------------------------------------
# Checkpointing


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_state_dict_round_trip_through_savez_continues_identically():
    pairs = [(0.5, 1.0), (0.7, 0.9), (0.6, 0.95), (0.95, 0.5), (0.96, 0.6), (0.97, 0.4), (0.98, 0.45),
             (0.99, 0.47), (0.99, 0.46)]
    straight = Replay()
    straight.run(pairs)

    first = Replay()
    first.run(pairs[:5])  # after a cut: count, stop_count and best weights all non-trivial
    assert first.controller.stop_count == 1
    state = _roundtrip(first.controller.state_dict())
    assert {k for k in state if k.startswith("best/")} == {f"best/{k}" for k in weights_of(0)}

    resumed = Replay()
    resumed.weights, resumed.lr, resumed.epoch = first.weights, first.lr, first.epoch
    resumed.controller = EpochEndController(weights_of(-1.0))
    resumed.controller.load_state_dict(state)
    for name in ("count", "stop_count", "best_epoch", "highest_tracc", "lowest_vloss"):
        assert getattr(resumed.controller, name) == getattr(first.controller, name), name
    assert tag_of(resumed.controller.best_weights) == tag_of(first.controller.best_weights) == 4.0

    resumed.run(pairs[5:])
    assert resumed.decisions == straight.decisions[5:]
    assert tag_of(resumed.weights) == tag_of(straight.weights)
    assert resumed.controller.state_dict().keys() == straight.controller.state_dict().keys()
    for k, v in straight.controller.state_dict().items():
        np.testing.assert_array_equal(resumed.controller.state_dict()[k], v, err_msg=k)


def test_state_dict_round_trip_keeps_an_infinite_lowest_vloss():
    c = EpochEndController(weights_of(0.0))
    c2 = EpochEndController(weights_of(1.0))
    c2.load_state_dict(_roundtrip(c.state_dict()))
    assert c2.lowest_vloss == math.inf and tag_of(c2.best_weights) == 0.0


# ------------------------------------------------------------------------------------------------------------
# Against the reference, on drawn sequences

# A small pool makes ties likely; the pool straddles the 0.9 threshold both ways.
_accs = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.5, 0.8999, 0.9, 0.9, 0.95, 0.99, 1.0]),
                  st.floats(0.0, 1.0, allow_nan=False))
_vlosses = st.one_of(st.sampled_from([0.05, 0.1, 0.1, 0.3, 1.0]), st.floats(1e-4, 10.0, allow_nan=False))
_sequences = st.lists(st.tuples(_accs, _vlosses), min_size=1, max_size=14)
_settings = st.fixed_dictionaries({"patience": st.sampled_from([1, 1, 2, 3]),
                                   "stop_patience": st.sampled_from([1, 2, 3, 3]),
                                   "dwell": st.sampled_from([True, True, False])})


def _compare_with_reference(pairs, settings):
    lr0 = 0.001
    r = Replay(lr=lr0, **settings)
    ref = ReferenceLRA(weights_of(0.0), lr0, **settings)
    for epoch, (acc, v_loss) in enumerate(pairs):
        ref.weights = weights_of(float(epoch + 1))
        lr_before = r.lr
        d = r.epoch_end(acc, v_loss)
        monitor, pimprov, improved, restored = ref.on_epoch_end(epoch, acc, v_loss)
        where = f"epoch {epoch + 1} of {pairs} with {settings}"
        assert d.monitor == monitor, where
        assert math.isclose(d.improvement, pimprov, rel_tol=1e-12, abs_tol=1e-12), where
        assert d.improved == improved, where
        assert d.lr == lr_before and d.next_lr == ref.lr, where
        assert d.restore == restored, where
        assert d.stop == ref.stop_training, where
        c = r.controller
        assert (c.count, c.stop_count, c.best_epoch) == (ref.count, ref.stop_count, ref.best_epoch), where
        assert (c.highest_tracc, c.lowest_vloss) == (ref.highest_tracc, ref.lowest_vloss), where
        assert tag_of(c.best_weights) == tag_of(ref.best_weights), where
        assert tag_of(r.weights) == tag_of(ref.weights), where
        if ref.stop_training:  # training halts here
            break


@given(pairs=_sequences)
@example(pairs=list(zip(PAPER_ACC, PAPER_VLOSS)))
@example(pairs=[(0.5, 1.0), (0.5, 1.0), (0.95, 1.0), (0.95, 1.0), (0.89, 0.5)])  # ties both modes, crossing
@example(pairs=[(0.95, 0.5), (0.5, 0.4), (0.95, 0.45), (0.4, 0.3)])  # crossing down and up again
@example(pairs=[(0.0, 0.5), (0.0, 0.5), (0.95, 0.4)])  # no accuracy yet, then val_loss mode with no val loss
def test_matches_reference_with_paper_settings(pairs):
    _compare_with_reference(pairs, {})


@given(pairs=_sequences, settings=_settings)
def test_matches_reference_with_other_settings(pairs, settings):
    _compare_with_reference(pairs, settings)


@given(pairs=st.lists(st.tuples(_accs, _vlosses), min_size=2, max_size=12), data=st.data())
def test_resuming_at_any_epoch_matches_an_uninterrupted_replay(pairs, data):
    k = data.draw(st.integers(1, len(pairs) - 1), label="resume after epoch")
    straight = Replay()
    straight.run(pairs)
    first = Replay()
    first.run(pairs[:k])
    resumed = Replay()
    resumed.weights, resumed.lr, resumed.epoch = first.weights, first.lr, first.epoch
    resumed.controller.load_state_dict(_roundtrip(first.controller.state_dict()))
    resumed.run(pairs[k:])
    assert resumed.decisions == straight.decisions[k:]
    assert tag_of(resumed.controller.best_weights) == tag_of(straight.controller.best_weights)
