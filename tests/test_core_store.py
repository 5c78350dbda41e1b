"""The store's promises, checked from outside: durable appends, no overwrite, exact resume.

A second SQLite connection (another process would see the same) reads the file
after each call, so a commit that is delayed, batched or replaced shows up.
The rows are synthetic records from ``factories.make_record``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from repro_lib.errors import InfraError, UsageError
from repro_lib.forensics import CacheFacts, CacheLayer
from repro_lib.records import Outcome
from repro_lib.store import SCHEMA_VERSION, Store

from .factories import make_record


def _other(path) -> contextlib.closing[sqlite3.Connection]:
    """Another connection to the store's file, autocommitting like another process."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def _rows(path, sql: str, args: tuple = ()) -> list[tuple]:
    with _other(path) as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "trials.sqlite") as opened:
        yield opened


def test_another_connection_sees_each_trial_right_after_append(store):
    for trial in range(1, 8):
        store.append(make_record(trial, detail=f"try {trial}"))
        rows = _rows(store.path, "SELECT trial, detail FROM trials ORDER BY trial")
        assert rows == [(t, f"try {t}") for t in range(1, trial + 1)]


def test_appending_a_recorded_trial_again_raises_and_the_first_row_stands(store):
    store.append(make_record(1, "missing_layer", detail="first"))
    with pytest.raises(sqlite3.IntegrityError):
        store.append(make_record(1, "ok", detail="second"))
    assert _rows(store.path, "SELECT outcome, detail FROM trials") == [("missing_layer", "first")]
    assert store.append_once(make_record(1, "ok", detail="third")) is False
    assert store.append_once(make_record(2, "ok", detail="new")) is True
    assert store.append_once(make_record(1, "ok", run_id="other", detail="other run")) is True
    rows = _rows(store.path, "SELECT run_id, trial, outcome, detail FROM trials ORDER BY run_id")
    assert rows == [
        ("other", 1, "ok", "other run"),
        ("r", 1, "missing_layer", "first"),
        ("r", 2, "ok", "new"),
    ]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_trial_numbers_are_exactly_the_recorded_trials(store, count):
    assert store.trial_numbers("r") == set()
    for trial in range(1, count + 1):
        store.append(make_record(trial))
    store.append(make_record(9, run_id="another run"))
    assert store.trial_numbers("r") == set(range(1, count + 1))
    assert store.trial_numbers("another run") == {9}


def test_trials_read_back_as_records_in_trial_order(store):
    for trial in (3, 1, 2):
        store.append(make_record(trial, missing=["repro.txt"], phases={"build": 1.5}))
    records = store.trials("r")
    assert [r.trial for r in records] == [1, 2, 3]
    assert records[0] == make_record(1, missing=["repro.txt"], phases={"build": 1.5})
    assert store.trials("nobody") == []


def test_a_store_that_cannot_be_written_is_an_infra_error(store):
    store.append(make_record(1))
    store._db.execute("PRAGMA query_only = ON")  # as if the disk had gone read-only
    with pytest.raises(InfraError, match="cannot record trial 2 of r") as info:
        store.append(make_record(2))
    assert info.value.hint == (
        "free space or make data/ writable; recorded trials are safe, resume to finish"
    )
    with pytest.raises(InfraError):
        store.append_once(make_record(2))


def test_a_new_store_has_the_current_schema_and_wal(tmp_path):
    with Store(tmp_path / "deep" / "trials.sqlite") as st:
        assert st.path.is_file()
    assert _rows(st.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _rows(st.path, "PRAGMA journal_mode") == [("wal",)]


def test_a_file_that_is_not_a_store_is_a_usage_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UsageError, match="cannot open results store") as info:
        Store(junk)
    assert "corrupt" in info.value.hint
    with pytest.raises(UsageError, match="no results store"):
        Store(tmp_path / "absent.sqlite", read_only=True)
    assert not (tmp_path / "absent.sqlite").exists()


