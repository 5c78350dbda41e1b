"""repro-lib merge: no loss, no double counting, and refusals that write nothing.

The inputs are the shipped sample store (real trials recorded by real runs) and
copies of it: subsets of its runs (as if recorded on different machines), and
copies with one fact changed to make a conflict. The sharded sweep merged back
into one sweep on a real engine is in ``test_shard_sweep.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from repro_lib.config import Paths
from repro_lib.errors import UsageError
from repro_lib.merge import MergeConflict, merge_stores
from repro_lib.report import write_report
from repro_lib.results import load_results
from repro_lib.store import Store

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sample(tmp_path) -> Path:
    path = Paths(ROOT).sample_store
    if not path.is_file():
        pytest.skip(f"no sample store shipped at {path.relative_to(ROOT)}")
    copy = tmp_path / "sample.sqlite"
    shutil.copyfile(path, copy)
    return copy


def _sql(path: Path, *statements: str, args: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows: list[tuple] = []
        for statement in statements:
            rows = db.execute(statement, args).fetchall()
        db.commit()
        return rows


def _subset(sample: Path, dest: Path, run_ids: list[str]) -> Path:
    """A copy of the sample store holding only ``run_ids``."""
    shutil.copyfile(sample, dest)
    marks = ",".join("?" for _ in run_ids)
    _sql(dest, f"DELETE FROM trials WHERE run_id NOT IN ({marks})", args=tuple(run_ids))
    _sql(dest, f"DELETE FROM runs WHERE run_id NOT IN ({marks})", args=tuple(run_ids))
    return dest


def _run_ids(path: Path) -> list[str]:
    return [r[0] for r in _sql(path, "SELECT run_id FROM runs ORDER BY run_id")]


def _trials(path: Path) -> pd.DataFrame:
    return load_results(path).sort_values(["run_id", "trial"]).reset_index(drop=True)


def _state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_overlapping_stores_merge_without_loss_or_double_counting(sample, tmp_path):
    runs = _run_ids(sample)
    a = _subset(sample, tmp_path / "a.sqlite", runs[:4])
    b = _subset(sample, tmp_path / "b.sqlite", runs[3:])  # run 4 is in both
    out = tmp_path / "out.sqlite"
    result = merge_stores(out, [a, b])
    assert [s.trials_present for s in result.sources] == [0, 40]
    pd.testing.assert_frame_equal(_trials(out), _trials(sample))
    assert _run_ids(out) == runs
    prov = _sql(out, "SELECT run_id, source, kernel FROM provenance ORDER BY run_id, source")
    assert {(r, s) for r, s, _ in prov} == {(r, str(a)) for r in runs[:4]} | {
        (r, str(b)) for r in runs[3:]
    }
    assert all(kernel for *_, kernel in prov)  # the recording host's facts travel along


def test_merging_again_changes_nothing(sample, tmp_path):
    out = tmp_path / "out.sqlite"
    proc = run_cli("merge", str(out), str(sample), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "280 trials added" in proc.stdout
    before = _state(out)
    again = run_cli("merge", str(out), str(sample), str(sample), home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 trials added" in again.stdout.splitlines()[-1]
    assert _state(out) == before
    # the merged store reads back as the sample: every trial, once
    pd.testing.assert_frame_equal(_trials(out), _trials(sample))


def test_a_conflicting_trial_is_refused_and_out_is_untouched(sample, tmp_path):
    out = tmp_path / "out.sqlite"
    merge_stores(out, [sample])
    other = tmp_path / "other.sqlite"
    shutil.copyfile(sample, other)
    run_id = _run_ids(sample)[0]
    _sql(
        other,
        "UPDATE trials SET outcome = 'missing_layer' WHERE run_id = ? AND trial = 3",
        args=(run_id,),
    )
    extra = _subset(sample, tmp_path / "extra.sqlite", [])  # nothing new in it, but valid
    before = _state(out)
    proc = run_cli("merge", str(out), str(extra), str(other), home=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"trial 3 of run {run_id}" in lines[0]
    assert "'ok' vs 'missing_layer'" in lines[0]
    assert _state(out) == before
    # two inputs that disagree: OUT is not even created
    fresh = tmp_path / "fresh.sqlite"
    with pytest.raises(MergeConflict):
        merge_stores(fresh, [sample, other])
    assert not fresh.exists()


def test_a_run_recorded_with_other_parameters_is_a_conflict(sample, tmp_path):
    other = tmp_path / "other.sqlite"
    shutil.copyfile(sample, other)
    _sql(other, "DELETE FROM trials")
    _sql(other, "UPDATE runs SET params = '{}' WHERE run_id = ?", args=(_run_ids(sample)[0],))
    with pytest.raises(MergeConflict, match="different params"):
        merge_stores(tmp_path / "out.sqlite", [sample, other])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no trials table"])
def test_a_corrupt_input_store_is_one_line_and_exit_2(sample, tmp_path, damage):
    bad = tmp_path / "bad.sqlite"
    if damage == "garbage":
        bad.write_bytes(b"this is not a database\n" * 200)
    elif damage == "truncated":
        bad.write_bytes(sample.read_bytes()[:8192])
    else:
        shutil.copyfile(sample, bad)
        _sql(bad, "DROP TABLE trials")
    out = tmp_path / "out.sqlite"
    merge_stores(out, [sample])
    before = _state(out)
    proc = run_cli("merge", str(out), str(bad), home=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.sqlite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _state(out) == before


def test_a_store_from_a_newer_schema_is_refused(sample, tmp_path):
    newer = tmp_path / "newer.sqlite"
    shutil.copyfile(sample, newer)
    _sql(newer, "PRAGMA user_version = 99")
    with pytest.raises(UsageError, match="schema 99, newer"):
        merge_stores(tmp_path / "out.sqlite", [newer])
    assert not (tmp_path / "out.sqlite").exists()


def test_other_tables_and_newer_columns_are_copied_generically(sample, tmp_path):
    """A store from a newer layout (a table and trial columns this version lacks)."""
    newer = tmp_path / "newer.sqlite"
    shutil.copyfile(sample, newer)
    _sql(
        newer,
        "CREATE TABLE host_facts (batch_id TEXT PRIMARY KEY, run_id TEXT, host TEXT)",
        "INSERT INTO host_facts VALUES ('b1', 'r1', 'ci-1'), ('b2', 'r2', 'ci-2')",
        "ALTER TABLE trials ADD COLUMN rack TEXT",
        "UPDATE trials SET rack = 'laptop-7'",
    )
    out = tmp_path / "out.sqlite"
    merge_stores(out, [newer])
    merge_stores(out, [newer])
    assert _sql(out, "SELECT * FROM host_facts ORDER BY batch_id") == [
        ("b1", "r1", "ci-1"),
        ("b2", "r2", "ci-2"),
    ]
    assert _sql(out, "SELECT DISTINCT rack FROM trials") == [("laptop-7",)]
    changed = tmp_path / "changed.sqlite"
    shutil.copyfile(newer, changed)
    _sql(changed, "UPDATE host_facts SET host = 'elsewhere' WHERE batch_id = 'b1'")
    with pytest.raises(MergeConflict, match="host_facts row"):
        merge_stores(out, [changed])


def _sweep_store(path: Path, sweep_id: str, tries: int, shard: str) -> None:
    from repro_lib.plan import plan_digest, validate_plan

    plan = validate_plan({"backend": "engine", "reset_freq": [1, 2, 3], "tries": tries})
    with Store(path) as store:
        store.start_sweep(sweep_id, {**plan.as_dict(), "shard": shard})
        run_id = plan.cells()[int(shard[0]) - 1].run_id(sweep_id)
        store.start_run(run_id, {"tries": tries}, sweep_id=sweep_id)
        store.tag_run(run_id, shard=shard, plan_digest=plan_digest(plan))


def test_shards_of_one_sweep_with_different_plans_are_refused(tmp_path):
    _sweep_store(tmp_path / "s1.sqlite", "ci-7", 2, "1/3")
    _sweep_store(tmp_path / "s2.sqlite", "ci-7", 3, "2/3")
    _sweep_store(tmp_path / "s3.sqlite", "ci-7", 2, "3/3")
    out = tmp_path / "out.sqlite"
    merge_stores(out, [tmp_path / "s1.sqlite", tmp_path / "s3.sqlite"])
    before = _state(out)
    proc = run_cli("merge", str(out), str(tmp_path / "s2.sqlite"), home=tmp_path)
    assert proc.returncode == 2
    assert "sweep ci-7 ran different plans" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _state(out) == before


def test_load_results_and_reports_take_a_list_of_stores(sample, tmp_path):
    runs = _run_ids(sample)
    a = _subset(sample, tmp_path / "a.sqlite", runs[:3])
    b = _subset(sample, tmp_path / "b.sqlite", runs[2:])
    pd.testing.assert_frame_equal(
        load_results([a, b]).sort_values(["run_id", "trial"]).reset_index(drop=True),
        _trials(sample),
    )
    report = write_report([str(a), b], tmp_path / "report")
    text = report.read_text(encoding="utf-8")
    assert "`a.sqlite`, `b.sqlite`" in text
    whole = write_report(sample, tmp_path / "whole").read_text(encoding="utf-8")
    cells = [line for line in text.splitlines() if line.startswith("| `")]
    assert cells and cells == [line for line in whole.splitlines() if line.startswith("| `")]
    other = tmp_path / "other.sqlite"
    shutil.copyfile(a, other)
    _sql(other, "UPDATE trials SET outcome = 'build_error' WHERE trial = 1")
    with pytest.raises(MergeConflict):
        load_results([a, other])
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("repro-lib-merged-*/merged.sqlite"))


def test_merge_needs_a_store_and_refuses_to_merge_out_into_itself(sample, tmp_path):
    proc = run_cli("merge", str(tmp_path / "out.sqlite"), home=tmp_path)
    assert proc.returncode == 2  # click: missing argument
    proc = run_cli("merge", str(sample), str(sample), home=tmp_path)
    assert proc.returncode == 2 and "is OUT itself" in proc.stderr


def test_reading_or_merging_an_old_store_leaves_it_as_it_was(sample, tmp_path):
    """The shipped sample predates the shard columns: analysis must not rewrite it."""
    before = sample.read_bytes()
    load_results(sample)
    write_report(sample, tmp_path / "report")
    merge_stores(tmp_path / "out.sqlite", [sample])
    assert sample.read_bytes() == before
    assert sorted(p.name for p in sample.parent.glob("sample.sqlite*")) == ["sample.sqlite"]


def test_an_old_store_gains_the_shard_columns_when_a_sweep_tags_a_run(sample):
    assert _sql(sample, "PRAGMA user_version") == [(0,)]
    before = _sql(sample, "SELECT * FROM runs ORDER BY run_id")
    run_id = before[0][0]
    with Store(sample) as store:
        assert store.run(run_id).get("shard") is None
        store.tag_run(run_id, shard="1/2", plan_digest="abc")
        assert store.run(run_id)["shard"] == "1/2"
    assert _sql(sample, "PRAGMA user_version") == [(1,)]
    after = _sql(sample, "SELECT * FROM runs ORDER BY run_id")
    assert [row[:-2] for row in after] == before
    assert [row[-2:] for row in after] == [("1/2", "abc")] + [(None, None)] * (len(before) - 1)


def test_merge_keeps_the_cycle_key_beside_stores_from_before_it(sample, tmp_path):
    from .factories import make_record

    new = tmp_path / "new.sqlite"
    with Store(new) as st:
        for trial, cycle in [(1, 1), (2, 1), (3, 3)]:
            st.append(make_record(trial, run_id="with-cycle", cycle=cycle))
    out = tmp_path / "out.sqlite"
    merge_stores(out, [sample, new])
    df = load_results(out)
    assert df.loc[df["run_id"] == "with-cycle", "cycle"].tolist() == [1, 1, 3]
    old = df[df["run_id"] != "with-cycle"]  # the sample's rows: derived, never missing
    assert old["cycle"].notna().all() and (old["cycle"] <= old["trial"]).all()
