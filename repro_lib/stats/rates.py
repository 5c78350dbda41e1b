"""One failure proportion: intervals, exact bounds and how many tries a claim needs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from scipy import stats as _sps
from statsmodels.stats.proportion import proportion_confint

from ._common import _METHODS, Method, _check_alpha, _check_counts, _confidence, format_pct


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
        ``k == 0`` reads ``"0 of 300 (95% upper bound 1.0%)"`` using the exact
        one-sided bound (``upper_bound``), not ``ci_high``. Both assume
        independent tries; ``cycle_rate`` and ``verdict`` count reset cycles.
        """
        conf = _confidence(self.alpha)
        if self.n == 0:
            return "no usable tries"
        if self.k == 0:
            return f"0 of {self.n} ({conf} upper bound {format_pct(self.upper_bound)})"
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
