"""Failure probabilities of flaky builds: intervals, comparisons, trials needed.

Every try is treated as a Bernoulli trial: it either loses a layer
(``missing_layer``) or not (``ok``). Build and infra errors are not trials of
the bug and are left out of every count here (see ``repro_lib.results``).

The binomial model assumes tries are independent with one common failure
probability. Tries that share a BuildKit state between resets may not be
independent (that is what ``rate_by_position`` and ``logistic_fit`` look at),
so intervals are best read per cell, where the reset schedule is fixed.

Models beyond one proportion:

* hazard by position since reset: ``hazard_trend_test`` (constant hazard at
  positions >= 2 against a trend), ``fit_hazard`` (``HazardModel``: the K-curve
  ``r(K) = mean h(1..K)`` with a simulation band) and ``k_curve_fit`` (whether
  the observed K-curve departs from the prediction);
* batches (runs) as the unit of replication: ``batch_heterogeneity``
  (homogeneity and Tarone's over-dispersion test per cell), ``batch_rate``
  (a cluster-robust interval) and the batch-level test in ``compare``;
* ``failure_model``: ``failed ~ version + log2(K) + position + cache + mode``
  with odds ratios, or a message naming the term that separates the data.

References
----------
.. [1] Brown, L. D., Cai, T. T. and DasGupta, A. (2001). Interval estimation
   for a binomial proportion. Statistical Science 16(2), 101-133.
.. [2] Clopper, C. J. and Pearson, E. S. (1934). The use of confidence or
   fiducial limits illustrated in the case of the binomial. Biometrika 26,
   404-413.
.. [3] Fisher, R. A. (1922). On the interpretation of chi-squared from
   contingency tables, and the calculation of P. J. R. Stat. Soc. 85, 87-94.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as _sps
from statsmodels.stats.proportion import proportion_confint

from .results import derive, version_key

Method = Literal["wilson", "beta"]
_METHODS = ("wilson", "beta")

__all__ = [
    "BatchHeterogeneity",
    "BatchRate",
    "Comparison",
    "FailureModel",
    "FailureRate",
    "GroupAgreement",
    "HazardModel",
    "KCurveFit",
    "LogisticFit",
    "StopDecision",
    "TrendTest",
    "batch_heterogeneity",
    "batch_rate",
    "compare",
    "failure_model",
    "failure_rate",
    "findings_table",
    "fit_hazard",
    "format_pct",
    "group_agreement",
    "hazard_trend_test",
    "k_curve_fit",
    "logistic_fit",
    "rate_by_position",
    "rates_by",
    "results_frame",
    "should_stop",
    "tarone_test",
    "tries_for_upper_bound",
    "tries_needed",
    "upper_bound",
    "verdict",
]


# formatting ---------------------------------------------------------------
def format_pct(x: float) -> str:
    """A probability as a short percentage: ``0.0994 -> "9.9%"``, ``9.9e-5 -> "0.0099%"``."""
    if x is None or not np.isfinite(x):
        return "n/a"
    pct = 100.0 * float(x)
    if pct == 0:
        return "0%"
    if abs(pct) >= 0.1:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%"


def _confidence(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _check_counts(k: int, n: int) -> tuple[int, int]:
    if int(k) != k or int(n) != n:
        raise ValueError(f"counts must be whole numbers, got k={k}, n={n}")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return k, n


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


# one proportion -----------------------------------------------------------
@dataclass(frozen=True)
class FailureRate:
    """An observed failure proportion with a two-sided confidence interval.

    Attributes
    ----------
    k : int
        Tries that lost a layer.
    n : int
        Counted tries (``ok`` + ``missing_layer``).
    p_hat : float
        ``k / n``; NaN when ``n == 0``.
    ci_low, ci_high : float
        Two-sided ``1 - alpha`` confidence interval for the failure
        probability; ``(0, 1)`` when ``n == 0``.
    method : {"wilson", "beta"}
        ``"wilson"`` is the Wilson score interval, ``"beta"`` the exact
        Clopper-Pearson interval (both from statsmodels ``proportion_confint``).
    alpha : float
        Significance level; 0.05 gives a 95% interval.
    """

    k: int
    n: int
    p_hat: float
    ci_low: float
    ci_high: float
    method: str = "wilson"
    alpha: float = 0.05

    @property
    def upper_bound(self) -> float:
        """Exact one-sided ``1 - alpha`` upper bound (Clopper-Pearson) for this ``k`` of ``n``."""
        return upper_bound(self.n, self.alpha, k=self.k)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        """A one-row DataFrame of the fields, for display."""
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """Plain language: ``"3 of 20 (15.0%, 95% CI 5.2%–36.0%)"``.

        With no failure the natural statement is a one-sided bound, so
        ``k == 0`` reads ``"0 of 300 → p < 1.0% (95% upper bound)"`` using the
        exact one-sided bound (``upper_bound``), not ``ci_high``.
        """
        conf = _confidence(self.alpha)
        if self.n == 0:
            return "no usable tries"
        if self.k == 0:
            return f"0 of {self.n} → p < {format_pct(self.upper_bound)} ({conf} upper bound)"
        return (
            f"{self.k} of {self.n} ({format_pct(self.p_hat)}, {conf} CI "
            f"{format_pct(self.ci_low)}–{format_pct(self.ci_high)})"
        )

    def __str__(self) -> str:
        return self.describe()


def failure_rate(k: int, n: int, *, method: Method = "wilson", alpha: float = 0.05) -> FailureRate:
    """Estimate a failure probability from ``k`` failures in ``n`` tries.

    Parameters
    ----------
    k, n : int
        Failures and counted tries, ``0 <= k <= n``.
    method : {"wilson", "beta"}, default "wilson"
        Interval method, passed to ``statsmodels.stats.proportion.proportion_confint``.
        ``"wilson"``: Wilson score interval, recommended by Brown, Cai &
        DasGupta (2001) for small ``n`` (coverage close to nominal, never
        outside [0, 1]). ``"beta"``: Clopper-Pearson "exact" interval,
        conservative (coverage at least ``1 - alpha``).
    alpha : float, default 0.05
        Significance level of the two-sided interval.

    Returns
    -------
    FailureRate
        With ``p_hat = NaN`` and interval ``(0, 1)`` when ``n == 0``.

    Notes
    -----
    Assumes independent tries with a common failure probability.

    References
    ----------
    Brown, Cai & DasGupta (2001), Statistical Science 16(2), 101-133.

    Examples
    --------
    >>> r = failure_rate(3, 20)
    >>> round(r.ci_low, 4), round(r.ci_high, 4)
    (0.0524, 0.3604)
    """
    k, n = _check_counts(k, n)
    alpha = _check_alpha(alpha)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if n == 0:
        return FailureRate(k, n, math.nan, 0.0, 1.0, method, alpha)
    low, high = proportion_confint(k, n, alpha=alpha, method=method)
    low = 0.0 if k == 0 else float(low)
    high = 1.0 if k == n else float(high)
    return FailureRate(k, n, k / n, max(0.0, low), min(1.0, high), method, alpha)


def upper_bound(n: int, alpha: float = 0.05, *, k: int = 0) -> float:
    """Exact one-sided ``1 - alpha`` upper confidence bound of a failure probability.

    Parameters
    ----------
    n : int
        Counted tries.
    alpha : float, default 0.05
        One-sided significance level: the bound holds with confidence ``1 - alpha``.
    k : int, default 0
        Failures seen. The usual use is ``k = 0``: "no failure in ``n`` tries".

    Returns
    -------
    float
        The Clopper-Pearson one-sided bound, ``Beta.ppf(1 - alpha, k + 1, n - k)``
        from ``scipy.stats.beta``; for ``k = 0`` this equals
        ``1 - alpha ** (1 / n)`` (about ``3 / n`` at 95%, the "rule of three").
        1.0 when ``n == 0`` or ``k == n``.

    References
    ----------
    Clopper & Pearson (1934); Brown, Cai & DasGupta (2001).

    Examples
    --------
    >>> round(upper_bound(300), 5)
    0.00994
    """
    k, n = _check_counts(k, n)
    alpha = _check_alpha(alpha)
    if n == 0 or k == n:
        return 1.0
    return float(_sps.beta.ppf(1 - alpha, k + 1, n - k))


def _lower_bound(k: int, n: int, alpha: float) -> float:
    """Exact one-sided lower bound (Clopper-Pearson); 0 when ``k == 0``."""
    if k == 0:
        return 0.0
    return float(_sps.beta.ppf(alpha, k, n - k + 1))


# how many tries -----------------------------------------------------------
def tries_needed(rate: float, confidence: float = 0.95) -> int:
    """Smallest number of tries that shows at least one failure with given probability.

    Solves ``1 - (1 - rate) ** n >= confidence`` for the smallest integer ``n``.

    Parameters
    ----------
    rate : float
        Per-try failure probability, ``0 < rate <= 1``.
    confidence : float, default 0.95
        Wanted probability of seeing at least one failure.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        ``rate <= 0`` (no number of tries suffices) or arguments out of range.

    Examples
    --------
    >>> tries_needed(0.1, 0.95)
    29
    """
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if rate == 1:
        return 1

    def detected(n: int) -> bool:
        return -math.expm1(n * math.log1p(-rate)) >= confidence

    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-rate)))
    while n > 1 and detected(n - 1):
        n -= 1
    while not detected(n):
        n += 1
    return n


def tries_for_upper_bound(max_rate: float, alpha: float = 0.05) -> int:
    """Clean tries needed so that "0 failures" bounds the rate below ``max_rate``.

    The smallest ``n`` with ``upper_bound(n, alpha) < max_rate``, i.e.
    ``n > log(alpha) / log(1 - max_rate)``.

    Examples
    --------
    >>> tries_for_upper_bound(0.01, 0.05)
    299
    """
    if not 0 < max_rate < 1:
        raise ValueError(f"max_rate must be in (0, 1), got {max_rate}")
    alpha = _check_alpha(alpha)
    n = max(1, math.floor(math.log(alpha) / math.log1p(-max_rate)))
    while n > 1 and upper_bound(n - 1, alpha) < max_rate:
        n -= 1
    while upper_bound(n, alpha) >= max_rate:
        n += 1
    return n


# stopping and verdicts ----------------------------------------------------
@dataclass(frozen=True)
class StopDecision:
    """Whether a cell of a sweep has enough evidence to stop, and why.

    Attributes
    ----------
    stop : bool
    reason : str
        Plain language, suitable for a log line.
    """

    stop: bool
    reason: str

    def __bool__(self) -> bool:
        return self.stop


def should_stop(
    k: int,
    n: int,
    *,
    max_rate: float = 0.01,
    alpha: float = 0.05,
    min_tries: int = 1,
    min_failures: int = 1,
) -> StopDecision:
    """Early-stopping rule for one cell of a sweep.

    Stop when either

    * ``k >= min_failures`` and the exact one-sided ``1 - alpha`` lower bound
      of the rate is above 0 ("failure seen, interval excludes 0"); or
    * ``k == 0`` and the exact one-sided ``1 - alpha`` upper bound is below
      ``max_rate`` ("clean: p < max_rate").

    and never before ``min_tries`` counted tries.

    Parameters
    ----------
    k, n : int
        Failures and counted tries so far.
    max_rate : float, default 0.01
        Rate below which a clean cell counts as "no failure seen".
    alpha : float, default 0.05
    min_tries : int, default 1
    min_failures : int, default 1
        Failures to collect before stopping an affected cell; raise it to get
        a tighter estimate of the rate rather than mere detection.

    Returns
    -------
    StopDecision

    Notes
    -----
    A single missing layer proves the version affected (the verification is
    deterministic), and for ``k >= 1`` the exact lower bound is always above
    0, so with the defaults an affected cell stops at its first failure. The
    clean rule needs ``tries_for_upper_bound(max_rate, alpha)`` tries
    (299 for 1% at 95%). Stopping on the data biases the final ``p_hat``
    of a stopped cell upwards; report intervals, not point estimates.
    """
    k, n = _check_counts(k, n)
    alpha = _check_alpha(alpha)
    conf = _confidence(alpha)
    if n < min_tries:
        return StopDecision(False, f"continue: {n} of at least {min_tries} tries done")
    if k > 0:
        low = _lower_bound(k, n, alpha)
        if k >= min_failures and low > 0:
            return StopDecision(
                True,
                f"failure seen: {k} of {n}, {conf} lower bound {format_pct(low)} excludes 0",
            )
        return StopDecision(False, f"continue: {k} of {min_failures} wanted failures seen")
    bound = upper_bound(n, alpha)
    if bound < max_rate:
        return StopDecision(
            True,
            f"clean: 0 of {n} → p < {format_pct(bound)} ({conf} upper bound), below "
            f"{format_pct(max_rate)}",
        )
    return StopDecision(
        False,
        f"continue: 0 of {n}, p < {format_pct(bound)} not yet below {format_pct(max_rate)}"
        f" (needs {tries_for_upper_bound(max_rate, alpha)} clean tries)",
    )


def verdict(k: int, n: int, *, max_rate: float = 0.01, alpha: float = 0.05) -> str:
    """A short plain-language verdict for one version (or cell).

    Returns one of

    * ``"no usable trials"`` -- ``n == 0`` (e.g. only build errors);
    * ``"affected (k of n tries lost a layer)"`` -- at least one failure;
    * ``"no failure seen (p < X%)"`` -- ``k == 0`` and the exact one-sided
      ``1 - alpha`` upper bound ``X`` is below ``max_rate``;
    * ``"not enough evidence (0 of n, p < X%)"`` -- ``k == 0`` but too few
      tries to bound the rate below ``max_rate``.
    """
    k, n = _check_counts(k, n)
    if n == 0:
        return "no usable trials"
    if k > 0:
        return f"affected ({k} of {n} tries lost a layer)"
    bound = upper_bound(n, alpha)
    if bound < max_rate:
        return f"no failure seen (p < {format_pct(bound)})"
    return f"not enough evidence (0 of {n}, p < {format_pct(bound)})"


# two proportions ----------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A test of two failure proportions: Fisher's exact test, or a batch-level test.

    H0: both groups share one failure probability. H1 (two-sided): they
    differ.

    ``method == "fisher"``: Fisher's exact test conditions on the margins of
    the 2x2 table ``[[k1, n1 - k1], [k2, n2 - k2]]``, so it is valid for small
    counts, but it treats every try as independent.

    ``method == "batch-t"`` (both groups given as trials with two or more
    batches each): the difference of the pooled proportions divided by its
    cluster-robust standard error (batches as clusters, see ``BatchRate``),
    referred to Student's t with ``batches1 + batches2 - 2`` degrees of
    freedom. It holds when batches vary beyond binomial noise.

    Attributes
    ----------
    k1, n1, k2, n2 : int
        Failures and counted tries of groups 1 and 2.
    odds_ratio : float
        Sample odds ratio ``(k1 (n2 - k2)) / ((n1 - k1) k2)`` (may be 0, inf or NaN).
    pvalue : float
        Two-sided p-value.
    method : str
        ``"fisher"`` or ``"batch-t"``.
    statistic : float
        The t statistic for ``"batch-t"``; NaN for Fisher.
    batches1, batches2 : int
        Batches per group (0 when the input had none, e.g. counts).

    References
    ----------
    Fisher (1922); Cameron, A. C. and Miller, D. L. (2015), J. Human Resources 50(2), 317-372.
    """

    k1: int
    n1: int
    k2: int
    n2: int
    odds_ratio: float
    pvalue: float
    method: str = "fisher"
    statistic: float = math.nan
    batches1: int = 0
    batches2: int = 0

    @property
    def table(self) -> list[list[int]]:
        return [[self.k1, self.n1 - self.k1], [self.k2, self.n2 - self.k2]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """E.g. ``"8 of 10 vs 1 of 6: Fisher exact p = 0.035"``."""
        head = f"{self.k1} of {self.n1} vs {self.k2} of {self.n2}: "
        if self.method == "batch-t":
            return head + (
                f"batch-level t test ({self.batches1} vs {self.batches2} batches, "
                f"t = {self.statistic:.3g}) two-sided p = {self.pvalue:.3g}"
            )
        return head + f"Fisher exact two-sided p = {self.pvalue:.3g}"


def _counts(x: Any) -> tuple[int, int]:
    if isinstance(x, FailureRate):
        return x.k, x.n
    if isinstance(x, pd.DataFrame):
        d = x if {"counted", "failed"} <= set(x.columns) else derive(x)
        counted = d[d["counted"]]
        return int(counted["failed"].sum()), len(counted)
    if isinstance(x, Sequence) and len(x) == 2:
        return _check_counts(x[0], x[1])
    raise TypeError(f"expected a DataFrame, a FailureRate or a (k, n) pair, got {type(x)!r}")


def compare(a: pd.DataFrame | FailureRate | tuple[int, int], b: Any) -> Comparison:
    """Compare the failure proportions of two groups.

    Parameters
    ----------
    a, b : DataFrame, FailureRate or (k, n)
        A trials DataFrame (its counted rows are used), a ``FailureRate``, or
        a pair of counts.

    Returns
    -------
    Comparison
        When both ``a`` and ``b`` are DataFrames with two or more batches
        (``run_id``) each, the batch-level t test (``method == "batch-t"``,
        see ``Comparison``); otherwise, or when neither group varies between
        batches at all, two-sided ``scipy.stats.fisher_exact`` on
        ``[[k1, n1-k1], [k2, n2-k2]]`` (``method == "fisher"``).

    Notes
    -----
    Fisher's test assumes independent tries within and between groups; the
    batch test assumes independent batches only. With ``n1`` or ``n2`` zero the
    p-value is 1 (no information).

    References
    ----------
    Fisher (1922); see also ``scipy.stats.fisher_exact``. Cameron and Miller (2015).

    Examples
    --------
    >>> round(compare((8, 10), (1, 6)).pvalue, 4)
    0.035
    """
    k1, n1 = _counts(a)
    k2, n2 = _counts(b)
    if n1 == 0 or n2 == 0:
        return Comparison(k1, n1, k2, n2, math.nan, 1.0)
    res = _sps.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided")
    fisher = Comparison(k1, n1, k2, n2, float(res.statistic), float(res.pvalue))
    if not (isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)):
        return fisher
    ba, bb = _batch_counts(a), _batch_counts(b)
    if len(ba) < 2 or len(bb) < 2:
        return fisher
    var = 0.0
    for counts in (ba, bb):
        x = np.array([k for k, _ in counts.values()], dtype=float)
        n = np.array([m for _, m in counts.values()], dtype=float)
        var += _cluster_variance(x, n)
    if var <= 0:
        return fisher
    t = (k1 / n1 - k2 / n2) / math.sqrt(var)
    dof = len(ba) + len(bb) - 2
    p = float(2 * _sps.t.sf(abs(t), dof))
    return Comparison(
        k1, n1, k2, n2, float(res.statistic), p, "batch-t", float(t), len(ba), len(bb)
    )


