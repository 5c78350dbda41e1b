"""Helpers shared by the statistics modules: formatting, argument checks, counted rows."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from ..results import derive

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


def _expit(x: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def _counted_frame(df: pd.DataFrame) -> pd.DataFrame:
    if not {"counted", "failed"} <= set(df.columns):
        df = derive(df)
    return df[df["counted"]]
