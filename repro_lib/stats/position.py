"""Failure probability by position since reset, and the rate it predicts at each K."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sps

from ..results import version_key
from ._common import _check_alpha, _counted_frame, _expit, format_pct


def _position_counts(d: pd.DataFrame) -> pd.DataFrame:
    """Failures ``k`` and tries ``n`` per ``since_reset`` of counted rows (sorted)."""
    d = d[d["since_reset"].notna()]
    if d.empty:
        return pd.DataFrame({"position": [], "k": [], "n": []}, dtype=int)
    g = d.groupby(d["since_reset"].astype(int))["failed"].agg(["sum", "size"])
    return pd.DataFrame(
        {
            "position": g.index.to_numpy(int),
            "k": g["sum"].to_numpy(int),
            "n": g["size"].to_numpy(int),
        }
    )


def _grouped_logit(k: np.ndarray, n: np.ndarray, exog: np.ndarray) -> Any | None:
    """Binomial GLM (logit link) on grouped counts; None when it fails or separates."""
    import statsmodels.api as sm
    from statsmodels.tools import sm_exceptions as sme

    endog = np.column_stack([k, n - k]).astype(float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.GLM(endog, exog, family=sm.families.Binomial()).fit()
    except (sme.PerfectSeparationError, np.linalg.LinAlgError, ValueError):
        return None
    bse = np.asarray(res.bse, dtype=float)
    params = np.asarray(res.params, dtype=float)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(bse))) or np.any(bse > 50):
        return None
    return res


@dataclass(frozen=True)
class TrendTest:
    """Likelihood-ratio test of a constant hazard at positions ``>= start`` against a trend.

    Model: tries at position ``p`` (since the last reset, ``p >= start``) fail
    independently with probability ``h(p)``, ``logit h(p) = a + b p``.
    H0: ``b = 0`` (a constant hazard after the first ``start - 1`` positions);
    H1: ``b != 0``. The statistic ``2 (l1 - l0)`` of the two binomial GLM fits
    (statsmodels, logit link) is referred to chi-square with ``df = 1``.

    Attributes
    ----------
    version : str
        The ``version_label`` tested.
    statistic : float
        Likelihood-ratio statistic; NaN when untested.
    df : int
        Degrees of freedom (1).
    pvalue : float
        Upper chi-square tail; NaN when untested (see ``note``).
    slope : float
        ``b``, the change in log-odds of failure per position (NaN when untested;
        ``+-inf`` when the positions separate failures from clean tries).
    slope_se : float
        Wald standard error of ``slope``.
    positions : tuple of int
        The positions used.
    k, n : int
        Failures and tries at those positions.
    note : str
        Why nothing was tested, or that the fit separated.

    Notes
    -----
    The chi-square reference is asymptotic (Wilks); with few failures the
    p-value is approximate. Assumes tries are independent given the position.

    References
    ----------
    Agresti, A. (2013). Categorical Data Analysis, 3rd ed., Wiley, sections 4.3 and 5.2.
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

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.pvalue))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.as_dict()])

    def describe(self) -> str:
        """E.g. ``"v0.9.0, positions 2–4: LR chi2 = 0.41 (df 1), p = 0.52, slope -0.2 log-odds/position"``."""
        where = (
            f"positions {self.positions[0]}–{self.positions[-1]}"
            if self.positions
            else "no positions"
        )
        head = f"{self.version}, {where} ({self.k} of {self.n} failed)"
        if not self.tested:
            return f"{head}: not tested ({self.note})"
        text = (
            f"{head}: likelihood-ratio chi2 = {self.statistic:.3g} (df {self.df}), "
            f"p = {self.pvalue:.3g}; slope {self.slope:+.3g} log-odds per position"
        )
        return text + (f" ({self.note})" if self.note else "")


