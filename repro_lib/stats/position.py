"""Failure probability by position since reset, and the rate it predicts at each K.

A failure does not end a reset cycle (the next try reuses the state), so what
is modelled is the probability that the try at position ``p`` since the last
reset fails, not a hazard in the survival sense; the code keeps the short name
``hazard`` for it (``fit_hazard``, ``HazardModel.hazard``).

Tries of one cycle are not independent, so every fit here treats reset cycles
as clusters (cluster-robust covariance from statsmodels, groups =
``cycle_groups``). Likelihood-ratio tests assume independent tries; each is
reported beside a cycle-robust Wald test of the same terms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sps
from scipy.special import expit

from ..frames import version_key
from ._common import _check_alpha, _confidence, _counted_frame, _narrow, format_pct, p_text
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


def _binomial_llf(k: np.ndarray, n: np.ndarray, p: np.ndarray | float) -> float:
    """Grouped binomial log-likelihood (``scipy.stats.binom.logpmf``)."""
    return float(np.sum(_sps.binom.logpmf(k, n, np.clip(p, 0.0, 1.0))))


# trend -------------------------------------------------------------------------
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


# the K-curve -------------------------------------------------------------------------
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
