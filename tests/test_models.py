"""Models of the flaky failure: hazard by position, K-curve, batches, logistic odds ratios.

Every statistic is checked against a hand-computed or independently computed
answer, and against simulated data whose truth is known. Simulations use fixed
seeds; each states its tolerance next to the assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from repro_lib.stats import (
    fit_hazard,
    hazard_trend_test,
    k_curve_fit,
)


def expit(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


def trials(rows) -> pd.DataFrame:
    """Minimal analysis frame from (version, reset_freq, since_reset, failed, count[, run_id])."""
    out = []
    for row in rows:
        version, k, p, failed, count = row[:5]
        run = row[5] if len(row) > 5 else "r"
        out += [(version, k, p, failed, run)] * count
    d = pd.DataFrame(
        out, columns=["version_label", "reset_freq", "since_reset", "failed", "run_id"]
    )
    return d.assign(counted=True, failed=d["failed"].astype(bool))


def simulate_cycles(rng, hazard, ks, cycles, version="v"):
    """Tries of ``cycles`` full reset cycles at each K, failing with ``hazard(p, K)``."""
    p = np.concatenate([np.tile(np.arange(1, K + 1), cycles) for K in ks])
    k = np.concatenate([np.full(K * cycles, K) for K in ks])
    failed = rng.random(len(p)) < np.concatenate(
        [hazard(np.arange(1, K + 1), K) for K in ks for _ in range(cycles)]
    )
    return pd.DataFrame(
        {
            "version_label": version,
            "reset_freq": k,
            "since_reset": p,
            "failed": failed,
            "counted": True,
        }
    )


def true_hazard(p, K=None):
    p = np.asarray(p, dtype=float)
    return np.where(p <= 1, 0.05, expit(-0.5 - 0.3 * (p - 2)))


def true_rate(K):
    return float(np.mean(true_hazard(np.arange(1, K + 1))))


# trend test -----------------------------------------------------------------
def test_trend_test_hand_computed_two_positions():
    # Two positions: the model with a slope is saturated, so the statistic is the
    # G statistic of the 2x2 table, written out by hand.
    d = trials(
        [("v", 4, 2, True, 2), ("v", 4, 2, False, 8), ("v", 4, 3, True, 6), ("v", 4, 3, False, 4)]
    )
    (t,) = hazard_trend_test(d)
    l1 = 2 * math.log(0.2) + 8 * math.log(0.8) + 6 * math.log(0.6) + 4 * math.log(0.4)
    l0 = 8 * math.log(0.4) + 12 * math.log(0.6)
    assert t.statistic == pytest.approx(2 * (l1 - l0), rel=1e-6)
    g = sps.chi2_contingency([[2, 8], [6, 4]], correction=False, lambda_="log-likelihood")
    assert t.statistic == pytest.approx(g.statistic, rel=1e-6)
    assert t.pvalue == pytest.approx(sps.chi2.sf(t.statistic, 1))
    # slope = difference of the two log-odds
    assert t.slope == pytest.approx(math.log(6 / 4) - math.log(2 / 8), rel=1e-6)
    assert (t.df, t.positions, t.k, t.n) == (1, (2, 3), 8, 20)
    assert "likelihood-ratio" in t.describe() and len(t.to_frame()) == 1


def test_trend_test_untested_cases():
    d = trials(
        [
            ("a", 4, 2, False, 10),
            ("a", 4, 3, False, 10),
            ("b", 2, 2, True, 3),
            ("b", 2, 2, False, 3),
        ]
    )
    a, b = hazard_trend_test(d)
    assert not a.tested and "no failure" in a.describe()
    assert not b.tested and "two or more positions" in b.note
    assert hazard_trend_test(trials([])) == []


def test_trend_test_recovers_a_known_slope_and_holds_its_level():
    rng = np.random.default_rng(12)
    d = simulate_cycles(rng, true_hazard, [8], 400)
    (t,) = hazard_trend_test(d)
    assert t.pvalue < 1e-3
    assert abs(t.slope - (-0.3)) < 3 * t.slope_se  # truth within 3 standard errors
    # constant hazard 0.2 at p >= 2: the test rejects at about its 5% level
    rejected = 0
    for _ in range(300):
        flat = simulate_cycles(rng, lambda p, K: np.where(p <= 1, 0.05, 0.2), [4], 40)
        rejected += hazard_trend_test(flat)[0].pvalue < 0.05
    assert 0.02 <= rejected / 300 <= 0.09  # nominal 0.05; binomial sd over 300 is 0.013


# hazard model and K-curve -------------------------------------------------------
def test_hazard_model_hand_computed():
    # position 1: 1/10; positions 2 and 3: 2/10 and 6/10 -> saturated logistic
    d = trials(
        [
            ("v", 4, 1, True, 1), ("v", 4, 1, False, 9),
            ("v", 4, 2, True, 2), ("v", 4, 2, False, 8),
            ("v", 4, 3, True, 6), ("v", 4, 3, False, 4),
        ]
    )  # fmt: skip
    m = fit_hazard(d)
    assert m.form == "logistic"
    assert m.hazard([1, 2, 3]) == pytest.approx([0.1, 0.2, 0.6], rel=1e-6)
    # r(K) = mean of h(1..K): r(2) = 0.15, r(3) = 0.3
    curve = m.k_curve([1, 2, 3], draws=2000)
    assert curve["rate"].tolist() == pytest.approx([0.1, 0.15, 0.3], rel=1e-6)
    assert (curve["low"] <= curve["rate"]).all() and (curve["rate"] <= curve["high"]).all()
    assert list(m.to_frame().columns) == [
        "version_label",
        "position",
        "hazard",
        "low",
        "high",
        "form",
    ]


def test_hazard_model_constant_and_unfittable():
    d = trials([("v", 1, 1, False, 20), ("v", 2, 1, False, 10), ("v", 2, 2, False, 10)])
    m = fit_hazard(d)
    assert m.form == "constant" and m.hazard([1, 2, 5]).tolist() == [0.0, 0.0, 0.0]
    band = m.k_curve([2])
    # Jeffreys draws keep an upper band above 0 with no failure
    assert band["rate"].iloc[0] == 0.0 and 0 < band["high"].iloc[0] < 0.2
    assert fit_hazard(trials([("v", 1, 1, False, 20)])) is None  # no position >= 2
    with pytest.raises(ValueError, match="several versions"):
        fit_hazard(trials([("a", 1, 1, False, 2), ("b", 1, 1, False, 2)]))


def test_hazard_model_recovers_known_hazard():
    rng = np.random.default_rng(7)
    d = simulate_cycles(rng, true_hazard, [1, 2, 4, 8], 150)
    m = fit_hazard(d)
    a, b = m.params
    se = np.sqrt(np.diag(m.cov))
    assert abs(a - (-0.5)) < 3 * se[0] and abs(b - (-0.3)) < 3 * se[1]
    curve = m.k_curve([1, 2, 4, 8, 16])
    truth = [true_rate(K) for K in (1, 2, 4, 8, 16)]
    assert curve["rate"].to_numpy() == pytest.approx(truth, abs=0.03)


def test_k_curve_band_covers_the_truth_at_about_its_nominal_rate():
    rng = np.random.default_rng(2024)
    covered, runs = {4: 0, 8: 0}, 200
    for _ in range(runs):
        m = fit_hazard(simulate_cycles(rng, true_hazard, [1, 4, 8], 15))
        band = m.k_curve([4, 8], draws=800, seed=int(rng.integers(1 << 31))).set_index("reset_freq")
        for K in covered:
            covered[K] += band.loc[K, "low"] <= true_rate(K) <= band.loc[K, "high"]
    for K, hits in covered.items():
        # nominal 0.95; over 200 data sets the binomial sd is 0.015, and the
        # normal-approximation band may be a little off: accept 0.89-0.99
        assert 0.89 <= hits / runs <= 0.99, (K, hits / runs)


def test_k_curve_goodness_of_fit_hand_computed():
    # h(1) = 0.1 (2 of 20 over both cells), constant h = 0.25 at p = 2..4
    d = trials(
        [
            ("v", 1, 1, True, 1), ("v", 1, 1, False, 9),
            ("v", 4, 1, True, 1), ("v", 4, 1, False, 9),
            ("v", 4, 2, True, 3), ("v", 4, 2, False, 7),
            ("v", 4, 3, True, 3), ("v", 4, 3, False, 7),
            ("v", 4, 4, True, 2), ("v", 4, 4, False, 8),
        ]
    )  # fmt: skip
    g = k_curve_fit(d)
    assert g.model.form == "logistic"
    h = g.model.hazard([1, 2, 3, 4])
    e1, v1 = 10 * h[0], 10 * h[0] * (1 - h[0])
    e4 = 10 * h.sum()
    v4 = 10 * np.sum(h * (1 - h))
    expected = (1 - e1) ** 2 / v1 + (9 - e4) ** 2 / v4
    assert g.statistic == pytest.approx(expected, rel=1e-9)
    assert g.df == 1 and g.pvalue == pytest.approx(sps.chi2.sf(expected, 1))
    assert g.to_frame()["failures"].tolist() == [1, 9]


def test_k_curve_goodness_of_fit_level_and_power():
    rng = np.random.default_rng(99)
    runs, rejected, detected = 100, 0, 0
    for _ in range(runs):
        g = k_curve_fit(simulate_cycles(rng, true_hazard, [1, 2, 4, 8], 20), draws=50)
        rejected += g.pvalue < 0.05

        def worse_when_long(p, K):  # the reset frequency matters beyond the position
            return np.clip(true_hazard(p) * (3.0 if K == 8 else 1.0), 0, 1)

        bad = k_curve_fit(simulate_cycles(rng, worse_when_long, [1, 2, 4, 8], 20), draws=50)
        detected += bad.pvalue < 0.05
    assert g.df == 3
    assert rejected / runs <= 0.10  # nominal 0.05 (approximate df); sd over 100 is 0.022
    assert detected / runs >= 0.7  # a threefold hazard at K = 8 is found most of the time