def hazard_trend_test(df: pd.DataFrame, *, start: int = 2) -> list[TrendTest]:
    """Per version, test a constant hazard at positions ``>= start`` against a trend in position.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``; counted tries with a ``since_reset`` are used.
    start : int, default 2
        First position included (position 1, the first try on a fresh state, is
        left out by default because it behaves differently in the lab's data).

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
    d = _counted_frame(df)
    out = []
    if d.empty:
        return out
    d = d[d["since_reset"].notna() & (d["since_reset"] >= start)]
    grouped = d.groupby([d["version_label"].astype(str), d["since_reset"].astype(int)])["failed"]
    table = grouped.agg(["sum", "size"]).rename(columns={"sum": "k", "size": "n"})
    labels = _counted_frame(df)["version_label"].dropna().astype(str).unique()
    for version in sorted(labels, key=version_key):
        if version in table.index.get_level_values(0):
            part = table.loc[version]
            counts = pd.DataFrame(
                {
                    "position": part.index.to_numpy(int),
                    "k": part["k"].to_numpy(int),
                    "n": part["n"].to_numpy(int),
                }
            )
        else:
            counts = pd.DataFrame({"position": [], "k": [], "n": []}, dtype=int)
        pos = tuple(int(p) for p in counts["position"])
        k, n = int(counts["k"].sum()), int(counts["n"].sum())

        def untested(note: str, pos=pos, k=k, n=n, version=version) -> TrendTest:
            return TrendTest(
                str(version), math.nan, 1, math.nan, math.nan, math.nan, pos, k, n, note
            )

        if len(pos) < 2:
            out.append(untested(f"needs tries at two or more positions >= {start}"))
            continue
        if k == 0 or k == n:
            out.append(untested("no failure" if k == 0 else "every try failed"))
            continue
        kk, nn = counts["k"].to_numpy(float), counts["n"].to_numpy(float)
        x = counts["position"].to_numpy(float)
        p0 = k / n
        # null model in closed form: one common proportion
        l0 = float(np.sum(kk * np.log(p0) + (nn - kk) * np.log1p(-p0)))
        fit = _grouped_logit(kk, nn, np.column_stack([np.ones_like(x), x]))
        if fit is None:
            # separation: the saturated-in-order limit; the likelihood's supremum
            # is that of the per-position proportions
            ph = np.clip(kk / nn, 1e-300, 1 - 1e-16)
            l1 = float(np.sum(kk * np.log(ph) + (nn - kk) * np.log1p(-ph)))
            stat = max(0.0, 2 * (l1 - l0))
            order = np.corrcoef(x, kk / nn)[0, 1]
            slope = math.copysign(math.inf, order) if np.isfinite(order) else math.nan
            out.append(
                TrendTest(
                    str(version),
                    stat,
                    1,
                    float(_sps.chi2.sf(stat, 1)),
                    slope,
                    math.nan,
                    pos,
                    k,
                    n,
                    "positions separate failures from clean tries: slope not finite, statistic "
                    "against the per-position proportions (an upper bound, p too small)",
                )
            )
            continue
        # binomial coefficients cancel in the difference, so grouped llf is fine
        l1 = float(np.sum(kk * np.log(fit.fittedvalues) + (nn - kk) * np.log1p(-fit.fittedvalues)))
        stat = max(0.0, 2 * (l1 - l0))
        out.append(
            TrendTest(
                str(version),
                stat,
                1,
                float(_sps.chi2.sf(stat, 1)),
                float(fit.params[1]),
                float(fit.bse[1]),
                pos,
                k,
                n,
            )
        )
    return out


@dataclass(frozen=True)
class HazardModel:
    """A fitted hazard ``h(p)``: failure probability at position ``p`` since the last reset.

    The model has two independent parts:

    * position 1 (the first try on a fresh BuildKit state) gets its own
      probability ``h(1) = k1 / n1``;
    * positions ``p >= 2`` follow ``logit h(p) = a + b (p - 2)`` (``form ==
      "logistic"``), fitted as a binomial GLM; when only one such position was
      run, or those tries hold no failure or only failures, ``h(p) = k / n`` is
      constant (``form == "constant"``).

    Why this form: a fresh state is a different situation from a reused one
    (the lab's data show it: position 1 rarely fails), so forcing position 1
    onto the trend would bias the slope; the separate parameter makes the two
    parts' likelihoods factor, so each is an ordinary maximum-likelihood fit.

    The rate at reset frequency ``K`` (a try drawn uniformly from a full
    cycle of ``K`` tries) follows as ``r(K) = (1/K) sum_{p=1..K} h(p)``; see
    ``k_curve``. Its band comes from parametric simulation: ``(a, b)`` drawn
    from the normal approximation of the GLM (coefficient covariance), and a
    proportion at a boundary (0 of n, n of n) drawn from its Jeffreys
    posterior ``Beta(k + 1/2, n - k + 1/2)``, which stays sensible at ``k = 0``.

    Attributes
    ----------
    version : str
    form : {"logistic", "constant"}
    k1, n1 : int
        Failures and tries at position 1.
    k, n : int
        Failures and tries at positions ``>= 2``.
    params : tuple of float
        ``(a, b)`` for "logistic"; ``()`` for "constant".
    cov : tuple of tuple of float
        Covariance of ``params``.
    max_position : int
        Highest position observed (predictions beyond it extrapolate).
    alpha : float

    Notes
    -----
    Assumes tries are independent given their position, and that the hazard
    depends on the position only, not on the reset frequency itself: that is
    what ``k_curve_fit`` checks.

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

    def hazard(self, positions: Any) -> np.ndarray:
        """Point estimate of ``h(p)`` for each position."""
        p = np.atleast_1d(np.asarray(positions, dtype=float))
        return np.where(p <= 1, self.k1 / self.n1, self._later(p))

    def _later(self, p: np.ndarray) -> np.ndarray:
        if self.form == "logistic":
            a, b = self.params
            return _expit(a + b * (p - 2))
        return np.full_like(p, self.k / self.n if self.n else math.nan, dtype=float)

    def _draws(self, positions: np.ndarray, draws: int, seed: int) -> np.ndarray:
        """Simulated ``h`` (draws x positions)."""
        rng = np.random.default_rng(seed)
        first = rng.beta(self.k1 + 0.5, self.n1 - self.k1 + 0.5, size=draws)
        if 0 < self.k1 < self.n1:  # interior: the sampling distribution, not a posterior
            se = math.sqrt(self.k1 * (self.n1 - self.k1) / self.n1**3)
            logit = math.log(self.k1 / (self.n1 - self.k1))
            first = _expit(
                rng.normal(logit, se / (self.k1 / self.n1 * (1 - self.k1 / self.n1)), draws)
            )
        if self.form == "logistic":
            coef = rng.multivariate_normal(self.params, np.asarray(self.cov), size=draws)
            later = _expit(coef[:, [0]] + coef[:, [1]] * (positions[None, :] - 2))
        elif self.n == 0:
            later = np.full((draws, len(positions)), math.nan)
        else:
            if 0 < self.k < self.n:
                p = self.k / self.n
                later_p = _expit(
                    rng.normal(math.log(p / (1 - p)), 1 / math.sqrt(self.n * p * (1 - p)), draws)
                )
            else:
                later_p = rng.beta(self.k + 0.5, self.n - self.k + 0.5, size=draws)
            later = np.repeat(later_p[:, None], len(positions), axis=1)
        return np.where(positions[None, :] <= 1, first[:, None], later)

    def hazard_band(self, positions: Any, *, draws: int = 4000, seed: int = 0) -> pd.DataFrame:
        """``h(p)`` with a two-sided ``1 - alpha`` simulation band per position."""
        p = np.atleast_1d(np.asarray(positions, dtype=float))
        sims = self._draws(p, draws, seed)
        low, high = np.quantile(sims, [self.alpha / 2, 1 - self.alpha / 2], axis=0)
        point = self.hazard(p)
        # a boundary estimate (0 of n) lies outside the Jeffreys draws: keep it in the band
        low, high = np.minimum(low, point), np.maximum(high, point)
        return pd.DataFrame({"position": p.astype(int), "hazard": point, "low": low, "high": high})

    def k_curve(self, ks: Any, *, draws: int = 4000, seed: int = 0) -> pd.DataFrame:
        """Predicted rate ``r(K) = mean(h(1..K))`` with a ``1 - alpha`` simulation band.

        Returns a DataFrame with columns ``reset_freq``, ``rate``, ``low``, ``high``.
        """
        ks = np.atleast_1d(np.asarray(ks, dtype=int))
        top = int(ks.max()) if len(ks) else 1
        positions = np.arange(1, top + 1, dtype=float)
        point = np.cumsum(self.hazard(positions)) / positions
        sims = np.cumsum(self._draws(positions, draws, seed), axis=1) / positions[None, :]
        low, high = np.quantile(sims, [self.alpha / 2, 1 - self.alpha / 2], axis=0)
        low, high = np.minimum(low, point), np.maximum(high, point)
        idx = ks - 1
        return pd.DataFrame(
            {"reset_freq": ks, "rate": point[idx], "low": low[idx], "high": high[idx]}
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_frame(self) -> pd.DataFrame:
        """The hazard with its band at positions 1..``max_position``."""
        frame = self.hazard_band(np.arange(1, self.max_position + 1))
        return frame.assign(version_label=self.version, form=self.form)[
            ["version_label", "position", "hazard", "low", "high", "form"]
        ]

    def describe(self) -> str:
        first = f"h(1) = {format_pct(self.k1 / self.n1)} ({self.k1} of {self.n1})"
        if self.form == "logistic":
            a, b = self.params
            later = (
                f"logit h(p) = {a:.3g} {b:+.3g}·(p − 2) for p ≥ 2 "
                f"(h(2) = {format_pct(float(_expit(a)))}; {self.k} of {self.n} failed)"
            )
        else:
            later = (
                f"constant h(p) = {format_pct(self.k / self.n)} for p ≥ 2 ({self.k} of {self.n})"
            )
        return f"{self.version}: {first}; {later}"


def fit_hazard(
    df: pd.DataFrame, version: str | None = None, *, alpha: float = 0.05
) -> HazardModel | None:
    """Fit the hazard model of ``HazardModel`` to one version's counted tries.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    version : str, optional
        A ``version_label``; required when ``df`` holds more than one.
    alpha : float, default 0.05
        Level of the bands the model draws.

    Returns
    -------
    HazardModel or None
        None when the version has no tries at position 1 or none at later
        positions (no reset frequency above 1 was run).
    """
    alpha = _check_alpha(alpha)
    d = _counted_frame(df)
    if version is None:
        labels = d["version_label"].dropna().unique()
        if len(labels) > 1:
            raise ValueError(f"several versions in the data ({sorted(labels)}); pass version=")
        if len(labels) == 0:
            return None
        version = str(labels[0])
    counts = _position_counts(d[d["version_label"] == version])
    first = counts[counts["position"] <= 1]
    later = counts[counts["position"] >= 2]
    k1, n1 = int(first["k"].sum()), int(first["n"].sum())
    k, n = int(later["k"].sum()), int(later["n"].sum())
    if n1 == 0 or n == 0:
        return None
    top = int(counts["position"].max())
    if len(later) >= 2 and 0 < k < n:
        x = later["position"].to_numpy(float) - 2
        fit = _grouped_logit(
            later["k"].to_numpy(float),
            later["n"].to_numpy(float),
            np.column_stack([np.ones_like(x), x]),
        )
        if fit is not None:
            cov = np.asarray(fit.cov_params(), dtype=float)
            return HazardModel(
                str(version),
                "logistic",
                k1,
                n1,
                k,
                n,
                (float(fit.params[0]), float(fit.params[1])),
                tuple(tuple(float(v) for v in row) for row in cov),
                top,
                alpha,
            )
    return HazardModel(str(version), "constant", k1, n1, k, n, (), (), top, alpha)


@dataclass(frozen=True)
class KCurveFit:
    """Goodness of fit of the K-curve the hazard model predicts.

    For each reset frequency ``K`` the expected failures are
    ``E_K = sum_p n_{K,p} h(p)`` over the positions the cell actually ran, with
    variance ``V_K = sum_p n_{K,p} h(p) (1 - h(p))``. Pearson's statistic
    ``X2 = sum_K (O_K - E_K)^2 / V_K`` (over the ``G`` values of ``K`` with
    ``V_K > 0``) is referred to chi-square with ``df = G - 1``: the model's
    intercepts make ``sum_K (O_K - E_K) = 0``, one linear constraint. H0: the
    failure probability depends on the position since reset only, so the rate
    at each ``K`` is the mean hazard over its cycle; H1: the reset frequency
    matters beyond that (e.g. a long-lived state that degrades).

    Attributes
    ----------
    version : str
    model : HazardModel
    table : tuple of dict
        Per ``K``: ``reset_freq``, ``tries``, ``failures``, ``observed``
        (rate), ``expected`` (failures), ``predicted`` (rate) and the band
        ``low``/``high`` of the full-cycle prediction ``r(K)``.
    statistic : float
        ``X2``; NaN when ``df < 1``.
    df : int
    pvalue : float
        NaN when ``df < 1`` (one reset frequency, or the others have no variance).
    note : str
        Why there is no test, when there is none.

    Notes
    -----
    The df is the usual grouped-fit approximation (cf. Hosmer and Lemeshow);
    the statistic is approximate with small expected counts.

    References
    ----------
    Hosmer, D. W. and Lemeshow, S. (1980). Goodness of fit tests for the
    multiple logistic regression model. Commun. Stat. A 9, 1043-1069.
    McCullagh, P. and Nelder, J. A. (1989). Generalized Linear Models, 2nd ed., section 4.4.
    """

    version: str
    model: HazardModel = field(repr=False)
    table: tuple[dict[str, Any], ...] = field(repr=False)
    statistic: float
    df: int
    pvalue: float
    note: str = ""

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.pvalue))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.table)).assign(version_label=self.version)

    def describe(self) -> str:
        ks = ", ".join(str(int(r["reset_freq"])) for r in self.table)
        if not self.tested:
            return f"{self.version}: no goodness-of-fit test of the K-curve ({self.note})"
        verdict_ = "departs from" if self.pvalue < 0.05 else "is consistent with"
        return (
            f"{self.version}: the observed rate over K = {ks} {verdict_} the hazard model's "
            f"prediction (Pearson chi2 = {self.statistic:.3g}, df {self.df}, p = {self.pvalue:.3g})"
        )