@dataclass(frozen=True)
class GroupAgreement:
    """Whether groups of tries within one cell (e.g. hosts) share one failure probability.

    H0: every group has the same failure probability; H1: at least one differs.
    Two groups use Fisher's exact test; more use Pearson's chi-square test of
    the ``groups x {failed, clean}`` table (``scipy.stats.chi2_contingency``,
    no continuity correction), whose approximation is poor when expected
    counts are below about 5. A table without failures, or with one group,
    has nothing to test: ``pvalue`` is 1.

    Attributes
    ----------
    cell : str
        The cell the groups belong to.
    groups : dict
        ``{group: (failures, counted tries)}``.
    statistic : float
        Fisher's odds ratio, or the chi-square statistic (NaN when untested).
    pvalue : float
    method : str
        ``"fisher"``, ``"chi2"`` or ``"none"``.
    """

    cell: str
    groups: dict[str, tuple[int, int]]
    statistic: float
    pvalue: float
    method: str

    def disagree(self, alpha: float = 0.05) -> bool:
        return self.pvalue < alpha

    def describe(self) -> str:
        counts = ", ".join(f"{g}: {k}/{n}" for g, (k, n) in self.groups.items())
        if self.method == "none":
            return f"{counts} (nothing to test)"
        name = "Fisher exact" if self.method == "fisher" else "chi-square"
        return f"{counts}; {name} p = {self.pvalue:.3g}"


