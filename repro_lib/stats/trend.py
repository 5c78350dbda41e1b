"""Is the failure probability constant at positions >= 2 since reset, or does it trend?

``hazard_trend_test`` fits the logistic trend of the position model's later
part (``position``) per version, with reset cycles as clusters, and reports a
likelihood-ratio test (independent tries) beside the cycle-robust Wald test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ..frames import version_key
from ._common import _check_alpha, _confidence, _counted_frame, _narrow, p_text
from .cycles import cycle_groups
from .position import _fit_logit, _separation


def _binomial_llf(k: np.ndarray, n: np.ndarray, p: np.ndarray | float) -> float:
    """Grouped binomial log-likelihood (``scipy.stats.binom.logpmf``)."""
    return float(np.sum(_sps.binom.logpmf(k, n, np.clip(p, 0.0, 1.0))))


@dataclass(frozen=True)
class TrendTest:
    """Is the failure probability constant at positions ``>= start``, or does it trend?

    Model: the try at position ``p`` since the last reset (``p >= start``)
    fails with probability ``h(p)``, ``logit h(p) = a + b p``. H0: ``b = 0``;
    H1: ``b != 0``. Two tests of H0:

    * the cycle-robust Wald test of ``b`` (cluster-robust covariance with reset
      cycles as clusters, Student t on ``cycles - 1`` df): the one to read,
      since tries of one cycle are not independent;
    * the likelihood-ratio test, ``2 (l1 - l0)`` of the two binomial GLM fits
      (statsmodels ``llf``) against chi-square with 1 df (``scipy.stats.chi2``),
      which assumes independent tries.

    When the positions separate failures from clean tries the slope has no
    finite estimate. Then the likelihood-ratio statistic compares one common
    probability with a free probability per position, on ``positions - 1``
    df, and there is no Wald test (``note`` says so).

    Attributes
    ----------
    version : str
    statistic, df, pvalue : float, int, float
        The likelihood-ratio test (independent tries); NaN when untested.
    slope, slope_se : float
        ``b`` (log-odds per position) and its cycle-robust standard error
        (``slope`` is ``+-inf`` under separation).
    positions : tuple of int
    k, n : int
        Failures and tries at those positions.
    note : str
        Why nothing was tested, or that the positions separate the data.
    robust_pvalue : float
        Two-sided p-value of the cycle-robust Wald test of ``b``.
    slope_low, slope_high : float
        Cycle-robust ``1 - alpha`` interval of ``b``.
    cycles : int
        Reset cycles the tries came from.
    alpha : float

    References
    ----------
    Agresti, A. (2013). Categorical Data Analysis, 3rd ed., Wiley, sections 4.3 and 5.2.
    Cameron, A. C. and Miller, D. L. (2015). J. Human Resources 50(2), 317-372.
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
    robust_pvalue: float = math.nan
    slope_low: float = math.nan
    slope_high: float = math.nan
    cycles: int = 0
    alpha: float = 0.05

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.pvalue))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """E.g. ``"v0.9.0, positions 2–16 (…): slope -0.19 log-odds per position (…)"``."""
        where = (
            f"positions {self.positions[0]}–{self.positions[-1]}"
            if self.positions
            else "no positions"
        )
        head = f"{self.version}, {where} ({self.k} of {self.n} failed)"
        if not self.tested:
            return f"{head}: not tested ({self.note})"
        lr = (
            f"likelihood-ratio chi2 = {self.statistic:.3g} (df {self.df}), "
            f"{p_text(self.pvalue)} if tries were independent"
        )
        if not np.isfinite(self.robust_pvalue):
            return f"{head}: {lr} ({self.note})"
        conf = _confidence(self.alpha)
        return (
            f"{head}: slope {self.slope:+.3g} log-odds per position ({conf} CI "
            f"{self.slope_low:+.3g} to {self.slope_high:+.3g}, {p_text(self.robust_pvalue)} "
            f"with {self.cycles} reset cycles as clusters); {lr}"
        )


def hazard_trend_test(df: pd.DataFrame, *, start: int = 2, alpha: float = 0.05) -> list[TrendTest]:
    """Per version, test a constant failure probability at positions ``>= start`` against a trend.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``; counted tries with a ``since_reset`` are used.
    start : int, default 2
        First position included (position 1, the first try on a fresh state, is
        left out by default because it behaves differently in the lab's data).
    alpha : float, default 0.05
        Level of the slope's interval.

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
    alpha = _check_alpha(alpha)
    d = _narrow(_counted_frame(df), "version_label")
    out: list[TrendTest] = []
    if d.empty:
        return out
    labels = d["version_label"].dropna().astype(str).unique()
    d = d[d["since_reset"].notna()]
    d = d[d["since_reset"].astype(float) >= start]
    for version in sorted(labels, key=version_key):
        part = d[d["version_label"].astype(str) == version]
        x = part["since_reset"].to_numpy(float)
        y = part["failed"].to_numpy(float)
        pos = tuple(int(p) for p in sorted(set(x.astype(int))))
        k, n = int(y.sum()), len(y)
        groups = cycle_groups(part)
        cycles = len(np.unique(groups))

        def untested(note: str, pos=pos, k=k, n=n, version=version, cycles=cycles) -> TrendTest:
            return TrendTest(
                version, math.nan, 1, math.nan, math.nan, math.nan, pos, k, n, note,
                cycles=cycles, alpha=alpha,
            )  # fmt: skip

        if len(pos) < 2:
            out.append(untested(f"needs tries at two or more positions >= {start}"))
            continue
        if k == 0 or k == n:
            out.append(untested("no failure" if k == 0 else "every try failed"))
            continue
        separated = _separation(x, y)
        fit = None if separated else _fit_logit(y, np.column_stack([np.ones_like(x), x]), groups)
        if fit is None:
            # no finite slope: test one common probability against one per position
            counts = part.groupby(x.astype(int))["failed"].agg(["sum", "size"])
            kk, nn = counts["sum"].to_numpy(float), counts["size"].to_numpy(float)
            stat = max(0.0, 2 * (_binomial_llf(kk, nn, kk / nn) - _binomial_llf(kk, nn, k / n)))
            dof = len(pos) - 1
            order = np.corrcoef(counts.index.to_numpy(float), kk / nn)[0, 1]
            slope = math.copysign(math.inf, order) if np.isfinite(order) else math.nan
            why = separated or "the logistic trend did not converge"
            out.append(
                TrendTest(
                    version, stat, dof, float(_sps.chi2.sf(stat, dof)), slope, math.nan, pos,
                    k, n,
                    f"{why}: no finite slope, so the likelihood-ratio test compares one common "
                    f"probability with one per position (df {dof}); no cycle-robust test",
                    cycles=cycles, alpha=alpha,
                )
            )  # fmt: skip
            continue
        null = _fit_logit(y, np.ones((n, 1)), groups)
        stat = max(0.0, 2 * (float(fit.llf) - float(null.llf)))
        low, high = np.asarray(fit.conf_int(alpha))[1]
        out.append(
            TrendTest(
                version, stat, 1, float(_sps.chi2.sf(stat, 1)),
                float(np.asarray(fit.params)[1]), float(np.asarray(fit.bse)[1]), pos, k, n,
                robust_pvalue=float(np.asarray(fit.pvalues)[1]),
                slope_low=float(low), slope_high=float(high), cycles=cycles, alpha=alpha,
            )
        )  # fmt: skip
    return out
