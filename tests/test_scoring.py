"""feredge.export.evaluate.scoring against tiny cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from feredge.export.evaluate import scoring as M

P_REF = np.array(
    [
        [0.7, 0.2, 0.1],  # argmax 0, margin 0.5
        [0.1, 0.45, 0.45],  # argmax 1 (first of tie), margin 0
        [0.2, 0.3, 0.5],  # argmax 2, margin 0.2
        [0.34, 0.33, 0.33],  # argmax 0, margin 0.01
    ]
)
P_CAND = np.array(
    [
        [0.6, 0.3, 0.1],  # agrees
        [0.1, 0.4, 0.5],  # flips to 2
        [0.2, 0.3, 0.5],  # agrees, identical
        [0.30, 0.40, 0.30],  # flips to 1
    ]
)
Y = np.array([0, 2, 2, 1])


def test_top2_margin():
    np.testing.assert_allclose(M.top2_margin(P_REF), [0.5, 0.0, 0.2, 0.01], atol=1e-12)


def test_compare_by_hand():
    r = M.compare(P_REF, P_CAND, margin=0.1)
    assert r["n"] == 4
    assert r["agreement"] == pytest.approx(0.5)
    # Faces with reference margin > 0.1: rows 0 and 2, both agree.
    assert r["n_margin"] == 2
    assert r["agreement_margin"] == pytest.approx(1.0)
    # |dp| summed: row0 0.1+0.1+0 ; row1 0+0.05+0.05 ; row2 0 ; row3 0.04+0.07+0.03 -> 0.44 / 12
    assert r["mean_abs_dp"] == pytest.approx(0.44 / 12)
    assert r["max_abs_dp"] == pytest.approx(0.1)
    assert r["mean_kl"] == pytest.approx(M.mean_kl(P_REF, P_CAND))


def test_compare_margin_threshold_changes_subset():
    r = M.compare(P_REF, P_CAND, margin=0.0)
    # margin > 0: rows 0, 2, 3 -> agreements 1, 1, 0
    assert r["n_margin"] == 3
    assert r["agreement_margin"] == pytest.approx(2 / 3)


def test_compare_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        M.compare(P_REF, P_CAND[:, :2])


def test_accuracy_and_unlabelled_rows():
    assert M.accuracy(P_REF, Y) == pytest.approx(0.5)  # rows 0 and 2 right
    assert M.accuracy(P_CAND, Y) == pytest.approx(1.0)  # rows 0..3 all right (row 3 flips onto its label)
    # -1 means "no label": left out.
    assert M.accuracy(P_REF, np.array([0, -1, -1, -1])) == pytest.approx(1.0)
    assert math.isnan(M.accuracy(P_REF, np.array([-1, -1, -1, -1])))


def test_per_class_recall():
    r = M.per_class_recall(P_REF, Y, 4)
    # class 0: row0 right -> 1 ; class 1: row3 predicted 0 -> 0 ; class 2: rows 1 (pred 1), 2 (pred 2) -> 0.5
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(0.0)
    assert r[2] == pytest.approx(0.5)
    assert math.isnan(r[3])


def test_confusion():
    m = M.confusion(P_CAND, Y, 3)
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2]])
    np.testing.assert_array_equal(m, expected)
    assert M.confusion(P_REF, Y, 3).sum() == 4


def test_mean_kl_by_hand():
    a = np.array([[0.5, 0.5], [1.0, 0.0]])
    b = np.array([[0.25, 0.75], [1.0, 0.0]])
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75) + 0.0) / 2
    assert M.mean_kl(a, b) == pytest.approx(expected, abs=1e-9)
    assert M.mean_kl(a, a) == pytest.approx(0.0, abs=1e-12)
    # A hard zero in the candidate stays finite.
    assert np.isfinite(M.mean_kl(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])))


def test_ece_by_hand():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right) with 15 bins:
    # bin (0.8667, 0.9333]: conf 0.9, acc 0.5 -> |0.4| x 2/4
    # bin (0.5333, 0.6]: conf 0.575, acc 1.0 -> |0.425| x 2/4
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    assert M.ece(p, y, bins=15) == pytest.approx(0.4 * 0.5 + 0.425 * 0.5)
    # One bin: |mean acc - mean conf| = |0.75 - 0.7375|
    assert M.ece(p, y, bins=1) == pytest.approx(abs(0.75 - (0.9 + 0.9 + 0.6 + 0.55) / 4))
    r = M.reliability(p, y, bins=15)
    assert r["count"].sum() == 4


def test_ece_perfectly_calibrated_is_zero():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.ece(p, np.array([0, 1])) == pytest.approx(0.0)


def test_sigmoid_column_widens_to_two_classes():
    p = np.array([[0.8], [0.3]])
    np.testing.assert_allclose(M.as_probs(p), [[0.2, 0.8], [0.7, 0.3]])
    assert M.accuracy(p, np.array([1, 0])) == pytest.approx(1.0)


def test_fit_temperature_recovers_known_temperature():
    # Labels drawn from softmax(z / 2.5): the NLL minimiser must be close to 2.5.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 5))
    p = M.softmax_t(z, 2.5)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = M.fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.05)
    # And it is the minimiser: nudging it either way increases the NLL.
    assert M.nll(z, y, t) < M.nll(z, y, t * 1.1)
    assert M.nll(z, y, t) < M.nll(z, y, t / 1.1)


def test_fit_temperature_on_log_probabilities_of_overconfident_model():
    # An over-confident model (probabilities from z*3 while truth follows z) wants T about 3.
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, size=(20000, 4))
    y = np.array([rng.choice(4, p=row) for row in M.softmax_t(z, 1.0)])
    logp = M.log_probs(M.softmax_t(z * 3.0))
    assert M.fit_temperature(logp, y) == pytest.approx(3.0, rel=0.05)


def test_nll_by_hand():
    z = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = np.array([0, 0])
    # p = [0.5, 0.5] and [0.75, 0.25]
    assert M.nll(z, y) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
