"""Rates per group as DataFrames: the findings table, rates by position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..results import derive, version_key
from ._common import Method
from .rates import failure_rate
from .stopping import verdict

# tables -------------------------------------------------------------------
RATE_COLUMNS = (
    "tries",
    "failures",
    "build_errors",
    "infra_errors",
    "no_cache",
    "rate",
    "ci_low",
    "ci_high",
    "verdict",
)


def rates_by(
    df: pd.DataFrame,
    by: str | Sequence[str] = ("version_label",),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    max_rate: float = 0.01,
) -> pd.DataFrame:
    """Failure rate with interval and verdict per group.

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
        known not to have used the cache), ``rate``, ``ci_low``, ``ci_high``
        and ``verdict``; sorted with versions in numeric order.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    rows = []
    if len(df):
        for key, group in df.groupby(by, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            tries = int(group["counted"].sum())
            failures = int((group["failed"] & group["counted"]).sum())
            fr = failure_rate(failures, tries, method=method, alpha=alpha)
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "tries": tries,
                    "failures": failures,
                    "build_errors": int((group["outcome"] == "build_error").sum()),
                    "infra_errors": int((group["outcome"] == "infra_error").sum()),
                    "no_cache": int(group["cache_used"].eq(False).fillna(False).sum()),
                    "rate": fr.p_hat,
                    "ci_low": fr.ci_low,
                    "ci_high": fr.ci_high,
                    "verdict": verdict(failures, tries, max_rate=max_rate, alpha=alpha),
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
    """Failure rate per position since the last reset (``since_reset``).

    A rate that is high at position 1 and falls afterwards means the bug
    shows on a fresh BuildKit state; a flat rate means positions are
    exchangeable. Same columns as ``rates_by`` with ``since_reset`` (after
    any ``by`` columns) as the group.
    """
    by = [by] if isinstance(by, str) else list(by)
    out = rates_by(df, [*by, "since_reset"], method=method, alpha=alpha)
    return out


def findings_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("version_label", "reset_freq", "cache_type", "mode"),
    *,
    method: Method = "wilson",
    alpha: float = 0.05,
    max_rate: float = 0.01,
) -> pd.DataFrame:
    """The findings table: per version x K x cache x mode, ``failures/tries``, rate, interval, verdict.

    A compact view of ``rates_by`` (same arguments; see there for the
    interval and the verdict) with the counts as one ``"k/n"`` column.
    """
    table = rates_by(df, list(by), method=method, alpha=alpha, max_rate=max_rate)
    counts = [f"{k}/{n}" for k, n in zip(table["failures"], table["tries"], strict=True)]
    return table.assign(**{"failures/tries": counts})[
        [*by, "failures/tries", "rate", "ci_low", "ci_high", "verdict"]
    ]


def results_frame(results: Sequence[Any]) -> pd.DataFrame:
    """One DataFrame of the ``to_frame()`` rows of several results (empty for none)."""
    frames = [r.to_frame() for r in results if r is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