def group_agreement(
    df: pd.DataFrame, by: str = "host", *, cell: str = "cell"
) -> list[GroupAgreement]:
    """Test, cell by cell, whether the groups ``by`` (hosts, by default) disagree.

    Pool a cell's tries over hosts only when they agree: a host whose engine
    or kernel changes the bug's rate would otherwise be averaged away.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    by : str, default "host"
        The grouping column within a cell.
    cell : str, default "cell"
        The column naming cells.

    Returns
    -------
    list of GroupAgreement
        One per cell that has at least two groups with counted tries.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [("c", "a", True)] * 8 + [("c", "a", False)] * 2 + [("c", "b", True)] * 1
    >>> rows += [("c", "b", False)] * 5
    >>> df = pd.DataFrame(rows, columns=["cell", "host", "failed"]).assign(counted=True)
    >>> round(group_agreement(df)[0].pvalue, 4)
    0.035
    """
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    if by not in df.columns or cell not in df.columns:
        return []
    out = []
    counted = df[df["counted"]]
    for key, group in counted.groupby(cell, sort=True):
        groups = {
            str(g): (int(part["failed"].sum()), len(part))
            for g, part in group.groupby(by, sort=True)
            if str(g) not in ("", "nan", "None")
        }
        if len(groups) < 2:
            continue
        table = [[k, n - k] for k, n in groups.values()]
        if sum(k for k, _ in groups.values()) == 0 or all(n == k for k, n in groups.values()):
            out.append(GroupAgreement(str(key), groups, math.nan, 1.0, "none"))
        elif len(groups) == 2:
            res = _sps.fisher_exact(table, alternative="two-sided")
            out.append(
                GroupAgreement(str(key), groups, float(res.statistic), float(res.pvalue), "fisher")
            )
        else:
            res = _sps.chi2_contingency(table, correction=False)
            out.append(
                GroupAgreement(str(key), groups, float(res.statistic), float(res.pvalue), "chi2")
            )
    return out


# tables -------------------------------------------------------------------
RATE_COLUMNS = (
    "tries",
    "failures",
    "build_errors",
    "infra_errors",
    "no_cache",
    "rate",
    "ci_low",
    "ci_high",
    "verdict",
)


def rates_by(
    df: pd.DataFrame,
    by: str | Sequence[str] = ("version_label",),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    max_rate: float = 0.01,
) -> pd.DataFrame:
    """Failure rate with interval and verdict per group.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results`` (a raw store frame is derived first).
    by : str or list of str, default "version_label"
        Grouping columns, e.g. ``"cell"`` or ``["version", "reset_freq"]``.
    method, alpha : see ``failure_rate``.
    max_rate : see ``verdict``.

    Returns
    -------
    DataFrame
        One row per group: the ``by`` columns, then ``tries`` (counted tries),
        ``failures``, ``build_errors``, ``infra_errors``, ``no_cache`` (tries
        known not to have used the cache), ``rate``, ``ci_low``, ``ci_high``
        and ``verdict``; sorted with versions in numeric order.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    rows = []
    if len(df):
        for key, group in df.groupby(by, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            tries = int(group["counted"].sum())
            failures = int((group["failed"] & group["counted"]).sum())
            fr = failure_rate(failures, tries, method=method, alpha=alpha)
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "tries": tries,
                    "failures": failures,
                    "build_errors": int((group["outcome"] == "build_error").sum()),
                    "infra_errors": int((group["outcome"] == "infra_error").sum()),
                    "no_cache": int(group["cache_used"].eq(False).fillna(False).sum()),
                    "rate": fr.p_hat,
                    "ci_low": fr.ci_low,
                    "ci_high": fr.ci_high,
                    "verdict": verdict(failures, tries, max_rate=max_rate, alpha=alpha),
                }
            )
    out = pd.DataFrame(rows, columns=[*by, *RATE_COLUMNS])
    if len(out):
        out = out.sort_values(by, key=lambda s: s.map(version_key)).reset_index(drop=True)
    return out


def rate_by_position(
    df: pd.DataFrame,
    by: str | Sequence[str] = (),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Failure rate per position since the last reset (``since_reset``).

    A rate that is high at position 1 and falls afterwards means the bug
    shows on a fresh BuildKit state; a flat rate means positions are
    exchangeable. Same columns as ``rates_by`` with ``since_reset`` (after
    any ``by`` columns) as the group.
    """
    by = [by] if isinstance(by, str) else list(by)
    out = rates_by(df, [*by, "since_reset"], method=method, alpha=alpha)
    return out


def findings_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("version_label", "reset_freq", "cache_type", "mode"),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    max_rate: float = 0.01,
) -> pd.DataFrame:
    """The findings table: per version x K x cache x mode, ``failures/tries``, rate, interval, verdict.

    A compact view of ``rates_by`` (same arguments; see there for the
    interval and the verdict) with the counts as one ``"k/n"`` column.
    """
    table = rates_by(df, list(by), method=method, alpha=alpha, max_rate=max_rate)
    counts = [f"{k}/{n}" for k, n in zip(table["failures"], table["tries"], strict=True)]
    return table.assign(**{"failures/tries": counts})[
        [*by, "failures/tries", "rate", "ci_low", "ci_high", "verdict"]
    ]


