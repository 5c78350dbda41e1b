"""``load_results`` agrees with the loader it replaced, column by column.

``reference_load_results`` below is the loader as it was before loading was
made fast (a per-row ``derive`` over ``SELECT *``), copied here unchanged
except that it opens the file itself. The fast loader must return the same
columns in the same order, the same rows in the same order and the same values
with the same meanings. Allowed differences in representation, and nothing
else: string columns may be held differently (Python objects or Arrow strings;
a missing string is NaN or None), and list columns may be Arrow lists (each
value still reads back as a Python list).

The stores are the shipped datasets plus small synthetic stores that exercise
the odd cases (no stored cell, a cross-version cache, old stores without the
batches table or newer columns, lists that are not JSON): test data, not
evidence.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from repro_lib import results
from repro_lib.config import Paths
from repro_lib.errors import UsageError
from repro_lib.records import TRIAL_COLUMNS, Outcome
from repro_lib.results import load_results
from repro_lib.store import Store

from .factories import make_record

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    p
    for p in [*(ROOT / "data").rglob("*.sqlite"), *(ROOT / "tests").rglob("*.sqlite")]
    if "processed" not in p.parts
)


# the loader before it was made fast (reference; do not "fix") ---------------------
_R_DERIVED_COLUMNS = ("failed", "counted", "cache_used", "version_label")
_R_RESULT_COLUMNS = TRIAL_COLUMNS + _R_DERIVED_COLUMNS
_R_COUNTED = frozenset({Outcome.OK.value, Outcome.MISSING_LAYER.value})
_R_INT_COLUMNS = (
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
_R_REPLICATE = re.compile(r"/rep=\d+$")
_R_LIST_COLUMNS = ("missing", "layer_digests", "lost_steps", "lost_digests")
_R_BATCH_COLUMNS = {
    "status": "cache_facts",
    "manifest_digest": "cache_manifest_digest",
    "layer_count": "cache_layer_count",
    "empty_layers": "cache_empty_layers",
}


def reference_load_results(
    path: Path,
    *,
    sweep: str | Iterable[str] | None = None,
    run: str | Iterable[str] | None = None,
    version: str | Iterable[str] | None = None,
    backend: str | Iterable[str] | None = None,
    include_no_cache: bool = True,
) -> pd.DataFrame:
    live = Path(f"{path}-wal").exists()
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?{'mode=ro' if live else 'immutable=1'}", uri=True
    )
    try:
        trials = pd.read_sql_query("SELECT * FROM trials ORDER BY started_at, run_id, trial", db)
        try:
            batches = pd.read_sql_query("SELECT * FROM batches ORDER BY recorded_at", db)
        except (sqlite3.Error, pd.errors.DatabaseError):
            batches = pd.DataFrame(
                columns=["run_id", "status", "manifest_digest", "layer_count", "empty_layers"]
            )
    finally:
        db.close()
    facts = batches[["run_id", *_R_BATCH_COLUMNS]].rename(columns=_R_BATCH_COLUMNS)
    raw = trials.merge(facts, on="run_id", how="left")
    df = _reference_derive(raw)
    for column, wanted in (
        ("sweep_id", sweep),
        ("run_id", run),
        ("version", version),
        ("backend", backend),
    ):
        if wanted is None:
            continue
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        df = df[df[column].isin(values)]
    if not include_no_cache:
        df = df[df["cache_used"].ne(False).fillna(True).astype(bool)]
    return df.reset_index(drop=True)


def _reference_derive(raw: pd.DataFrame) -> pd.DataFrame:
    df = raw.copy()
    for column in TRIAL_COLUMNS:
        if column not in df.columns:
            df[column] = pd.Series([None] * len(df), index=df.index, dtype=object)
    for column in _R_INT_COLUMNS:
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    # the cycle key (added with issue 18): stored, else derived row by row
    df["cycle"] = pd.Series(
        [
            c
            if not pd.isna(c)
            else (
                t
                if o == Outcome.INFRA_ERROR.value and str(d or "").startswith("reset failed")
                else t - s + 1
            )
            for c, t, s, o, d in zip(
                df["cycle"],
                df["trial"],
                df["since_reset"],
                df["outcome"],
                df["detail"],
                strict=True,
            )
        ],
        index=df.index,
    ).astype("Int64")
    df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce").astype(float)
    if "privileged" in df.columns:
        df["privileged"] = pd.to_numeric(df["privileged"], errors="coerce").astype("boolean")
    df["started_at"] = pd.to_datetime(df["started_at"], utc=True, format="ISO8601")
    for column in _R_LIST_COLUMNS:
        df[column] = pd.Series([_r_as_list(v) for v in df[column]], index=df.index, dtype=object)
    outcome = df["outcome"].astype(object)
    df["failed"] = (outcome == Outcome.MISSING_LAYER.value).astype(bool)
    df["counted"] = outcome.isin(_R_COUNTED).astype(bool)
    hits = df["cache_hits"]
    df["cache_used"] = (hits > 0).astype("boolean").mask(hits.isna())
    df["version_label"] = pd.Series(
        [_r_version_label(v, c) for v, c in zip(df["version"], df["cache_version"], strict=True)],
        index=df.index,
        dtype=object,
    )
    df["cell"] = pd.Series(
        [
            cell if _r_present(cell) else _r_cell_key(row)
            for cell, row in zip(df["cell"], df.to_dict("records"), strict=True)
        ],
        index=df.index,
        dtype=object,
    )
    df["configuration"] = pd.Series(
        [_R_REPLICATE.sub("", str(c)) for c in df["cell"]], index=df.index, dtype=object
    )
    return df[list(_R_RESULT_COLUMNS) + [c for c in df.columns if c not in _R_RESULT_COLUMNS]]


def _r_present(value: Any) -> bool:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return False
    return not (isinstance(value, str) and value == "")


def _r_as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if not _r_present(value):
        return []
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return decoded if isinstance(decoded, list) else [decoded]
    return [value]


def _r_version_label(version: Any, cache_version: Any) -> str:
    version = str(version) if _r_present(version) else "?"
    if _r_present(cache_version) and str(cache_version) != version:
        return f"{version}<-{cache_version}"
    return version


def _r_cell_key(row: dict[str, Any]) -> str:
    def text(key: str) -> str:
        value = row.get(key)
        return str(value) if _r_present(value) else "?"

    return (
        f"backend={text('backend')}/version={_r_version_label(row.get('version'), row.get('cache_version'))}"
        f"/cache={text('cache_type')}/reset={text('reset_freq')}/mode={text('mode')}"
    )


# comparing -----------------------------------------------------------------------
def _kind(series: pd.Series) -> str:
    """What a column means, whatever holds it."""
    dtype = series.dtype
    if not len(series) or series.isna().all():
        return "empty"  # nothing stored: any type holds it
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return f"datetime[{getattr(dtype, 'tz', None)}]"
    if isinstance(dtype, pd.ArrowDtype) and str(dtype.pyarrow_dtype).startswith("list"):
        return "list"
    if pd.api.types.is_object_dtype(dtype) and all(isinstance(v, list) for v in series):
        return "list"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return "text"
    return str(dtype)


def _value(v: Any) -> Any:
    if isinstance(v, list):
        return [_value(x) for x in v]
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if v is pd.NaT:
        return None
    return v


def assert_same(old: pd.DataFrame, new: pd.DataFrame) -> None:
    assert list(new.columns) == list(old.columns)
    assert len(new) == len(old)
    for column in old.columns:
        a, b = old[column], new[column]
        kinds = {_kind(a), _kind(b)}
        kinds.discard("empty")
        if {"int64", "float64", "Int64"} >= kinds:
            kinds = {"number"}
        assert len(kinds) <= 1, f"{column}: {a.dtype} became {b.dtype}"
        assert [_value(v) for v in b] == [_value(v) for v in a], f"{column} differs"
        if kinds == {"list"} and len(b):
            assert all(isinstance(v, list) for v in b), f"{column}: values are not lists"


# stores ----------------------------------------------------------------------------
def _odd_store(path: Path) -> Path:
    """Rows that exercise every derivation (test data)."""
    with Store(path) as st:
        st.append(make_record(1, "ok", run_id="a", started_at="2024-05-01T10:00:01.000+00:00"))
        st.append(
            make_record(
                2,
                "missing_layer",
                run_id="a",
                started_at="2024-05-01T10:00:02.000+00:00",
                missing=["/repro.txt"],
                lost_steps=["COPY repro.txt /"],
                cell="backend=container/version=v0.9.0/cache=registry/reset=4/mode=daemon/rep=2",
                sweep_id="s1",
            )
        )
        st.append(
            make_record(
                1,
                "ok",
                run_id="b",
                version="v0.7.0",
                cache_version="v0.9.0",
                started_at="2024-05-01T10:00:01.500+00:00",
                cache_hits=0,
                sweep_id="s2",
                cell="",
            )
        )
        st.append(
            make_record(
                2,
                "build_error",
                run_id="b",
                started_at="2024-05-01T10:00:03+00:00",
                cache_hits=None,
                backend="engine",
                security={"privileged": True},
            )
        )
        st.append(make_record(3, "infra_error", run_id="b", started_at="2024-05-01T09:00:00+00:00"))
    with sqlite3.connect(path) as db:
        # a list the recorder never writes (not JSON, a JSON scalar) and blank versions
        db.execute("UPDATE trials SET missing = 'not json' WHERE run_id = 'a' AND trial = 1")
        db.execute("UPDATE trials SET lost_digests = '\"sha256:x\"' WHERE run_id = 'b'")
        db.execute("UPDATE trials SET version = NULL, cache_version = '' WHERE trial = 3")
        # a number column holding text (SQLite keeps it): it reads as missing
        db.execute("UPDATE trials SET cache_steps = 'n/a' WHERE run_id = 'b' AND trial = 2")
        db.execute(
            "INSERT INTO batches (run_id, recorded_at, status, manifest_digest, layer_count,"
            " empty_layers) VALUES ('a', '2024-05-01T10:00:00+00:00', 'ok', 'sha256:m', 3, 0)"
        )
    return path


def _old_layout_store(path: Path) -> Path:
    """A store from before the batches table and the newer trial columns."""
    kept = [c for c in TRIAL_COLUMNS if c not in ("security", "attempt", "lost_steps", "host")]
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE trials ({', '.join(kept)}, UNIQUE(run_id, trial))")
        for i in range(1, 4):
            row = make_record(i, "ok" if i < 3 else "missing_layer", run_id="old").to_row()
            row["started_at"] = f"2024-05-01T10:00:0{i}+00:00"
            db.execute(
                f"INSERT INTO trials ({', '.join(kept)}) VALUES ({', '.join('?' for _ in kept)})",
                [row[c] for c in kept],
            )
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_stores_load_as_before(path):
    assert_same(reference_load_results(path), load_results(path))


def test_there_are_shipped_stores_to_compare():
    assert Paths(ROOT).findings_store in SHIPPED and Paths(ROOT).sample_store in SHIPPED


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"sweep": "findings-k-curve"},
        {"run": ["findings-02-k4-c001", "findings-k-curve-c003"]},
        {"version": "v0.9.0", "backend": ["container"]},
        {"sweep": "no-such-sweep"},
        {"include_no_cache": False},
    ],
)
def test_filters_select_what_they_selected(filters):
    path = Paths(ROOT).findings_store
    old, new = reference_load_results(path, **filters), load_results(path, **filters)
    assert_same(old, new)
    assert len(new) or filters.get("sweep") == "no-such-sweep"


def test_odd_rows_derive_as_before(tmp_path):
    path = _odd_store(tmp_path / "odd.sqlite")
    assert_same(reference_load_results(path), load_results(path))
    assert_same(
        reference_load_results(path, include_no_cache=False),
        load_results(path, include_no_cache=False),
    )
    assert_same(
        reference_load_results(path, sweep=["s1", "s2"]), load_results(path, sweep=["s1", "s2"])
    )


def test_old_layout_loads_as_before(tmp_path):
    path = _old_layout_store(tmp_path / "old.sqlite")
    assert_same(reference_load_results(path), load_results(path))


def test_empty_store_loads_as_before(tmp_path):
    Store(tmp_path / "empty.sqlite").close()
    assert_same(
        reference_load_results(tmp_path / "empty.sqlite"), load_results(tmp_path / "empty.sqlite")
    )


def test_fallbacks_load_as_before(tmp_path, monkeypatch):
    """Tiny driver batches (a stray type after the first batch: read again, typed) and an
    order SQLite did not keep (read again, sorted in SQL) give the same frame."""
    path = _odd_store(tmp_path / "odd.sqlite")
    monkeypatch.setattr(results, "_BATCH_ROWS", 2)
    assert_same(reference_load_results(path), load_results(path))
    monkeypatch.setattr(results, "_in_order", lambda table: False)
    assert_same(reference_load_results(path), load_results(path))


def test_order_check_follows_sql_order():
    import pyarrow as pa

    def table(rows):
        started, run, trial = zip(*rows, strict=True)
        return pa.table(
            {"started_at": list(started), "run_id": list(run), "trial": pa.array(trial, pa.int64())}
        )

    assert results._in_order(
        table([(None, "b", 1), ("t1", "a", 2), ("t1", "b", 1), ("t2", "a", 1)])
    )
    assert not results._in_order(table([("t1", "b", 1), ("t1", "a", 2)]))
    assert not results._in_order(table([("t1", "a", 2), ("t1", "a", 1)]))
    assert not results._in_order(table([("t1", "a", 1), (None, "a", 2)]))
    assert not results._in_order(table([("", "a", 1), (None, "b", 1)]))  # SQL puts NULL first
    assert results._in_order(table([("t1", "a", 1)]))


def test_columns_reads_a_subset_with_the_same_values():
    path = Paths(ROOT).findings_store
    old = reference_load_results(path)
    new = load_results(path, columns=["detail", "lost_steps"])
    assert "phases" not in new.columns and "security" not in new.columns
    assert {"detail", "lost_steps", "failed", "version_label", "configuration"} <= set(new.columns)
    assert_same(old[list(new.columns)], new)
    with pytest.raises(UsageError, match="unknown column"):
        load_results(path, columns=["no_such_column"])
