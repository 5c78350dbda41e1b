"""load_results' filters and merge_stores' decisions on small handmade stores.

The stores are synthetic rows written through ``Store`` (test data, not
evidence), a few rows each, so every rule shows on its own and the whole file
runs in seconds. Merges of the shipped sample store and the CLI are in
``test_merge.py``; ``test_results.py`` has more of ``load_results``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from repro_lib.config import Paths
from repro_lib.errors import UsageError
from repro_lib.forensics import CacheFacts
from repro_lib.frames import _as_list
from repro_lib.merge import MergeConflict, merge_stores, merged_view
from repro_lib.plan import plan_digest
from repro_lib.results import (
    default_store,
    derive,
    filter_results,
    findings_store,
    load_results,
    raw_rows,
    version_key,
)
from repro_lib.store import SCHEMA_VERSION, Store

from .factories import make_record


def _store(path: Path, *records, runs=(), sweeps=(), batches=()) -> Path:
    """A store holding ``records``; ``runs`` are (run_id, params, extra) and the
    like for ``sweeps`` (sweep_id, plan) and ``batches`` (CacheFacts)."""
    with Store(path) as st:
        for record in records:
            st.append(record)
        for run_id, params, extra in runs:
            st.start_run(run_id, params, sweep_id=extra.get("sweep_id"), cell=extra.get("cell"))
            if "status" in extra:
                st.finish_run(run_id, extra["status"], extra.get("summary"))
            if "plan_digest" in extra:
                st.tag_run(run_id, shard=extra.get("shard"), plan_digest=extra["plan_digest"])
        for sweep_id, plan, *status in sweeps:
            st.start_sweep(sweep_id, plan)
            if status:
                st.set_sweep_status(sweep_id, status[0])
        for facts in batches:
            st.record_batch(facts)
    # one run copied to two stores started once: only its progress may differ
    _sql(path, "UPDATE runs SET started_at = '2024-05-01T09:00:00+00:00'")
    return path


def _sql(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(sql, args).fetchall()
        db.commit()
        return rows


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# load_results: include_no_cache and friends ------------------------------------
@pytest.fixture
def hits_store(tmp_path) -> Path:
    """Trials 1, 2, 3 whose cache hits are unknown (None), 0 and 2."""
    return _store(
        tmp_path / "s.sqlite",
        make_record(1, cache_hits=None),
        make_record(2, cache_hits=0),
        make_record(3, cache_hits=2),
    )


def test_include_no_cache_drops_only_tries_known_not_to_use_the_cache(hits_store):
    everything = load_results(hits_store)
    assert everything["trial"].tolist() == [1, 2, 3]
    assert [None if pd.isna(v) else bool(v) for v in everything["cache_used"]] == [
        None,
        False,
        True,
    ]
    kept = load_results(hits_store, include_no_cache=False)
    assert kept["trial"].tolist() == [1, 3]  # unknown cache use is kept, a known miss is not
    assert kept.index.tolist() == [0, 1]


def test_load_results_reads_an_open_store_and_a_list_of_stores(hits_store, tmp_path):
    with Store(hits_store) as opened:
        assert load_results(opened, include_no_cache=False)["trial"].tolist() == [1, 3]
    other = _store(tmp_path / "o.sqlite", make_record(7, run_id="r7", cache_hits=0))
    both = load_results([hits_store, other], include_no_cache=False, run=["r", "r7"])
    assert both["trial"].tolist() == [1, 3]
    assert load_results([hits_store, other], run="r7")["trial"].tolist() == [7]


def test_load_results_joins_the_cache_facts_of_each_run(tmp_path):
    facts = CacheFacts("r", "registry", "v0.9.1", "reg/x", manifest_digest="sha256:m")
    path = _store(
        tmp_path / "s.sqlite", make_record(1), make_record(1, run_id="q"), batches=[facts]
    )
    df = load_results(path).set_index("run_id")
    assert (df["cache_manifest_digest"]["r"], df["cache_facts"]["r"]) == ("sha256:m", "ok")
    assert df[["cache_manifest_digest", "cache_facts"]].loc["q"].isna().all()


def test_the_store_named_by_the_environment_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_LIB_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="no results store at") as info:
        load_results()
    assert info.value.hint == (
        "record some trials first (repro-lib reproduce …) or pass the path of an existing store"
    )
    _store(Paths(tmp_path).store, make_record(1))
    assert len(load_results()) == 1


def test_default_and_findings_store_fall_back_to_the_sample(tmp_path):
    paths = Paths(tmp_path)
    assert default_store(paths) == paths.sample_store
    assert findings_store(paths) == paths.sample_store
    _store(paths.store)
    _store(paths.findings_store)
    assert default_store(paths) == paths.store
    assert findings_store(paths) == paths.findings_store


def test_derived_cells_versions_and_configurations():
    rows = [
        make_record(1, version="v0.7.0", cache_version="v0.9.0").to_row(),
        make_record(2, cell="backend=x/rep=2").to_row(),
        make_record(3, cell="", version="", cache_version="", backend="", reset_freq=None).to_row(),
    ]
    df = derive(pd.DataFrame(rows))
    assert df["version_label"].tolist() == ["v0.7.0<-v0.9.0", "v0.9.0", "?"]
    assert df["cell"][0] == (
        "backend=container/version=v0.7.0<-v0.9.0/cache=registry/reset=1/mode=daemonless"
    )
    assert df["cell"][2] == "backend=?/version=?/cache=registry/reset=?/mode=daemonless"
    assert df["configuration"].tolist() == [df["cell"][0], "backend=x", df["cell"][2]]
    assert derive(df).equals(df)  # idempotent


def test_filters_keep_rows_matching_every_filter():
    df = derive(
        pd.DataFrame(
            [
                make_record(1, sweep_id="s1", backend="engine").to_row(),
                make_record(2, sweep_id="s1").to_row(),
                make_record(3, sweep_id="s2", version="v0.9.1").to_row(),
            ]
        )
    )
    assert filter_results(df)["trial"].tolist() == [1, 2, 3]
    assert filter_results(df, sweep="s1", backend="container")["trial"].tolist() == [2]
    assert filter_results(df, version=("v0.9.1",))["trial"].tolist() == [3]
    assert filter_results(df, run="nobody").empty


@pytest.mark.parametrize(
    "value,listed",
    [
        (["a"], ["a"]),
        (("a", "b"), ["a", "b"]),
        (None, []),
        ("", []),
        (float("nan"), []),
        ('["x", "y"]', ["x", "y"]),
        ('"one"', ["one"]),
        ("not json", ["not json"]),
        (3, [3]),
    ],
)
def test_list_columns_decode_every_stored_form(value, listed):
    assert _as_list(value) == listed


def test_raw_rows_give_back_the_stored_form():
    df = derive(pd.DataFrame([make_record(1, missing=["/a"], layer_digests=["sha256:x"]).to_row()]))
    raw = raw_rows(df)
    assert list(raw.columns) == [c for c in raw.columns if c in df.columns]
    assert (raw["missing"][0], raw["layer_digests"][0]) == ('["/a"]', '["sha256:x"]')
    assert raw["started_at"][0] == "2024-05-01T10:00:00+00:00"
    assert "failed" not in raw.columns


def test_versions_sort_by_their_numbers():
    versions = ["v0.10.0", "v0.9.1", "v0.9.0", "latest", "v0.9.0-rootless"]
    assert sorted(versions, key=version_key) == [
        "latest",
        "v0.9.0",
        "v0.9.0-rootless",
        "v0.9.1",
        "v0.10.0",
    ]


# merge: refusals write nothing ---------------------------------------------------
def _sweep_run(run_id: str, digest: str, **extra) -> tuple:
    return (run_id, {"tries": 2}, {"sweep_id": "ci-7", "plan_digest": digest, **extra})


def test_a_merge_refused_on_a_plan_digest_leaves_out_byte_for_byte(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1, run_id="c1"), runs=[_sweep_run("c1", "p1")])
    b = _store(tmp_path / "b.sqlite", make_record(1, run_id="c2"), runs=[_sweep_run("c2", "p1")])
    odd = _store(
        tmp_path / "odd.sqlite", make_record(1, run_id="c3"), runs=[_sweep_run("c3", "p2")]
    )
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a])
    before = _state(out)
    with pytest.raises(MergeConflict, match=r"sweep ci-7 ran different plans in .* \(plan p1\)"):
        merge_stores(out, [b, odd])
    assert _state(out) == before
    fresh = tmp_path / "fresh.sqlite"
    with pytest.raises(MergeConflict, match="plan p2"):
        merge_stores(fresh, [a, odd])
    assert not fresh.exists()


def test_a_trial_recorded_twice_with_other_content_is_refused(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1, "ok"), make_record(2))
    b = _store(tmp_path / "b.sqlite", make_record(1, "missing_layer"))
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a])
    before = _state(out)
    with pytest.raises(MergeConflict, match="both hold trial 1 of run r .*outcome 'ok' vs") as info:
        merge_stores(out, [b])
    assert "--sweep-id" in info.value.hint
    assert _state(out) == before


def test_a_run_with_other_parameters_is_refused_but_progress_may_differ(tmp_path):
    a = _store(tmp_path / "a.sqlite", runs=[("r", {"tries": 2}, {"cell": "c"})])
    b = _store(tmp_path / "b.sqlite", runs=[("r", {"tries": 3}, {"cell": "c"})])
    with pytest.raises(MergeConflict, match="both hold run r with different params"):
        merge_stores(tmp_path / "out.sqlite", [a, b])
    assert not (tmp_path / "out.sqlite").exists()
    done = _store(
        tmp_path / "done.sqlite",
        runs=[("r", {"tries": 2}, {"cell": "c", "status": "done", "summary": {"n": 2}})],
    )
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a, done])
    ((status, summary, cell),) = _sql(out, "SELECT status, summary, cell FROM runs")
    assert (status, json.loads(summary), cell) == ("done", {"n": 2}, "c")
    # the finished record stands whichever store comes first
    out2 = tmp_path / "out2.sqlite"
    merge_stores(out2, [done, a])
    assert _sql(out2, "SELECT status FROM runs") == [("done",)]


def test_a_run_missing_a_fact_in_one_store_takes_it_from_the_other(tmp_path):
    a = _store(tmp_path / "a.sqlite", runs=[("r", {"tries": 2}, {})])
    b = _store(tmp_path / "b.sqlite", runs=[("r", {"tries": 2}, {"sweep_id": "s"})])
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a])
    merge_stores(out, [b])
    assert _sql(out, "SELECT run_id, sweep_id FROM runs") == [("r", "s")]


def test_sweeps_of_one_plan_merge_and_of_two_plans_are_refused(tmp_path):
    plan = {"backend": "engine", "reset_freq": [1, 2], "tries": 2}
    a = _store(tmp_path / "a.sqlite", sweeps=[("s", plan, "done")])
    b = _store(tmp_path / "b.sqlite", sweeps=[("s", plan, "interrupted")])
    _sql(b, "UPDATE sweeps SET started_at = '2000-01-01T00:00:00+00:00'")
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a, b])
    assert _sql(out, "SELECT started_at, status FROM sweeps") == [
        ("2000-01-01T00:00:00+00:00", "interrupted")
    ]
    c = _store(tmp_path / "c.sqlite", sweeps=[("s", {**plan, "tries": 3}, "done")])
    before = _state(out)
    with pytest.raises(MergeConflict, match="sweep s ran different plans"):
        merge_stores(out, [c])
    assert _state(out) == before


@pytest.mark.parametrize(
    "damage,message",
    [
        ("absent", "no results store at"),
        ("junk", "is not a readable results store"),
        ("no trials", "is not a results store \\(it has no trials table\\)"),
        ("newer", f"has store schema {SCHEMA_VERSION + 1}, newer than"),
        ("no trial column", "cannot be upgraded: its trials table has no trial column"),
        ("odd table", "table name 'odd-name' cannot be merged"),
        ("odd column", "column batches.odd-col cannot be merged"),
    ],
)
def test_an_input_that_is_not_a_store_is_refused_and_out_is_untouched(tmp_path, damage, message):
    bad = tmp_path / "bad.sqlite"
    if damage == "junk":
        bad.write_bytes(b"junk" * 1000)
    elif damage == "no trial column":
        _sql(bad, "CREATE TABLE trials (run_id TEXT, outcome TEXT)")
    elif damage != "absent":
        _store(bad, make_record(1))
        statement = {
            "no trials": "DROP TABLE trials",
            "newer": f"PRAGMA user_version = {SCHEMA_VERSION + 1}",
            "odd table": 'CREATE TABLE "odd-name" (a)',
            "odd column": 'ALTER TABLE batches ADD COLUMN "odd-col" TEXT',
        }[damage]
        _sql(bad, statement)
    good = _store(tmp_path / "good.sqlite", make_record(5))
    out = tmp_path / "out.sqlite"
    merge_stores(out, [good])
    before = _state(out)
    with pytest.raises(UsageError, match=message):
        merge_stores(out, [good, bad])
    assert _state(out) == before


def test_nothing_to_merge_and_out_itself_are_refused(tmp_path):
    out = _store(tmp_path / "out.sqlite", make_record(1))
    with pytest.raises(UsageError, match="^nothing to merge$"):
        merge_stores(out, [])
    with pytest.raises(UsageError, match="is OUT itself"):
        merge_stores(out, [tmp_path / "." / "out.sqlite"])


# merge: what lands -----------------------------------------------------------------
def test_overlapping_stores_merge_without_loss_or_double_counting(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1), make_record(2), make_record(1, run_id="q"))
    b = _store(tmp_path / "b.sqlite", make_record(2), make_record(3))
    out = tmp_path / "out.sqlite"
    result = merge_stores(out, [a, b])
    assert [(s.source, s.trials_added, s.trials_present) for s in result.sources] == [
        (str(a), 3, 0),
        (str(b), 1, 1),
    ]
    assert result.trials_added == 4 and result.out == out
    assert [s.runs for s in result.sources] == [2, 1]
    assert result.sources[0].rows_added["trials"] == 3
    assert sorted(_sql(out, "SELECT run_id, trial FROM trials")) == [
        ("q", 1),
        ("r", 1),
        ("r", 2),
        ("r", 3),
    ]
    before = _state(out)
    again = merge_stores(out, [a, b])
    assert again.trials_added == 0
    assert _state(out) == before  # nothing new: OUT not even opened for writing


def test_provenance_names_each_runs_source_and_host_facts(tmp_path):
    a = _store(
        tmp_path / "a.sqlite",
        make_record(1, host="h1", kernel="6.1", engine_version="24.0"),
        make_record(2, host="h2", kernel="6.1", engine_version=""),
    )
    b = _store(tmp_path / "b.sqlite", runs=[("lonely", {}, {})])
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a, b])
    rows = _sql(
        out,
        "SELECT run_id, source, host, kernel, engine_version FROM provenance ORDER BY run_id",
    )
    assert rows == [("lonely", str(b), None, None, None), ("r", str(a), "h1, h2", "6.1", "24.0")]
    digests = _sql(out, "SELECT source_digest, merged_at FROM provenance")
    assert all(len(d) == 16 and m for d, m in digests)


def test_other_tables_and_newer_columns_are_copied(tmp_path):
    facts = CacheFacts("r", "registry", "v0.9.1", "reg/x", manifest_digest="sha256:m")
    a = _store(tmp_path / "a.sqlite", make_record(1), batches=[facts])
    _sql(a, "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    _sql(a, "INSERT INTO notes VALUES (1, 'first')")
    _sql(a, "CREATE TABLE tags (name TEXT UNIQUE, colour TEXT)")
    _sql(a, "INSERT INTO tags VALUES ('flaky', 'red')")
    _sql(a, "CREATE TABLE loose (a TEXT, b TEXT)")
    _sql(a, "INSERT INTO loose VALUES ('x', 'y')")
    _sql(a, "ALTER TABLE trials ADD COLUMN gpu TEXT NOT NULL DEFAULT 'none'")
    out = _store(tmp_path / "out.sqlite", make_record(9))
    merge_stores(out, [a])
    assert _sql(out, "SELECT text FROM notes") == [("first",)]
    assert _sql(out, "SELECT colour FROM tags") == [("red",)]
    assert _sql(out, "SELECT a, b FROM loose") == [("x", "y")]
    assert _sql(out, "SELECT trial, gpu FROM trials ORDER BY trial") == [(1, "none"), (9, None)]
    assert _sql(out, "SELECT manifest_digest FROM batches") == [("sha256:m",)]
    # the same rows again are present, one changed row of a keyed table is a conflict
    assert merge_stores(out, [a]).trials_added == 0
    _sql(a, "UPDATE tags SET colour = 'blue'")
    with pytest.raises(MergeConflict, match="both hold tags row \\{'name': 'flaky'\\}"):
        merge_stores(out, [a])


def test_merged_view_is_temporary(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1))
    with merged_view([a]) as path:
        assert path.is_file()
        assert _sql(path, "SELECT count(*) FROM trials") == [(1,)]
    assert not path.exists() and not path.parent.exists()


# load_results and derive: the finer points --------------------------------------
def test_a_list_of_stores_takes_every_filter(tmp_path):
    a = _store(
        tmp_path / "a.sqlite",
        make_record(1, sweep_id="s1", backend="engine"),
        make_record(2, sweep_id="s1", version="v0.9.1"),
        make_record(3, sweep_id="s2"),
    )
    b = _store(tmp_path / "b.sqlite", make_record(4, run_id="q", sweep_id="s1"))
    assert load_results([a, b], sweep="s2")["trial"].tolist() == [3]
    assert load_results([a, b], version="v0.9.1")["trial"].tolist() == [2]
    assert load_results([a, b], backend="engine")["trial"].tolist() == [1]
    assert load_results([a, b], run="q")["trial"].tolist() == [4]


def test_load_results_leaves_an_old_store_as_it_was(tmp_path):
    path = _store(tmp_path / "old.sqlite", make_record(1))
    _sql(path, "ALTER TABLE trials DROP COLUMN security")
    _sql(path, "PRAGMA user_version = 0")
    before = _state(path)
    assert load_results(path)["security"].isna().all()
    assert _state(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]


def test_derive_fills_coerces_and_keeps_the_index():
    rows = [
        make_record(1, cache_hits=1, privileged=True, duration_s=0.5).to_row(),
        make_record(2, "missing_layer", cache_hits=0).to_row(),
    ]
    raw = pd.DataFrame(rows, index=[10, 20]).drop(columns=["security", "cell"])
    raw["started_at"] = ["2024-05-01T10:00:00+00:00", "2024-05-01T12:00:00.250+02:00"]
    raw["duration_s"] = ["0.5", "n/a"]
    raw["cache_steps"] = ["3", "junk"]
    df = derive(raw)
    assert df.index.tolist() == [10, 20]
    assert df["security"].isna().all() and df["security"].dtype == object
    assert df["cell"].tolist()[0].startswith("backend=container/")
    assert df["configuration"].tolist() == df["cell"].tolist()
    assert df["version_label"].tolist() == ["v0.9.0", "v0.9.0"]
    assert df["missing"].tolist() == [[], []]
    assert str(df["started_at"].dt.tz) == "UTC"
    assert df["started_at"][20] == pd.Timestamp("2024-05-01T10:00:00.250", tz="UTC")
    assert df["duration_s"][10] == 0.5 and pd.isna(df["duration_s"][20])
    assert df["cache_steps"][10] == 3 and pd.isna(df["cache_steps"][20])
    assert str(df["cache_steps"].dtype) == "Int64"
    assert df["privileged"].tolist() == [True, False] and str(df["privileged"].dtype) == "boolean"
    assert df["cache_used"].tolist() == [True, False] and str(df["cache_used"].dtype) == "boolean"
    assert df["failed"].dtype == bool and df["counted"].dtype == bool
    assert df["failed"].tolist() == [False, True]


def test_raw_rows_of_a_frame_that_was_never_derived_and_of_a_missing_start():
    raw = pd.DataFrame([make_record(1).to_row()])
    assert raw_rows(raw)["started_at"][0] == "2024-05-01T10:00:00+00:00"
    df = derive(raw)
    df.loc[0, "started_at"] = pd.NaT
    assert raw_rows(df)["started_at"][0] == ""


def test_version_keys_put_numbers_before_words():
    assert version_key("v0.10") == ((1, "v"), (0, 0), (1, "."), (0, 10))
    assert sorted(["b", "10", "a", "9"], key=version_key) == ["9", "10", "a", "b"]


# merge: the finer points -----------------------------------------------------------
def test_refusals_say_what_to_do(tmp_path):
    out = _store(tmp_path / "out.sqlite", make_record(1))
    hints = {}
    for case, sources in {
        "nothing": [],
        "itself": [out],
        "absent": [tmp_path / "absent.sqlite"],
    }.items():
        with pytest.raises(UsageError) as info:
            merge_stores(out, sources)
        hints[case] = info.value.hint
    assert hints == {
        "nothing": "name at least one store after OUT",
        "itself": "name another output file",
        "absent": "check the path of each store",
    }


@pytest.mark.parametrize(
    "statement,hint",
    [
        ("DROP TABLE trials", "merge only stores written by repro-lib"),
        (f"PRAGMA user_version = {SCHEMA_VERSION + 1}", "upgrade repro-lib to merge it"),
        ('CREATE TABLE "odd-name" (a)', "rename or drop that table"),
        ('ALTER TABLE batches ADD COLUMN "odd-col" TEXT', "rename it"),
    ],
)
def test_each_refused_input_has_its_hint(tmp_path, statement, hint):
    bad = _store(tmp_path / "bad.sqlite", make_record(1))
    _sql(bad, statement)
    with pytest.raises(UsageError) as info:
        merge_stores(tmp_path / "out.sqlite", [bad])
    assert info.value.hint == hint


def test_a_damaged_out_or_input_is_named_in_the_refusal(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"junk" * 1000)
    good = _store(tmp_path / "good.sqlite", make_record(1))
    with pytest.raises(UsageError, match=f"^{junk} is not a readable results store") as info:
        merge_stores(junk, [good])
    assert info.value.hint == "check the file (an incomplete download or another kind of file?)"
    no_trial = tmp_path / "no-trial.sqlite"
    _sql(no_trial, "CREATE TABLE trials (run_id TEXT)")
    with pytest.raises(UsageError) as info:
        merge_stores(tmp_path / "out.sqlite", [no_trial])
    assert info.value.hint == "merge only stores written by repro-lib"


def test_conflicts_name_both_stores_and_at_most_two_differences(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1, "ok", detail="x", host="h1"))
    b = _store(tmp_path / "b.sqlite", make_record(1, "missing_layer", detail="y", host="h2"))
    with pytest.raises(MergeConflict) as info:
        merge_stores(tmp_path / "out.sqlite", [a, b])
    assert str(info.value) == (
        f"{a} and {b} both hold trial 1 of run r with different content "
        "(outcome 'ok' vs 'missing_layer', detail 'x' vs 'y')"
    )
    assert (
        info.value.hint == "they are different runs under one id: rerun one with its own --sweep-id"
    )
    ra = _store(tmp_path / "ra.sqlite", runs=[("r", {"tries": 2}, {"cell": "c"})])
    rb = _store(tmp_path / "rb.sqlite", runs=[("r", {"tries": 3}, {"cell": "d"})])
    with pytest.raises(MergeConflict) as info:
        merge_stores(tmp_path / "out.sqlite", [ra, rb])
    assert str(info.value) == f"{ra} and {rb} both hold run r with different cell, params"
    assert (
        info.value.hint == "they are different runs under one id: rerun one with its own --sweep-id"
    )


def test_sweep_conflicts_name_each_plan_where_it_ran(tmp_path):
    plan = {"reset_freq": [1, 2], "tries": 2}
    a = _store(tmp_path / "a.sqlite", sweeps=[("s", plan)])
    b = _store(tmp_path / "b.sqlite", sweeps=[("s", {**plan, "tries": 3})])
    with pytest.raises(MergeConflict) as info:
        merge_stores(tmp_path / "out.sqlite", [a, b])
    first, second = (plan_digest(p) for p in (plan, {**plan, "tries": 3}))
    assert str(info.value) == (
        f"sweep s ran different plans in {a} (plan {first}) and {b} (plan {second})"
    )
    assert info.value.hint.startswith("shards of one sweep must run one plan")
    ta = _store(tmp_path / "ta.sqlite", runs=[_sweep_run("c1", "p1")])
    tb = _store(tmp_path / "tb.sqlite", runs=[_sweep_run("c2", "p2")])
    with pytest.raises(MergeConflict) as info:
        merge_stores(tmp_path / "out2.sqlite", [ta, tb])
    assert str(info.value) == f"sweep ci-7 ran different plans in {ta} (plan p1) and {tb} (plan p2)"
    assert info.value.hint.startswith("shards of one sweep must run one plan")


@pytest.mark.parametrize(
    "first,second,status",
    [("done", "done", "done"), ("failed", "interrupted", "failed"), ("done", "running", "running")],
)
def test_a_merged_sweep_keeps_its_worst_status(tmp_path, first, second, status):
    a = _store(tmp_path / "a.sqlite", sweeps=[("s", {"tries": 2}, first)])
    b = _store(tmp_path / "b.sqlite", sweeps=[("s", {"tries": 2}, second)])
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a])
    merge_stores(out, [b])
    assert _sql(out, "SELECT status FROM sweeps") == [(status,)]


def test_plans_are_checked_per_sweep_and_untagged_runs_are_skipped(tmp_path):
    stores = [
        _store(tmp_path / "plain.sqlite", runs=[("plain", {}, {})]),
        _store(tmp_path / "untagged.sqlite", runs=[("u", {"tries": 2}, {"sweep_id": "ci-7"})]),
        _store(tmp_path / "c1.sqlite", runs=[_sweep_run("c1", "p1")]),
        _store(
            tmp_path / "other.sqlite", runs=[("o", {}, {"sweep_id": "ci-8", "plan_digest": "p9"})]
        ),
        _store(tmp_path / "c2.sqlite", runs=[_sweep_run("c2", "p2")]),
    ]
    with pytest.raises(MergeConflict, match="sweep ci-7 ran different plans"):
        merge_stores(tmp_path / "out.sqlite", stores)
    merge_stores(tmp_path / "ok.sqlite", stores[:4])  # one plan per sweep: fine


def test_finished_records_and_new_columns_of_a_run_are_merged(tmp_path):
    old = _store(tmp_path / "old.sqlite", runs=[("r", {"tries": 2}, {"status": "done"})])
    _sql(old, "UPDATE runs SET finished_at = '2024-05-02'")
    _sql(old, "ALTER TABLE runs DROP COLUMN shard")
    _sql(old, "ALTER TABLE runs DROP COLUMN plan_digest")
    _sql(old, "PRAGMA user_version = 0")
    new = _store(
        tmp_path / "new.sqlite",
        runs=[("r", {"tries": 2}, {"status": "failed", "shard": "1/2", "plan_digest": "p"})],
    )
    _sql(new, "UPDATE runs SET finished_at = '2024-05-01'")
    out = tmp_path / "out.sqlite"
    merge_stores(out, [old, new])
    # the later finish stands; the column only the newer store has is taken from it
    assert _sql(out, "SELECT status, finished_at, shard FROM runs") == [
        ("done", "2024-05-02", "1/2")
    ]
    again = tmp_path / "again.sqlite"
    merge_stores(again, [new, old])
    assert _sql(again, "SELECT status, finished_at FROM runs") == [("done", "2024-05-02")]


def test_a_run_finished_elsewhere_updates_out_even_with_no_new_trial(tmp_path):
    running = _store(tmp_path / "a.sqlite", make_record(1), runs=[("r", {"tries": 1}, {})])
    done = _store(
        tmp_path / "b.sqlite", make_record(1), runs=[("r", {"tries": 1}, {"status": "done"})]
    )
    out = tmp_path / "out.sqlite"
    merge_stores(out, [running])
    result = merge_stores(out, [done])
    assert result.trials_added == 0
    assert _sql(out, "SELECT status FROM runs") == [("done",)]


def test_provenance_digests_name_content_not_history(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1, kernel="6.1"), make_record(2, kernel="6.2"))
    b = _store(tmp_path / "b.sqlite", make_record(3))
    copy = tmp_path / "copy.sqlite"
    merge_stores(copy, [a])  # the same trials, now with a provenance table
    out = tmp_path / "out.sqlite"
    result = merge_stores(out, [a, b, copy])
    assert [s.rows_added.get("trials", 0) for s in result.sources] == [2, 1, 0]
    rows = _sql(out, "SELECT source, kernel FROM provenance ORDER BY source")
    # a and its copy hold one content: one provenance row; b another
    assert rows == [(str(a), "6.1, 6.2"), (str(b), None)]


def test_a_store_without_a_runs_table_still_gets_provenance(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1, engine_version="24.0"))
    _sql(a, "DROP TABLE runs")
    out = tmp_path / "out.sqlite"
    assert [s.runs for s in merge_stores(out, [a]).sources] == [1]
    assert _sql(out, "SELECT run_id, engine_version FROM provenance") == [("r", "24.0")]


def test_added_columns_keep_their_declared_type(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1))
    _sql(a, "ALTER TABLE trials ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0")
    out = _store(tmp_path / "out.sqlite", make_record(9))
    merge_stores(out, [a])
    types = {row[1]: row[2] for row in _sql(out, "PRAGMA table_info(trials)")}
    assert types["gpus"] == "INTEGER"


def test_a_live_store_is_merged_with_the_trials_still_in_its_wal(tmp_path):
    out = tmp_path / "out.sqlite"
    with Store(tmp_path / "live.sqlite") as live:
        live.append(make_record(1))
        assert (tmp_path / "live.sqlite-wal").exists()
        merge_stores(out, [live.path])
    assert _sql(out, "SELECT trial FROM trials") == [(1,)]


def test_digests_tell_contents_apart_whatever_the_column_order(tmp_path):
    a = _store(tmp_path / "a.sqlite", make_record(1), make_record(2))
    other = _store(tmp_path / "other.sqlite", make_record(5), make_record(6))
    # the same rows as a, in a store whose security column came later (an upgraded store)
    moved = _store(tmp_path / "moved.sqlite", make_record(1), make_record(2))
    _sql(moved, "ALTER TABLE trials DROP COLUMN security")
    _sql(moved, "ALTER TABLE trials ADD COLUMN security TEXT")
    _sql(moved, "UPDATE trials SET security = '{}'")
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a, other, moved])
    assert _sql(out, "SELECT source FROM provenance ORDER BY source") == [(str(a),), (str(other),)]


def test_a_later_conflict_names_the_store_the_first_record_came_from(tmp_path):
    plan = {"tries": 2}
    a = _store(tmp_path / "a.sqlite", runs=[("r", plan, {})], sweeps=[("s", plan)])
    done = _store(
        tmp_path / "done.sqlite",
        runs=[("r", plan, {"status": "done"})],
        sweeps=[("s", plan, "done")],
    )
    _sql(done, "UPDATE sweeps SET started_at = '2000-01-01T00:00:00+00:00'")  # merged differs
    odd_run = _store(tmp_path / "odd.sqlite", runs=[("r", {"tries": 3}, {})])
    with pytest.raises(MergeConflict, match=f"^{a} and {odd_run} both hold run r"):
        merge_stores(tmp_path / "out.sqlite", [a, done, odd_run])
    odd_sweep = _store(tmp_path / "odd-sweep.sqlite", sweeps=[("s", {"tries": 3})])
    with pytest.raises(MergeConflict, match=f"^sweep s ran different plans in {a} "):
        merge_stores(tmp_path / "out.sqlite", [a, done, odd_sweep])


def test_a_failed_write_leaves_out_as_it_was(tmp_path):
    out = _store(tmp_path / "out.sqlite", make_record(1))
    _sql(out, "CREATE TRIGGER refuse BEFORE INSERT ON trials BEGIN SELECT RAISE(ABORT, 'no'); END")
    before = _state(out)
    source = _store(tmp_path / "s.sqlite", make_record(2), runs=[("r", {}, {})])
    with pytest.raises(sqlite3.IntegrityError, match="no"):
        merge_stores(out, [source])
    assert _state(out) == before
    assert _sql(out, "SELECT count(*) FROM runs") == [(0,)]


def test_untyped_columns_stay_untyped_and_engines_are_listed(tmp_path):
    a = _store(
        tmp_path / "a.sqlite",
        make_record(1, engine_version="24.0"),
        make_record(2, engine_version="25.0"),
    )
    _sql(a, "ALTER TABLE trials ADD COLUMN note")
    out = _store(tmp_path / "out.sqlite", make_record(9, run_id="q"))
    merge_stores(out, [a])
    types = {row[1]: row[2] for row in _sql(out, "PRAGMA table_info(trials)")}
    assert types["note"] == ""
    assert _sql(out, "SELECT engine_version FROM provenance WHERE run_id = 'r'") == [
        ("24.0, 25.0",)
    ]
