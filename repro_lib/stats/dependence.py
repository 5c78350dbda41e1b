"""Do failures cluster within a reset cycle? The dependence analysis.

The tries of one reset cycle share a BuildKit state. If a failure leaves that
state more likely to fail again, later tries of the same cycle fail more
often after an earlier failure, and the binomial model's "independent tries"
is wrong. A reset wipes the state, so the same comparison across a reset (a
failure in the previous cycle of the same run) is the control: it should show
no effect if the reset really is a fresh start.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._common import _check_alpha, _confidence, _counted_frame, _narrow, p_text
from .cycles import cycle_groups, cycle_numbers, pattern_logit

_DEPENDENCE_COLUMNS = ["comparison", "odds_ratio", "ci_low", "ci_high", "pvalue", "tries", "cycles"]


#: most levels a categorical adjustment may have (its design matrix is dense)
MAX_ADJUST_LEVELS = 60


@dataclass(frozen=True)
class DependenceEffect:
    """One odds ratio of the dependence analysis (or why it could not be estimated).

    Attributes
    ----------
    comparison : str
        ``"earlier failure in the same cycle"`` or ``"failure in the previous cycle"``.
    odds_ratio, ci_low, ci_high, pvalue : float
        ``exp`` of the coefficient with its cycle-robust ``1 - alpha`` interval
        and Wald p-value; NaN when not estimated.
    tries, cycles, exposed : int
        Tries used, the reset cycles they came from, and how many of them had
        the earlier failure.
    note : str
        Why nothing was estimated, when nothing was; or how the adjustment for
        the run was replaced (past ``MAX_ADJUST_LEVELS`` runs).
    """

    comparison: str
    odds_ratio: float
    ci_low: float
    ci_high: float
    pvalue: float
    tries: int
    cycles: int
    exposed: int
    note: str = ""

    @property
    def estimated(self) -> bool:
        return bool(np.isfinite(self.odds_ratio))

    def describe(self, alpha: float = 0.05, *, detail: str = "") -> str:
        """``"odds ×2.02 (95% CI 1.43–2.84, p = 6e-05)"`` or ``"no effect detected: OR 0.907 (…)"``.

        ``detail`` is added inside the parentheses.
        """
        if not self.estimated:
            return f"not estimated ({self.note})"
        inside = f"{_confidence(alpha)} CI {self.ci_low:.3g}–{self.ci_high:.3g}, "
        inside += p_text(self.pvalue) + (f"; {detail}" if detail else "")
        inside += f"; {self.note}" if self.note else ""
        if self.ci_low > 1 or self.ci_high < 1:
            return f"odds ×{self.odds_ratio:.3g} ({inside})"
        return f"no effect detected: OR {self.odds_ratio:.3g} ({inside})"


@dataclass(frozen=True)
class FailureClustering:
    """Do failures cluster within a reset cycle? Within-cycle odds ratio and its across-reset control.

    Two logistic regressions on the counted tries at positions ``>= 2`` (a try
    at position 1 has no earlier try in its cycle) of runs that lost a layer:

    * within: ``failed ~ earlier + C(position) + C(run)``, where ``earlier``
      says an earlier try of the same reset cycle failed;
    * across (the control): ``failed ~ previous + C(position) + C(run)`` on
      the tries whose run had a cycle before theirs, where ``previous`` says
      the previous cycle of the same run had a failure.

    Position enters as a category, so any pattern of the failure probability
    over positions is adjusted for; the run (one cell, batch or replicate)
    absorbs the version, reset frequency, cache and mode. Positions and runs
    whose tries never failed add nothing to the comparison once adjusted for
    and would make the fit diverge, so they are left out. Standard errors
    treat reset cycles as clusters (statsmodels GLM, cluster-robust
    covariance, Student t on ``cycles - 1`` df).

    An odds ratio above 1 within cycles, with none across resets, says a
    failed state stays more likely to fail until the next reset: tries of one
    cycle are not independent and the reset cycle is the unit of replication.

    Attributes
    ----------
    within, across : DependenceEffect
    alpha : float
    message : str
        Why there is no analysis at all (no failure, no cycle longer than one try).

    References
    ----------
    Liang, K.-Y. and Zeger, S. L. (1986). Longitudinal data analysis using
    generalized linear models. Biometrika 73, 13-22.
    Diggle, P. J., Heagerty, P., Liang, K.-Y. and Zeger, S. L. (2002). Analysis
    of Longitudinal Data, 2nd ed., OUP, ch. 10 (transition models).
    """

    within: DependenceEffect | None
    across: DependenceEffect | None
    alpha: float = 0.05
    message: str = ""

    @property
    def clustered(self) -> bool:
        """True when the within-cycle odds ratio's interval lies above 1."""
        return bool(self.within is not None and self.within.estimated and self.within.ci_low > 1)

    def to_frame(self) -> pd.DataFrame:
        rows = [
            {c: getattr(e, c) for c in _DEPENDENCE_COLUMNS}
            for e in (self.within, self.across)
            if e is not None
        ]
        return pd.DataFrame(rows, columns=_DEPENDENCE_COLUMNS)

    def describe(self) -> str:
        if self.within is None:
            return f"No dependence analysis: {self.message}"
        head = (
            "Failures cluster within a reset cycle"
            if self.clustered
            else "No clustering of failures within a reset cycle was detected"
        )
        detail = (
            f"{self.within.tries} tries at positions ≥ 2 from {self.within.cycles} cycles, "
            "adjusted for position and run, reset cycles as clusters"
        )
        within = (
            f"{head}: after an earlier failure in the same cycle, "
            f"{self.within.describe(self.alpha, detail=detail)}"
        )
        across = (
            f"Across a reset, after a failure in the previous cycle: "
            f"{self.across.describe(self.alpha)}"
            if self.across is not None
            else ""
        )
        return f"{within}. {across}." if across else f"{within}."


