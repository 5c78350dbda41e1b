"""load_results: filters, derived columns, empty and missing stores.

The stores here are synthetic rows written through ``Store.append``: test data
for the analysis code, not BuildKit evidence.
"""

from __future__ import annotations

import pandas as pd
import pytest

from repro_lib.errors import UsageError
from repro_lib.records import TRIAL_COLUMNS, TrialRecord
from repro_lib.results import RESULT_COLUMNS, derive, load_results, raw_rows, write_trials
from repro_lib.store import Store

from .factories import make_record


def record(trial: int, outcome: str = "ok", **kw) -> TrialRecord:
    values = dict(
        run_id="r1",
        started_at=f"2024-05-01T10:00:{trial % 60:02d}.000+00:00",
        reset_index=trial - 1,
        cache_steps=2,
    )
    values.update(kw)
    return make_record(trial, outcome, **values)


def test_missing_store_raises_usage_error_with_hint(tmp_path):
    with pytest.raises(UsageError) as info:
        load_results(tmp_path / "nope.sqlite")
    assert info.value.hint
    assert not (tmp_path / "nope.sqlite").exists()


def test_default_store_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_LIB_HOME", str(tmp_path))
    with pytest.raises(UsageError):
        load_results()
    with Store(tmp_path / "data" / "raw" / "trials.sqlite") as st:
        st.append(record(1))
    assert len(load_results()) == 1


def test_empty_store_gives_empty_frame_with_all_columns(tmp_path):
    Store(tmp_path / "s.sqlite").close()
    df = load_results(tmp_path / "s.sqlite")
    assert df.empty
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)


def test_derived_columns(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        st.append(record(1, "ok"))
        st.append(record(2, "missing_layer", missing=["/repro.txt"], layer_digests=["sha256:a"]))
        st.append(record(3, "build_error", cache_hits=None))
        st.append(record(4, "infra_error", cache_hits=0))
        st.append(record(5, "ok", version="v0.7.0", cache_version="v0.9.0", cell="given"))
    df = load_results(path)
    assert df["failed"].tolist() == [False, True, False, False, False]
    assert df["counted"].tolist() == [True, True, False, False, True]
    assert df["cache_used"].tolist()[:2] == [True, True]
    assert pd.isna(df["cache_used"][2])
    assert bool(df["cache_used"][3]) is False
    assert df["missing"][1] == ["/repro.txt"] and df["missing"][0] == []
    assert df["layer_digests"][1] == ["sha256:a"]
    assert pd.api.types.is_datetime64_any_dtype(df["started_at"])
    assert (
        df["cell"][0] == "backend=container/version=v0.9.0/cache=registry/reset=1/mode=daemonless"
    )
    assert df["cell"][4] == "given"
    assert df["version_label"][4] == "v0.7.0<-v0.9.0"


def test_cross_version_cell_key():
    df = derive(pd.DataFrame([record(1, version="v0.7.0", cache_version="v0.9.0").to_row()]))
    assert "version=v0.7.0<-v0.9.0" in df["cell"][0]


def test_filters_accept_str_and_list(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        for i, v in enumerate(["v0.9.0", "v0.9.1", "v0.8.3"], start=1):
            st.append(record(i, version=v, run_id=f"r{i}", sweep_id="s1" if i < 3 else "s2"))
        st.append(record(9, backend="engine", run_id="r9"))
        st.append(record(10, cache_hits=0, run_id="r10"))
    assert len(load_results(path, version="v0.9.1")) == 1
    assert len(load_results(path, version=["v0.9.1", "v0.8.3"])) == 2
    assert set(load_results(path, sweep="s1")["run_id"]) == {"r1", "r2"}
    assert load_results(path, run=["r9"])["backend"].tolist() == ["engine"]
    assert len(load_results(path, backend="engine")) == 1
    assert len(load_results(path)) == 5
    assert len(load_results(path, include_no_cache=False)) == 4


def test_accepts_open_store_and_leaves_it_open(tmp_path):
    st = Store(tmp_path / "s.sqlite")
    st.append(record(1))
    assert len(load_results(st)) == 1
    st.append(record(2))
    assert len(load_results(st)) == 2
    st.close()


def test_raw_rows_round_trip():
    df = derive(pd.DataFrame([record(1, missing=["/a"]).to_row()]))
    raw = raw_rows(df)
    assert raw["missing"][0] == '["/a"]'
    assert TrialRecord.from_row(raw.iloc[0].to_dict()).missing == ["/a"]


def test_write_trials_csv_then_parquet_above_the_threshold(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        for i in range(1, 6):
            st.append(record(i, missing=["/a"] if i == 2 else [], run_id="r1" if i < 4 else "r2"))
    out = tmp_path / "out"
    out.mkdir()
    csv = write_trials(path, out, run="r1")
    assert csv.name == "trials.csv" and len(pd.read_csv(csv)) == 3
    parquet = write_trials(path, out, csv_max=2)
    assert parquet.name == "trials.parquet" and not csv.exists()  # no stale CSV beside it
    rows = pd.read_parquet(parquet)
    assert list(rows.columns) == list(TRIAL_COLUMNS) and len(rows) == 5
    assert rows["missing"].tolist() == ["[]", '["/a"]', "[]", "[]", "[]"]  # as stored
    assert TrialRecord.from_row(rows.iloc[1].to_dict()).missing == ["/a"]
    from_frame = write_trials(load_results(path), out, csv_max=2)
    assert len(pd.read_parquet(from_frame)) == 5
    assert write_trials(load_results(path), out).name == "trials.csv" and not parquet.exists()


def test_cycle_is_kept_or_derived_for_stores_from_before_it(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        # rows as older versions stored them: no cycle, and a failed reset kept the
        # previous try's since_reset
        for trial, since_reset in [(1, 1), (2, 2), (3, 1), (4, 2)]:
            st.append(record(trial, since_reset=since_reset))
        st.append(record(5, "infra_error", since_reset=2, detail="reset failed: engine gone"))
        st.append(record(6, since_reset=1))
        st.append(record(7, run_id="r2", since_reset=2, cycle=6))  # a stored key stands
    df = load_results(path)
    assert df["cycle"].tolist() == [1, 1, 3, 3, 5, 6, 6]
    assert str(df["cycle"].dtype) == "Int64"
