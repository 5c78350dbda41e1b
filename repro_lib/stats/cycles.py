"""Reset cycles as the unit of replication: the cycle key and cycle-robust rates.

Tries that share one BuildKit state between two resets are not independent:
in the findings dataset a failure raises the odds of a later failure in the
same cycle about twofold (``repro_lib.stats.dependence``). A reset cycle, not a
try, is therefore the unit of replication. Every interval that pools tries
treats the cycles as clusters: a binomial GLM (intercept only, statsmodels)
with cluster-robust covariance, groups = cycles. With ``K = 1`` every try is
its own cycle and nothing changes.

The cycle of a try is identified by ``(run_id, cycle)``, where ``cycle`` is the
trial number of the first try of that reset cycle. A store that records a
``cycle`` column (unique within a run even when a cell is rerun after a worker
death) is used as it is; otherwise the cycle is derived as
``trial - since_reset + 1``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from ..records import Outcome
from ._common import Method, _check_alpha, _confidence, _counted_frame, format_pct
from .rates import failure_rate


def records_frame(records: Sequence[Any]) -> pd.DataFrame:
    """The columns the cycle functions need (and ``counted``/``failed``), from trial records.

    For the code that holds ``TrialRecord`` objects rather than a store frame
    (a sweep's stopping rule, a batch's summary).
    """
    counted = (Outcome.OK, Outcome.MISSING_LAYER)
    return pd.DataFrame(
        {
            "run_id": [r.run_id for r in records],
            "trial": [r.trial for r in records],
            "since_reset": [r.since_reset for r in records],
            "reset_freq": [r.reset_freq for r in records],
            "cycle": [getattr(r, "cycle", None) for r in records],
            "counted": pd.Series([r.outcome in counted for r in records], dtype=bool),
            "failed": pd.Series([r.outcome is Outcome.MISSING_LAYER for r in records], dtype=bool),
        }
    )


def cycle_numbers(df: pd.DataFrame) -> pd.Series:
    """The reset cycle of each try: the trial number of the first try of its cycle.

    The stored ``cycle`` column where it is present and not null; otherwise
    ``trial - since_reset + 1``; ``<NA>`` when neither can be known (then the
    try is treated as a cycle of its own, see ``cycle_groups``).

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"trial": [1, 2, 3, 4, 5], "since_reset": [1, 2, 3, 1, 2]})
    >>> cycle_numbers(d).tolist()
    [1, 1, 1, 4, 4]
    """
    derived = pd.Series(pd.NA, index=df.index, dtype="Int64")
    if {"trial", "since_reset"} <= set(df.columns):
        trial = pd.to_numeric(df["trial"], errors="coerce")
        position = pd.to_numeric(df["since_reset"], errors="coerce")
        derived = (trial - position + 1).round().astype("Int64")
    if "cycle" in df.columns:
        stored = pd.to_numeric(df["cycle"], errors="coerce").round().astype("Int64")
        return stored.fillna(derived)
    return derived


def cycle_groups(df: pd.DataFrame) -> np.ndarray:
    """An integer per try naming its reset cycle ``(run_id, cycle)``, for cluster covariances.

    A try whose cycle cannot be known (no ``cycle``, ``trial`` or
    ``since_reset``) gets a group of its own, i.e. it is treated as an
    independent try.
    """
    return _cycle_groups(df, cycle_numbers(df))


def _cycle_groups(df: pd.DataFrame, numbers: pd.Series) -> np.ndarray:
    numbers = numbers.astype("Float64")
    unknown = -np.arange(1, len(df) + 1, dtype=float)  # a cycle of its own, never a real number
    keys = pd.DataFrame(
        {
            # run ids as codes: grouping integers is many times faster than strings
            "run": pd.factorize(df["run_id"])[0] if "run_id" in df.columns else 0,
            "cycle": numbers.fillna(pd.Series(unknown, index=df.index)).to_numpy(float),
        }
    )
    return keys.groupby(["run", "cycle"], sort=False).ngroup().to_numpy()


def complete_cycles(df: pd.DataFrame) -> int:
    """Reset cycles whose ``K`` tries all counted (``ok`` or ``missing_layer``).

    Only complete cycles enter a bound that counts cycles: a partial cycle (a
    cell stopped mid-cycle, or a build error inside it) saw fewer positions and
    is less likely to show the bug. A try whose cycle or ``reset_freq`` is
    unknown counts as a complete cycle of one try.
    """
    d = _counted_frame(df)
    if d.empty:
        return 0
    numbers = cycle_numbers(d)
    return _complete_cycles(d, numbers, _cycle_groups(d, numbers))


def _complete_cycles(d: pd.DataFrame, numbers: pd.Series, groups: np.ndarray) -> int:
    size = (
        pd.to_numeric(d["reset_freq"], errors="coerce").to_numpy(float)
        if "reset_freq" in d.columns
        else np.full(len(d), np.nan)
    )
    known = ~numbers.isna().to_numpy()
    size = np.where(known & np.isfinite(size), size, 1.0)
    table = pd.DataFrame({"group": groups, "size": size}).groupby("group")
    return int((table.size() == table["size"].max()).sum())


@dataclass(frozen=True)
class ClusteredRate:
    """A failure proportion with an interval that treats clusters (cycles or batches) as the unit.

    The estimate is the pooled ``p = k / n``. The interval is the Wald interval
    on the logit scale of an intercept-only binomial GLM (statsmodels) with
    cluster-robust covariance (CR1) and a Student t quantile on ``G - 1``
    degrees of freedom (``use_t=True``), so it widens when clusters differ and
    when there are few of them. No model of the cluster effect is assumed
    (beta-binomial clusters are covered), only independent clusters.

    It is never narrower than the Wilson interval of independent tries: a
    design effect below 1 (positions within a cycle acting like strata, or
    noise from few clusters) is not used to narrow it, so the reported interval
    is the union of the two.

    Without a failure (or with only failures) there is no cluster variance. For
    cycles the upper end then counts complete cycles: ``0`` failures in ``C``
    complete cycles bounds the chance that a cycle shows the bug below
    ``1 - (alpha/2)^(1/C)``, and the per-try rate of a full cycle is no larger,
    whatever the dependence within a cycle (``method == "cycle-count"``). For
    batches the Wilson interval is used (``reason`` says so).

    Attributes
    ----------
    k, n : int
        Failures and counted tries.
    clusters : int
        ``G``: cycles or batches with counted tries.
    complete : int
        Complete cycles (all ``K`` tries counted); ``clusters`` for batches.
    p_hat, ci_low, ci_high : float
        The estimate and the reported two-sided ``1 - alpha`` interval.
    se : float
        Cluster-robust standard error of ``p_hat`` (NaN when not estimated).
    design_effect : float
        Cluster-robust variance over the binomial variance ``p (1 - p) / n``:
        1 for independent tries, above 1 when failures cluster (NaN when not
        estimated). The interval is ``sqrt(design_effect)`` times wider.
    wilson_low, wilson_high : float
        The Wilson (or Clopper-Pearson) interval that assumes independent tries.
    method : str
        How ``ci_low``/``ci_high`` were made: ``"cycle-robust"``,
        ``"batch-robust"``, ``"cycle-count"`` (no failure), ``"Wilson"`` or
        ``"Clopper-Pearson"`` (see ``reason``), ``"none"``.
    reason : str
        Why the interval is not cluster-robust, when it is not.
    unit : str
        ``"cycle"`` or ``"batch"``.
    alpha : float

    References
    ----------
    Cameron, A. C. and Miller, D. L. (2015). A practitioner's guide to
    cluster-robust inference. J. Human Resources 50(2), 317-372.
    Kish, L. (1965). Survey Sampling, Wiley, section 8.2 (design effect).
    """

    k: int
    n: int
    clusters: int
    complete: int
    p_hat: float
    ci_low: float
    ci_high: float
    se: float
    design_effect: float
    wilson_low: float
    wilson_high: float
    method: str
    reason: str = ""
    unit: str = "cycle"
    alpha: float = 0.05

    @property
    def batches(self) -> int:
        """``clusters`` under the name ``BatchRate`` had."""
        return self.clusters

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(self)])

    def describe(self) -> str:
        """E.g. ``"24 of 200 in 13 cycles (12.0%, 95% cycle-robust interval 5.8%–23.3%, design effect 3.5)"``."""
        conf = _confidence(self.alpha)
        if self.n == 0:
            return "no usable tries"
        deff = (
            f", design effect {self.design_effect:.2g}" if np.isfinite(self.design_effect) else ""
        )
        units = self.unit if self.clusters == 1 else _PLURAL.get(self.unit, self.unit)
        return (
            f"{self.k} of {self.n} in {self.clusters} {units} "
            f"({format_pct(self.p_hat)}, {conf} {self.method} interval "
            f"{format_pct(self.ci_low)}–{format_pct(self.ci_high)}{deff}"
            f"{'; ' + self.reason if self.reason else ''})"
        )


_PLURAL = {"cycle": "cycles", "batch": "batches"}


def cluster_fit_options(groups: np.ndarray) -> dict[str, Any]:
    """statsmodels ``fit`` options for cluster-robust covariance over ``groups``.

    Empty (the model-based covariance) when every try is its own cluster
    (``K = 1``: independent tries, nothing to correct) or there is one cluster
    only; otherwise ``cov_type="cluster"`` with a Student t reference on
    ``G - 1`` df (``use_t=True``).
    """
    g = len(pd.unique(np.asarray(groups)))
    if g == len(groups) or g < 2:
        return {}
    return {"cov_type": "cluster", "cov_kwds": {"groups": np.asarray(groups)}, "use_t": True}


@dataclass(frozen=True)
class PatternFit:
    """A logistic regression fitted on covariate-pattern counts, cycles as clusters.

    What ``statsmodels`` gives for the same model fitted try by try (``Logit``
    or a binomial ``GLM`` with ``cov_type="cluster"``, ``use_t=True``), from a
    fit on one row per covariate pattern (see ``pattern_logit``). Without
    clusters to correct for (see ``cluster_fit_options``) the covariance is the
    model-based one and the reference distribution the normal.

    Attributes
    ----------
    params : Series
        Coefficients (log-odds), named as patsy names the design columns.
    cov : DataFrame
        Their covariance: cluster-robust (CR1) or model-based.
    nobs, clusters : int
        Tries and clusters.
    df_inference : float or None
        Student t degrees of freedom (``clusters - 1``); None: normal.
    llf : float
        The log-likelihood of the tries (not of the pattern counts).
    converged : bool
    """

    params: pd.Series
    cov: pd.DataFrame
    nobs: int
    clusters: int
    df_inference: float | None
    llf: float
    converged: bool

    @property
    def bse(self) -> pd.Series:
        with np.errstate(invalid="ignore"):  # a negative variance (a singular fit) reads NaN
            return pd.Series(np.sqrt(np.diag(self.cov.to_numpy())), index=self.params.index)

    @property
    def tvalues(self) -> pd.Series:
        return self.params / self.bse

    def _reference(self) -> Any:
        from scipy import stats as sps

        if self.df_inference is None:
            return sps.norm
        return sps.t(self.df_inference)

    @property
    def pvalues(self) -> pd.Series:
        return pd.Series(2 * self._reference().sf(np.abs(self.tvalues)), index=self.params.index)

    def cov_params(self) -> pd.DataFrame:
        return self.cov

    def predict_interval(self, exog: np.ndarray, alpha: float = 0.05) -> np.ndarray:
        """``1 - alpha`` intervals of the failure probability at the rows of ``exog``.

        As statsmodels' GLM ``get_prediction(exog).conf_int(alpha)``: the
        interval of the linear predictor mapped through the logistic function,
        with, when cluster-robust, a Student t on the residual degrees of
        freedom (tries minus coefficients) as statsmodels uses there.
        """
        from scipy import stats as sps

        x = np.asarray(exog, dtype=float)
        beta, cov = self.params.to_numpy()[: x.shape[1]], self.cov.to_numpy()
        cov = cov[: x.shape[1], : x.shape[1]]
        eta = x @ beta
        se = np.sqrt(np.einsum("ij,jk,ik->i", x, cov, x))
        if self.df_inference is None:
            q = sps.norm.ppf(1 - alpha / 2)
        else:
            q = sps.t.ppf(1 - alpha / 2, self.nobs - len(self.params))
        return np.column_stack([expit(eta - q * se), expit(eta + q * se)])

    def wald_pvalue(self, contrast: np.ndarray) -> float:
        """p-value of the Wald test that ``contrast @ params = 0``.

        As statsmodels' ``wald_test(contrast, scalar=True)``: an F test on
        ``clusters - 1`` denominator df when cluster-robust, chi-square otherwise.
        """
        from scipy import stats as sps

        r = np.atleast_2d(np.asarray(contrast, dtype=float))
        value = r @ self.params.to_numpy()
        cov = r @ self.cov.to_numpy() @ r.T
        if np.isnan(cov).any():
            raise ValueError("the contrast's covariance is not finite")
        # a singular covariance (a coefficient without variance): the pseudo-inverse and
        # its rank, as statsmodels does
        statistic = float(value @ np.linalg.pinv(cov) @ value)
        q = min(r.shape[0], int(np.linalg.matrix_rank(cov)))
        if self.df_inference is None:
            return float(sps.chi2.sf(statistic, q))
        return float(sps.f.sf(statistic / q, q, self.df_inference))

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        q = self._reference().ppf(1 - alpha / 2)
        return pd.DataFrame(
            {0: self.params - q * self.bse, 1: self.params + q * self.bse},
            index=self.params.index,
        )

    def summary(self, title: str, alpha: float = 0.05) -> str:
        """The coefficient table as statsmodels prints it, under ``title``."""
        from statsmodels.iolib.summary import summary_params

        conf = self.conf_int(alpha).to_numpy()
        table = summary_params(
            (None, self.params.to_numpy(), self.bse.to_numpy(), self.tvalues.to_numpy(),
             np.asarray(self.pvalues), conf),
            yname="failed",
            xname=[str(n) for n in self.params.index],
            alpha=alpha,
            use_t=self.df_inference is not None,
        )  # fmt: skip
        covariance = (
            f"cluster-robust, {self.clusters} reset cycles as clusters"
            if self.df_inference is not None
            else "model-based"
        )
        return (
            f"{title}\n{self.nobs} tries, log-likelihood {self.llf:.6g}, covariance "
            f"{covariance}\n{table}"
        )


def pattern_logit(
    rhs: str | None,
    covariates: pd.DataFrame,
    failed: np.ndarray | pd.Series,
    groups: np.ndarray,
    *,
    maxiter: int = 100,
) -> PatternFit:
    """Logistic regression of ``failed`` with ``groups`` (cycles) as clusters, fitted on counts.

    A million tries hold a few hundred covariate patterns, so the model is a
    binomial GLM (statsmodels, logit link) of failures out of tries per
    pattern: the likelihood, hence the coefficients and the Hessian, are the
    per-try ones. The cluster-robust covariance needs each cluster's score,
    ``sum x_i (y_i - p_i)`` over its tries; it is summed from (cluster x
    pattern) residual totals, so a cycle's tries stay in one cluster, and the
    sandwich is statsmodels' CR1 with the number of tries, not of patterns,
    in its small-sample factor (``G/(G-1) * (N-1)/(N-k)``, as in
    ``statsmodels.stats.sandwich_covariance.cov_cluster``).

    Parameters
    ----------
    rhs : str or None
        Patsy right-hand side over ``covariates``' columns (e.g.
        ``"log2_reset_freq + C(version_label)"``, intercept added by patsy);
        None: ``covariates`` are the numeric design columns themselves.
    covariates : DataFrame
        One row per try.
    failed : array of bool or 0/1
    groups : array
        The cluster of each try (``cycle_groups``).
    maxiter : int
        IRLS iterations.

    Raises
    ------
    numpy.linalg.LinAlgError
        A singular design.

    Warns
    -----
    ConvergenceWarning
        IRLS did not converge (statsmodels).
    PerfectSeparationWarning
        Every try is predicted exactly (complete separation), as a per-try fit warns.
    """
    import statsmodels.api as sm  # imported when used: keeps the CLI's start-up quick
    from scipy import sparse
    from scipy.special import xlogy
    from statsmodels.tools import sm_exceptions as sme

    y = np.asarray(failed, dtype=float)
    n_obs = len(y)
    columns = list(covariates.columns)
    if columns:
        pattern = covariates.groupby(columns, sort=False, dropna=False).ngroup().to_numpy()
    else:
        pattern = np.zeros(n_obs, dtype=np.int64)
    n_patterns = int(pattern.max()) + 1 if n_obs else 0
    seen = pd.Series(pattern).drop_duplicates()  # each pattern's first try
    first = seen.index.to_numpy()[np.argsort(seen.to_numpy())]
    rows = covariates.iloc[first].reset_index(drop=True)
    tries = np.bincount(pattern, minlength=n_patterns).astype(float)
    failures = np.bincount(pattern, weights=y, minlength=n_patterns)
    if rhs is None:
        design = rows.astype(float)
    else:
        from patsy import dmatrix

        design = dmatrix(rhs, rows, return_type="dataframe")
    x = design.to_numpy(float)
    model = sm.GLM(np.column_stack([failures, tries - failures]), x, family=sm.families.Binomial())
    with warnings.catch_warnings():
        # with proportions as the response a saturated model fits every pattern's rate
        # exactly, which statsmodels takes for separation: tested on the tries below
        warnings.simplefilter("ignore", sme.PerfectSeparationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        # confounded terms: no unique fit, which callers hear as a singular design
        warnings.simplefilter("error", sme.SingularMatrixWarning)
        try:
            result = model.fit(maxiter=maxiter, tol=1e-10)
        except sme.SingularMatrixWarning as exc:
            raise np.linalg.LinAlgError(f"singular design: {exc}") from exc
    params = np.asarray(result.params, dtype=float)
    p = expit(x @ params)
    if np.allclose(p[pattern] - y, 0):
        warnings.warn(
            "Perfect separation or prediction detected, parameter may not be identified",
            sme.PerfectSeparationWarning,
            stacklevel=2,
        )
    hessian = x.T @ ((tries * p * (1 - p))[:, None] * x)
    bread = np.linalg.inv(hessian)
    with np.errstate(divide="ignore", invalid="ignore"):
        llf = float(np.sum(xlogy(failures, p) + xlogy(tries - failures, 1 - p)))
    cluster = pd.factorize(np.asarray(groups), use_na_sentinel=False)[0]
    n_clusters = int(cluster.max()) + 1 if n_obs else 0
    names = design.columns
    if cluster_fit_options(cluster):
        residual = sparse.csr_matrix(
            (y - p[pattern], (cluster, pattern)), shape=(n_clusters, n_patterns)
        )
        scores = np.asarray(residual @ x)  # one row per cluster: its tries' summed scores
        k = x.shape[1]
        correction = n_clusters / (n_clusters - 1) * (n_obs - 1) / (n_obs - k)
        cov = correction * bread @ (scores.T @ scores) @ bread
        df_inference: float | None = n_clusters - 1
    else:
        cov, df_inference = bread, None
    return PatternFit(
        pd.Series(params, index=names),
        pd.DataFrame(cov, index=names, columns=names),
        n_obs,
        n_clusters,
        df_inference,
        llf,
        bool(result.converged),
    )


def _cluster_fit(y: np.ndarray, groups: np.ndarray) -> PatternFit | None:
    """Intercept-only binomial GLM with cluster-robust covariance; None if it cannot be fitted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pattern_logit(None, pd.DataFrame({"const": np.ones(len(y))}), y, groups)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
        return None


