"""repro-lib merge carries culprit searches: a search in one store is copied, a
search in several stores (a killed one and its resumed copy) becomes the union
of its probes, and copies that disagree on a probe are refused with OUT untouched.

The searches are test records (``test_report_culprit.search``) saved through the
store, as ``repro-lib bisect`` saves them; no Docker.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from repro_lib.culprit import SearchRecord
from repro_lib.merge import MergeConflict, merge_stores, merged_view
from repro_lib.store import Store

from .conftest import run_cli
from .factories import make_record
from .test_report_culprit import CONFIDENT, SHORT, search


def _save(path: Path, *searches: SearchRecord, settings: dict | None = None) -> Path:
    with Store(path) as st:
        st.append(make_record(1, run_id=f"trials-of-{path.stem}"))
        for record in searches:
            st.save_search(record, settings)
    return path


def _searches(path: Path) -> list[SearchRecord]:
    with Store(path, read_only=True) as st:
        return st.searches()


def _sql(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(sql, args).fetchall()
        db.commit()
        return rows


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


#: a search killed after two probes, and the same search resumed to the end
KILLED = search(CONFIDENT[:2], status="interrupted")
FINISHED = search(CONFIDENT)


def test_searches_in_different_stores_are_all_merged(tmp_path):
    a = _save(tmp_path / "a.sqlite", search(CONFIDENT))
    b = _save(tmp_path / "b.sqlite", search(SHORT, status="budget spent", search_id="c-two"))
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a, b])
    assert _searches(out) == _searches(a) + _searches(b)
    assert len(_searches(out)[1].probes) == len(SHORT)
    with merged_view([a, b]) as view:  # what reports and notebooks read
        assert _searches(view) == _searches(out)


def test_the_same_search_in_two_stores_deduplicates(tmp_path):
    a = _save(tmp_path / "a.sqlite", FINISHED, settings={"build": "make {image}"})
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(a.read_bytes())
    out = tmp_path / "out.sqlite"
    merge_stores(out, [a, copy])
    assert _searches(out) == [FINISHED]
    assert _sql(out, "SELECT count(*) FROM culprit_probes") == [(len(CONFIDENT),)]
    with Store(out, read_only=True) as st:
        assert st.search_settings(FINISHED.search_id) == {"build": "make {image}"}


@pytest.mark.parametrize("order", ["killed first", "finished first"])
def test_a_resumed_search_merges_as_the_union_of_its_probes(tmp_path, order):
    killed = _save(tmp_path / "killed.sqlite", KILLED)
    finished = _save(tmp_path / "finished.sqlite", FINISHED)
    assert KILLED.probes == FINISHED.probes[:2]  # a prefix: the same first two probes
    inputs = [killed, finished] if order == "killed first" else [finished, killed]
    out = tmp_path / "out.sqlite"
    merge_stores(out, inputs)
    # status, candidates and posteriors come from the copy that got furthest
    assert _searches(out) == [FINISHED]
    (started,) = _sql(killed, "SELECT started_at FROM culprit_searches")
    assert _sql(out, "SELECT started_at FROM culprit_searches") == [started]  # the earliest
    before = _state(out)
    merge_stores(out, inputs)  # merging again changes nothing
    assert _state(out) == before


def test_out_holding_the_killed_search_is_brought_up_to_the_resumed_one(tmp_path):
    out = _save(tmp_path / "out.sqlite", KILLED)
    finished = _save(tmp_path / "finished.sqlite", FINISHED)
    merge_stores(out, [finished])
    assert _searches(out) == [FINISHED]
    # and the other way round: OUT, already further on, stays as it is
    ahead = _save(tmp_path / "ahead.sqlite", FINISHED)
    merge_stores(ahead, [_save(tmp_path / "behind.sqlite", KILLED)])
    assert _searches(ahead) == [FINISHED]


def test_a_probe_recorded_differently_is_refused_and_out_is_untouched(tmp_path):
    killed = _save(tmp_path / "killed.sqlite", KILLED)
    changed = [CONFIDENT[0], (8, 30, 13), *CONFIDENT[2:]]  # probe 2 saw another count
    other = _save(tmp_path / "other.sqlite", search(changed))
    fresh = tmp_path / "fresh.sqlite"
    proc = run_cli("merge", str(fresh), str(killed), str(other), home=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "probe 2 of culprit search c-test" in lines[0] and "12 vs 13" in lines[0]
    assert "killed.sqlite" in lines[0] and "other.sqlite" in lines[0]
    assert not fresh.exists()
    out = _save(tmp_path / "out.sqlite", KILLED)
    before = _state(out)
    with pytest.raises(MergeConflict, match="probe 2 of culprit search c-test"):
        merge_stores(out, [other])
    assert _state(out) == before


@pytest.mark.parametrize(
    "other, what",
    [
        (replace(KILLED, good="v0.8.0"), "different good"),
        (search([], n=12), "10 and 12 candidates"),
        (search([], subject=lambda i: f"another {i}"), "candidate 0 different"),
    ],
)
def test_copies_of_one_search_id_that_searched_other_things_are_refused(tmp_path, other, what):
    killed = _save(tmp_path / "killed.sqlite", KILLED)
    odd = _save(tmp_path / "odd.sqlite", other)
    with pytest.raises(MergeConflict, match=what):
        merge_stores(tmp_path / "out.sqlite", [killed, odd])
    assert not (tmp_path / "out.sqlite").exists()


def _old_store(path: Path) -> Path:
    """A store from before culprit searches: no culprit tables, schema version 0."""
    with Store(path) as st:
        st.append(make_record(1, run_id="old-run"))
    for table in ("culprit_searches", "culprit", "culprit_probes"):
        _sql(path, f"DROP TABLE {table}")
    _sql(path, "PRAGMA user_version = 0")
    _sql(path, "PRAGMA journal_mode = DELETE")  # shipped as one file, opened immutable
    return path


def test_a_store_from_before_culprit_searches_merges_as_before(tmp_path):
    old = _old_store(tmp_path / "old.sqlite")
    old.chmod(0o444)
    before = _state(old)
    new = _save(tmp_path / "new.sqlite", FINISHED)
    for name, inputs in [("a", [old]), ("b", [old, new]), ("c", [new, old])]:
        out = tmp_path / f"out-{name}.sqlite"
        merge_stores(out, inputs)
        assert _searches(out) == ([FINISHED] if new in inputs else [])
        assert _sql(out, "SELECT count(*) FROM trials WHERE run_id = 'old-run'") == [(1,)]
    # an old store as OUT gains the tables
    old_out = _old_store(tmp_path / "old-out.sqlite")
    merge_stores(old_out, [new])
    assert _searches(old_out) == [FINISHED]
    assert _state(old) == before
    assert sorted(p.name for p in tmp_path.glob("old.sqlite*")) == ["old.sqlite"]
