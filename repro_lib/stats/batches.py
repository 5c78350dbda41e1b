"""Batches (runs) as the unit of replication: agreement, over-dispersion, robust rates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ._common import _check_alpha, _confidence, _counted_frame, _expit, format_pct
from .rates import failure_rate


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
