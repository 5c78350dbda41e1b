"""Models of the flaky failure: failure probability by position, K-curve, batches, odds ratios.

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
    batch_heterogeneity,
    batch_rate,
    compare,
    failure_model,
    failure_rate,
    fit_hazard,
    hazard_trend_test,
    k_curve_fit,
    tarone_test,
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


def test_trend_test_when_positions_separate_the_data():
    d = trials(
        [("v", 4, 2, False, 10), ("v", 4, 3, True, 5), ("v", 4, 3, False, 5), ("v", 4, 4, True, 10)]
    )
    (t,) = hazard_trend_test(d)
    assert t.slope == math.inf and "separate" in t.note
    # the statistic against the per-position proportions: 2 * (l_sat - l_0), by hand
    l_sat = 10 * math.log(0.5)
    l0 = 30 * math.log(0.5)
    assert t.statistic == pytest.approx(2 * (l_sat - l0), rel=1e-9)


def test_trend_test_recovers_a_known_slope_and_holds_its_level():
    rng = np.random.default_rng(12)
    d = simulate_cycles(rng, true_hazard, [8], 400)
    (t,) = hazard_trend_test(d)
    assert t.pvalue < 1e-3
    assert abs(t.slope - (-0.3)) < 3 * t.slope_se  # truth within 3 standard errors
    # constant hazard 0.2 at p >= 2: the test rejects at about its 5% level
    rejected, runs = 0, 200
    for _ in range(runs):
        flat = simulate_cycles(rng, lambda p, K: np.where(p <= 1, 0.05, 0.2), [4], 40)
        rejected += hazard_trend_test(flat)[0].pvalue < 0.05
    assert 0.015 <= rejected / runs <= 0.095  # nominal 0.05; binomial sd over 200 is 0.015


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


def cycles_frame(run, K, pattern, version="v"):
    """Trials of one run at reset frequency K: ``pattern`` is a list of cycles, each a
    sequence of K outcomes (True = failed), in trial order."""
    rows, trial = [], 0
    for cycle in pattern:
        for position, failed in enumerate(cycle, start=1):
            trial += 1
            rows.append((version, K, position, bool(failed), run, trial))
    d = pd.DataFrame(
        rows, columns=["version_label", "reset_freq", "since_reset", "failed", "run_id", "trial"]
    )
    return d.assign(counted=True)


def test_k_curve_held_out_prediction_hand_computed():
    # fitted on K = 1 and 2: h(1) = 80/800 = 0.1 and a constant h = 120/400 = 0.3 at p >= 2
    fit_cells = pd.concat(
        [
            cycles_frame("f1", 1, [[True]] * 40 + [[False]] * 360),
            cycles_frame(
                "f2", 2, [[True, True]] * 40 + [[False, True]] * 80 + [[False, False]] * 280
            ),
        ]
    )
    # held out: K = 4, 25 cycles; failures cluster: 7 cycles lose every try, 18 none
    held = cycles_frame("h4", 4, [[True] * 4] * 7 + [[False] * 4] * 18)
    g = k_curve_fit(pd.concat([fit_cells, held]), fit_on=[1, 2], draws=100_000)
    assert (g.fit_on, g.held_out, g.df) == ((1, 2), (4,), 1)
    row = g.to_frame().set_index("reset_freq").loc[4]
    observed, expected = 28, 25 * 0.1 + 75 * 0.3  # 25 tries at position 1, 75 after it
    assert row["expected"] == pytest.approx(expected, rel=1e-9) and row["held_out"]
    # V_obs: the cycle-robust (CR1) variance of the count, G/(G-1) sum (x_g - n_g p)^2 with
    # p = 0.28, which is larger than the binomial 25*0.09 + 75*0.21 = 18
    v_obs = 25 / 24 * (7 * (4 - 4 * 0.28) ** 2 + 18 * (0 - 4 * 0.28) ** 2)
    # V_pred (delta method): 25^2 var(h1) + 75^2 var(h), var = p (1 - p) / n
    v_pred = 25**2 * 0.1 * 0.9 / 800 + 75**2 * 0.3 * 0.7 / 400
    statistic = (observed - expected) ** 2 / (v_obs + v_pred)  # 0.1034; 0.43 if binomial
    assert g.statistic == pytest.approx(statistic, rel=0.01)
    assert g.pvalue == pytest.approx(sps.chi2.sf(g.statistic, 1))
    assert "held-out K = 4" in g.describe() and "is consistent with" in g.describe()


def test_k_curve_in_sample_is_said_so():
    d = simulate_cycles(np.random.default_rng(5), true_hazard, [1, 4], 30)
    g = k_curve_fit(d)  # only one K >= 2: nothing can be held out
    assert not g.tested and g.held_out == () and "in-sample only" in g.describe()
    assert not any(r["held_out"] for r in g.table)


def test_k_curve_under_separation_claims_no_departure():
    # failures only at position 2: the logistic slope is -inf; the old constant fallback
    # reported "departs from" (p = 0.003) on data like these
    d = pd.concat(
        [
            cycles_frame("a", 2, [[False, True]] * 6 + [[False, False]] * 14),
            cycles_frame("b", 4, [[False, True, False, False]] * 6 + [[False] * 4] * 14),
            cycles_frame("c", 3, [[False, True, False]] * 6 + [[False] * 3] * 14),
        ]
    )
    g = k_curve_fit(d)
    assert g.model.separated and "every failure at position ≤ 2" in g.model.note
    assert not g.tested and math.isnan(g.pvalue) and math.isnan(g.lr_pvalue)
    assert "departs" not in g.describe() and "no departure is claimed" in g.describe()


def test_k_curve_held_out_level_and_power_and_the_k_effect_test():
    rng = np.random.default_rng(99)
    runs, rejected, detected, lr_rejected, lr_detected = 60, 0, 0, 0, 0

    def worse_when_long(p, K):  # the reset frequency matters beyond the position
        return np.clip(true_hazard(p) * (3.0 if K == 8 else 1.0), 0, 1)

    for _ in range(runs):
        g = k_curve_fit(simulate_cycles(rng, true_hazard, [1, 2, 4, 8], 20), draws=200)
        bad = k_curve_fit(simulate_cycles(rng, worse_when_long, [1, 2, 4, 8], 20), draws=200)
        # default split: fit K = 1, 2, 8 and predict 4; the K effect test uses every K
        assert g.fit_on == (1, 2, 8) and g.held_out == (4,)
        rejected += g.pvalue < 0.05
        detected += bad.pvalue < 0.05
        lr_rejected += g.lr_pvalue < 0.05
        lr_detected += bad.lr_pvalue < 0.05
    assert g.df == 1 and g.lr_df == 2
    # nominal 0.05; sd over 60 data sets is 0.028
    assert rejected / runs <= 0.12 and lr_rejected / runs <= 0.12, (rejected, lr_rejected)
    # a threefold failure probability at K = 8 is found most of the time
    assert detected / runs >= 0.6 and lr_detected / runs >= 0.7, (detected, lr_detected)


# batches ------------------------------------------------------------------------
def beta_binomial_batches(rng, batches, size, p, rho):
    """Failures per batch: each batch's probability ~ Beta with mean p and intra-batch correlation rho."""
    if rho == 0:
        probs = np.full(batches, p)
    else:
        a = p * (1 - rho) / rho
        probs = rng.beta(a, (1 - p) * (1 - rho) / rho, size=batches)
    return rng.binomial(size, probs), np.full(batches, size)


