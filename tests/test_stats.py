"""Statistics against known values (scipy/statsmodels computed independently)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from repro_lib.results import derive
from repro_lib.stats import (
    Comparison,
    FailureRate,
    StopDecision,
    compare,
    failure_rate,
    group_agreement,
    logistic_fit,
    rate_by_position,
    rates_by,
    should_stop,
    tries_for_upper_bound,
    tries_needed,
    upper_bound,
    verdict,
)

from .factories import make_record


def rows(specs):
    """Synthetic trials: specs of (version, reset_freq, since_reset, outcome, count)."""
    out, trial = [], 0
    for version, reset_freq, since_reset, outcome, count in specs:
        for _ in range(count):
            trial += 1
            out.append(
                make_record(
                    trial, outcome, version=version, reset_freq=reset_freq, since_reset=since_reset
                ).to_row()
            )
    return derive(pd.DataFrame(out))


# failure_rate ---------------------------------------------------------------
def test_wilson_3_of_20():
    r = failure_rate(3, 20)
    assert isinstance(r, FailureRate)
    assert (r.k, r.n, r.method, r.alpha) == (3, 20, "wilson", 0.05)
    assert r.p_hat == pytest.approx(0.15)
    assert r.ci_low == pytest.approx(0.0524, abs=1e-4)
    assert r.ci_high == pytest.approx(0.3604, abs=1e-4)
    assert r.describe() == "3 of 20 (15.0%, 95% CI 5.2%–36.0%)"


def test_beta_interval_0_of_300_is_two_sided():
    r = failure_rate(0, 300, method="beta")
    assert r.ci_low == 0.0
    assert r.ci_high == pytest.approx(0.0122, abs=1e-4)  # two-sided 95% Clopper-Pearson


def test_upper_bound_0_of_300_is_one_sided_exact():
    assert upper_bound(300, 0.05) == pytest.approx(0.00994, abs=1e-5)
    assert upper_bound(300, 0.05) == pytest.approx(1 - 0.05 ** (1 / 300))
    assert upper_bound(0) == 1.0
    assert upper_bound(20, k=3) == pytest.approx(sps.beta.ppf(0.95, 4, 17))


def test_describe_zero_failures_uses_one_sided_bound():
    assert failure_rate(0, 300).describe() == "0 of 300 (95% upper bound 1.0%)"
    assert "99% upper bound" in failure_rate(0, 300, alpha=0.01).describe()


def test_no_tries():
    r = failure_rate(0, 0)
    assert math.isnan(r.p_hat) and (r.ci_low, r.ci_high) == (0.0, 1.0)


def test_all_failures_and_frame():
    r = failure_rate(5, 5)
    assert r.ci_high == 1.0 and 0 < r.ci_low < 1
    frame = r.to_frame()
    assert list(frame.columns) == ["k", "n", "p_hat", "ci_low", "ci_high", "method", "alpha"]
    assert r.as_dict()["k"] == 5


@pytest.mark.parametrize("k,n", [(-1, 3), (4, 3), (1.5, 3)])
def test_bad_counts(k, n):
    with pytest.raises(ValueError):
        failure_rate(k, n)


def test_bad_method():
    with pytest.raises(ValueError):
        failure_rate(1, 3, method="normal")


# how many tries -----------------------------------------------------------
def test_tries_needed():
    assert tries_needed(0.1, 0.95) == 29
    assert tries_needed(1.0) == 1
    assert tries_needed(0.5, 0.75) == 2  # 1 - 0.5**2 == 0.75 exactly
    for rate in (0.01, 0.07, 0.3):
        n = tries_needed(rate)
        assert 1 - (1 - rate) ** n >= 0.95 > 1 - (1 - rate) ** (n - 1)
    with pytest.raises(ValueError):
        tries_needed(0.0)


def test_tries_for_upper_bound():
    n = tries_for_upper_bound(0.01, 0.05)
    assert n == 299
    assert upper_bound(n) < 0.01 <= upper_bound(n - 1)


# stopping ---------------------------------------------------------------------
def test_should_stop_on_first_failure():
    decision = should_stop(1, 7)
    assert isinstance(decision, StopDecision) and decision.stop
    assert "failure seen" in decision.reason


def test_should_stop_respects_min_tries_and_min_failures():
    assert not should_stop(1, 3, min_tries=10).stop
    assert not should_stop(1, 30, min_failures=3).stop
    assert should_stop(3, 30, min_failures=3).stop


def test_should_stop_clean_sequence():
    # a clean cell: continue until the exact bound drops below 1%
    decisions = [should_stop(0, n) for n in range(1, 301)]
    first = next(n for n, d in enumerate(decisions, start=1) if d.stop)
    assert first == 299
    assert "clean" in decisions[first - 1].reason
    assert "continue" in decisions[first - 2].reason
    assert should_stop(0, 60, max_rate=0.05).stop  # 1 - 0.05**(1/60) ≈ 4.9%


def test_should_stop_sequence_with_failure():
    outcomes = [0, 0, 0, 1, 0]
    k = n = 0
    stopped_at = None
    for failed in outcomes:
        k, n = k + failed, n + 1
        if should_stop(k, n):
            stopped_at = n
            break
    assert stopped_at == 4


# verdict ------------------------------------------------------------------
def test_verdict():
    assert verdict(0, 0) == "no usable trials"
    assert verdict(3, 20).startswith("affected")
    assert verdict(0, 300) == "no failure seen (0 of 300, 95% upper bound 1.0%)"
    assert verdict(0, 50).startswith("not enough evidence")
    assert verdict(0, 60, max_rate=0.05).startswith("no failure seen")


# compare -------------------------------------------------------------------
def test_fisher_8_2_vs_1_5():
    c = compare((8, 10), (1, 6))
    assert isinstance(c, Comparison)
    expected = sps.fisher_exact([[8, 2], [1, 5]])
    assert c.pvalue == pytest.approx(0.0350, abs=1e-4)
    assert c.pvalue == pytest.approx(expected.pvalue)
    assert c.odds_ratio == pytest.approx(20.0)
    assert (c.k1, c.n1, c.k2, c.n2, c.method) == (8, 10, 1, 6, "fisher")
    assert c.table == [[8, 2], [1, 5]]
    assert "p = 0.035" in c.describe()


def test_compare_dataframes_and_failure_rates():
    a = rows([("v0.9.0", 1, 1, "missing_layer", 8), ("v0.9.0", 1, 1, "ok", 2)])
    b = rows(
        [
            ("v0.9.1", 1, 1, "missing_layer", 1),
            ("v0.9.1", 1, 1, "ok", 5),
            ("v0.9.1", 1, 1, "build_error", 4),
        ]
    ).assign(run_id="r2")  # another run: its trial numbers name other cycles
    c = compare(a, b)
    assert (c.k1, c.n1, c.k2, c.n2) == (8, 10, 1, 6)  # build errors not counted
    assert compare(failure_rate(8, 10), failure_rate(1, 6)).pvalue == pytest.approx(c.pvalue)
    assert compare((0, 0), (1, 3)).pvalue == 1.0


# tables ---------------------------------------------------------------------
def test_rates_by_version_and_errors():
    df = rows(
        [
            ("v0.10.0", 1, 1, "ok", 5),
            ("v0.9.0", 1, 1, "missing_layer", 3),
            ("v0.9.0", 1, 1, "ok", 17),
            ("v0.9.0", 1, 1, "build_error", 2),
            ("v0.9.0", 1, 1, "infra_error", 1),
            ("v0.8.3", 1, 1, "build_error", 4),
        ]
    )
    t = rates_by(df, "version")
    assert t["version"].tolist() == ["v0.8.3", "v0.9.0", "v0.10.0"]  # numeric order
    v9 = t[t["version"] == "v0.9.0"].iloc[0]
    assert (v9.tries, v9.failures, v9.build_errors, v9.infra_errors, v9.no_cache) == (
        20,
        3,
        2,
        1,
        0,
    )
    assert v9.ci_low == pytest.approx(0.0524, abs=1e-4)
    assert v9.verdict.startswith("affected")
    v8 = t[t["version"] == "v0.8.3"].iloc[0]
    assert v8.tries == 0 and math.isnan(v8.rate) and v8.verdict == "no usable trials"
    assert t[t["version"] == "v0.10.0"].iloc[0].verdict.startswith("not enough evidence")


def test_rates_by_empty_and_multiple_keys():
    empty = rates_by(rows([]), ["version", "reset_freq"])
    assert empty.empty and {"version", "reset_freq", "rate", "verdict"} <= set(empty.columns)
    df = rows([("v0.9.0", 1, 1, "ok", 2), ("v0.9.0", 4, 1, "missing_layer", 1)])
    t = rates_by(df, ["version", "reset_freq"])
    assert t["reset_freq"].tolist() == [1, 4]
    assert t["failures"].tolist() == [0, 1]


def test_no_cache_column():
    df = rows([("v0.9.0", 1, 1, "ok", 3)])
    df.loc[0, "cache_used"] = False
    assert rates_by(df, "version").iloc[0].no_cache == 1


def test_rate_by_position():
    df = rows(
        [
            ("v0.9.0", 4, 1, "missing_layer", 4),
            ("v0.9.0", 4, 1, "ok", 1),
            ("v0.9.0", 4, 2, "ok", 5),
            ("v0.9.0", 4, 3, "ok", 5),
        ]
    )
    t = rate_by_position(df)
    assert t["since_reset"].tolist() == [1, 2, 3]
    assert t["rate"].tolist() == [0.8, 0.0, 0.0]
    assert (t["ci_high"] > t["rate"]).all()


# logistic fit -----------------------------------------------------------------
def test_logistic_fit_returns_none_when_data_do_not_allow():
    assert (
        logistic_fit(rows([("v0.9.0", 1, 1, "ok", 5), ("v0.9.0", 1, 1, "missing_layer", 2)]))
        is None
    )
    assert logistic_fit(rows([("v0.9.0", 1, 1, "ok", 5), ("v0.9.0", 4, 1, "ok", 5)])) is None
    assert (
        logistic_fit(
            rows([("v0.9.0", 1, 1, "missing_layer", 5), ("v0.9.0", 4, 1, "missing_layer", 5)])
        )
        is None
    )
    # perfect separation: all fail at reset 1, none at reset 8
    assert (
        logistic_fit(rows([("v0.9.0", 1, 1, "missing_layer", 10), ("v0.9.0", 8, 1, "ok", 10)]))
        is None
    )
    assert logistic_fit(rows([])) is None


def test_logistic_fit_with_versions():
    specs = []
    for version, base in (("v0.9.0", 0.3), ("v0.8.3", 0.15)):
        for freq, shift in ((1, 0.0), (2, 0.1), (4, 0.2), (8, 0.3)):
            k = round(40 * min(base + shift, 0.9))
            specs += [(version, freq, 1, "missing_layer", k), (version, freq, 1, "ok", 40 - k)]
    fit = logistic_fit(rows(specs))
    assert fit is not None
    assert fit.nobs == 320
    assert "C(version_label)" in fit.formula
    assert fit.params["log2_reset_freq"] > 0
    assert fit.pvalues["log2_reset_freq"] < 0.01
    assert fit.odds_ratio_per_doubling == pytest.approx(np.exp(fit.params["log2_reset_freq"]))
    assert "Logit" in fit.summary_text
    assert "doubling" in fit.describe()


def test_logistic_fit_ignores_versions_that_never_failed():
    specs = [("v0.9.1", f, 1, "ok", 40) for f in (1, 2, 4, 8)]
    for freq, k in ((1, 20), (2, 15), (4, 10), (8, 5)):
        specs += [("v0.9.0", freq, 1, "missing_layer", k), ("v0.9.0", freq, 1, "ok", 40 - k)]
    fit = logistic_fit(rows(specs))
    assert fit is not None
    assert fit.formula == "failed ~ log2_reset_freq"
    assert fit.nobs == 160
    assert fit.params["log2_reset_freq"] < 0


def _host_frame(counts: dict[str, tuple[int, int]], cell: str = "c") -> pd.DataFrame:
    rows = []
    for host, (k, n) in counts.items():
        rows += [(cell, host, i < k) for i in range(n)]
    return pd.DataFrame(rows, columns=["cell", "host", "failed"]).assign(counted=True)


def test_group_agreement_two_hosts_is_fishers_test():
    (check,) = group_agreement(_host_frame({"a": (8, 10), "b": (1, 6)}))
    assert check.method == "fisher"
    expected = sps.fisher_exact([[8, 2], [1, 5]]).pvalue
    assert check.pvalue == pytest.approx(expected) and check.disagree()
    assert "a: 8/10" in check.describe()


def test_group_agreement_counts_reset_cycles_not_tries():
    # K = 4; host a: 3 of 10 cycles fail in every try (12/40 tries), host b: 1 of 10
    # (4/40). On tries Fisher calls that a disagreement; the cycles say 3/10 vs 1/10.
    rows = []
    for host, failing in (("a", 3), ("b", 1)):
        for c in range(10):
            rows += [("c", host, "r-" + host, 4 * c + i + 1, i + 1, c < failing) for i in range(4)]
    df = pd.DataFrame(rows, columns=["cell", "host", "run_id", "trial", "since_reset", "failed"])
    (check,) = group_agreement(df.assign(counted=True))
    assert sps.fisher_exact([[12, 28], [4, 36]]).pvalue < 0.05
    assert check.cycles == {"a": (3, 10), "b": (1, 10)}
    assert check.groups == {"a": (12, 40), "b": (4, 40)}
    assert check.pvalue == pytest.approx(sps.fisher_exact([[3, 7], [1, 9]]).pvalue)
    assert not check.disagree()
    assert "cycles with a failure 3/10, 1/10" in check.describe()


def test_group_agreement_three_hosts_is_pearsons_chi_square():
    counts = {"a": (10, 50), "b": (12, 50), "c": (30, 50)}
    (check,) = group_agreement(_host_frame(counts))
    table = [[k, n - k] for k, n in counts.values()]
    chi2, p, _, _ = sps.chi2_contingency(table, correction=False)
    assert check.method == "chi2"
    assert check.statistic == pytest.approx(chi2) and check.pvalue == pytest.approx(p)
    assert check.disagree()


def test_group_agreement_skips_single_host_cells_and_has_nothing_to_test_without_failures():
    df = pd.concat(
        [_host_frame({"a": (3, 10)}, cell="one"), _host_frame({"a": (0, 5), "b": (0, 7)}, "two")]
    )
    (check,) = group_agreement(df)
    assert check.cell == "two" and check.method == "none" and check.pvalue == 1.0
    assert not check.disagree()


def test_group_agreement_false_alarm_rate_on_hosts_that_agree():
    # Two hosts with one true rate: "disagree" at alpha 0.05 must be rare. Fisher's
    # test is conservative, so over 400 simulated cells the rate stays below 0.05
    # plus three binomial standard errors (0.033).
    rng = np.random.default_rng(7)
    alarms = 0
    for _ in range(400):
        a, b = rng.binomial(60, 0.15), rng.binomial(60, 0.15)
        (check,) = group_agreement(_host_frame({"a": (a, 60), "b": (b, 60)}))
        alarms += check.disagree()
    assert alarms / 400 < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