def results_frame(results: Sequence[Any]) -> pd.DataFrame:
    """One DataFrame of the ``to_frame()`` rows of several results (empty for none)."""
    frames = [r.to_frame() for r in results if r is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# regression ---------------------------------------------------------------
@dataclass(frozen=True)
class LogisticFit:
    """A logistic regression of ``failed`` on ``log2(reset_freq)`` (and version).

    Attributes
    ----------
    formula : str
        The model formula, e.g. ``"failed ~ log2_reset_freq + C(version_label)"``.
    params, pvalues : dict of str to float
        Coefficients (log-odds) and their Wald p-values.
    nobs : int
        Counted tries used (of the versions kept, see ``logistic_fit``).
    summary_text : str
        The statsmodels summary table as text.
    """

    formula: str
    params: dict[str, float]
    pvalues: dict[str, float]
    nobs: int
    summary_text: str = field(repr=False)

    @property
    def odds_ratio_per_doubling(self) -> float:
        """Factor on the odds of failure when the reset frequency doubles."""
        return math.exp(self.params["log2_reset_freq"])

    def describe(self) -> str:
        """Plain language reading of the reset-frequency effect."""
        return (
            f"Each doubling of the reset frequency multiplies the odds of a missing layer by "
            f"{self.odds_ratio_per_doubling:.3g} (Wald p = {self.pvalues['log2_reset_freq']:.3g};"
            f" logistic regression on {self.nobs} tries, formula {self.formula!r})."
        )


def logistic_fit(df: pd.DataFrame) -> LogisticFit | None:
    """Fit ``failed ~ log2(reset_freq) [+ C(version)]`` by maximum likelihood.

    Uses ``statsmodels.formula.api.logit`` on the counted tries of the
    versions that failed in some but not all tries (a version that never
    failed would be perfectly separated by its own level and carries no
    information on the reset effect). The version term (on
    ``version_label``, so a cross-version cache import is its own level) is
    added when more than one such version remains.

    Returns
    -------
    LogisticFit or None
        None when the data cannot support the model: fewer than two reset
        frequencies, no failure or only failures, (quasi-)perfect separation,
        a singular Hessian or no convergence.

    Notes
    -----
    Assumes tries are independent given reset frequency and version, and a
    log-odds linear in ``log2(reset_freq)``. Wald p-values are unreliable
    with few failures; prefer ``compare`` for small samples.
    """
    from statsmodels.formula.api import logit
    from statsmodels.tools import sm_exceptions as sme

    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    d = df[df["counted"] & df["reset_freq"].notna()]
    if d.empty:
        return None
    data = pd.DataFrame(
        {
            "failed": d["failed"].astype(int).to_numpy(),
            "log2_reset_freq": np.log2(d["reset_freq"].astype(float).to_numpy()),
            "version_label": d["version_label"].astype(str).to_numpy(),
        }
    )
    # A version that never (or always) failed is perfectly separated by its own
    # level and says nothing about the reset effect: leave it out.
    share = data.groupby("version_label")["failed"].transform("mean")
    data = data[(share > 0) & (share < 1)]
    if data.empty or data["log2_reset_freq"].nunique() < 2:
        return None
    formula = "failed ~ log2_reset_freq"
    if data["version_label"].nunique() > 1:
        formula += " + C(version_label)"
    problems = (
        sme.PerfectSeparationWarning,
        sme.ConvergenceWarning,
        sme.HessianInversionWarning,
        RuntimeWarning,
    )
    try:
        with warnings.catch_warnings():
            for category in problems:
                warnings.simplefilter("error", category)
            result = logit(formula, data).fit(disp=0, maxiter=100)
    except (*problems, sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError):
        return None
    params = {str(n): float(v) for n, v in result.params.items()}
    pvalues = {str(n): float(v) for n, v in result.pvalues.items()}
    bse = np.asarray(result.bse, dtype=float)
    if not (np.all(np.isfinite(list(params.values()))) and np.all(np.isfinite(bse))):
        return None
    if not result.mle_retvals.get("converged", True) or np.any(np.abs(bse) > 1e3):
        return None
    return LogisticFit(formula, params, pvalues, int(result.nobs), str(result.summary()))


# hazard by position since reset ---------------------------------------------
def _expit(x: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def _counted_frame(df: pd.DataFrame) -> pd.DataFrame:
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    return df[df["counted"]]


def _position_counts(d: pd.DataFrame) -> pd.DataFrame:
    """Failures ``k`` and tries ``n`` per ``since_reset`` of counted rows (sorted)."""
    d = d[d["since_reset"].notna()]
    if d.empty:
        return pd.DataFrame({"position": [], "k": [], "n": []}, dtype=int)
    g = d.groupby(d["since_reset"].astype(int))["failed"].agg(["sum", "size"])
    return pd.DataFrame(
        {
            "position": g.index.to_numpy(int),
            "k": g["sum"].to_numpy(int),
            "n": g["size"].to_numpy(int),
        }
    )


def _grouped_logit(k: np.ndarray, n: np.ndarray, exog: np.ndarray) -> Any | None:
    """Binomial GLM (logit link) on grouped counts; None when it fails or separates."""
    import statsmodels.api as sm
    from statsmodels.tools import sm_exceptions as sme

    endog = np.column_stack([k, n - k]).astype(float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.GLM(endog, exog, family=sm.families.Binomial()).fit()
    except (sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError):
        return None
    bse = np.asarray(res.bse, dtype=float)
    params = np.asarray(res.params, dtype=float)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(bse))) or np.any(bse > 50):
        return None
    return res


@dataclass(frozen=True)
class TrendTest:
    """Likelihood-ratio test of a constant hazard at positions ``>= start`` against a trend.

    Model: tries at position ``p`` (since the last reset, ``p >= start``) fail
    independently with probability ``h(p)``, ``logit h(p) = a + b p``.
    H0: ``b = 0`` (a constant hazard after the first ``start - 1`` positions);
    H1: ``b != 0``. The statistic ``2 (l1 - l0)`` of the two binomial GLM fits
    (statsmodels, logit link) is referred to chi-square with ``df = 1``.

    Attributes
    ----------
    version : str
        The ``version_label`` tested.
    statistic : float
        Likelihood-ratio statistic; NaN when untested.
    df : int
        Degrees of freedom (1).
    pvalue : float
        Upper chi-square tail; NaN when untested (see ``note``).
    slope : float
        ``b``, the change in log-odds of failure per position (NaN when untested;
        ``+-inf`` when the positions separate failures from clean tries).
    slope_se : float
        Wald standard error of ``slope``.
    positions : tuple of int
        The positions used.
    k, n : int
        Failures and tries at those positions.
    note : str
        Why nothing was tested, or that the fit separated.

    Notes
    -----
    The chi-square reference is asymptotic (Wilks); with few failures the
    p-value is approximate. Assumes tries are independent given the position.

    References
    ----------
    Agresti, A. (2013). Categorical Data Analysis, 3rd ed., Wiley, sections 4.3 and 5.2.
    """

    version: str
    statistic: float
    df: int
    pvalue: float
    slope: float
    slope_se: float
    positions: tuple[int, ...]
    k: int
    n: int
    note: str = ""

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.pvalue))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """E.g. ``"v0.9.0, positions 2–4: LR chi2 = 0.41 (df 1), p = 0.52, slope -0.2 log-odds/position"``."""
        where = (
            f"positions {self.positions[0]}–{self.positions[-1]}"
            if self.positions
            else "no positions"
        )
        head = f"{self.version}, {where} ({self.k} of {self.n} failed)"
        if not self.tested:
            return f"{head}: not tested ({self.note})"
        text = (
            f"{head}: likelihood-ratio chi2 = {self.statistic:.3g} (df {self.df}), "
            f"p = {self.pvalue:.3g}; slope {self.slope:+.3g} log-odds per position"
        )
        return text + (f" ({self.note})" if self.note else "")


def hazard_trend_test(df: pd.DataFrame, *, start: int = 2) -> list[TrendTest]:
    """Per version, test a constant hazard at positions ``>= start`` against a trend in position.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``; counted tries with a ``since_reset`` are used.
    start : int, default 2
        First position included (position 1, the first try on a fresh state, is
        left out by default because it behaves differently in the lab's data).

    Returns
    -------
    list of TrendTest
        One per ``version_label`` in version order; untested (NaN p-value, a
        ``note`` saying why) when fewer than two positions ``>= start`` were
        run, or when those tries hold no failure or only failures.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [(2, True)] * 2 + [(2, False)] * 8 + [(3, True)] * 6 + [(3, False)] * 4
    >>> d = pd.DataFrame(rows, columns=["since_reset", "failed"])
    >>> d = d.assign(counted=True, version_label="v")
    >>> t = hazard_trend_test(d)[0]
    >>> round(t.statistic, 3), t.df
    (3.452, 1)
    """
    d = _counted_frame(df)
    out = []
    if d.empty:
        return out
    d = d[d["since_reset"].notna() & (d["since_reset"] >= start)]
    grouped = d.groupby([d["version_label"].astype(str), d["since_reset"].astype(int)])["failed"]
    table = grouped.agg(["sum", "size"]).rename(columns={"sum": "k", "size": "n"})
    labels = _counted_frame(df)["version_label"].dropna().astype(str).unique()
    for version in sorted(labels, key=version_key):
        if version in table.index.get_level_values(0):
            part = table.loc[version]
            counts = pd.DataFrame(
                {
                    "position": part.index.to_numpy(int),
                    "k": part["k"].to_numpy(int),
                    "n": part["n"].to_numpy(int),
                }
            )
        else:
            counts = pd.DataFrame({"position": [], "k": [], "n": []}, dtype=int)
        pos = tuple(int(p) for p in counts["position"])
        k, n = int(counts["k"].sum()), int(counts["n"].sum())

        def untested(note: str, pos=pos, k=k, n=n, version=version) -> TrendTest:
            return TrendTest(
                str(version), math.nan, 1, math.nan, math.nan, math.nan, pos, k, n, note
            )

        if len(pos) < 2:
            out.append(untested(f"needs tries at two or more positions >= {start}"))
            continue
        if k == 0 or k == n:
            out.append(untested("no failure" if k == 0 else "every try failed"))
            continue
        kk, nn = counts["k"].to_numpy(float), counts["n"].to_numpy(float)
        x = counts["position"].to_numpy(float)
        p0 = k / n
        # null model in closed form: one common proportion
        l0 = float(np.sum(kk * np.log(p0) + (nn - kk) * np.log1p(-p0)))
        fit = _grouped_logit(kk, nn, np.column_stack([np.ones_like(x), x]))
        if fit is None:
            # separation: the saturated-in-order limit; the likelihood's supremum
            # is that of the per-position proportions
            ph = np.clip(kk / nn, 1e-300, 1 - 1e-16)
            l1 = float(np.sum(kk * np.log(ph) + (nn - kk) * np.log1p(-ph)))
            stat = max(0.0, 2 * (l1 - l0))
            order = np.corrcoef(x, kk / nn)[0, 1]
            slope = math.copysign(math.inf, order) if np.isfinite(order) else math.nan
            out.append(
                TrendTest(
                    str(version),
                    stat,
                    1,
                    float(_sps.chi2.sf(stat, 1)),
                    slope,
                    math.nan,
                    pos,
                    k,
                    n,
                    "positions separate failures from clean tries: slope not finite, statistic "
                    "against the per-position proportions (an upper bound, p too small)",
                )
            )
            continue
        # binomial coefficients cancel in the difference, so grouped llf is fine
        l1 = float(np.sum(kk * np.log(fit.fittedvalues) + (nn - kk) * np.log1p(-fit.fittedvalues)))
        stat = max(0.0, 2 * (l1 - l0))
        out.append(
            TrendTest(
                str(version),
                stat,
                1,
                float(_sps.chi2.sf(stat, 1)),
                float(fit.params[1]),
                float(fit.bse[1]),
                pos,
                k,
                n,
            )
        )
    return out


