"""The trials frame: what each stored column means once loaded, and back.

``derive`` turns the rows a store holds (text times, JSON lists, 0/1 flags) into
typed columns plus the derived ones every analysis reads (``failed``,
``counted``, ``cache_used``, ``version_label``, ``cell``, ``configuration``);
``raw_rows`` turns a frame back into stored rows. Both are pure functions of a
DataFrame, so the statistics (and a batch's own summary) use them without
reading any store; :mod:`repro_lib.results` loads stores into these frames.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .records import TRIAL_COLUMNS, Outcome

DERIVED_COLUMNS: tuple[str, ...] = ("failed", "counted", "cache_used", "version_label")
"""Columns ``load_results`` adds to the stored ones (``cell`` is filled, not added)."""

RESULT_COLUMNS: tuple[str, ...] = TRIAL_COLUMNS + DERIVED_COLUMNS
"""Every column of a ``load_results`` DataFrame, in order."""

COUNTED_OUTCOMES = frozenset({Outcome.OK.value, Outcome.MISSING_LAYER.value})

INT_COLUMNS = (
    "trial",
    "reset_freq",
    "since_reset",
    "reset_index",
    "lane",
    "layers",
    "cache_hits",
    "cache_steps",
    "cache_pulled",
    "cpus",
    "attempt",
    "cycle",
)

REAL_COLUMNS = ("duration_s",)

BOOL_COLUMNS = ("privileged",)  # stored as 0/1

_REPLICATE = re.compile(r"/rep=\d+$")

_LIST_COLUMNS = ("missing", "layer_digests", "lost_steps", "lost_digests")

_STR = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' default ``str``

TO_PANDAS = {pa.string(): _STR, pa.large_string(): _STR, pa.int64(): pd.Int64Dtype()}.get


def derive(raw: pd.DataFrame) -> pd.DataFrame:
    """Add the derived columns to a raw ``trials`` frame (idempotent).

    Parses ``started_at`` to timezone-aware datetimes, decodes the JSON list
    columns (``missing``, ``layer_digests``, ``lost_steps``, ``lost_digests``),
    and makes the integer columns nullable integers. Stored columns the frame
    lacks are added, empty.
    """
    return derive_in_place(raw.copy(deep=False), complete=True)  # the caller's frame is not changed


def derive_in_place(df: pd.DataFrame, *, complete: bool) -> pd.DataFrame:
    """``derive`` in place (a replaced column is freed at once); with ``complete=False``
    stored columns absent from ``df`` stay absent."""
    if complete:
        for column in TRIAL_COLUMNS:
            if column not in df.columns:
                df[column] = pd.Series([None] * len(df), index=df.index, dtype=object)
    have = set(df.columns)
    for column in (c for c in INT_COLUMNS if c in have):
        if not isinstance(df[column].dtype, pd.Int64Dtype):
            df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    if {"cycle", "trial", "since_reset"} <= have:
        df["cycle"] = df["cycle"].fillna(_derived_cycle(df))
    if "duration_s" in have and df["duration_s"].dtype != np.float64:
        df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce").astype(float)
    if "privileged" in have and not isinstance(df["privileged"].dtype, pd.BooleanDtype):
        df["privileged"] = pd.to_numeric(df["privileged"], errors="coerce").astype("boolean")
    if not pd.api.types.is_datetime64_any_dtype(df["started_at"]):
        df["started_at"] = pd.to_datetime(df["started_at"], utc=True, format="ISO8601")
    for column in (c for c in _LIST_COLUMNS if c in have):
        df[column] = _list_column(df[column])
    # one line per derived column
    outcome = _text(df["outcome"])
    df["failed"] = outcome.eq(Outcome.MISSING_LAYER.value).astype(bool)
    df["counted"] = outcome.isin(COUNTED_OUTCOMES).astype(bool)
    df["cache_used"] = (df["cache_hits"] > 0).astype("boolean").mask(df["cache_hits"].isna())
    df["version_label"] = _per_distinct(
        df, ["version", "cache_version"], lambda r: _version_label(r["version"], r["cache_version"])
    )
    df["cell"] = _cells(df)
    # replicate batches of one configuration (``/rep=N`` cells) are pooled, and tested
    # for agreement, under the configuration
    df["configuration"] = _per_distinct(df, ["cell"], lambda r: _REPLICATE.sub("", str(r["cell"])))
    first = [c for c in RESULT_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in RESULT_COLUMNS]]


def _text(values: pd.Series) -> pd.Series:
    """String values as they compare to text (``Outcome`` members are ``str`` too)."""
    return values if pd.api.types.is_string_dtype(values.dtype) else values.astype(object)


def _cells(df: pd.DataFrame) -> pd.Series:
    """The stored cell, or the key built from the row where none was stored."""
    cell = df["cell"]
    present = cell.notna() & _text(cell).ne("")
    if bool(present.all()):
        return cell
    keys = _per_distinct(
        df,
        ["backend", "version", "cache_version", "cache_type", "reset_freq", "mode"],
        _cell_key,
    )
    return keys.where(~present, cell.astype(object)).astype(_STR)


def _per_distinct(
    df: pd.DataFrame, columns: Sequence[str], compute: Callable[[dict[str, Any]], str]
) -> pd.Series:
    """``compute(row)`` for each distinct combination of ``columns``, spread to every row.

    ``compute`` sees the same values a row-by-row loop would (from ``to_dict``, plus
    ``_row``, the position of the first such row), but runs once per distinct
    combination: a few dozen times, not once per trial.
    """
    if df.empty:
        return pd.Series([], index=df.index, dtype=_STR)
    codes = np.zeros(len(df), dtype=np.int64)
    for column in columns:
        column_codes, _ = pd.factorize(df[column], use_na_sentinel=False)
        codes, _ = pd.factorize(codes * (int(column_codes.max()) + 1) + column_codes)
    # factorize numbers combinations in order of first appearance
    _, first = np.unique(codes, return_index=True)
    rows = df[list(columns)].iloc[first].to_dict("records")
    for row, position in zip(rows, first, strict=True):
        row["_row"] = int(position)
    labels = pa.array([compute(r) for r in rows], type=pa.string())
    values = labels.take(pa.array(codes)).to_pandas(types_mapper=TO_PANDAS)
    values.index = df.index
    return values


def _list_column(values: pd.Series) -> pd.Series:
    """A list column: JSON text decoded once per distinct value into Arrow lists."""
    if isinstance(values.dtype, pd.ArrowDtype) and pa.types.is_list(values.dtype.pyarrow_dtype):
        return values
    try:
        codes, uniques = pd.factorize(values)
    except TypeError:  # Python lists already (unhashable): a frame built in memory
        return pd.Series([_as_list(v) for v in values], index=values.index, dtype=object)
    decoded = [_as_list(u) for u in uniques] + [[]]  # the last for missing values
    codes = np.where(codes < 0, len(decoded) - 1, codes)
    try:
        lists = pa.array(decoded, type=pa.list_(pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        try:  # lists of numbers, say: whatever one Arrow type holds them
            lists = pa.array(decoded)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed values: Python lists, one per row
            return pd.Series([list(decoded[c]) for c in codes], index=values.index, dtype=object)
    out = pd.arrays.ArrowExtensionArray(lists.take(pa.array(codes)))
    return pd.Series(out, index=values.index)


def _derived_cycle(df: pd.DataFrame) -> pd.Series:
    """The cycle key of rows stored without one: their cycle began ``since_reset - 1``
    trials earlier. Before the key was stored, a try whose reset failed kept the
    previous try's ``since_reset``; it began (and ended) a cycle of its own."""
    if not {"outcome", "detail"} <= set(df.columns):
        return df["trial"] - df["since_reset"] + 1
    failed_reset = df["outcome"].astype(object).eq(Outcome.INFRA_ERROR.value) & df["detail"].fillna(
        ""
    ).astype(str).str.startswith("reset failed")
    return (df["trial"] - df["since_reset"] + 1).mask(failed_reset, df["trial"])