def clustered_rate(
    failed: np.ndarray | pd.Series,
    groups: np.ndarray,
    *,
    unit: str = "cycle",
    complete: int | None = None,
    method: Method = "wilson",
    alpha: float = 0.05,
) -> ClusteredRate:
    """A pooled failure rate whose interval treats ``groups`` as clusters (see ``ClusteredRate``).

    Parameters
    ----------
    failed : array of bool
        One entry per counted try.
    groups : array of int
        The cluster of each try (``cycle_groups`` for cycles).
    unit : {"cycle", "batch"}
    complete : int, optional
        Complete cycles, for the upper end without failures; default: every cluster.
    method, alpha : see ``failure_rate`` (the independent-tries interval and the floor).
    """
    alpha = _check_alpha(alpha)
    y = np.asarray(failed, dtype=float)
    groups = np.asarray(groups)
    k, n = int(y.sum()), len(y)
    g = len(pd.unique(groups)) if n else 0
    complete = g if complete is None else int(complete)
    naive = failure_rate(k, n, method=method, alpha=alpha)

    def result(
        low: float, high: float, se: float, deff: float, how: str, reason: str = ""
    ) -> ClusteredRate:
        return ClusteredRate(
            k,
            n,
            g,
            complete,
            naive.p_hat,
            float(low),
            float(high),
            se,
            deff,
            naive.ci_low,
            naive.ci_high,
            how,
            reason,
            unit,
            alpha,
        )

    name = "Wilson" if method == "wilson" else "Clopper-Pearson"
    nan = math.nan
    if n == 0:
        return result(0.0, 1.0, nan, nan, "none", "no tries")
    if g == n:
        return result(naive.ci_low, naive.ci_high, nan, 1.0, name, f"one try per {unit}")
    if k == 0 or k == n:
        what = "no failure" if k == 0 else "only failures"
        if unit != "cycle":
            return result(
                naive.ci_low, naive.ci_high, nan, nan, name, f"{what}: assumes independent tries"
            )
        # no cluster variance: count complete cycles (any dependence within a cycle)
        edge = 1 - (alpha / 2) ** (1 / complete) if complete else 1.0
        reason = f"{what}: counts {complete} complete cycles"
        if k == 0:
            return result(0.0, max(naive.ci_high, edge), nan, nan, "cycle-count", reason)
        return result(min(naive.ci_low, 1 - edge), 1.0, nan, nan, "cycle-count", reason)
    if g < 2:
        return result(naive.ci_low, naive.ci_high, nan, nan, name, f"one {unit}")
    fit = _cluster_fit(y, groups)
    bse = float(np.asarray(fit.bse)[0]) if fit is not None else nan
    p = k / n
    deff = bse**2 * n * p * (1 - p)
    if not np.isfinite(deff) or deff < 1e-9:  # rounding noise, not variance
        return result(naive.ci_low, naive.ci_high, nan, nan, name, f"identical {unit} rates")
    low, high = expit(np.asarray(fit.conf_int(alpha))[0])
    return result(
        min(low, naive.ci_low), max(high, naive.ci_high), bse * p * (1 - p), deff, f"{unit}-robust"
    )


def cycle_rate(
    df: pd.DataFrame, *, method: Method = "wilson", alpha: float = 0.05
) -> ClusteredRate:
    """The pooled failure rate of counted tries with reset cycles as clusters.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results`` (counted rows are used).
    method, alpha : see ``failure_rate``.

    Returns
    -------
    ClusteredRate
        With ``K = 1`` (one try per cycle) exactly the Wilson interval.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"run_id": "r", "trial": range(1, 9), "since_reset": [1, 2] * 4,
    ...                   "reset_freq": 2, "failed": [0, 1, 0, 1, 0, 0, 0, 0]})
    >>> r = cycle_rate(d.assign(counted=True, failed=d["failed"].astype(bool)))
    >>> (r.k, r.n, r.clusters, r.complete)
    (2, 8, 4, 4)
    """
    d = _counted_frame(df)
    numbers = cycle_numbers(d)
    groups = _cycle_groups(d, numbers)
    return clustered_rate(
        d["failed"].to_numpy(bool),
        groups,
        complete=_complete_cycles(d, numbers, groups) if len(d) else 0,
        method=method,
        alpha=alpha,
    )
