"""Two failure proportions compared, and whether groups within a cell agree."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ..frames import derive
from ._common import _check_counts, _counted_frame, p_text
from .batches import _batch_counts
from .cycles import cluster_fit_options, cycle_groups
from .rates import FailureRate


# two proportions ----------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A test of two failure proportions: Fisher's exact test, or a cluster-robust test.

    H0: both groups share one failure probability. H1 (two-sided): they
    differ.

    ``method == "fisher"``: Fisher's exact test conditions on the margins of
    the 2x2 table ``[[k1, n1 - k1], [k2, n2 - k2]]``, so it is valid for small
    counts, but it treats every try as independent. Used for counts, and for
    trials whose every reset cycle holds one try (``K = 1``).

    ``method == "cycle-t"`` or ``"batch-t"`` (both groups given as trials):
    the difference of the pooled proportions divided by its cluster-robust
    standard error, referred to Student's t on ``G - 1`` degrees of freedom
    (``G`` clusters in all). It is the group coefficient of a linear
    probability model fitted by statsmodels OLS with cluster-robust covariance
    (CR1). Clusters are batches (runs) when each group has two or more of
    them (batches contain cycles, so this also allows for dependence within a
    cycle), otherwise reset cycles. It assumes independent clusters only; the
    t reference is approximate when failures are few.

    Attributes
    ----------
    k1, n1, k2, n2 : int
        Failures and counted tries of groups 1 and 2.
    odds_ratio : float
        Sample odds ratio ``(k1 (n2 - k2)) / ((n1 - k1) k2)`` (may be 0, inf or NaN).
    pvalue : float
        Two-sided p-value.
    method : str
        ``"fisher"``, ``"cycle-t"`` or ``"batch-t"``.
    statistic : float
        The t statistic; NaN for Fisher.
    clusters1, clusters2 : int
        Cycles or batches per group (0 for Fisher).

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
    clusters1: int = 0
    clusters2: int = 0

    @property
    def batches1(self) -> int:
        """``clusters1`` (batches for ``"batch-t"``)."""
        return self.clusters1

    @property
    def batches2(self) -> int:
        """``clusters2`` (batches for ``"batch-t"``)."""
        return self.clusters2

    @property
    def table(self) -> list[list[int]]:
        return [[self.k1, self.n1 - self.k1], [self.k2, self.n2 - self.k2]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """E.g. ``"8 of 10 vs 1 of 6: Fisher exact p = 0.035 (independent tries)"``."""
        head = f"{self.k1} of {self.n1} vs {self.k2} of {self.n2}: "
        if self.method in ("batch-t", "cycle-t"):
            unit = "batch" if self.method == "batch-t" else "cycle"
            plural = "batches" if unit == "batch" else "cycles"
            return head + (
                f"{unit}-robust t test ({self.clusters1} vs {self.clusters2} {plural} as "
                f"clusters, t = {self.statistic:.3g}) two-sided {p_text(self.pvalue)}"
            )
        return head + f"Fisher exact two-sided {p_text(self.pvalue)} (independent tries)"


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


def _cluster_t(a: pd.DataFrame, b: pd.DataFrame) -> tuple[str, float, float, int, int] | None:
    """``(method, t, p, clusters1, clusters2)`` of the cluster-robust difference; None for K = 1."""
    import statsmodels.api as sm  # imported when used: keeps the CLI's start-up quick

    da, db = _counted_frame(a), _counted_frame(b)
    both = pd.concat([da, db], ignore_index=True)
    second = np.r_[np.zeros(len(da)), np.ones(len(db))]
    if len(_batch_counts(da)) >= 2 and len(_batch_counts(db)) >= 2:
        method = "batch-t"
        groups = pd.factorize(both["run_id"].astype(str))[0]
    else:
        method = "cycle-t"
        groups = cycle_groups(both)
        if len(np.unique(groups)) == len(both):
            return None  # one try per cycle: independent tries, Fisher's exact test applies
    g1 = len(np.unique(groups[: len(da)]))
    g2 = len(np.unique(groups[len(da) :]))
    options = cluster_fit_options(groups)
    if not options:
        return None  # one cluster in all: nothing to cluster on
    fit = sm.OLS(both["failed"].to_numpy(float), sm.add_constant(second)).fit(**options)
    se = float(np.asarray(fit.bse)[1])
    if not np.isfinite(se) or se <= 0:
        return None
    # the coefficient is p2 - p1; report t for p1 - p2, as the groups are named
    return method, -float(np.asarray(fit.tvalues)[1]), float(np.asarray(fit.pvalues)[1]), g1, g2


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
        When both ``a`` and ``b`` are DataFrames, the cluster-robust t test
        (``"batch-t"`` with two or more batches per group, else ``"cycle-t"``
        with reset cycles as clusters; see ``Comparison``); otherwise, when
        every cycle holds one try, or when the clusters show no variation at
        all, two-sided ``scipy.stats.fisher_exact`` on
        ``[[k1, n1-k1], [k2, n2-k2]]`` (``method == "fisher"``).

    Notes
    -----
    Fisher's test assumes independent tries within and between groups; the
    cluster tests assume independent clusters only. With ``n1`` or ``n2`` zero
    the p-value is 1 (no information).

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
    robust = _cluster_t(a, b)
    if robust is None:
        return fisher
    method, t, p, g1, g2 = robust
    return Comparison(k1, n1, k2, n2, float(res.statistic), p, method, t, g1, g2)


@dataclass(frozen=True)
class GroupAgreement:
    """Whether groups of tries within one cell (e.g. hosts) share one failure probability.

    The unit is the reset cycle, not the try: tries within a cycle are not
    independent (one failed state makes later failures likelier), so a test on
    tries would see disagreement where there is only clustering. Each group's
    cycles are scored as "at least one try failed" or not, which is valid
    whatever the dependence inside a cycle, given that the cycles of a cell have
    the same ``K`` (they do: ``K`` is a cell's axis). Tries whose cycle is
    unknown count as cycles of one try.

    H0: every group has the same chance that a cycle shows the bug; H1: at least
    one differs. Two groups use Fisher's exact test; more use Pearson's
    chi-square test of the ``groups x {failing, clean cycles}`` table
    (``scipy.stats.chi2_contingency``, no continuity correction), whose
    approximation is poor when expected counts are below about 5. A table
    without failures, or with one group, has nothing to test: ``pvalue`` is 1.

    Attributes
    ----------
    cell : str
        The cell the groups belong to.
    groups : dict
        ``{group: (failures, counted tries)}``, for display.
    statistic : float
        Fisher's odds ratio on cycles, or the chi-square statistic (NaN when untested).
    pvalue : float
    method : str
        ``"fisher"``, ``"chi2"`` or ``"none"``.
    cycles : dict
        ``{group: (cycles with a failure, cycles)}``, what the test counts.
    """

    cell: str
    groups: dict[str, tuple[int, int]]
    statistic: float
    pvalue: float
    method: str
    cycles: dict[str, tuple[int, int]] = field(default_factory=dict)

    def disagree(self, alpha: float = 0.05) -> bool:
        return self.pvalue < alpha

    def describe(self) -> str:
        counts = ", ".join(f"{g}: {k}/{n}" for g, (k, n) in self.groups.items())
        if self.method == "none":
            return f"{counts} (nothing to test)"
        name = "Fisher exact" if self.method == "fisher" else "chi-square"
        per_cycle = ", ".join(f"{k}/{n}" for k, n in self.cycles.values())
        return f"{counts}; cycles with a failure {per_cycle}; {name} {p_text(self.pvalue)}"


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
    counted = counted.assign(_cycle=cycle_groups(counted))
    for key, group in counted.groupby(cell, sort=True):
        parts = [
            (str(g), part)
            for g, part in group.groupby(by, sort=True)
            if str(g) not in ("", "nan", "None")
        ]
        if len(parts) < 2:
            continue
        groups = {g: (int(part["failed"].sum()), len(part)) for g, part in parts}
        cycles = {}
        for g, part in parts:
            failing = part.groupby("_cycle", sort=False)["failed"].any()
            cycles[g] = (int(failing.sum()), len(failing))
        table = [[k, n - k] for k, n in cycles.values()]
        if sum(k for k, _ in cycles.values()) == 0 or all(n == k for k, n in cycles.values()):
            out.append(GroupAgreement(str(key), groups, math.nan, 1.0, "none", cycles))
        elif len(cycles) == 2:
            res = _sps.fisher_exact(table, alternative="two-sided")
            out.append(
                GroupAgreement(
                    str(key), groups, float(res.statistic), float(res.pvalue), "fisher", cycles
                )
            )
        else:
            res = _sps.chi2_contingency(table, correction=False)
            out.append(
                GroupAgreement(
                    str(key), groups, float(res.statistic), float(res.pvalue), "chi2", cycles
                )
            )
    return out