def _exposures(d: pd.DataFrame) -> pd.DataFrame:
    """Counted tries with ``earlier`` (a failure before them in their cycle) and ``previous``
    (a failure in the run's previous cycle; NaN in a run's first cycle)."""
    d = d.assign(
        _cycle=cycle_numbers(d).astype("float"),
        _group=cycle_groups(d),
        _run=d["run_id"].astype(str) if "run_id" in d.columns else "",
        _config=d["configuration"].astype(str) if "configuration" in d.columns else "",
        _position=d["since_reset"].astype(int),
        _failed=d["failed"].astype(int),
    )
    d = d[d["_cycle"].notna()].sort_values(["_run", "_cycle", "_position"])
    before = d.groupby("_group")["_failed"].cumsum() - d["_failed"]
    d = d.assign(earlier=(before > 0).astype(int))
    per_cycle = d.groupby(["_run", "_cycle"])["_failed"].max().reset_index()
    per_cycle["previous"] = per_cycle.groupby("_run")["_failed"].shift()
    return d.merge(per_cycle[["_run", "_cycle", "previous"]], on=["_run", "_cycle"], how="left")


def _informative(d: pd.DataFrame) -> pd.DataFrame:
    """Drop positions and runs whose tries all failed or all did not (repeat until stable)."""
    while True:
        keep = np.ones(len(d), dtype=bool)
        for column in ("_position", "_run"):
            share = d.groupby(column)["_failed"].transform("mean").to_numpy()
            keep &= (share > 0) & (share < 1)
        if keep.all():
            return d
        d = d[keep]


def _effect(d: pd.DataFrame, exposure: str, comparison: str, alpha: float) -> DependenceEffect:
    d = _informative(d[d[exposure].notna()])
    groups = d["_group"].to_numpy()
    exposed = int(d[exposure].sum()) if len(d) else 0

    def missing(note: str) -> DependenceEffect:
        nan = math.nan
        return DependenceEffect(
            comparison, nan, nan, nan, nan, len(d), len(np.unique(groups)), exposed, note
        )

    if d.empty:
        return missing("no position or run has both failures and clean tries")
    if d[exposure].nunique() < 2:
        return missing(f"every try used has the same value of '{exposure}'")
    terms = [exposure]
    if d["_position"].nunique() > 1:
        terms.append("C(_position)")
    # one indicator per run is a dense column per run: a cluster's store of thousands of
    # runs would need tens of GiB, so past MAX_ADJUST_LEVELS the configuration stands in
    adjust, adjusted = "_run", ""
    if d["_run"].nunique() > MAX_ADJUST_LEVELS:
        adjust = "_config" if 1 < d["_config"].nunique() <= MAX_ADJUST_LEVELS else ""
        adjusted = (
            f"adjusted for the configuration instead of the run ({d['_run'].nunique()} runs)"
            if adjust
            else f"not adjusted for the run ({d['_run'].nunique()} runs, as many configurations)"
        )
    if adjust and d[adjust].nunique() > 1:
        terms.append(f"C({adjust})")
    covariates = d[[exposure, "_position", "_run", "_config"]].astype(
        {exposure: float, "_position": int, "_run": str, "_config": str}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # on covariate-pattern counts: the per-try binomial GLM's estimates, cycle-robust
            fit = pattern_logit(" + ".join(terms), covariates, d["_failed"].to_numpy(), groups)
    except (np.linalg.LinAlgError, ValueError) as error:
        return missing(f"the fit failed ({error})")
    coef, se = float(fit.params[exposure]), float(fit.bse[exposure])
    if not (np.isfinite(coef) and np.isfinite(se)) or se > 20 or abs(coef) > 10:
        # an odds ratio beyond e^10 is the fit running off to infinity, not an estimate
        return missing(
            "no finite estimate: with the position and run, it separates failures from clean "
            "tries, or the fit did not converge"
        )
    low, high = np.asarray(fit.conf_int(alpha).loc[exposure], dtype=float)
    return DependenceEffect(
        comparison,
        math.exp(coef),
        math.exp(low),
        math.exp(high),
        float(fit.pvalues[exposure]),
        len(d),
        len(np.unique(groups)),
        exposed,
        adjusted,
    )


def failure_clustering(df: pd.DataFrame, *, alpha: float = 0.05) -> FailureClustering:
    """Do failures cluster within a reset cycle? (see ``FailureClustering``).

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``: counted tries with a position since
        reset and a cycle (``cycle``, or ``trial`` and ``since_reset``).
    alpha : float, default 0.05
        Level of the odds ratios' intervals.

    Returns
    -------
    FailureClustering
        Always; ``within`` is None (``message`` says why) when no run lost a
        layer or no cycle holds more than one try.
    """
    alpha = _check_alpha(alpha)
    d = _narrow(_counted_frame(df), "configuration")
    if d.empty or "since_reset" not in d.columns:
        return FailureClustering(None, None, alpha, "no counted try with a position since reset")
    d = d[d["since_reset"].notna()]
    if not d["failed"].any():
        return FailureClustering(None, None, alpha, "no try lost a layer")
    d = _exposures(d)
    later = d[d["_position"] >= 2]
    if later.empty:
        return FailureClustering(
            None, None, alpha, "every reset cycle holds one try (K = 1): nothing to depend on"
        )
    affected_runs = later.groupby("_run")["_failed"].transform("sum") > 0
    later = later[affected_runs]
    within = _effect(later, "earlier", "earlier failure in the same cycle", alpha)
    across = _effect(later, "previous", "failure in the previous cycle", alpha)
    return FailureClustering(within, across, alpha)