def as_counts(x, n, prefix="r"):
    return {f"{prefix}{i}": (int(a), int(b)) for i, (a, b) in enumerate(zip(x, n, strict=True))}


def batch_frame(counts, cell="c", version="v"):
    rows = []
    for run, (k, n) in counts.items():
        rows += [(cell, version, run, True)] * k + [(cell, version, run, False)] * (n - k)
    d = pd.DataFrame(rows, columns=["cell", "version_label", "run_id", "failed"])
    return d.assign(counted=True)


def test_tarone_hand_computed_and_related_to_pearson():
    # p = 12/60 = 0.2; S = (4 + 25 + 9) / 0.16 = 237.5; Z = (237.5 - 60) / sqrt(2 * 3 * 20 * 19)
    z, p = tarone_test([2, 9, 1], [20, 20, 20])
    assert z == pytest.approx((237.5 - 60) / math.sqrt(2280), rel=1e-12)
    assert p == pytest.approx(sps.norm.sf(z))
    # with equal batch sizes m, S = m * X2 (Pearson's statistic of the batch table)
    x2 = sps.chi2_contingency([[2, 18], [9, 11], [1, 19]], correction=False).statistic
    assert z == pytest.approx((20 * x2 - 60) / math.sqrt(2 * 3 * 20 * 19), rel=1e-9)
    assert tarone_test([0, 0], [10, 10]) == (pytest.approx(math.nan, nan_ok=True), 1.0)


