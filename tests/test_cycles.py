"""Reset cycles as the unit of replication: the cycle key, cycle-robust intervals, clean
bounds that count cycles, and the dependence analysis.

Simulations draw reset cycles whose failure probability varies at random from cycle to
cycle (beta-binomial; within-cycle correlation ``rho``), the way failures cluster in the
findings dataset. They use fixed seeds and vectorised numpy; each states its tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from repro_lib import stats
from repro_lib.results import derive
from repro_lib.stats import (
    clustered_rate,
    compare,
    complete_cycles,
    cycle_groups,
    cycle_numbers,
    failure_clustering,
    failure_rate,
    format_p,
    hazard_trend_test,
    rates_by,
    should_stop,
    tarone_test,
    tries_for_upper_bound,
    verdict,
)

from .factories import make_record


def beta_probabilities(rng, size, p, rho):
    """Per-cycle failure probabilities with mean ``p`` and within-cycle correlation ``rho``."""
    if rho == 0:
        return np.full(size, p)
    return rng.beta(p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho, size=size)


def cycle_trials(failed: np.ndarray, K: int, run: str = "r", version: str = "v") -> pd.DataFrame:
    """An analysis frame from a (cycles x K) boolean array, in trial order."""
    cycles = failed.shape[0]
    trial = np.arange(1, cycles * K + 1)
    return pd.DataFrame(
        {
            "run_id": run,
            "version_label": version,
            "trial": trial,
            "since_reset": (trial - 1) % K + 1,
            "reset_freq": K,
            "counted": True,
            "failed": failed.ravel(),
            "outcome": np.where(failed.ravel(), "missing_layer", "ok"),
            "cache_used": True,
        }
    )


# the cycle key -----------------------------------------------------------------------
def test_cycle_numbers_prefer_the_stored_column_and_derive_the_rest():
    d = pd.DataFrame(
        {
            "run_id": ["a"] * 6,
            "trial": [1, 2, 3, 4, 5, 6],
            "since_reset": [1, 2, 1, 2, 1, 2],
            # a worker died after trial 2: the store gave the rerun its own cycle number
            "cycle": [1, 1, 101, 101, None, None],
        }
    )
    assert cycle_numbers(d).tolist() == [1, 1, 101, 101, 5, 5]
    assert cycle_numbers(d.drop(columns="cycle")).tolist() == [1, 1, 3, 3, 5, 5]
    # the same cycle number in two runs is two cycles; a try without one is its own
    two_runs = pd.DataFrame(
        {
            "run_id": ["a", "a", "b", "b", "b"],
            "trial": [1, 2, 1, 2, None],
            "since_reset": [1, 2, 1, 2, 1],
        }
    )
    assert cycle_groups(two_runs).tolist() == [0, 0, 1, 1, 2]
    assert cycle_groups(pd.DataFrame({"failed": [True, False]})).tolist() == [0, 1]


def test_complete_cycles_leave_out_partial_ones_and_build_errors():
    records = [
        make_record(i, "ok", reset_freq=4, since_reset=(i - 1) % 4 + 1) for i in range(1, 11)
    ]
    records[5] = make_record(6, "build_error", reset_freq=4, since_reset=2)
    d = derive(pd.DataFrame([r.to_row() for r in records]))
    # cycle 1 complete, cycle 5 lost position 2 to a build error, cycle 9 has 2 of 4 tries
    assert complete_cycles(d) == 1
    assert complete_cycles(stats.records_frame(records)) == 1


# cycle-robust intervals ----------------------------------------------------------------
def test_k1_cells_are_unchanged():
    d = cycle_trials(np.array([[True]] * 3 + [[False]] * 17), 1)
    (row,) = rates_by(d, "version_label").itertuples(index=False)
    w = failure_rate(3, 20)
    assert (row.ci_low, row.ci_high) == (w.ci_low, w.ci_high)
    assert (row.wilson_low, row.wilson_high, row.design_effect) == (w.ci_low, w.ci_high, 1.0)
    assert row.cycles == 20


def test_cycle_robust_interval_is_statsmodels_cluster_glm():
    import statsmodels.api as sm
    from scipy.special import expit

    rng = np.random.default_rng(4)
    failed = rng.random((13, 16)) < beta_probabilities(rng, 13, 0.12, 0.15)[:, None]
    d = cycle_trials(failed, 16)
    r = stats.cycle_rate(d)
    fit = sm.GLM(d["failed"].astype(float), np.ones((len(d), 1)), family=sm.families.Binomial())
    fit = fit.fit(cov_type="cluster", cov_kwds={"groups": np.repeat(np.arange(13), 16)}, use_t=True)
    low, high = expit(np.asarray(fit.conf_int(0.05))[0])
    assert r.method == "cycle-robust" and r.clusters == 13
    assert r.ci_low == pytest.approx(min(low, r.wilson_low))
    assert r.ci_high == pytest.approx(max(high, r.wilson_high))
    p = failed.mean()
    assert r.design_effect == pytest.approx(float(fit.bse.iloc[0]) ** 2 * len(d) * p * (1 - p))


def _clustered_tries(rng, cycles: int) -> pd.DataFrame:
    """Tries of cycles with K in 1..8, three versions, cycle-level random effects."""
    ks = rng.choice([1, 2, 4, 8], cycles)
    cycle = np.repeat(np.arange(cycles), ks)
    position = np.concatenate([np.arange(1, k + 1) for k in ks])
    version = rng.choice(["v1", "v2", "v3"], cycles)[cycle]
    effect = rng.normal(0, 1.0, cycles)[cycle]  # failures cluster within a cycle
    eta = -2 + 0.3 * np.log2(ks[cycle]) + 0.1 * position + effect
    eta += pd.Series(version).map({"v1": 0.0, "v2": 0.5, "v3": -0.4}).to_numpy()
    return pd.DataFrame(
        {
            "failed": (rng.random(len(cycle)) < 1 / (1 + np.exp(-eta))).astype(int),
            "log2_k": np.log2(ks[cycle]),
            "position": position,
            "version": version,
            "cycle": cycle,
        }
    )


def test_fit_on_pattern_counts_equals_the_per_try_cluster_robust_fit():
    from statsmodels.formula.api import logit

    from repro_lib.stats.cycles import cluster_fit_options, pattern_logit

    d = _clustered_tries(np.random.default_rng(7), 3000)
    rhs = "log2_k + position + C(version)"
    groups = d["cycle"].to_numpy()
    per_try = logit("failed ~ " + rhs, d).fit(disp=0, tol=1e-12, **cluster_fit_options(groups))
    counts = pattern_logit(rhs, d[["log2_k", "position", "version"]], d["failed"], groups)
    assert counts.nobs == len(d) and counts.clusters == 3000 and counts.df_inference == 2999
    assert list(counts.params.index) == list(per_try.params.index)
    for ours, theirs in [
        (counts.params, per_try.params),
        (counts.bse, per_try.bse),
        (counts.pvalues, per_try.pvalues),
        (counts.conf_int(0.05), per_try.conf_int(0.05)),
    ]:
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-8, atol=1e-12)
    assert counts.llf == pytest.approx(per_try.llf, rel=1e-10)
    # the cycles matter here: a fit that lost them (model-based errors) would be far off
    naive = logit("failed ~ " + rhs, d).fit(disp=0, tol=1e-12)
    assert (counts.bse / naive.bse)[["C(version)[T.v2]", "C(version)[T.v3]"]].min() > 1.2

    # numeric designs (the position models): predicted-rate intervals and a Wald test
    import statsmodels.api as sm

    exog = np.column_stack([np.ones(len(d)), d["position"] - 1.0, d["log2_k"] == 2])
    for cycles in (groups, np.arange(len(d))):
        glm = sm.GLM(d["failed"].astype(float), exog, family=sm.families.Binomial())
        per_try = glm.fit(tol=1e-12, **cluster_fit_options(cycles))
        counts = pattern_logit(None, pd.DataFrame(exog), d["failed"], cycles)
        at = np.array([[1.0, 0.0, 0.0], [1.0, 3.0, 1.0], [1.0, 9.0, 0.0]])
        np.testing.assert_allclose(
            counts.predict_interval(at, 0.1),
            per_try.get_prediction(at).conf_int(alpha=0.1),
            rtol=1e-8,
        )
        contrast = np.array([[0.0, 0.0, 1.0]])
        assert counts.wald_pvalue(contrast) == pytest.approx(
            float(per_try.wald_test(contrast, scalar=True).pvalue), rel=1e-8
        )
        assert counts.llf == pytest.approx(per_try.llf, rel=1e-10)

    # one try per cycle: nothing to correct, the model-based covariance and normal p-values
    alone = d.assign(cycle=np.arange(len(d)))
    per_try = logit("failed ~ " + rhs, alone).fit(disp=0, tol=1e-12)
    counts = pattern_logit(rhs, alone[["log2_k", "position", "version"]], alone["failed"],
                           alone["cycle"].to_numpy())  # fmt: skip
    assert counts.df_inference is None
    np.testing.assert_allclose(counts.bse, per_try.bse, rtol=1e-8)
    np.testing.assert_allclose(counts.pvalues, per_try.pvalues, rtol=1e-8, atol=1e-300)


def test_zero_failures_count_complete_cycles():
    d = cycle_trials(np.zeros((25, 4), bool), 4)
    r = stats.cycle_rate(d)
    assert r.method == "cycle-count" and r.complete == 25
    assert r.ci_high == pytest.approx(1 - 0.025 ** (1 / 25))  # two-sided: alpha / 2
    assert r.wilson_high == pytest.approx(failure_rate(0, 100).ci_high)
    assert verdict(0, 100, cycles=25) == (
        "not enough evidence (0 of 100 in 25 complete reset cycles, 95% upper bound 11.3% "
        "counting cycles)"
    )


@pytest.mark.parametrize("K, cycles, p", [(4, 50, 0.15), (16, 13, 0.12)])
def test_cycle_robust_interval_covers_where_wilson_falls_short(K, cycles, p):
    rng = np.random.default_rng(K)
    runs, robust, naive = 400, 0, 0
    groups = np.repeat(np.arange(cycles), K)
    for _ in range(runs):
        failed = rng.random((cycles, K)) < beta_probabilities(rng, cycles, p, 0.15)[:, None]
        r = clustered_rate(failed.ravel(), groups)
        robust += r.ci_low <= p <= r.ci_high
        naive += r.wilson_low <= p <= r.wilson_high
    message = f"K = {K}: cycle-robust covers {robust / runs:.3f}, Wilson {naive / runs:.3f}"
    # nominal 0.95; the sd over 400 data sets is 0.011
    assert robust / runs >= 0.93, message
    assert naive / runs < 0.90, message


# clean verdicts keep their error rate ----------------------------------------------------
def _false_clean(rng, K, max_rate, rho, runs, *, count_cycles, alpha=0.05):
    """Share of cells at a true rate of ``max_rate`` that the rule calls clean."""
    # the clean stop comes at a fixed point of an all-clean sequence: find it with the rule
    n_stop = next(
        n
        for n in range(1, 100 * tries_for_upper_bound(max_rate, alpha))
        if should_stop(
            0, n, max_rate=max_rate, alpha=alpha, cycles=n // K if count_cycles else None
        ).stop
    )
    whole, part = divmod(n_stop, K)
    assert verdict(
        0, n_stop, max_rate=max_rate, alpha=alpha, cycles=whole if count_cycles else None
    ).startswith("no failure seen")
    probs = beta_probabilities(rng, (runs, whole + 1), max_rate, rho)
    seen = rng.binomial(K, probs[:, :whole]).sum(axis=1) + rng.binomial(part, probs[:, whole])
    return float(np.mean(seen == 0)), n_stop


@pytest.mark.parametrize("K", [4, 16])
def test_a_clean_verdict_keeps_its_error_rate_when_failures_cluster(K):
    rng = np.random.default_rng(100 + K)
    alpha, max_rate, runs = 0.05, 0.05, 20_000
    new, n_new = _false_clean(rng, K, max_rate, 0.15, runs, count_cycles=True)
    old, n_old = _false_clean(rng, K, max_rate, 0.15, runs, count_cycles=False)
    message = (
        f"K = {K}, within-cycle correlation 0.15, true rate = max_rate: counting cycles says "
        f"clean in {new:.4f} of cells (after {n_new} tries), counting tries in {old:.4f} "
        f"(after {n_old} tries); alpha = {alpha}"
    )
    assert n_new == K * tries_for_upper_bound(max_rate, alpha), message
    assert new <= alpha, message
    # the bound that counts tries is the bug this rule fixes: sd of `old` is below 0.002
    assert old > alpha + 0.02, message


# p-values and untestable cases ------------------------------------------------------------
def test_p_values_below_the_float_range_print_as_a_bound():
    assert format_p(0.0) == "< 1e-300" and format_p(1e-320) == "< 1e-300"
    assert format_p(0.0349) == "0.0349"
    c = compare((600_000, 1_000_000), (200_000, 1_000_000))
    assert c.pvalue == 0.0
    assert "p < 1e-300" in c.describe() and "p = 0 " not in c.describe()


def test_tarone_with_one_batch_has_nothing_to_test():
    z, p = tarone_test([7], [20])
    assert math.isnan(z) and p == 1.0


def test_trend_test_under_separation_uses_the_per_position_df():
    d = pd.DataFrame(
        [(2, False)] * 10 + [(3, True)] * 5 + [(3, False)] * 5 + [(4, True)] * 10,
        columns=["since_reset", "failed"],
    ).assign(counted=True, version_label="v")
    (t,) = hazard_trend_test(d)
    assert t.df == 2 and t.pvalue == pytest.approx(
        __import__("scipy").stats.chi2.sf(t.statistic, 2)
    )
    assert "df 2" in t.note and math.isnan(t.robust_pvalue)


def test_trend_test_cycle_robust_p_holds_its_level_with_clustered_cycles():
    rng = np.random.default_rng(8)
    runs, robust = 150, 0
    for _ in range(runs):
        probs = beta_probabilities(rng, 30, 0.2, 0.3)
        failed = rng.random((30, 8)) < probs[:, None]
        failed[:, 0] = False  # position 1 never fails, as in the lab's data
        (t,) = hazard_trend_test(cycle_trials(failed, 8))
        robust += t.robust_pvalue < 0.05
    # a flat probability: nominal 0.05; the sd over 150 data sets is 0.018
    assert 0.01 <= robust / runs <= 0.09, robust / runs


# the dependence analysis --------------------------------------------------------------------
def test_failure_clustering_codes_earlier_and_previous_failures():
    failed = np.array(
        [
            [False, True, False],  # cycle 1: position 3 follows a failure
            [False, False, True],  # cycle 2: follows a cycle with a failure
            [False, False, False],  # cycle 3: follows one with a failure
            [False, True, True],  # cycle 4: follows a clean cycle; position 3 after a failure
        ]
    )
    result = failure_clustering(cycle_trials(failed, 3))
    within, across = result.within, result.across
    # positions 2 and 3 only: 8 tries; "earlier failure" holds for the two positions 3
    assert (within.tries, within.exposed) == (8, 2)
    # cycles 2-4 have a previous cycle: 6 tries, 4 of them after a cycle with a failure
    assert (across.tries, across.exposed) == (6, 4)


def test_failure_clustering_finds_clustered_cycles_and_not_independent_ones():
    rng = np.random.default_rng(21)
    K, cycles = 4, 400
    clustered = rng.random((cycles, K)) < beta_probabilities(rng, cycles, 0.2, 0.3)[:, None]
    clustered[:, 0] = False
    result = failure_clustering(cycle_trials(clustered, K))
    assert result.clustered and result.within.ci_low > 1, result.describe()
    # across a reset the cycles are independent draws: no effect
    assert result.across.ci_low < 1 < result.across.ci_high, result.describe()
    assert "no effect detected: OR" in result.describe()
    independent = rng.random((cycles, K)) < 0.2
    independent[:, 0] = False
    plain = failure_clustering(cycle_trials(independent, K))
    assert plain.within.ci_low < 1 < plain.within.ci_high, plain.describe()
    assert not plain.clustered


def test_failure_clustering_has_nothing_to_say_without_cycles_or_failures():
    k1 = cycle_trials(np.array([[True], [False]] * 5), 1)
    assert failure_clustering(k1).within is None and "K = 1" in failure_clustering(k1).message
    clean = cycle_trials(np.zeros((5, 4), bool), 4)
    assert "no try lost a layer" in failure_clustering(clean).describe()


def test_a_batch_with_no_tries_has_no_rate_and_no_error():
    # a batch refused before its first try (absent image) still gets a summary
    from repro_lib.stats.cycles import cycle_rate, records_frame

    rate = cycle_rate(records_frame([]))
    assert (rate.n, rate.clusters, rate.reason) == (0, 0, "no tries")


def test_many_runs_are_adjusted_for_through_their_configuration():
    # one indicator column per run would not fit memory for a cluster's thousands of runs
    import numpy as np
    import pandas as pd

    from repro_lib.stats.dependence import MAX_ADJUST_LEVELS, failure_clustering

    rng = np.random.default_rng(7)
    runs = MAX_ADJUST_LEVELS + 5
    rows = [
        {
            "run_id": f"r{r}",
            "configuration": f"c{r % 3}",
            "trial": t,
            "since_reset": (t - 1) % 4 + 1,
            "reset_freq": 4,
            "failed": bool(rng.random() < 0.3),
        }
        for r in range(runs)
        for t in range(1, 17)
    ]
    d = pd.DataFrame(rows).assign(counted=True)
    within = failure_clustering(d).within
    assert within is not None and within.estimated, within
    assert "adjusted for the configuration instead of the run" in within.note
    assert "instead of the run" in within.describe()
    few = failure_clustering(d[d["run_id"].isin([f"r{r}" for r in range(10)])]).within
    assert few is not None and few.note == ""  # the run itself, as before
