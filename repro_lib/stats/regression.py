"""Logistic regression models of a missing layer: the reset effect and odds ratios."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ..frames import derive, version_key
from ._common import _check_alpha, _counted_frame, _narrow, p_text
from .cycles import PatternFit, cycle_groups, pattern_logit


# regression ---------------------------------------------------------------
@dataclass(frozen=True)
class LogisticFit:
    """A logistic regression of ``failed`` on ``log2(reset_freq)`` (and version).

    Attributes
    ----------
    formula : str
        The model formula, e.g. ``"failed ~ log2_reset_freq + C(version_label)"``.
    params, pvalues : dict of str to float
        Coefficients (log-odds) and their Wald p-values, with reset cycles as
        clusters (cluster-robust covariance).
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
            f"{self.odds_ratio_per_doubling:.3g} (Wald {p_text(self.pvalues['log2_reset_freq'])};"
            f" logistic regression on {self.nobs} tries, formula {self.formula!r})."
        )


def logistic_fit(df: pd.DataFrame) -> LogisticFit | None:
    """Fit ``failed ~ log2(reset_freq) [+ C(version)]`` by maximum likelihood.

    A logistic regression (statsmodels, fitted on covariate-pattern counts, see
    ``pattern_logit``) on the counted tries of the
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
    Standard errors treat reset cycles as clusters (statsmodels cluster-robust
    covariance), so they assume independent cycles, not independent tries.
    Assumes a log-odds linear in ``log2(reset_freq)``. Wald p-values are
    unreliable with few failures; prefer ``compare`` for small samples.
    """
    from statsmodels.tools import sm_exceptions as sme

    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    df = _narrow(df, "reset_freq", "version_label")
    d = df[df["counted"] & df["reset_freq"].notna()]
    if d.empty:
        return None
    data = pd.DataFrame(
        {
            "failed": d["failed"].astype(int).to_numpy(),
            "log2_reset_freq": np.log2(d["reset_freq"].astype(float).to_numpy()),
            "version_label": d["version_label"].astype(str).to_numpy(),
            "cycle": cycle_groups(d),
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
            result = _fit(formula, data, maxiter=100)
    except (*problems, sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError):
        return None
    params = {str(n): float(v) for n, v in result.params.items()}
    pvalues = {str(n): float(v) for n, v in result.pvalues.items()}
    bse = np.asarray(result.bse, dtype=float)
    if not (np.all(np.isfinite(list(params.values()))) and np.all(np.isfinite(bse))):
        return None
    if not result.converged or np.any(np.abs(bse) > 1e3):
        return None
    return LogisticFit(formula, params, pvalues, result.nobs, _summary(result, formula))


def _fit(formula: str, data: pd.DataFrame, *, maxiter: int) -> PatternFit:
    """``formula`` (``failed ~ …``) on ``data``'s tries, cycles (``data["cycle"]``) as clusters.

    Fitted on covariate-pattern counts (``pattern_logit``): the same estimates
    as ``statsmodels.formula.api.logit`` try by try, in a fraction of the time
    and memory on a million tries.
    """
    rhs = formula.split("~", 1)[1].strip()
    covariates = data.drop(columns=["failed", "cycle"])
    return pattern_logit(
        rhs, covariates, data["failed"].to_numpy(), data["cycle"].to_numpy(), maxiter=maxiter
    )


def _summary(result: PatternFit, formula: str) -> str:
    return result.summary(f"Logit regression {formula!r} (maximum likelihood on pattern counts)")


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

    A logistic regression (maximum likelihood; statsmodels on covariate-pattern counts)
    of a missing layer on the BuildKit version (categorical, reference = the
    oldest), ``log2`` of the reset frequency ``K``, the position since the last
    reset, the cache type and the mode (categorical). Odds ratios are
    ``exp(coefficient)`` with Wald ``1 - alpha`` intervals: for ``log2(K)`` per
    doubling of ``K``, for ``position`` per position, for a level of a
    categorical term against its reference level. Standard errors, intervals
    and p-values treat reset cycles as clusters (cluster-robust covariance,
    Student t on ``cycles - 1`` df).

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
    Assumes independent reset cycles (not tries) and effects linear on the
    log-odds scale in ``log2(K)`` and in the position. Only affected versions are used: a
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
            f"failed) of {', '.join(self.versions)}, reset cycles as clusters{dropped}{note}."
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
    from statsmodels.tools import sm_exceptions as sme

    alpha = _check_alpha(alpha)
    d = _narrow(_counted_frame(df), "reset_freq", *(c for c, _ in _MODEL_TERMS.values()))
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
            "cycle": cycle_groups(d),
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
            result = _fit(formula, data, maxiter=200)
    except (*problems, sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError):
        result = None
    ok = result is not None and result.converged
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
    return replace(base, rows=tuple(rows), summary_text=_summary(result, formula))