@dataclass(frozen=True)
class HazardModel:
    """A fitted hazard ``h(p)``: failure probability at position ``p`` since the last reset.

    The model has two independent parts:

    * position 1 (the first try on a fresh BuildKit state) gets its own
      probability ``h(1) = k1 / n1``;
    * positions ``p >= 2`` follow ``logit h(p) = a + b (p - 2)`` (``form ==
      "logistic"``), fitted as a binomial GLM; when only one such position was
      run, or those tries hold no failure or only failures, ``h(p) = k / n`` is
      constant (``form == "constant"``).

    Why this form: a fresh state is a different situation from a reused one
    (the lab's data show it: position 1 rarely fails), so forcing position 1
    onto the trend would bias the slope; the separate parameter makes the two
    parts' likelihoods factor, so each is an ordinary maximum-likelihood fit.

    The rate at reset frequency ``K`` (a try drawn uniformly from a full
    cycle of ``K`` tries) follows as ``r(K) = (1/K) sum_{p=1..K} h(p)``; see
    ``k_curve``. Its band comes from parametric simulation: ``(a, b)`` drawn
    from the normal approximation of the GLM (coefficient covariance), and a
    proportion at a boundary (0 of n, n of n) drawn from its Jeffreys
    posterior ``Beta(k + 1/2, n - k + 1/2)``, which stays sensible at ``k = 0``.

    Attributes
    ----------
    version : str
    form : {"logistic", "constant"}
    k1, n1 : int
        Failures and tries at position 1.
    k, n : int
        Failures and tries at positions ``>= 2``.
    params : tuple of float
        ``(a, b)`` for "logistic"; ``()`` for "constant".
    cov : tuple of tuple of float
        Covariance of ``params``.
    max_position : int
        Highest position observed (predictions beyond it extrapolate).
    alpha : float

    Notes
    -----
    Assumes tries are independent given their position, and that the hazard
    depends on the position only, not on the reset frequency itself: that is
    what ``k_curve_fit`` checks.

    References
    ----------
    Agresti, A. (2013). Categorical Data Analysis, 3rd ed., Wiley, ch. 5.
    Gelman, A. and Hill, J. (2007). Data Analysis Using Regression and
    Multilevel/Hierarchical Models, CUP, ch. 7 (simulation from a fitted model).
    """

    version: str
    form: str
    k1: int
    n1: int
    k: int
    n: int
    params: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    max_position: int
    alpha: float = 0.05

    def hazard(self, positions: Any) -> np.ndarray:
        """Point estimate of ``h(p)`` for each position."""
        p = np.atleast_1d(np.asarray(positions, dtype=float))
        return np.where(p <= 1, self.k1 / self.n1, self._later(p))

    def _later(self, p: np.ndarray) -> np.ndarray:
        if self.form == "logistic":
            a, b = self.params
            return _expit(a + b * (p - 2))
        return np.full_like(p, self.k / self.n if self.n else math.nan, dtype=float)

    def _draws(self, positions: np.ndarray, draws: int, seed: int) -> np.ndarray:
        """Simulated ``h`` (draws x positions)."""
        rng = np.random.default_rng(seed)
        first = rng.beta(self.k1 + 0.5, self.n1 - self.k1 + 0.5, size=draws)
        if 0 < self.k1 < self.n1:  # interior: the sampling distribution, not a posterior
            se = math.sqrt(self.k1 * (self.n1 - self.k1) / self.n1**3)
            logit = math.log(self.k1 / (self.n1 - self.k1))
            first = _expit(
                rng.normal(logit, se / (self.k1 / self.n1 * (1 - self.k1 / self.n1)), draws)
            )
        if self.form == "logistic":
            coef = rng.multivariate_normal(self.params, np.asarray(self.cov), size=draws)
            later = _expit(coef[:, [0]] + coef[:, [1]] * (positions[None, :] - 2))
        elif self.n == 0:
            later = np.full((draws, len(positions)), math.nan)
        else:
            if 0 < self.k < self.n:
                p = self.k / self.n
                later_p = _expit(
                    rng.normal(math.log(p / (1 - p)), 1 / math.sqrt(self.n * p * (1 - p)), draws)
                )
            else:
                later_p = rng.beta(self.k + 0.5, self.n - self.k + 0.5, size=draws)
            later = np.repeat(later_p[:, None], len(positions), axis=1)
        return np.where(positions[None, :] <= 1, first[:, None], later)

    def hazard_band(self, positions: Any, *, draws: int = 4000, seed: int = 0) -> pd.DataFrame:
        """``h(p)`` with a two-sided ``1 - alpha`` simulation band per position."""
        p = np.atleast_1d(np.asarray(positions, dtype=float))
        sims = self._draws(p, draws, seed)
        low, high = np.quantile(sims, [self.alpha / 2, 1 - self.alpha / 2], axis=0)
        point = self.hazard(p)
        # a boundary estimate (0 of n) lies outside the Jeffreys draws: keep it in the band
        low, high = np.minimum(low, point), np.maximum(high, point)
        return pd.DataFrame({"position": p.astype(int), "hazard": point, "low": low, "high": high})

    def k_curve(self, ks: Any, *, draws: int = 4000, seed: int = 0) -> pd.DataFrame:
        """Predicted rate ``r(K) = mean(h(1..K))`` with a ``1 - alpha`` simulation band.

        Returns a DataFrame with columns ``reset_freq``, ``rate``, ``low``, ``high``.
        """
        ks = np.atleast_1d(np.asarray(ks, dtype=int))
        top = int(ks.max()) if len(ks) else 1
        positions = np.arange(1, top + 1, dtype=float)
        point = np.cumsum(self.hazard(positions)) / positions
        sims = np.cumsum(self._draws(positions, draws, seed), axis=1) / positions[None, :]
        low, high = np.quantile(sims, [self.alpha / 2, 1 - self.alpha / 2], axis=0)
        low, high = np.minimum(low, point), np.maximum(high, point)
        idx = ks - 1
        return pd.DataFrame(
            {"reset_freq": ks, "rate": point[idx], "low": low[idx], "high": high[idx]}
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        """The hazard with its band at positions 1..``max_position``."""
        frame = self.hazard_band(np.arange(1, self.max_position + 1))
        return frame.assign(version_label=self.version, form=self.form)[
            ["version_label", "position", "hazard", "low", "high", "form"]
        ]

    def describe(self) -> str:
        first = f"h(1) = {format_pct(self.k1 / self.n1)} ({self.k1} of {self.n1})"
        if self.form == "logistic":
            a, b = self.params
            later = (
                f"logit h(p) = {a:.3g} {b:+.3g}·(p − 2) for p ≥ 2 "
                f"(h(2) = {format_pct(float(_expit(a)))}; {self.k} of {self.n} failed)"
            )
        else:
            later = (
                f"constant h(p) = {format_pct(self.k / self.n)} for p ≥ 2 ({self.k} of {self.n})"
            )
        return f"{self.version}: {first}; {later}"


def fit_hazard(
    df: pd.DataFrame, version: str | None = None, *, alpha: float = 0.05
) -> HazardModel | None:
    """Fit the hazard model of ``HazardModel`` to one version's counted tries.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    version : str, optional
        A ``version_label``; required when ``df`` holds more than one.
    alpha : float, default 0.05
        Level of the bands the model draws.

    Returns
    -------
    HazardModel or None
        None when the version has no tries at position 1 or none at later
        positions (no reset frequency above 1 was run).
    """
    alpha = _check_alpha(alpha)
    d = _counted_frame(df)
    if version is None:
        labels = d["version_label"].dropna().unique()
        if len(labels) > 1:
            raise ValueError(f"several versions in the data ({sorted(labels)}); pass version=")
        if len(labels) == 0:
            return None
        version = str(labels[0])
    counts = _position_counts(d[d["version_label"] == version])
    first = counts[counts["position"] <= 1]
    later = counts[counts["position"] >= 2]
    k1, n1 = int(first["k"].sum()), int(first["n"].sum())
    k, n = int(later["k"].sum()), int(later["n"].sum())
    if n1 == 0 or n == 0:
        return None
    top = int(counts["position"].max())
    if len(later) >= 2 and 0 < k < n:
        x = later["position"].to_numpy(float) - 2
        fit = _grouped_logit(
            later["k"].to_numpy(float),
            later["n"].to_numpy(float),
            np.column_stack([np.ones_like(x), x]),
        )
        if fit is not None:
            cov = np.asarray(fit.cov_params(), dtype=float)
            return HazardModel(
                str(version),
                "logistic",
                k1,
                n1,
                k,
                n,
                (float(fit.params[0]), float(fit.params[1])),
                tuple(tuple(float(v) for v in row) for row in cov),
                top,
                alpha,
            )
    return HazardModel(str(version), "constant", k1, n1, k, n, (), (), top, alpha)


@dataclass(frozen=True)
class KCurveFit:
    """Goodness of fit of the K-curve the hazard model predicts.

    For each reset frequency ``K`` the expected failures are
    ``E_K = sum_p n_{K,p} h(p)`` over the positions the cell actually ran, with
    variance ``V_K = sum_p n_{K,p} h(p) (1 - h(p))``. Pearson's statistic
    ``X2 = sum_K (O_K - E_K)^2 / V_K`` (over the ``G`` values of ``K`` with
    ``V_K > 0``) is referred to chi-square with ``df = G - 1``: the model's
    intercepts make ``sum_K (O_K - E_K) = 0``, one linear constraint. H0: the
    failure probability depends on the position since reset only, so the rate
    at each ``K`` is the mean hazard over its cycle; H1: the reset frequency
    matters beyond that (e.g. a long-lived state that degrades).

    Attributes
    ----------
    version : str
    model : HazardModel
    table : tuple of dict
        Per ``K``: ``reset_freq``, ``tries``, ``failures``, ``observed``
        (rate), ``expected`` (failures), ``predicted`` (rate) and the band
        ``low``/``high`` of the full-cycle prediction ``r(K)``.
    statistic : float
        ``X2``; NaN when ``df < 1``.
    df : int
    pvalue : float
        NaN when ``df < 1`` (one reset frequency, or the others have no variance).
    note : str
        Why there is no test, when there is none.

    Notes
    -----
    The df is the usual grouped-fit approximation (cf. Hosmer and Lemeshow);
    the statistic is approximate with small expected counts.

    References
    ----------
    Hosmer, D. W. and Lemeshow, S. (1980). Goodness of fit tests for the
    multiple logistic regression model. Commun. Stat. A 9, 1043-1069.
    McCullagh, P. and Nelder, J. A. (1989). Generalized Linear Models, 2nd ed., section 4.4.
    """

    version: str
    model: HazardModel = field(repr=False)
    table: tuple[dict[str, Any], ...] = field(repr=False)
    statistic: float
    df: int
    pvalue: float
    note: str = ""

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.pvalue))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.table)).assign(version_label=self.version)

    def describe(self) -> str:
        ks = ", ".join(str(int(r["reset_freq"])) for r in self.table)
        if not self.tested:
            return f"{self.version}: no goodness-of-fit test of the K-curve ({self.note})"
        verdict_ = "departs from" if self.pvalue < 0.05 else "is consistent with"
        return (
            f"{self.version}: the observed rate over K = {ks} {verdict_} the hazard model's "
            f"prediction (Pearson chi2 = {self.statistic:.3g}, df {self.df}, p = {self.pvalue:.3g})"
        )


