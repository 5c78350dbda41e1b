"""How the report writes Markdown: tables, cells, version lists, intervals; its test level.

The report's section modules (``report_verdicts``, ``report_position``,
``report_notes``, ``report_lost``, ``report_context``) share these helpers;
the underscored ones are for them only. ``frame_to_markdown`` is public (the
findings notebook uses it, from ``repro_lib.report``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .results import version_key
from .stats import format_pct

ALPHA = 0.05
MAX_RATE = 0.01  # a clean version is "no failure seen" once p < 1% (exact, one-sided)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def frame_to_markdown(df: pd.DataFrame, *, digits: int = 3) -> str:
    """A DataFrame as a Markdown table (floats rounded), e.g. for the README."""
    rows = [
        [f"{v:.{digits}f}" if isinstance(v, float) else v for v in row]
        for row in df.itertuples(index=False)
    ]
    return _table([str(c) for c in df.columns], rows)


def _table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    align = align or "l" * len(headers)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _uniq(series: pd.Series) -> list[str]:
    values = [str(v) for v in series.dropna().unique() if str(v) != ""]
    return sorted(values, key=version_key)


def _join(values: list[str], empty: str = "not recorded") -> str:
    return ", ".join(f"`{v}`" for v in values) if values else empty


def _when(t: Any) -> str:
    return pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC")


def _interval(low: float, high: float, tries: int) -> str:
    if tries == 0:
        return "–"
    return f"{format_pct(low)}–{format_pct(high)}"


def _design_effect(value: float) -> str:
    return f"{value:.2g}" if pd.notna(value) else "–"