def test_batch_heterogeneity_per_cell():
    d = pd.concat(
        [
            batch_frame({"r1": (2, 20), "r2": (9, 20), "r3": (1, 20)}, cell="three"),
            batch_frame({"r4": (8, 10), "r5": (1, 6)}, cell="two"),
            batch_frame({"r6": (0, 10), "r7": (0, 10)}, cell="clean"),
            batch_frame({"r8": (3, 10)}, cell="one batch"),
        ]
    )
    got = {h.cell: h for h in batch_heterogeneity(d)}
    assert set(got) == {"three", "two", "clean"}
    three = got["three"]
    expected = sps.chi2_contingency([[2, 18], [9, 11], [1, 19]], correction=False)
    assert (three.method, three.df) == ("chi2", 2)
    assert three.statistic == pytest.approx(expected.statistic)
    assert three.pvalue == pytest.approx(expected.pvalue)
    assert three.tarone_z == pytest.approx(tarone_test([2, 9, 1], [20, 20, 20])[0])
    assert three.disagree() and three.overdispersed() and "Tarone" in three.describe()
    assert got["two"].method == "fisher" and got["two"].pvalue == pytest.approx(0.035, abs=1e-3)
    assert got["clean"].method == "none" and not got["clean"].disagree()
    assert len(three.to_frame()) == 1


def test_over_dispersion_is_detected_in_beta_binomial_data_and_not_in_binomial_data():
    rng = np.random.default_rng(5)
    runs = 400
    flagged_bb = flagged_bin = chi_bb = chi_bin = 0
    for _ in range(runs):
        x, n = beta_binomial_batches(rng, 10, 40, 0.2, 0.15)
        flagged_bb += tarone_test(x, n)[1] < 0.05
        chi_bb += sps.chi2_contingency(np.column_stack([x, n - x]), correction=False).pvalue < 0.05
        x, n = beta_binomial_batches(rng, 10, 40, 0.2, 0.0)
        flagged_bin += tarone_test(x, n)[1] < 0.05
        chi_bin += sps.chi2_contingency(np.column_stack([x, n - x]), correction=False).pvalue < 0.05
    # rho = 0.15 (design effect about 6.9): found nearly always
    assert flagged_bb / runs >= 0.9 and chi_bb / runs >= 0.85
    # binomial data: flagged at about the nominal 5% (sd over 400 is 0.011)
    assert flagged_bin / runs <= 0.085 and chi_bin / runs <= 0.085
    # and through the DataFrame API
    x, n = beta_binomial_batches(rng, 10, 40, 0.2, 0.3)
    (h,) = batch_heterogeneity(batch_frame(as_counts(x, n)))
    assert h.overdispersed() and h.disagree()


def test_batch_rate_matches_statsmodels_cluster_robust_glm():
    import statsmodels.api as sm

    counts = {"a": (2, 20), "b": (9, 20), "c": (1, 20), "d": (4, 25)}
    r = batch_rate(counts)
    d = batch_frame(counts)
    fit = sm.GLM(
        d["failed"].astype(float), np.ones((len(d), 1)), family=sm.families.Binomial()
    ).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(d["run_id"])[0]})
    p = 16 / 85
    assert r.p_hat == pytest.approx(p)
    # statsmodels' CR1 correction for one parameter is G / (G - 1), as ours
    assert r.se / (p * (1 - p)) == pytest.approx(float(fit.bse.iloc[0]), rel=1e-6)
    t = sps.t.ppf(0.975, 3)
    logit = math.log(p / (1 - p))
    assert r.ci_low == pytest.approx(expit(logit - t * fit.bse.iloc[0]), rel=1e-6)
    assert r.ci_high == pytest.approx(expit(logit + t * fit.bse.iloc[0]), rel=1e-6)
    assert r.method == "batch-robust" and r.design_effect > 1
    assert batch_rate(d).ci_low == pytest.approx(r.ci_low)  # DataFrame input, same answer


def test_batch_rate_falls_back_to_wilson():
    none = batch_rate({"a": (0, 20), "b": (0, 20)})
    assert (none.method, none.reason) == ("Wilson", "no failure: assumes independent tries")
    one = batch_rate({"a": (3, 20)})
    assert (one.method, one.reason) == ("Wilson", "one batch")
    assert one.ci_low == failure_rate(3, 20).ci_low
    same = batch_rate({"a": (2, 20), "b": (2, 20)})
    assert (same.method, same.reason) == ("Wilson", "identical batch rates")


def test_batch_rate_is_never_narrower_than_wilson():
    # three batches that agree more than binomial noise allows: the cluster-robust
    # variance is a tenth of the binomial one, which used to give a narrower interval
    r = batch_rate({"a": (10, 50), "b": (10, 50), "c": (11, 50)})
    w = failure_rate(31, 150)
    assert r.design_effect < 0.2
    assert r.ci_low <= w.ci_low and r.ci_high >= w.ci_high


