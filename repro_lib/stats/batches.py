"""Batches (runs) as the unit of replication: agreement, over-dispersion, robust rates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ._common import _check_alpha, _counted_frame, p_text
from .cycles import ClusteredRate, clustered_rate


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
    there is nothing to test: fewer than two batches (one batch cannot vary
    between batches), ``p`` is 0 or 1, or every batch has one try.

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
    if len(x) < 2:
        return math.nan, 1.0
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
            f"{counts}; {name} {p_text(self.pvalue)}, Tarone over-dispersion "
            f"{p_text(self.tarone_pvalue)}"
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


BatchRate = ClusteredRate
"""The result of ``batch_rate``: a ``ClusteredRate`` with batches (runs) as clusters."""


def batch_rate(
    data: pd.DataFrame | dict[str, tuple[int, int]], *, by: str = "run_id", alpha: float = 0.05
) -> ClusteredRate:
    """Pooled failure rate with batches (runs) as clusters (see ``ClusteredRate``).

    Batches contain reset cycles, so clustering on batches also allows for
    dependence within a cycle; it needs several batches to say much.

    Parameters
    ----------
    data : DataFrame or dict
        Trials (grouped into batches by ``by``) or ``{batch: (failures, tries)}``.
    by : str, default "run_id"
    alpha : float, default 0.05

    Returns
    -------
    ClusteredRate
        ``unit == "batch"``; the Wilson interval (``method`` says why) with one
        batch, no failure, only failures or identical batch rates.

    Examples
    --------
    >>> r = batch_rate({"a": (2, 20), "b": (9, 20), "c": (1, 20), "d": (4, 20)})
    >>> round(r.p_hat, 4), round(r.ci_low, 3), round(r.ci_high, 3)
    (0.2, 0.041, 0.595)
    """
    alpha = _check_alpha(alpha)
    counts = data if isinstance(data, dict) else _batch_counts(data, by)
    failed, groups = [], []
    for i, (k, n) in enumerate(counts.values()):
        failed += [True] * int(k) + [False] * (int(n) - int(k))
        groups += [i] * int(n)
    return clustered_rate(np.array(failed, dtype=bool), np.array(groups), unit="batch", alpha=alpha)
