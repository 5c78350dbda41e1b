"""Does the position model predict the failure rate at each reset frequency K?

``k_curve_fit`` fits ``HazardModel`` (``position``) on some reset frequencies,
predicts the held-out ones with a chi-square check, and tests whether K
matters beyond the position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ._common import p_text
from .cycles import clustered_rate, cycle_groups
from .position import HazardModel, _fit_logit, _version_frame, fit_hazard


@dataclass(frozen=True)
class KCurveFit:
    """Does the position model predict the failure rate at each reset frequency K?

    Two questions, kept apart:

    * **A held-out prediction.** The position model (``HazardModel``) is
      fitted on the tries of some reset frequencies (``fit_on``) and predicts
      the others (``held_out``): for each held-out ``K`` the expected failures
      are ``E_K = sum_p n_{K,p} h(p)`` over the positions that cell ran. The
      statistic ``X2 = sum_K (O_K - E_K)^2 / (V_obs + V_pred)`` over the
      held-out ``K`` is referred to chi-square with one df per held-out ``K``:
      the held-out cells are independent of the fit, so their variances add.
      ``V_obs`` is the cycle-robust variance of ``O_K`` (never below the
      binomial ``sum n h (1 - h)``), ``V_pred`` the variance of ``E_K`` over
      simulated draws of the model. H0: the rate at a new ``K`` is the mean
      failure probability over its cycle. Rows of ``table`` for fitted ``K``
      are in-sample comparisons (``held_out`` False) and are not tested.
    * **Does K act only through the position?** A likelihood-ratio test of
      nested binomial GLMs on the tries at positions ``>= 2`` of every ``K``:
      position only (``logit h = a + b (p - 2)``) against position plus one
      level per ``K`` (statsmodels ``llf``, ``scipy.stats.chi2``; assumes
      independent tries), with the cycle-robust Wald test of the same ``K``
      terms beside it. This one is in-sample by nature: it is a test, not a
      prediction.

    Attributes
    ----------
    version : str
    model : HazardModel
        Fitted on ``fit_on``.
    table : tuple of dict
        Per ``K``: ``reset_freq``, ``tries``, ``failures``, ``cycles``,
        ``observed`` (rate) with its cycle-robust ``observed_low``/
        ``observed_high``, ``expected`` (failures), ``predicted`` (rate), the
        band ``low``/``high`` of the full-cycle prediction ``r(K)``,
        ``held_out`` and ``extrapolated`` (``K`` beyond the highest fitted position).
    statistic, df, pvalue : float, int, float
        The held-out chi-square; NaN (df 0) when nothing is held out.
    note : str
        Why there is no held-out test, or what the fit could not do.
    fit_on, held_out : tuple of int
    lr_statistic, lr_df, lr_pvalue : float, int, float
        Position only against position + K (independent tries); NaN when untested.
    robust_pvalue : float
        Cycle-robust Wald test of the ``K`` terms.
    lr_note : str
        Why the K test is missing, when it is.

    References
    ----------
    Hastie, T., Tibshirani, R. and Friedman, J. (2009). The Elements of
    Statistical Learning, 2nd ed., Springer, ch. 7 (held-out assessment).
    McCullagh, P. and Nelder, J. A. (1989). Generalized Linear Models, 2nd ed., section 4.4.
    """

    version: str
    model: HazardModel = field(repr=False)
    table: tuple[dict[str, Any], ...] = field(repr=False)
    statistic: float
    df: int
    pvalue: float
    note: str = ""
    fit_on: tuple[int, ...] = ()
    held_out: tuple[int, ...] = ()
    lr_statistic: float = math.nan
    lr_df: int = 0
    lr_pvalue: float = math.nan
    robust_pvalue: float = math.nan
    lr_note: str = ""

    @property
    def tested(self) -> bool:
        """True when there is a held-out prediction test."""
        return bool(np.isfinite(self.pvalue))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.table)).assign(version_label=self.version)

    def describe(self) -> str:
        """The held-out check (or why there is none), then the test of a K effect."""
        fitted = ", ".join(str(k) for k in self.fit_on)
        if self.model.separated:
            return (
                f"{self.version}: no check of the K-curve: {self.model.note}, so there is "
                "no prediction to compare (no departure is claimed)"
            )
        if self.tested:
            held = ", ".join(str(k) for k in self.held_out)
            reading = "departs from" if self.pvalue < 0.05 else "is consistent with"
            beyond = [r["reset_freq"] for r in self.table if r["held_out"] and r["extrapolated"]]
            extra = (
                f"; K = {', '.join(map(str, beyond))} extrapolates beyond position "
                f"{self.model.max_position}"
                if beyond
                else ""
            )
            head = (
                f"{self.version}: fitted on K = {fitted}, the position model predicts the "
                f"held-out K = {held}; the observed rate {reading} the prediction "
                f"(chi2 = {self.statistic:.3g}, df {self.df}, {p_text(self.pvalue)}, "
                f"reset cycles as clusters{extra})"
            )
        else:
            head = f"{self.version}: no held-out check of the K-curve ({self.note})"
        if np.isfinite(self.lr_pvalue):
            robust = (
                f"; cycle-robust Wald {p_text(self.robust_pvalue)}"
                if np.isfinite(self.robust_pvalue)
                else ""
            )
            k_effect = (
                f"K beyond the position: likelihood-ratio chi2 = {self.lr_statistic:.3g} "
                f"(df {self.lr_df}), {p_text(self.lr_pvalue)} if tries were independent{robust}"
            )
        else:
            k_effect = f"No test of K beyond the position ({self.lr_note})"
        return f"{head}. {k_effect}"


def _alternate(ks: list[int]) -> list[int]:
    """``K = 1`` and every other ``K >= 2`` from the smallest: the fitting half."""
    above = [k for k in ks if k >= 2]
    return [k for k in ks if k < 2] + above[0::2]


def _k_effect_test(d: pd.DataFrame) -> tuple[float, int, float, float, str]:
    """``(LR statistic, df, LR p, cycle-robust Wald p, note)`` of position vs position + K."""
    later = d[d["since_reset"].to_numpy(float) >= 2]
    ks = sorted(int(k) for k in later["reset_freq"].unique())
    if len(ks) < 2:
        return math.nan, 0, math.nan, math.nan, "tries at positions ≥ 2 come from one K"
    y = later["failed"].to_numpy(float)
    if y.sum() == 0 or y.sum() == len(y):
        return math.nan, 0, math.nan, math.nan, "no failure at positions ≥ 2"
    x = later["since_reset"].to_numpy(float) - 2
    level = later["reset_freq"].to_numpy(int)
    dummies = np.column_stack([(level == k).astype(float) for k in ks[1:]])
    groups = cycle_groups(later)
    base = np.column_stack([np.ones_like(x), x])
    null = _fit_logit(y, base, groups)
    full = _fit_logit(y, np.column_stack([base, dummies]), groups)
    if null is None or full is None:
        return (
            math.nan, 0, math.nan, math.nan,
            "a reset frequency separates failures from clean tries, or the fit did not converge",
        )  # fmt: skip
    dof = len(ks) - 1
    stat = max(0.0, 2 * (float(full.llf) - float(null.llf)))
    contrast = np.zeros((dof, 2 + dof))
    contrast[:, 2:] = np.eye(dof)
    return stat, dof, float(_sps.chi2.sf(stat, dof)), full.wald_pvalue(contrast), ""


def k_curve_fit(
    df: pd.DataFrame,
    version: str | None = None,
    *,
    alpha: float = 0.05,
    draws: int = 4000,
    seed: int = 0,
    fit_on: Sequence[int] | str | None = "alternate",
) -> KCurveFit | None:
    """Fit the position model on some reset frequencies and predict the others (see ``KCurveFit``).

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    version : str, optional
        A ``version_label``; required when ``df`` holds more than one.
    alpha : float, default 0.05
        Level of the bands.
    draws, seed : int
        Simulation draws for the bands and ``V_pred``, and their seed.
    fit_on : "alternate", sequence of int or None
        The reset frequencies to fit on; the others are predicted.
        ``"alternate"`` (default): ``K = 1`` and every other ``K >= 2`` from the
        smallest (K = 1, 2, 3, 4, 6, 8, 16 -> fit 1, 2, 4, 8 and predict 3, 6, 16),
        when at least two ``K >= 2`` were run; None: every ``K`` (in-sample only).

    Returns
    -------
    KCurveFit or None
        None when ``fit_hazard`` returns None on every ``K`` (see there).
    """
    d, version = _version_frame(df, version)
    if version is None:
        return None
    d = d[d["reset_freq"].notna()]
    ks = sorted(int(k) for k in d["reset_freq"].unique())
    if not ks:
        return None
    if fit_on == "alternate":
        chosen = _alternate(ks)
    elif fit_on is None:
        chosen = ks
    else:
        chosen = [k for k in ks if k in {int(v) for v in fit_on}]
    note = ""
    model = fit_hazard(d, version, alpha=alpha, ks=chosen) if chosen else None
    if model is None or chosen == ks:
        if chosen != ks:
            note = f"the tries of K = {', '.join(map(str, chosen))} alone cannot fit the model"
        model, chosen = fit_hazard(d, version, alpha=alpha), ks
        if model is None:
            return None
        note = note or (
            f"in-sample only: the model was fitted on every K run ({', '.join(map(str, ks))})"
            if len(ks) > 1
            else f"only K = {ks[0]} was run"
        )
    held = [k for k in ks if k not in chosen]
    top = max(ks)
    band = model.k_curve(ks, draws=draws, seed=seed).set_index("reset_freq")
    sims = model._draws(np.arange(1, top + 1, dtype=float), draws, seed)
    rows, stat, dof = [], 0.0, 0
    for K in ks:
        cell = d[d["reset_freq"] == K]
        positions = cell["since_reset"].to_numpy(int)
        n_at = np.bincount(positions, minlength=top + 1)[1:].astype(float)
        h = model.hazard(np.arange(1, top + 1))
        expected = float(n_at @ h)
        observed = clustered_rate(cell["failed"].to_numpy(bool), cycle_groups(cell), alpha=alpha)
        if K in held and not model.separated:
            v_obs = max(
                (observed.n * observed.se) ** 2 if np.isfinite(observed.se) else 0.0,
                float(n_at @ (h * (1 - h))),
            )
            v_pred = float(np.var(sims @ n_at))
            if v_obs + v_pred > 0:
                stat += (observed.k - expected) ** 2 / (v_obs + v_pred)
                dof += 1
        rows.append(
            {
                "reset_freq": K,
                "tries": observed.n,
                "failures": observed.k,
                "cycles": observed.clusters,
                "observed": observed.p_hat,
                "observed_low": observed.ci_low,
                "observed_high": observed.ci_high,
                "expected": expected,
                "predicted": expected / observed.n,
                "low": float(band.loc[K, "low"]),
                "high": float(band.loc[K, "high"]),
                "held_out": K in held,
                "extrapolated": bool(band.loc[K, "extrapolated"]),
            }
        )
    lr, lr_df, lr_p, robust_p, lr_note = _k_effect_test(d)
    if model.separated:
        lr, lr_df, lr_p, robust_p = math.nan, 0, math.nan, math.nan
        lr_note = "the position model has no fit (separation)"
    if dof < 1:
        note = note or "the held-out cells have no variance to test against"
        return KCurveFit(
            version, model, tuple(rows), math.nan, 0, math.nan, note, tuple(chosen), tuple(held),
            lr, lr_df, lr_p, robust_p, lr_note,
        )  # fmt: skip
    return KCurveFit(
        version, model, tuple(rows), stat, dof, float(_sps.chi2.sf(stat, dof)), note,
        tuple(chosen), tuple(held), lr, lr_df, lr_p, robust_p, lr_note,
    )  # fmt: skip
