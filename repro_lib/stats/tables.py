"""Rates per group as DataFrames: the findings table, rates by position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..frames import derive, version_key
from ._common import Method
from .cycles import cycle_rate
from .stopping import verdict

# tables -------------------------------------------------------------------
RATE_COLUMNS = (
    "tries",
    "failures",
    "build_errors",
    "infra_errors",
    "no_cache",
    "cycles",
    "rate",
    "ci_low",
    "ci_high",
    "design_effect",
    "wilson_low",
    "wilson_high",
    "verdict",
)


#: what ``rates_by`` reads: the counts, and the cycle key ``cycle_rate`` needs
_RATE_INPUTS = (
    "counted",
    "failed",
    "outcome",
    "cache_used",
    "run_id",
    "trial",
    "since_reset",
    "reset_freq",
    "cycle",
)


def rates_by(
    df: pd.DataFrame,
    by: str | Sequence[str] = ("version_label",),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    max_rate: float = 0.01,
) -> pd.DataFrame:
    """Failure rate with a cycle-robust interval and a verdict per group.

    Parameters
    ----------
    df : DataFrame
        Trials as from ``load_results`` (a raw store frame is derived first).
    by : str or list of str, default "version_label"
        Grouping columns, e.g. ``"cell"`` or ``["version", "reset_freq"]``.
    method, alpha : see ``failure_rate``.
    max_rate : see ``verdict``.

    Returns
    -------
    DataFrame
        One row per group: the ``by`` columns, then ``tries`` (counted tries),
        ``failures``, ``build_errors``, ``infra_errors``, ``no_cache`` (tries
        known not to have used the cache), ``cycles`` (reset cycles with
        counted tries), ``rate``, ``ci_low``/``ci_high`` (the interval with
        reset cycles as clusters, ``cycle_rate``), ``design_effect`` (its
        variance over the binomial one; 1 with ``K = 1``), ``wilson_low``/
        ``wilson_high`` (the interval if tries were independent) and
        ``verdict`` (a clean group counts complete cycles); sorted with
        versions in numeric order.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    rows = []
    # grouping sorts the frame: only the columns read here, not every column of a million rows
    used = [*by, *(c for c in _RATE_INPUTS if c in df.columns and c not in by)]
    if len(df):
        for key, group in df[used].groupby(by, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            rate = cycle_rate(group, method=method, alpha=alpha)
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "tries": rate.n,
                    "failures": rate.k,
                    "build_errors": int((group["outcome"] == "build_error").sum()),
                    "infra_errors": int((group["outcome"] == "infra_error").sum()),
                    "no_cache": int(group["cache_used"].eq(False).fillna(False).sum()),
                    "cycles": rate.clusters,
                    "rate": rate.p_hat,
                    "ci_low": rate.ci_low,
                    "ci_high": rate.ci_high,
                    "design_effect": rate.design_effect,
                    "wilson_low": rate.wilson_low,
                    "wilson_high": rate.wilson_high,
                    "verdict": verdict(
                        rate.k, rate.n, max_rate=max_rate, alpha=alpha, cycles=rate.complete
                    ),
                }
            )
    out = pd.DataFrame(rows, columns=[*by, *RATE_COLUMNS])
    if len(out):
        out = out.sort_values(by, key=lambda s: s.map(version_key)).reset_index(drop=True)
    return out


def rate_by_position(
    df: pd.DataFrame,
    by: str | Sequence[str] = (),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Failure probability by position since the last reset (``since_reset``).

    A rate that is high at position 1 and falls afterwards means the bug
    shows on a fresh BuildKit state; a flat rate means positions are
    exchangeable. Same columns as ``rates_by`` with ``since_reset`` (after
    any ``by`` columns) as the group. A cycle holds one try per position, so
    within one position the tries are independent and the interval is
    Wilson's.
    """
    by = [by] if isinstance(by, str) else list(by)
    return rates_by(df, [*by, "since_reset"], method=method, alpha=alpha)


def findings_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("version_label", "reset_freq", "cache_type", "mode"),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    max_rate: float = 0.01,
) -> pd.DataFrame:
    """The findings table: per version x K x cache x mode, ``failures/tries``, rate, intervals, verdict.

    A compact view of ``rates_by`` (same arguments; see there for the
    intervals and the verdict) with the counts as one ``"k/n"`` column, the
    reset cycles, the cycle-robust interval, its design effect and, for
    comparison, the interval if tries were independent.
    """
    table = rates_by(df, list(by), method=method, alpha=alpha, max_rate=max_rate)
    counts = [f"{k}/{n}" for k, n in zip(table["failures"], table["tries"], strict=True)]
    return table.assign(**{"failures/tries": counts})[
        [
            *by,
            "failures/tries",
            "cycles",
            "rate",
            "ci_low",
            "ci_high",
            "design_effect",
            "wilson_low",
            "wilson_high",
            "verdict",
        ]
    ]


def results_frame(results: Sequence[Any]) -> pd.DataFrame:
    """One DataFrame of the ``to_frame()`` rows of several results (empty for none)."""
    frames = [r.to_frame() for r in results if r is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