def k_curve_fit(
    df: pd.DataFrame,
    version: str | None = None,
    *,
    alpha: float = 0.05,
    draws: int = 4000,
    seed: int = 0,
) -> KCurveFit | None:
    """Fit the hazard model to a version and test its K-curve against the observed rates.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    version : str, optional
        A ``version_label``; required when ``df`` holds more than one.
    alpha : float, default 0.05
        Level of the prediction band.
    draws, seed : int
        Simulation draws for the band (``HazardModel.k_curve``) and their seed.

    Returns
    -------
    KCurveFit or None
        None when ``fit_hazard`` returns None (see there).
    """
    model = fit_hazard(df, version, alpha=alpha)
    if model is None:
        return None
    d = _counted_frame(df)
    d = d[
        (d["version_label"] == model.version) & d["reset_freq"].notna() & d["since_reset"].notna()
    ]
    if d.empty:
        return None
    cells = d.groupby([d["reset_freq"].astype(int), d["since_reset"].astype(int)])["failed"].agg(
        ["sum", "size"]
    )
    ks = sorted(int(k) for k in cells.index.get_level_values(0).unique())
    band = model.k_curve(ks, draws=draws, seed=seed).set_index("reset_freq")
    rows, stat, groups = [], 0.0, 0
    for K in ks:
        cell = cells.loc[K]
        h = model.hazard(cell.index.to_numpy(float))
        n = cell["size"].to_numpy(float)
        obs, exp_, var = (
            int(cell["sum"].sum()),
            float(np.sum(n * h)),
            float(np.sum(n * h * (1 - h))),
        )
        tries = int(n.sum())
        if var > 0:
            stat += (obs - exp_) ** 2 / var
            groups += 1
        rows.append(
            {
                "reset_freq": K,
                "tries": tries,
                "failures": obs,
                "observed": obs / tries,
                "expected": exp_,
                "predicted": exp_ / tries,
                "low": float(band.loc[K, "low"]),
                "high": float(band.loc[K, "high"]),
            }
        )
    dof = groups - 1
    if dof < 1:
        if len(ks) < 2:
            note = f"only K = {ks[0]} was run"
        else:
            flat = [str(r["reset_freq"]) for r in rows if r["expected"] in (0, r["tries"])]
            note = (
                f"at K = {', '.join(flat)} the model predicts no failure, or only failures, "
                "exactly as observed; that leaves fewer than two values of K to compare"
            )
        return KCurveFit(model.version, model, tuple(rows), math.nan, 0, math.nan, note)
    return KCurveFit(model.version, model, tuple(rows), stat, dof, float(_sps.chi2.sf(stat, dof)))


# batches as the unit of replication --------------------------------------------
def _batch_counts(df: pd.DataFrame, by: str = "run_id") -> dict[str, tuple[int, int]]:
    """``{batch: (failures, counted tries)}`` of the counted rows, batches with tries only."""
    d = _counted_frame(df)
    if d.empty or by not in d.columns:
        return {}
    d = d[d[by].notna() & (d[by].astype(str) != "")]
    g = d.groupby(d[by].astype(str))["failed"].agg(["sum", "size"])
    return {str(b): (int(r["sum"]), int(r["size"])) for b, r in g.iterrows()}


def tarone_test(x: Sequence[int], n: Sequence[int]) -> tuple[float, float]:
    """Tarone's score test for over-dispersion of binomial counts.

    ``Z = (S - sum n_i) / sqrt(2 sum n_i (n_i - 1))`` with
    ``S = sum (x_i - n_i p)^2 / (p (1 - p))`` and ``p = sum x / sum n``.
    Under H0 (one binomial probability for every batch) Z is approximately
    standard normal; the alternative is beta-binomial extra variation, so the
    p-value is the upper tail. Returns ``(Z, pvalue)``; ``(nan, 1.0)`` when
    ``p`` is 0 or 1 or every batch has one try (nothing to test).

    References
    ----------
    Tarone, R. E. (1979). Testing the goodness of fit of the binomial
    distribution. Biometrika 66(3), 585-590.

    Examples
    --------
    >>> z, p = tarone_test([2, 9, 1], [20, 20, 20])
    >>> round(z, 3)
    3.717
    """
    x, n = np.asarray(x, dtype=float), np.asarray(n, dtype=float)
    p = x.sum() / n.sum() if n.sum() else math.nan
    denom = 2 * np.sum(n * (n - 1))
    if not 0 < p < 1 or denom <= 0:
        return math.nan, 1.0
    s = np.sum((x - n * p) ** 2) / (p * (1 - p))
    z = float((s - n.sum()) / math.sqrt(denom))
    return z, float(_sps.norm.sf(z))


@dataclass(frozen=True)
class BatchHeterogeneity:
    """Whether the batches (runs) of one cell share one failure probability.

    Two tests of H0 "every batch has the same failure probability":

    * homogeneity of the ``batches x {failed, clean}`` table: Fisher's exact
      test for two batches, Pearson's chi-square (``df = batches - 1``) for more
      (``scipy.stats.chi2_contingency``; approximate when expected counts are
      below about 5);
    * Tarone's score test against beta-binomial over-dispersion (one-sided),
      more powerful when the batch rates vary at random around a mean.

    Attributes
    ----------
    cell : str
    batches : dict
        ``{run_id: (failures, counted tries)}``.
    statistic : float
        Fisher's odds ratio or the chi-square statistic (NaN when untested).
    df : int
        ``batches - 1`` (chi-square), 1 for Fisher.
    pvalue : float
        Of the homogeneity test; 1 when there is nothing to test (no failure
        or only failures).
    method : str
        ``"fisher"``, ``"chi2"`` or ``"none"``.
    tarone_z, tarone_pvalue : float
        Tarone's Z and its upper-tail p-value (see ``tarone_test``).

    References
    ----------
    Tarone, R. E. (1979). Biometrika 66(3), 585-590.
    Agresti, A. (2013). Categorical Data Analysis, 3rd ed., section 3.2 and 4.7.
    """

    cell: str
    batches: dict[str, tuple[int, int]]
    statistic: float
    df: int
    pvalue: float
    method: str
    tarone_z: float
    tarone_pvalue: float

    def disagree(self, alpha: float = 0.05) -> bool:
        """True when the homogeneity test rejects at ``alpha``."""
        return self.pvalue < alpha

    def overdispersed(self, alpha: float = 0.05) -> bool:
        """True when Tarone's test rejects at ``alpha``."""
        return self.tarone_pvalue < alpha

    def to_frame(self) -> pd.DataFrame:
        row = {k: v for k, v in asdict(self).items() if k != "batches"}
        row["n_batches"] = len(self.batches)
        row["counts"] = ", ".join(f"{k}/{n}" for k, n in self.batches.values())
        return pd.DataFrame([row])

    def describe(self) -> str:
        counts = ", ".join(f"{b}: {k}/{n}" for b, (k, n) in self.batches.items())
        if self.method == "none":
            return f"{counts} (nothing to test)"
        name = "Fisher exact" if self.method == "fisher" else f"chi-square (df {self.df})"
        return (
            f"{counts}; {name} p = {self.pvalue:.3g}, Tarone over-dispersion "
            f"p = {self.tarone_pvalue:.3g}"
        )


