"""Helpers shared by the statistics modules: formatting, argument checks, counted rows."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from ..frames import derive

Method = Literal["wilson", "beta"]
_METHODS = ("wilson", "beta")


# formatting ---------------------------------------------------------------
def format_pct(x: float) -> str:
    """A probability as a short percentage: ``0.0994 -> "9.9%"``, ``9.9e-5 -> "0.0099%"``."""
    if x is None or not np.isfinite(x):
        return "n/a"
    pct = 100.0 * float(x)
    if pct == 0:
        return "0%"
    if abs(pct) >= 0.1:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%"


def format_p(p: float) -> str:
    """A p-value for text: three significant digits, ``"< 1e-300"`` below the float range.

    A chi-square or normal tail beyond about ``1e-308`` underflows to 0; printing
    ``p = 0`` would claim certainty, so anything below ``1e-300`` reads
    ``"< 1e-300"`` (``p_text`` writes the whole ``"p = …"``).
    """
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 1e-300:
        return "< 1e-300"
    return f"{float(p):.3g}"


def p_text(p: float) -> str:
    """``"p = 0.035"``, or ``"p < 1e-300"`` when the p-value underflows."""
    shown = format_p(p)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def _confidence(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def _check_counts(k: int, n: int) -> tuple[int, int]:
    if int(k) != k or int(n) != n:
        raise ValueError(f"counts must be whole numbers, got k={k}, n={n}")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return k, n


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


def _counted_frame(df: pd.DataFrame) -> pd.DataFrame:
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    counted = df["counted"].astype(bool)
    if counted.all():
        return df  # selecting every row would copy every column of a million rows
    # .loc with a bool mask: an empty object-dtype mask would select columns instead
    return df.loc[counted]


#: the columns naming a try's reset cycle (``cycle_groups``) and its outcome
_CYCLE_KEY = ("run_id", "trial", "since_reset", "cycle", "counted", "failed")


def _narrow(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``df`` with only ``columns`` and the cycle key (those present): an analysis then
    filters a million rows of a few columns, not of every column the store has."""
    wanted = {*_CYCLE_KEY, *columns}
    return df[[c for c in df.columns if c in wanted]]
