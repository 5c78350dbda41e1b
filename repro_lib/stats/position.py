"""Failure probability by position since reset: the position model ``HazardModel``.

A failure does not end a reset cycle (the next try reuses the state), so what
is modelled is the probability that the try at position ``p`` since the last
reset fails, not a hazard in the survival sense; the code keeps the short name
``hazard`` for it (``fit_hazard``, ``HazardModel.hazard``).

Tries of one cycle are not independent, so every fit here treats reset cycles
as clusters (cluster-robust covariance from statsmodels, groups =
``cycle_groups``). Likelihood-ratio tests assume independent tries; each is
reported beside a cycle-robust Wald test of the same terms.

Two modules build on this one: ``trend`` (``hazard_trend_test``: is the
probability at positions >= 2 constant?) and ``kcurve`` (``k_curve_fit``: does
the model predict the rate at each reset frequency?). The logistic fit with
cycles as clusters and the separation check (``_fit_logit``, ``_separation``)
are shared by all three.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from ._common import _check_alpha, _counted_frame, _narrow, format_pct
from .cycles import PatternFit, clustered_rate, cycle_groups, pattern_logit
from .rates import failure_rate


def _fit_logit(y: np.ndarray, exog: np.ndarray, groups: np.ndarray) -> PatternFit | None:
    """Binomial GLM (logit link) with cycles as clusters; None when it fails or diverges.

    The cluster-robust covariance changes the standard errors only: the
    coefficients and ``llf`` are the maximum-likelihood ones. Fitted on
    covariate-pattern counts (``pattern_logit``): the per-try fit's numbers.
    """
    from statsmodels.tools import sm_exceptions as sme

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = pattern_logit(None, pd.DataFrame(exog), y, groups)
    except (sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError, ZeroDivisionError):
        return None
    params = np.asarray(res.params, dtype=float)
    bse = np.asarray(res.bse, dtype=float)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(bse))) or np.any(bse > 50):
        return None
    return res


def _separation(x: np.ndarray, y: np.ndarray, name: str = "position") -> str:
    """Why ``x`` alone separates failures from clean tries (quasi-completely), or ``""``."""
    fail, ok = x[y > 0], x[y == 0]
    if not len(fail) or not len(ok):
        return ""
    if fail.max() <= ok.min():
        return (
            f"the positions separate failures from clean tries (every failure at {name} ≤ "
            f"{fail.max():g}, every clean try at {name} ≥ {ok.min():g})"
        )
    if fail.min() >= ok.max():
        return (
            f"the positions separate failures from clean tries (every failure at {name} ≥ "
            f"{fail.min():g}, every clean try at {name} ≤ {ok.max():g})"
        )
    return ""


# the position model ----------------------------------------------------------------
@dataclass(frozen=True)
class HazardModel:
    """A fitted failure probability ``h(p)`` at position ``p`` since the last reset.

    The model has two independent parts:

    * position 1 (the first try on a fresh BuildKit state) gets its own
      probability ``h(1) = k1 / n1``;
    * positions ``p >= 2`` follow ``logit h(p) = a + b (p - 2)`` (``form ==
      "logistic"``), fitted as a binomial GLM with reset cycles as clusters;
      when only one such position was run, or those tries hold no failure or
      only failures, ``h(p) = k / n`` is constant (``form == "constant"``).
      When the positions separate failures from clean tries the logistic
      model has no maximum-likelihood fit: the constant is then shown only as
      a placeholder, ``separated`` is True and ``note`` says why; nothing
      should be concluded from it.

    Why this form: a fresh state is a different situation from a reused one
    (the lab's data show it: position 1 rarely fails), so forcing position 1
    onto the trend would bias the slope; the separate parameter makes the two
    parts' likelihoods factor, so each is an ordinary maximum-likelihood fit.

    The band at each position is ``get_prediction().conf_int()`` of the GLM
    (cycle-robust covariance) for ``p >= 2`` and the Wilson interval for
    position 1 (each cycle has one try there, so those tries are independent).
    The rate at reset frequency ``K`` (a try drawn uniformly from a full cycle
    of ``K`` tries) is ``r(K) = (1/K) sum_{p=1..K} h(p)``; see ``k_curve``. Its
    band comes from parametric simulation: ``(a, b)`` drawn from the normal
    approximation with the cycle-robust covariance, and a proportion at a
    boundary (0 of n, n of n) drawn from its Jeffreys posterior.

    Attributes
    ----------
    version : str
    form : {"logistic", "constant"}
    k1, n1 : int
        Failures and tries at position 1.
    k, n : int
        Failures and tries at positions ``>= 2``.
    params : tuple of float
        ``(a, b)`` for "logistic", ``(a,)`` for a fitted constant, else ``()``.
    cov : tuple of tuple of float
        Cycle-robust covariance of ``params``.
    max_position : int
        Highest position observed (predictions beyond it extrapolate).
    alpha : float
    fitted_ks : tuple of int
        The reset frequencies whose tries were used.
    separated : bool
        The positions separate failures from clean tries (see above).
    note : str
    cycles : int
        Reset cycles among the tries at positions ``>= 2``.

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
    fitted_ks: tuple[int, ...] = ()
    separated: bool = False
    note: str = ""
    cycles: int = 0
    later_interval: tuple[float, float] = (math.nan, math.nan)
    fit: Any = field(default=None, repr=False, compare=False)

    def hazard(self, positions: Any) -> np.ndarray:
        """Point estimate of ``h(p)`` for each position."""
        p = np.atleast_1d(np.asarray(positions, dtype=float))
        return np.where(p <= 1, self.k1 / self.n1, self._later(p))

    def _later(self, p: np.ndarray) -> np.ndarray:
        if self.form == "logistic":
            a, b = self.params
            return expit(a + b * (p - 2))
        return np.full_like(p, self.k / self.n if self.n else math.nan, dtype=float)

    def _draws(self, positions: np.ndarray, draws: int, seed: int) -> np.ndarray:
        """Simulated ``h`` (draws x positions)."""
        rng = np.random.default_rng(seed)
        first = rng.beta(self.k1 + 0.5, self.n1 - self.k1 + 0.5, size=draws)
        if 0 < self.k1 < self.n1:  # interior: the sampling distribution, not a posterior
            p1 = self.k1 / self.n1
            first = expit(
                rng.normal(math.log(p1 / (1 - p1)), 1 / math.sqrt(self.n1 * p1 * (1 - p1)), draws)
            )
        if self.params:
            coef = rng.multivariate_normal(self.params, np.asarray(self.cov), size=draws)
            slope = coef[:, [1]] if self.form == "logistic" else 0.0
            later = expit(coef[:, [0]] + slope * (positions[None, :] - 2))
        elif self.n == 0:
            later = np.full((draws, len(positions)), math.nan)
        else:
            later_p = rng.beta(self.k + 0.5, self.n - self.k + 0.5, size=draws)
            later = np.repeat(later_p[:, None], len(positions), axis=1)
        return np.where(positions[None, :] <= 1, first[:, None], later)

    def hazard_band(self, positions: Any) -> pd.DataFrame:
        """``h(p)`` with a two-sided ``1 - alpha`` interval per position (see the class notes)."""
        p = np.atleast_1d(np.asarray(positions, dtype=float))
        point = self.hazard(p)
        low, high = np.empty_like(point), np.empty_like(point)
        first = failure_rate(self.k1, self.n1, alpha=self.alpha)
        low[p <= 1], high[p <= 1] = first.ci_low, first.ci_high
        later = p > 1
        if later.any():
            if self.fit is not None:
                x = p[later] - 2
                exog = np.column_stack([np.ones_like(x), x])[:, : len(self.params)]
                ends = self.fit.predict_interval(exog, alpha=self.alpha)
                low[later], high[later] = ends[:, 0], ends[:, 1]
            else:
                low[later], high[later] = self.later_interval
        return pd.DataFrame({"position": p.astype(int), "hazard": point, "low": low, "high": high})

    def k_curve(self, ks: Any, *, draws: int = 4000, seed: int = 0) -> pd.DataFrame:
        """Predicted rate ``r(K) = mean(h(1..K))`` with a ``1 - alpha`` simulation band.

        Returns a DataFrame with columns ``reset_freq``, ``rate``, ``low``,
        ``high`` and ``extrapolated`` (``K`` beyond the highest position the
        model was fitted on).
        """
        ks = np.atleast_1d(np.asarray(ks, dtype=int))
        top = int(ks.max()) if len(ks) else 1
        positions = np.arange(1, top + 1, dtype=float)
        point = np.cumsum(self.hazard(positions)) / positions
        sims = np.cumsum(self._draws(positions, draws, seed), axis=1) / positions[None, :]
        low, high = np.quantile(sims, [self.alpha / 2, 1 - self.alpha / 2], axis=0)
        # a boundary estimate (0 of n) lies outside the Jeffreys draws: keep it in the band
        low, high = np.minimum(low, point), np.maximum(high, point)
        idx = ks - 1
        return pd.DataFrame(
            {
                "reset_freq": ks,
                "rate": point[idx],
                "low": low[idx],
                "high": high[idx],
                "extrapolated": ks > self.max_position,
            }
        )

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fit"}

    def to_frame(self) -> pd.DataFrame:
        """The failure probability with its band at positions 1..``max_position``."""
        frame = self.hazard_band(np.arange(1, self.max_position + 1))
        return frame.assign(version_label=self.version, form=self.form)[
            ["version_label", "position", "hazard", "low", "high", "form"]
        ]

    def describe(self) -> str:
        first = f"position 1 fails {format_pct(self.k1 / self.n1)} ({self.k1} of {self.n1})"
        if self.separated:
            return f"{self.version}: {first}; at positions ≥ 2 no model fits ({self.note})"
        if self.form == "logistic":
            a, b = self.params
            later = (
                f"at positions p ≥ 2 logit P(fail) = {a:.3g} {b:+.3g}·(p − 2) "
                f"(P = {format_pct(float(expit(a)))} at position 2; {self.k} of {self.n} "
                f"failed; {self.cycles} reset cycles as clusters)"
            )
        else:
            later = (
                f"at positions ≥ 2 a constant {format_pct(self.k / self.n)} ({self.k} of {self.n})"
            )
        return f"{self.version}: {first}; {later}"


def _version_frame(df: pd.DataFrame, version: str | None) -> tuple[pd.DataFrame, str | None]:
    d = _narrow(_counted_frame(df), "version_label", "reset_freq")
    if version is None:
        labels = d["version_label"].dropna().unique()
        if len(labels) > 1:
            raise ValueError(f"several versions in the data ({sorted(labels)}); pass version=")
        if len(labels) == 0:
            return d, None
        version = str(labels[0])
    d = d[(d["version_label"] == version) & d["since_reset"].notna()]
    return d, str(version)


def fit_hazard(
    df: pd.DataFrame,
    version: str | None = None,
    *,
    alpha: float = 0.05,
    ks: Sequence[int] | None = None,
) -> HazardModel | None:
    """Fit the position model of ``HazardModel`` to one version's counted tries.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    version : str, optional
        A ``version_label``; required when ``df`` holds more than one.
    alpha : float, default 0.05
        Level of the bands the model draws.
    ks : sequence of int, optional
        Use only the tries of these reset frequencies (to predict the others).

    Returns
    -------
    HazardModel or None
        None when the version has no tries at position 1 or none at later
        positions (no reset frequency above 1 was run).
    """
    alpha = _check_alpha(alpha)
    d, version = _version_frame(df, version)
    if version is None:
        return None
    if ks is not None:
        d = d[d["reset_freq"].isin([int(k) for k in ks])]
    position = d["since_reset"].to_numpy(float)
    first, later = d[position <= 1], d[position >= 2]
    k1, n1 = int(first["failed"].sum()), len(first)
    k, n = int(later["failed"].sum()), len(later)
    if n1 == 0 or n == 0:
        return None
    fitted_ks = tuple(sorted(int(v) for v in d["reset_freq"].dropna().unique()))
    x = later["since_reset"].to_numpy(float) - 2
    y = later["failed"].to_numpy(float)
    groups = cycle_groups(later)
    common = dict(
        max_position=int(position.max()),
        alpha=alpha,
        fitted_ks=fitted_ks,
        cycles=len(np.unique(groups)),
    )

    def model(form: str, fit: Any, **extra: Any) -> HazardModel:
        params = tuple(float(v) for v in np.asarray(fit.params)) if fit is not None else ()
        cov = (
            tuple(tuple(float(v) for v in row) for row in np.asarray(fit.cov_params()))
            if fit is not None
            else ()
        )
        return HazardModel(version, form, k1, n1, k, n, params, cov, fit=fit, **common, **extra)

    separated = _separation(x + 2, y) if len(set(x)) >= 2 else ""
    if len(set(x)) >= 2 and 0 < k < n and not separated:
        fit = _fit_logit(y, np.column_stack([np.ones_like(x), x]), groups)
        if fit is not None:
            return model("logistic", fit)
        separated = "the logistic model did not converge"
    if separated:
        return model(
            "constant",
            None,
            separated=True,
            note=f"{separated}: the slope has no finite estimate, so the logistic model has no "
            "maximum-likelihood fit",
        )
    if 0 < k < n:
        return model("constant", _fit_logit(y, np.ones((n, 1)), groups))
    interval = clustered_rate(y, groups, alpha=alpha)
    return model("constant", None, later_interval=(interval.ci_low, interval.ci_high))