def batch_heterogeneity(
    df: pd.DataFrame, *, cell: str = "configuration", by: str = "run_id"
) -> list[BatchHeterogeneity]:
    """Per cell with two or more batches, test whether the batches disagree.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    cell : str, default "configuration"
        The column naming cells; ``configuration`` (from ``load_results``) is the
        cell without its ``/rep=N`` replicate suffix, so replicates are compared.
    by : str, default "run_id"
        The batch column (one run = one batch: replicates, resumed runs, hosts).

    Returns
    -------
    list of BatchHeterogeneity
        One per cell with at least two batches with counted tries, in cell order.
    """
    d = _counted_frame(df)
    if cell == "configuration" and cell not in d.columns:
        cell = "cell"  # a frame that was not derived: its cells are the configurations
    if d.empty or by not in d.columns or cell not in d.columns:
        return []
    out = []
    for key, group in d.groupby(cell, sort=True):
        batches = _batch_counts(group, by)
        if len(batches) < 2:
            continue
        x = [k for k, _ in batches.values()]
        n = [m for _, m in batches.values()]
        z, zp = tarone_test(x, n)
        table = [[k, m - k] for k, m in zip(x, n, strict=True)]
        if sum(x) == 0 or sum(x) == sum(n):
            out.append(
                BatchHeterogeneity(str(key), batches, math.nan, len(x) - 1, 1.0, "none", z, zp)
            )
        elif len(batches) == 2:
            res = _sps.fisher_exact(table, alternative="two-sided")
            out.append(
                BatchHeterogeneity(
                    str(key), batches, float(res.statistic), 1, float(res.pvalue), "fisher", z, zp
                )
            )
        else:
            res = _sps.chi2_contingency(table, correction=False)
            out.append(
                BatchHeterogeneity(
                    str(key),
                    batches,
                    float(res.statistic),
                    int(res.dof),
                    float(res.pvalue),
                    "chi2",
                    z,
                    zp,
                )
            )
    return out


@dataclass(frozen=True)
class BatchRate:
    """A failure proportion with an interval that allows for between-batch variation.

    The estimate is the pooled ``p = sum x_i / sum n_i`` over ``G`` batches. Its
    variance is the cluster-robust (sandwich, CR1) variance of the intercept of
    a binomial GLM with batches as clusters, in closed form the ratio-estimator
    variance ``V = G / (G - 1) * sum (x_i - n_i p)^2 / (sum n_i)^2``. The
    interval is built on the logit scale (delta method) with a Student t
    quantile on ``G - 1`` degrees of freedom, so it widens when batches
    disagree and when there are few of them. No model for the batch effect is
    assumed (beta-binomial data are covered), only independent batches.

    When the interval cannot be built that way (one batch, no failure, only
    failures, or batches with identical rates) it falls back to the Wilson
    interval of the pooled counts, and ``method`` says so.

    Attributes
    ----------
    k, n : int
        Pooled failures and counted tries.
    batches : int
        ``G``.
    p_hat, ci_low, ci_high : float
    se : float
        Cluster-robust standard error of ``p_hat`` (NaN for the fallback).
    design_effect : float
        ``V`` divided by the binomial variance ``p (1 - p) / n``: about 1 for
        binomial data, above 1 with between-batch variation.
    method : str
        ``"cluster-robust"`` or ``"wilson (…)"`` with the reason.
    alpha : float

    References
    ----------
    Cameron, A. C. and Miller, D. L. (2015). A practitioner's guide to
    cluster-robust inference. J. Human Resources 50(2), 317-372.
    Cochran, W. G. (1977). Sampling Techniques, 3rd ed., Wiley, section 6.9 (ratio estimator).
    """

    k: int
    n: int
    batches: int
    p_hat: float
    ci_low: float
    ci_high: float
    se: float
    design_effect: float
    method: str
    alpha: float = 0.05

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(self)])

    def describe(self) -> str:
        conf = _confidence(self.alpha)
        if self.n == 0:
            return "no usable tries"
        return (
            f"{self.k} of {self.n} in {self.batches} batches ({format_pct(self.p_hat)}, {conf} "
            f"{self.method} interval {format_pct(self.ci_low)}–{format_pct(self.ci_high)}"
            + (
                f", design effect {self.design_effect:.2g})"
                if np.isfinite(self.design_effect)
                else ")"
            )
        )


def _cluster_variance(x: np.ndarray, n: np.ndarray) -> float:
    g, total = len(x), n.sum()
    p = x.sum() / total
    return float(g / (g - 1) * np.sum((x - n * p) ** 2) / total**2)


def batch_rate(
    data: pd.DataFrame | dict[str, tuple[int, int]], *, by: str = "run_id", alpha: float = 0.05
) -> BatchRate:
    """Pooled failure rate with a batch-robust interval (see ``BatchRate``).

    Parameters
    ----------
    data : DataFrame or dict
        Trials (grouped into batches by ``by``) or ``{batch: (failures, tries)}``.
    by : str, default "run_id"
    alpha : float, default 0.05

    Examples
    --------
    >>> r = batch_rate({"a": (2, 20), "b": (9, 20), "c": (1, 20), "d": (4, 20)})
    >>> round(r.p_hat, 4), round(r.ci_low, 3), round(r.ci_high, 3)
    (0.2, 0.041, 0.595)
    """
    alpha = _check_alpha(alpha)
    counts = data if isinstance(data, dict) else _batch_counts(data, by)
    x = np.array([k for k, _ in counts.values()], dtype=float)
    n = np.array([m for _, m in counts.values()], dtype=float)
    k, total, g = int(x.sum()), int(n.sum()), len(counts)

    def fallback(reason: str) -> BatchRate:
        fr = failure_rate(k, total, alpha=alpha)
        return BatchRate(
            k,
            total,
            g,
            fr.p_hat,
            fr.ci_low,
            fr.ci_high,
            math.nan,
            math.nan,
            f"wilson ({reason})",
            alpha,
        )

    if total == 0:
        return fallback("no tries")
    if g < 2:
        return fallback("one batch")
    if k == 0 or k == total:
        return fallback("no failure" if k == 0 else "only failures")
    p = k / total
    var = _cluster_variance(x, n)
    if var <= 0:
        return fallback("identical batch rates")
    se_logit = math.sqrt(var) / (p * (1 - p))
    t = float(_sps.t.ppf(1 - alpha / 2, g - 1))
    logit = math.log(p / (1 - p))
    low, high = _expit(logit - t * se_logit), _expit(logit + t * se_logit)
    deff = var / (p * (1 - p) / total)
    return BatchRate(
        k,
        total,
        g,
        p,
        float(low),
        float(high),
        math.sqrt(var),
        float(deff),
        "cluster-robust",
        alpha,
    )


# a logistic model the data can support --------------------------------------------
#: model terms: name -> (column in the model frame, categorical?)
_MODEL_TERMS = {
    "version": ("version_label", True),
    "log2(K)": ("log2_reset_freq", False),
    "position": ("since_reset", False),
    "cache": ("cache_type", True),
    "mode": ("mode", True),
}
_OR_COLUMNS = ["term", "odds_ratio", "ci_low", "ci_high", "pvalue"]


