"""Failure probabilities of flaky builds: intervals, comparisons, trials needed.

Every try is treated as a Bernoulli trial: it either loses a layer
(``missing_layer``) or not (``ok``). Build and infra errors are not trials of
the bug and are left out of every count here (see ``repro_lib.results``).

The binomial model assumes tries are independent with one common failure
probability. Tries that share a BuildKit state between resets may not be
independent (that is what ``rate_by_position`` and ``logistic_fit`` look at),
so intervals are best read per cell, where the reset schedule is fixed.

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
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as _sps
from statsmodels.stats.proportion import proportion_confint

from .results import derive, version_key

Method = Literal["wilson", "beta"]
_METHODS = ("wilson", "beta")

__all__ = [
    "Comparison",
    "FailureRate",
    "LogisticFit",
    "StopDecision",
    "compare",
    "failure_rate",
    "format_pct",
    "logistic_fit",
    "rate_by_position",
    "rates_by",
    "should_stop",
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
    """Fisher's exact test of two failure proportions.

    H0: both groups share one failure probability. H1 (two-sided): they
    differ. The test conditions on the margins of the 2x2 table
    ``[[k1, n1 - k1], [k2, n2 - k2]]``, so it is valid for small counts.

    Attributes
    ----------
    k1, n1, k2, n2 : int
        Failures and counted tries of groups 1 and 2.
    odds_ratio : float
        Sample odds ratio ``(k1 (n2 - k2)) / ((n1 - k1) k2)`` as reported by
        ``scipy.stats.fisher_exact`` (may be 0, inf or NaN).
    pvalue : float
        Two-sided p-value.
    method : str
        ``"fisher"``.
    """

    k1: int
    n1: int
    k2: int
    n2: int
    odds_ratio: float
    pvalue: float
    method: str = "fisher"

    @property
    def table(self) -> list[list[int]]:
        return [[self.k1, self.n1 - self.k1], [self.k2, self.n2 - self.k2]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """E.g. ``"8 of 10 vs 1 of 6: Fisher exact p = 0.035"``."""
        return (
            f"{self.k1} of {self.n1} vs {self.k2} of {self.n2}: "
            f"Fisher exact two-sided p = {self.pvalue:.3g}"
        )


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
    """Compare the failure proportions of two groups with Fisher's exact test.

    Parameters
    ----------
    a, b : DataFrame, FailureRate or (k, n)
        A trials DataFrame (its counted rows are used), a ``FailureRate``, or
        a pair of counts.

    Returns
    -------
    Comparison
        Two-sided ``scipy.stats.fisher_exact`` on ``[[k1, n1-k1], [k2, n2-k2]]``.

    Notes
    -----
    Assumes independent tries within and between groups. With ``n1`` or
    ``n2`` zero the p-value is 1 (no information).

    References
    ----------
    Fisher (1922); see also ``scipy.stats.fisher_exact``.

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
    return Comparison(k1, n1, k2, n2, float(res.statistic), float(res.pvalue))


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