def k_curve_fit(
    df: pd.DataFrame,
    version: str | None = None,
    *,
    alpha: float = 0.05,
    draws: int = 4000,
    seed: int = 0,
) -> KCurveFit | None:
    """Fit the hazard model to a version and test its K-curve against the observed rates.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results``.
    version : str, optional
        A ``version_label``; required when ``df`` holds more than one.
    alpha : float, default 0.05
        Level of the prediction band.
    draws, seed : int
        Simulation draws for the band (``HazardModel.k_curve``) and their seed.

    Returns
    -------
    KCurveFit or None
        None when ``fit_hazard`` returns None (see there).
    """
    model = fit_hazard(df, version, alpha=alpha)
    if model is None:
        return None
    d = _counted_frame(df)
    d = d[
        (d["version_label"] == model.version) & d["reset_freq"].notna() & d["since_reset"].notna()
    ]
    if d.empty:
        return None
    cells = d.groupby([d["reset_freq"].astype(int), d["since_reset"].astype(int)])["failed"].agg(
        ["sum", "size"]
    )
    ks = sorted(int(k) for k in cells.index.get_level_values(0).unique())
    band = model.k_curve(ks, draws=draws, seed=seed).set_index("reset_freq")
    rows, stat, groups = [], 0.0, 0
    for K in ks:
        cell = cells.loc[K]
        h = model.hazard(cell.index.to_numpy(float))
        n = cell["size"].to_numpy(float)
        obs, exp_, var = (
            int(cell["sum"].sum()),
            float(np.sum(n * h)),
            float(np.sum(n * h * (1 - h))),
        )
        tries = int(n.sum())
        if var > 0:
            stat += (obs - exp_) ** 2 / var
            groups += 1
        rows.append(
            {
                "reset_freq": K,
                "tries": tries,
                "failures": obs,
                "observed": obs / tries,
                "expected": exp_,
                "predicted": exp_ / tries,
                "low": float(band.loc[K, "low"]),
                "high": float(band.loc[K, "high"]),
            }
        )
    dof = groups - 1
    if dof < 1:
        if len(ks) < 2:
            note = f"only K = {ks[0]} was run"
        else:
            flat = [str(r["reset_freq"]) for r in rows if r["expected"] in (0, r["tries"])]
            note = (
                f"at K = {', '.join(flat)} the model predicts no failure, or only failures, "
                "exactly as observed; that leaves fewer than two values of K to compare"
            )
        return KCurveFit(model.version, model, tuple(rows), math.nan, 0, math.nan, note)
    return KCurveFit(model.version, model, tuple(rows), stat, dof, float(_sps.chi2.sf(stat, dof)))