def test_batch_rate_covers_the_truth_under_between_batch_variation():
    rng = np.random.default_rng(11)
    runs, p = 1000, 0.2
    robust = naive = 0
    for _ in range(runs):
        x, n = beta_binomial_batches(rng, 8, 40, p, 0.1)
        r = batch_rate(as_counts(x, n))
        robust += r.ci_low <= p <= r.ci_high
        w = failure_rate(int(x.sum()), int(n.sum()))
        naive += w.ci_low <= p <= w.ci_high
    # nominal 0.95; sd over 1000 data sets is 0.007: accept 0.92-0.98
    assert 0.92 <= robust / runs <= 0.98
    # the binomial interval ignores the batches and under-covers badly
    assert naive / runs < 0.85


def test_compare_uses_the_batch_test_when_both_groups_have_batches():
    a = batch_frame({"r1": (5, 20), "r2": (9, 20), "r3": (4, 20)})
    b = batch_frame({"r4": (1, 20), "r5": (2, 20), "r6": (0, 20)})
    c = compare(a, b)
    assert (c.method, c.batches1, c.batches2) == ("batch-t", 3, 3)
    # CR1 of a linear probability model, G = 6 batches, N = 120 tries, 2 parameters:
    # factor G/(G-1) (N-1)/(N-2) on the sums of squared batch residuals
    va = ((5 - 6) ** 2 + (9 - 6) ** 2 + (4 - 6) ** 2) / 60**2
    vb = ((1 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2) / 60**2
    t = (18 / 60 - 3 / 60) / math.sqrt(6 / 5 * 119 / 118 * (va + vb))
    assert c.statistic == pytest.approx(t)
    assert c.pvalue == pytest.approx(2 * sps.t.sf(t, 5))  # t on G - 1 df
    assert "batch-robust t test" in c.describe()
    # one batch per group, or counts: Fisher's exact test as before
    assert compare(batch_frame({"r1": (5, 20)}), b).method == "fisher"
    assert compare((18, 60), (3, 60)).method == "fisher"


def test_batch_compare_holds_its_level_where_fisher_does_not():
    rng = np.random.default_rng(3)
    runs, batch_rejects, fisher_rejects = 150, 0, 0
    for _ in range(runs):
        groups = []
        for _g in range(2):
            x, n = beta_binomial_batches(rng, 6, 30, 0.25, 0.15)
            groups.append(as_counts(x, n, prefix=f"{_g}-"))
        c = compare(batch_frame(groups[0]), batch_frame(groups[1]))
        batch_rejects += c.pvalue < 0.05
        k1, n1 = sum(k for k, _ in groups[0].values()), 180
        k2, n2 = sum(k for k, _ in groups[1].values()), 180
        fisher_rejects += compare((k1, n1), (k2, n2)).pvalue < 0.05
    # equal means, between-batch variation: nominal 5% (sd over 150 is 0.018)
    assert batch_rejects / runs <= 0.09
    assert fisher_rejects / runs >= 0.15  # Fisher takes batch noise for a difference


# the logistic model ------------------------------------------------------------------
def model_frame(rows):
    """(version, K, position, cache, mode, failed, count) -> analysis frame."""
    out = []
    for version, K, p, cache, mode, failed, count in rows:
        out += [(version, K, p, cache, mode, failed)] * count
    cols = ["version_label", "reset_freq", "since_reset", "cache_type", "mode", "failed"]
    d = pd.DataFrame(out, columns=cols)
    return d.assign(counted=True, failed=d["failed"].astype(bool))


def test_failure_model_one_binary_term_is_the_sample_odds_ratio():
    # only mode varies: the fitted odds ratio is (a d) / (b c) with Woolf's interval
    d = model_frame(
        [
            ("v0.9.0", 4, 2, "registry", "daemon", True, 12),
            ("v0.9.0", 4, 2, "registry", "daemon", False, 28),
            ("v0.9.0", 4, 2, "registry", "daemonless", True, 5),
            ("v0.9.0", 4, 2, "registry", "daemonless", False, 35),
            ("v0.9.1", 4, 2, "registry", "daemon", False, 40),  # never fails: left out
        ]
    )
    m = failure_model(d)
    assert m.supported and m.versions == ("v0.9.0",) and m.nobs == 80
    assert set(m.dropped) == {
        "version (one level: v0.9.0)",
        "log2(K) (one level: 2)",
        "position (one level: 2)",
        "cache (one level: registry)",
    }
    (row,) = m.to_frame().to_dict("records")
    odds = (5 * 28) / (35 * 12)  # daemonless vs the reference daemon
    se = math.sqrt(1 / 5 + 1 / 35 + 1 / 12 + 1 / 28)
    assert row["term"] == "mode = daemonless"
    assert row["odds_ratio"] == pytest.approx(odds, rel=1e-6)
    assert row["ci_low"] == pytest.approx(odds * math.exp(-1.959964 * se), rel=1e-5)
    assert row["ci_high"] == pytest.approx(odds * math.exp(1.959964 * se), rel=1e-5)


def test_failure_model_recovers_known_odds_ratios():
    rng = np.random.default_rng(21)
    n = 6000
    version = rng.choice(["v0.8.3", "v0.9.0"], n)
    K = rng.choice([2, 4, 8, 16], n)
    pos = rng.integers(1, K + 1)
    mode = rng.choice(["daemon", "daemonless"], n)
    eta = (
        -1.5
        + 0.7 * (version == "v0.9.0")
        + 0.3 * np.log2(K)
        - 0.1 * pos
        - 0.5 * (mode == "daemonless")
    )
    failed = rng.random(n) < expit(eta)
    d = pd.DataFrame(
        {"version_label": version, "reset_freq": K, "since_reset": pos, "cache_type": "registry",
         "mode": mode, "failed": failed, "counted": True}
    )  # fmt: skip
    m = failure_model(d)
    table = m.to_frame().set_index("term")
    truth = {
        "version = v0.9.0": math.exp(0.7),
        "log2(K) (per doubling of K)": math.exp(0.3),
        "position (per step)": math.exp(-0.1),
        "mode = daemonless": math.exp(-0.5),
    }
    assert set(table.index) == set(truth)
    for term, value in truth.items():
        row = table.loc[term]
        se = (math.log(row["ci_high"]) - math.log(row["ci_low"])) / (2 * 1.959964)
        # the truth within 3 standard errors on the log-odds scale (a 95% interval
        # misses one term in 20 by design)
        assert abs(math.log(row["odds_ratio"]) - math.log(value)) < 3 * se, term


def test_failure_model_names_the_separating_term():
    d = model_frame(
        [
            ("v0.9.0", 4, 2, "registry", "daemonless", True, 6),
            ("v0.9.0", 4, 2, "registry", "daemonless", False, 14),
            ("v0.9.0", 4, 2, "local", "daemonless", False, 20),
        ]
    )
    m = failure_model(d)
    assert not m.supported and m.to_frame().empty
    assert m.separating == "cache = local"
    assert "cache = local separates failures from clean tries" in m.describe()
    assert "none of its 20 tries failed" in m.message
    # a numeric term: failures only at K = 4, clean tries only at K <= 4
    d = model_frame(
        [
            ("v0.9.0", 1, 1, "registry", "daemonless", False, 20),
            ("v0.9.0", 4, 2, "registry", "daemonless", True, 5),
            ("v0.9.0", 4, 2, "registry", "daemonless", False, 15),
        ]
    )
    m = failure_model(d, min_position=1)
    assert m.separating == "log2(K)" and "every failure at K ≥ 4" in m.message


def test_failure_model_leaves_out_a_first_position_that_never_fails():
    rows = [("v0.9.0", 1, 1, "registry", "daemonless", False, 40)]
    for K in (2, 4):
        rows += [("v0.9.0", K, 1, "registry", "daemonless", False, 20)]
        for p, k in zip(range(2, K + 1), (6, 4, 3), strict=False):
            rows += [
                ("v0.9.0", K, p, "registry", "daemonless", True, k),
                ("v0.9.0", K, p, "registry", "daemonless", False, 20 - k),
            ]
    d = model_frame(rows)
    m = failure_model(d)
    assert m.supported and "position 1 never failed (0 of 80 tries)" in m.note
    assert m.nobs == 80 and "uses positions ≥ 2" in m.describe()
    assert set(m.to_frame()["term"]) == {"log2(K) (per doubling of K)", "position (per step)"}
    assert failure_model(d, min_position=1).nobs == 160  # explicit: every position


def test_failure_model_without_failures_or_terms():
    clean = model_frame([("v0.9.1", 4, 2, "registry", "daemonless", False, 20)])
    assert "no version lost a layer" in failure_model(clean).message
    one = model_frame(
        [
            ("v0.9.0", 4, 2, "registry", "daemonless", True, 2),
            ("v0.9.0", 4, 2, "registry", "daemonless", False, 8),
        ]
    )
    assert failure_model(one).message == "every term has one level in these data"
    assert failure_model(model_frame([])).message