def test_read_only_sees_the_trials_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "trials.sqlite"
    with Store(path) as st:
        st.append(make_record(1))
    (tmp_path / "trials.sqlite-wal").unlink(missing_ok=True)
    before = path.read_bytes()
    with Store(path, read_only=True) as ro:
        assert ro.trial_numbers("r") == {1}
        assert len(ro.dataframe()) == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"]


def test_runs_start_finish_and_tag(store):
    store.start_run("r", {"tries": 5}, sweep_id="s", cell="c1")
    store.start_run("r", {"tries": 99})  # a resumed run keeps its first record
    run = store.run("r")
    assert (run["params"], run["sweep_id"], run["cell"], run["status"]) == (
        {"tries": 5},
        "s",
        "c1",
        "running",
    )
    assert run["summary"] is None and run["finished_at"] is None
    store.finish_run("r", "done", {"failures": 2})
    store.tag_run("r", shard="1/2", plan_digest="abc")
    run = store.run("r")
    assert (run["status"], run["summary"], run["shard"], run["plan_digest"]) == (
        "done",
        {"failures": 2},
        "1/2",
        "abc",
    )
    assert run["finished_at"]
    store.finish_run("r", "interrupted")
    assert store.run("r")["summary"] is None
    assert store.run("nobody") is None


def test_runs_are_listed_by_start_and_by_sweep(store):
    store.start_run("b", {}, sweep_id="s1")
    store.start_run("a", {}, sweep_id="s2")
    store.start_run("c", {}, sweep_id="s1")
    assert [r["run_id"] for r in store.runs()] == ["b", "a", "c"]
    assert [r["run_id"] for r in store.runs("s1")] == ["b", "c"]
    assert store.runs("none") == []


def test_sweeps_keep_their_plan_and_status(store):
    store.start_sweep("s", {"reset_freq": [1, 2]})
    store.start_sweep("s", {"reset_freq": [9]})
    store.set_sweep_status("s", "done")
    sweep = store.sweep("s")
    assert (sweep["plan"], sweep["status"]) == ({"reset_freq": [1, 2]}, "done")
    assert store.sweep("other") is None


def test_the_first_batch_facts_of_a_run_stand(store):
    layers = [
        CacheLayer("sha256:a", 32, "tar+gzip", True),
        CacheLayer("sha256:b", 900, "tar", None),
    ]
    first = CacheFacts("r", "registry", "v0.9.1", "reg:5000/x", layers=layers)
    store.record_batch(first)
    store.record_batch(CacheFacts("r", "local", "v0.9.0", "/tmp/c", status="infra_error"))
    assert store.batch("r") == first
    assert store.batch("nobody") is None
    frame = store.batches_frame()
    assert frame["run_id"].tolist() == ["r"]
    assert (frame["layer_count"].tolist(), frame["empty_layers"].tolist()) == ([2], [1])


def test_dataframe_filters_and_orders(store):
    store.append(make_record(2, started_at="2024-05-01T10:00:02+00:00"))
    store.append(make_record(1, started_at="2024-05-01T10:00:01+00:00", outcome=Outcome.OK))
    store.append(make_record(3, "missing_layer", started_at="2024-05-01T10:00:03+00:00"))
    frame = store.dataframe()
    assert frame["trial"].tolist() == [1, 2, 3]
    failed = store.dataframe("outcome = ?", ["missing_layer"])
    assert failed["trial"].tolist() == [3]
    assert json.loads(failed["missing"][0]) == []


# reading without changing, and upgrading what is written ---------------------------
def test_read_only_on_a_store_nobody_writes_opens_it_immutable(tmp_path):
    path = tmp_path / "trials.sqlite"
    with Store(path) as st:
        st.append(make_record(1, missing=["repro.txt"]))
    with Store(path, read_only=True) as ro:
        assert ro.read_only is True
        assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"]  # no -wal/-shm
        assert ro.trials("r")[0].missing == ["repro.txt"]


def test_read_only_on_a_live_store_sees_its_latest_trial_and_cannot_write(tmp_path):
    path = tmp_path / "trials.sqlite"
    with Store(path) as writer:
        writer.append(make_record(1))
        assert (tmp_path / "trials.sqlite-wal").exists()  # the row is still in the WAL
        with Store(path, read_only=True) as ro:
            assert ro.trial_numbers("r") == {1}
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                ro._db.execute("DELETE FROM trials")