def raw_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The stored columns only, list columns re-encoded as JSON (as in the store)."""
    out = df[[c for c in TRIAL_COLUMNS if c in df.columns]].copy(deep=False)
    for column in _LIST_COLUMNS:
        if column in out.columns:
            out[column] = _json_lists(out[column])
    if "started_at" in out.columns and pd.api.types.is_datetime64_any_dtype(out["started_at"]):
        out["started_at"] = _isoformat(out["started_at"])
    return out


def _json_lists(values: pd.Series) -> pd.Series:
    """Each list as the JSON the store holds, encoded once per distinct list."""
    dtype = values.dtype
    if (
        isinstance(dtype, pd.ArrowDtype)
        and pa.types.is_list(dtype.pyarrow_dtype)
        and pa.types.is_string(dtype.pyarrow_dtype.value_type)
    ):
        lists = pa.chunked_array(pa.array(values.array))
        # distinct lists by their elements joined with a separator no step name holds,
        # and by their length (which tells [] from [""])
        keys = pd.DataFrame(
            {
                "joined": pc.binary_join(lists, "\x1f").to_pandas(types_mapper=TO_PANDAS),
                "length": pc.list_value_length(lists).to_pandas(types_mapper=TO_PANDAS),
            },
            index=values.index,
        )
        return _per_distinct(
            keys,
            ["joined", "length"],
            lambda r: json.dumps(_as_list(values.iat[r["_row"]])),
        )
    return pd.Series([json.dumps(_as_list(v)) for v in values], index=values.index, dtype=_STR)


def _isoformat(times: pd.Series) -> pd.Series:
    """``Timestamp.isoformat()`` of each UTC time: microseconds only when there are some."""
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC")
    base = times.dt.strftime("%Y-%m-%dT%H:%M:%S")
    micro = times.dt.microsecond
    fraction = ("." + micro.astype(str).str.zfill(6)).where(micro.ne(0), "")
    offset = "" if times.dt.tz is None else "+00:00"  # derive makes every time UTC
    text = (base + fraction + offset).astype(_STR)
    return text.where(times.notna(), "")


def version_key(value: Any) -> tuple[tuple[int, Any], ...]:
    """Sort key putting ``v0.9.0`` before ``v0.10.0`` (numbers compare as numbers)."""
    parts = re.split(r"(\d+)", str(value))
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")


def _present(value: Any) -> bool:
    """True for a real scalar value (not None/NaN/NA and not an empty string)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return False
    return not (isinstance(value, str) and value == "")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if not _present(value):
        return []
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return decoded if isinstance(decoded, list) else [decoded]
    return [value]


def _version_label(version: Any, cache_version: Any) -> str:
    version = str(version) if _present(version) else "?"
    if _present(cache_version) and str(cache_version) != version:
        return f"{version}<-{cache_version}"
    return version


def _cell_key(row: dict[str, Any]) -> str:
    def text(key: str) -> str:
        value = row.get(key)
        return str(value) if _present(value) else "?"

    return (
        f"backend={text('backend')}/version={_version_label(row.get('version'), row.get('cache_version'))}"
        f"/cache={text('cache_type')}/reset={text('reset_freq')}/mode={text('mode')}"
    )