@dataclass(frozen=True)
class FailureModel:
    """``failed ~ version + log2(K) + position + cache + mode``: odds ratios with intervals.

    A logistic regression (maximum likelihood, ``statsmodels.formula.api.logit``)
    of a missing layer on the BuildKit version (categorical, reference = the
    oldest), ``log2`` of the reset frequency ``K``, the position since the last
    reset, the cache type and the mode (categorical). Odds ratios are
    ``exp(coefficient)`` with Wald ``1 - alpha`` intervals: for ``log2(K)`` per
    doubling of ``K``, for ``position`` per position, for a level of a
    categorical term against its reference level.

    Attributes
    ----------
    formula : str
        The formula fitted (or attempted).
    terms : tuple of str
        Terms in the model.
    dropped : tuple of str
        Terms left out, with the reason (one level in the data).
    rows : tuple of dict
        One per coefficient except the intercept: ``term``, ``odds_ratio``,
        ``ci_low``, ``ci_high``, ``pvalue`` (Wald). Empty when not fitted.
    nobs, failures : int
        Counted tries used and how many failed.
    versions : tuple of str
        The affected versions used (those with at least one failure).
    message : str
        Empty when fitted; otherwise why not, naming the term that separates
        the data when that is the reason.
    separating : str or None
        The term (e.g. ``"cache = local"``) that separates failures from clean tries.
    alpha : float
    note : str
        Which tries were left out and why (see ``min_position`` of ``failure_model``).
    summary_text : str
        The statsmodels summary, when fitted.

    Notes
    -----
    Assumes independent tries given the terms and effects linear on the log-odds
    scale in ``log2(K)`` and in the position. Only affected versions are used: a
    version that never fails separates the data by itself and carries no
    information on the other terms. Wald intervals are poor with few failures;
    under (quasi-)complete separation the maximum-likelihood estimate does not
    exist and no odds ratio is reported.

    References
    ----------
    Agresti, A. (2013). Categorical Data Analysis, 3rd ed., Wiley, ch. 5 and
    section 6.5.1 (separation). Albert, A. and Anderson, J. A. (1984). On the
    existence of maximum likelihood estimates in logistic regression models.
    Biometrika 71, 1-10.
    """

    formula: str
    terms: tuple[str, ...]
    dropped: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    nobs: int
    failures: int
    versions: tuple[str, ...]
    message: str = ""
    separating: str | None = None
    alpha: float = 0.05
    note: str = ""
    summary_text: str = field(default="", repr=False)

    @property
    def supported(self) -> bool:
        return not self.message and bool(self.rows)

    def to_frame(self) -> pd.DataFrame:
        """The odds-ratio table (empty, with its columns, when not fitted)."""
        return pd.DataFrame(list(self.rows), columns=_OR_COLUMNS)

    def describe(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if not self.supported:
            return f"Logistic model not fitted: {self.message}{note}"
        dropped = f"; left out: {', '.join(self.dropped)}" if self.dropped else ""
        return (
            f"Logistic regression {self.formula!r} on {self.nobs} tries ({self.failures} "
            f"failed) of {', '.join(self.versions)}{dropped}{note}."
        )


def _pretty_term(name: str) -> str:
    """``C(cache_type)[T.local]`` -> ``cache = local``; numeric terms by their model name."""
    for label, (column, categorical) in _MODEL_TERMS.items():
        if categorical and name.startswith(f"C({column})[T."):
            return f"{label} = {name[len(column) + 6 : -1]}"
        if not categorical and name == column:
            return "log2(K) (per doubling of K)" if label == "log2(K)" else f"{label} (per step)"
    return name


def _separating_term(data: pd.DataFrame, terms: list[str]) -> tuple[str, str] | None:
    """The first term that on its own separates failures from clean tries, with the evidence."""
    y = data["failed"].astype(bool)
    for label in terms:
        column, categorical = _MODEL_TERMS[label]
        if categorical:
            for level, part in y.groupby(data[column]):
                k, n = int(part.sum()), len(part)
                if k == 0 or k == n:
                    what = "none" if k == 0 else "all"
                    return f"{label} = {level}", f"{what} of its {n} tries failed"
        else:
            x = data[column].astype(float)
            fail, ok = x[y], x[~y]
            if label == "log2(K)":
                name, show = "K", lambda v: f"{2**v:g}"
            else:
                name, show = label, lambda v: f"{v:g}"
            if fail.max() <= ok.min():
                return label, (
                    f"every failure at {name} ≤ {show(fail.max())}, "
                    f"every clean try at {name} ≥ {show(ok.min())}"
                )
            if fail.min() >= ok.max():
                return label, (
                    f"every failure at {name} ≥ {show(fail.min())}, "
                    f"every clean try at {name} ≤ {show(ok.max())}"
                )
    return None


def failure_model(
    df: pd.DataFrame, *, alpha: float = 0.05, min_position: int | None = None
) -> FailureModel:
    """Fit ``failed ~ version + log2(K) + position + cache + mode`` on the affected versions.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``: counted tries with a reset frequency
        and a position, of versions (``version_label``) with at least one failure.
    alpha : float, default 0.05
        Level of the odds ratios' Wald intervals.
    min_position : int, optional
        Use tries at positions since reset ``>= min_position`` only. None
        (default): 1, except when no try at position 1 failed while later ones
        did: position 1 alone would then separate the data (and with it
        ``K = 1``, whose cycles hold position 1 only), so the model is fitted on
        positions ``>= 2`` and ``note`` says so. The first position's own
        hazard is estimated by ``fit_hazard``.

    Returns
    -------
    FailureModel
        Always; ``supported`` is False (and ``message`` says why) when the data
        cannot support the model: no affected version, no term left with two
        levels, a term that separates failures from clean tries (named), or a
        fit that does not converge.

    See Also
    --------
    logistic_fit : the smaller ``failed ~ log2(reset_freq) [+ version]`` model.
    """
    from statsmodels.formula.api import logit
    from statsmodels.tools import sm_exceptions as sme

    alpha = _check_alpha(alpha)
    d = _counted_frame(df)
    d = d[d["reset_freq"].notna() & d["since_reset"].notna()] if len(d) else d
    affected = sorted(
        (str(v) for v in d.loc[d["failed"], "version_label"].dropna().unique()), key=version_key
    )
    empty = FailureModel("", (), (), (), 0, 0, tuple(affected), alpha=alpha)
    if d.empty:
        return replace(empty, message="no counted try with a known reset frequency and position")
    if not affected:
        return replace(empty, message="no version lost a layer, so there is nothing to model")
    d = d[d["version_label"].isin(affected)]
    note = ""
    if min_position is None:
        first = d[d["since_reset"] <= 1]
        min_position = 1
        if (
            len(first)
            and not first["failed"].any()
            and d.loc[d["since_reset"] >= 2, "failed"].any()
        ):
            min_position = 2
            note = (
                f"position 1 never failed (0 of {len(first)} tries), which alone separates the "
                "data, so the model uses positions ≥ 2"
            )
    d = d[d["since_reset"] >= min_position]
    empty = replace(empty, note=note)
    data = pd.DataFrame(
        {
            "failed": d["failed"].astype(int).to_numpy(),
            "version_label": d["version_label"].astype(str).to_numpy(),
            "log2_reset_freq": np.log2(d["reset_freq"].astype(float).to_numpy()),
            "since_reset": d["since_reset"].astype(float).to_numpy(),
            "cache_type": d["cache_type"].fillna("?").astype(str).to_numpy(),
            "mode": d["mode"].fillna("?").astype(str).to_numpy(),
        }
    )
    terms, dropped = [], []
    for label, (column, categorical) in _MODEL_TERMS.items():
        levels = data[column].unique()
        if len(levels) > 1:
            terms.append(label)
        else:
            value = str(levels[0]) if categorical else f"{levels[0]:g}"
            dropped.append(f"{label} (one level: {value})")
    nobs, failures = len(data), int(data["failed"].sum())
    base = replace(empty, terms=tuple(terms), dropped=tuple(dropped), nobs=nobs, failures=failures)
    if not terms:
        return replace(base, message="every term has one level in these data")
    if failures == nobs:
        return replace(base, message="every try failed")
    parts = []
    for label in terms:
        column, categorical = _MODEL_TERMS[label]
        if categorical and column == "version_label":
            ref = affected[0]
            parts.append(f"C(version_label, Treatment({ref!r}))")
        else:
            parts.append(f"C({column})" if categorical else column)
    formula = "failed ~ " + " + ".join(parts)
    base = replace(base, formula=formula)
    problems = (
        sme.PerfectSeparationWarning,
        sme.ConvergenceWarning,
        sme.HessianInversionWarning,
        RuntimeWarning,
    )
    result = None
    try:
        with warnings.catch_warnings():
            for category in problems:
                warnings.simplefilter("error", category)
            result = logit(formula, data).fit(disp=0, maxiter=200)
    except (*problems, sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError):
        result = None
    ok = result is not None and result.mle_retvals.get("converged", True)
    if ok:
        bse = np.asarray(result.bse, dtype=float)
        ok = bool(np.all(np.isfinite(bse)) and np.all(bse < 20))
    if not ok:
        found = _separating_term(data, terms)
        if found is not None:
            term, evidence = found
            return replace(
                base,
                separating=term,
                message=(
                    f"the term {term} separates failures from clean tries ({evidence}), so its "
                    "odds ratio is infinite and the model has no maximum-likelihood fit; "
                    "record tries where it varies, or analyse its levels apart"
                ),
            )
        return replace(
            base,
            message=(
                "no single term separates the data, but together they do (quasi-complete "
                f"separation) or the fit did not converge, with terms {', '.join(terms)}"
            ),
        )
    conf = result.conf_int(alpha)
    rows = []
    for name in result.params.index:
        if name == "Intercept":
            continue
        label = _pretty_term(str(name).replace(f", Treatment({affected[0]!r}))", ")"))
        rows.append(
            {
                "term": label,
                "odds_ratio": float(np.exp(result.params[name])),
                "ci_low": float(np.exp(conf.loc[name, 0])),
                "ci_high": float(np.exp(conf.loc[name, 1])),
                "pvalue": float(result.pvalues[name]),
            }
        )
    return replace(base, rows=tuple(rows), summary_text=str(result.summary()))