def test_an_empty_file_becomes_a_new_store_and_an_old_one_is_upgraded_once(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    Store(empty).close()
    assert _rows(empty, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    old = tmp_path / "old.sqlite"
    Store(old).close()
    with _other(old) as db:
        db.execute("PRAGMA user_version = 0")
        db.execute("ALTER TABLE trials DROP COLUMN attempt")
        db.execute("ALTER TABLE trials DROP COLUMN security")
    with Store(old) as st:  # written by an older version: it gains the columns, as NULL
        st.append(make_record(1, attempt=3, security={"privileged": True}))
    types = {row[1]: row[2] for row in _rows(old, "PRAGMA table_info(trials)")}
    assert (types["attempt"], types["security"], types["trial"]) == ("INTEGER", "TEXT", "INTEGER")
    # the first writer to open it upgrades it, once, and records that
    assert _rows(old, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert Store(old, read_only=True).trials("r")[0].attempt == 3


def test_an_old_runs_table_gains_the_shard_columns_when_a_writer_opens_it(tmp_path):
    path = tmp_path / "old.sqlite"
    Store(path).close()
    with _other(path) as db:
        db.execute("ALTER TABLE runs DROP COLUMN shard")
        db.execute("ALTER TABLE runs DROP COLUMN plan_digest")
        db.execute("PRAGMA user_version = 0")
    with Store(path) as st:
        st.start_run("r", {})
        # the columns come with the open (one upgrade, under the write lock), empty
        assert (st.run("r")["shard"], st.run("r")["plan_digest"]) == (None, None)
        st.tag_run("r", shard="2/3", plan_digest="abc")
        assert (st.run("r")["shard"], st.run("r")["plan_digest"]) == ("2/3", "abc")
    assert _rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_parameters_that_are_not_json_are_kept_as_text(store):
    store.start_run("r", {"dir": Path("/data/x")})
    store.finish_run("r", "done", {"out": Path("/data/y")})
    store.start_sweep("s", {"root": Path("/data")})
    assert store.run("r")["params"] == {"dir": "/data/x"}
    assert store.run("r")["summary"] == {"out": "/data/y"}
    assert store.sweep("s")["plan"] == {"root": "/data"}
    assert store.sweep("s")["status"] == "running"
    store.finish_run("r", "done", {})
    assert store.run("r")["summary"] is None


def test_cache_facts_that_cannot_be_written_are_an_infra_error(store):
    store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(InfraError, match="cannot record the cache facts of r in ") as info:
        store.record_batch(CacheFacts("r", "registry", "v0.9.1", "reg/x"))
    assert info.value.hint.startswith("free space or make data/ writable")


def test_a_read_only_store_from_before_batches_has_none(tmp_path):
    path = tmp_path / "old.sqlite"
    Store(path).close()
    with _other(path) as db:
        db.execute("DROP TABLE batches")
    with Store(path, read_only=True) as ro:
        assert ro.batch("r") is None
        frame = ro.batches_frame()
    assert frame.empty
    assert list(frame.columns) == [
        "run_id",
        "status",
        "manifest_digest",
        "layer_count",
        "empty_layers",
    ]


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(UsageError) as info:
        Store(tmp_path / "absent.sqlite", read_only=True)
    assert info.value.hint == "pass --store"
    (tmp_path / "junk.sqlite").write_bytes(b"junk" * 1000)
    with pytest.raises(UsageError) as info:
        Store(tmp_path / "junk.sqlite")
    assert info.value.hint == "point --store at a valid file or move the corrupt one away"
    (tmp_path / "data").write_text("a file where a directory should be")
    with pytest.raises(
        UsageError, match="^cannot create results store .*data/trials.sqlite"
    ) as info:
        Store(tmp_path / "data" / "trials.sqlite")
    assert info.value.hint == "check that data/ is writable"
