"""Many processes creating, upgrading and writing one store at once; none locked out.

Shards, lanes, cluster clients and notebooks open stores together. Here 8
writer processes create (or upgrade) the same store at the same moment, round
after round, and append trials, while a reader (``load_results``) and a merge
into another store run meanwhile. Real processes, not threads: SQLite's locks
are between processes, and the failure was a lock SQLite did not wait for.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from repro_lib.merge import merge_stores
from repro_lib.results import load_results
from repro_lib.store import SCHEMA_VERSION, TABLES, Store

from .factories import make_record

WRITERS = 8
ROUNDS = 20
TRIALS = 2  # per writer and round
#: between two reads, and two merges: they run all along without taking both cores
PAUSE_S = 0.02
#: every process must be done by then; a hang is a failure, not a stuck suite
DEADLINE_S = 120
#: columns a store written by an older version lacks (it also has no batches table)
OLD_MISSING = {"runs": ("shard", "plan_digest"), "trials": ("security", "attempt", "host")}

_fork = multiprocessing.get_context("fork")  # the children need no re-import of pandas


def _store(tmp: Path, round_no: int) -> Path:
    return tmp / f"round-{round_no:02d}.sqlite"


def _old_store(path: Path, run_id: str) -> None:
    """A store as a version before ``user_version`` wrote it, holding one run of two trials."""
    with Store(path) as store:
        store.start_run(run_id, {})
        for trial in (1, 2):
            store.append(make_record(trial, run_id=run_id))
        store.finish_run(run_id, "done")
    db = sqlite3.connect(path, isolation_level=None)
    for table, columns in OLD_MISSING.items():
        for column in columns:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("DROP TABLE batches")
    db.execute("PRAGMA user_version = 0")
    db.close()


def _report(tmp: Path, name: str, errors: list[str], count: int) -> None:
    (tmp / f"report-{name}.json").write_text(json.dumps({"errors": errors, "count": count}))


def _writer(tmp: Path, number: int, start, opened, made) -> None:
    errors: list[str] = []
    for round_no in range(ROUNDS):
        run_id = f"w{number}-r{round_no}"
        try:
            start.wait(timeout=DEADLINE_S)  # all writers open the round's store at once
            with Store(_store(tmp, round_no)) as store:
                if opened.wait(timeout=DEADLINE_S) == 0:  # every writer has it open
                    made.value = round_no + 1
                store.start_run(run_id, {"writer": number})
                for trial in range(1, TRIALS + 1):
                    store.append(make_record(trial, run_id=run_id))
                store.finish_run(run_id, "done")
        except Exception as exc:  # noqa: BLE001 - every error is reported by the test
            errors.append(f"round {round_no}: {type(exc).__name__}: {exc}")
            start.abort()  # the others stop at their next wait instead of hanging
            opened.abort()
            break
    _report(tmp, f"writer-{number}", errors, ROUNDS)


def _stores(tmp: Path, made) -> list[Path]:
    """The round stores there are, or (``made`` not None) those made already."""
    stores = sorted(tmp.glob("round-*.sqlite"))
    return stores if made is None else stores[: made.value]


def _reader(tmp: Path, writers_done, made) -> None:
    """Reads the newest store again and again, as a notebook would."""
    errors: list[str] = []
    reads = 0
    while not writers_done.wait(PAUSE_S):
        stores = _stores(tmp, made)
        if not stores:
            continue
        try:
            df = load_results(stores[-1])
            if df.duplicated(["run_id", "trial"]).any():
                errors.append(f"{stores[-1].name}: a trial read twice")
            reads += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{stores[-1].name}: {type(exc).__name__}: {exc}")
    _report(tmp, "reader", errors, reads)


def _merger(tmp: Path, writers_done, made) -> None:
    """Merges every store there is into another one, again and again."""
    errors: list[str] = []
    merges = 0
    while not writers_done.wait(PAUSE_S):
        stores = _stores(tmp, made)
        if not stores:
            continue
        try:
            merge_stores(tmp / "merged.sqlite", stores)
            merges += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
    _report(tmp, "merger", errors, merges)


def _keys(path: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT run_id, trial FROM trials").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("before", ["absent", "empty file", "old schema"])
def test_eight_processes_creating_one_store_each_round(tmp_path, before):
    """0 errors anywhere, and every trial in its store and in the merged one exactly once.

    ``absent`` is the usual new store; ``empty file`` a path made beforehand (or a
    filesystem without hard links), where the store is made in place; ``old
    schema`` a store the writers upgrade while opening it together.
    """
    expected: dict[Path, set[tuple[str, int]]] = {}
    for round_no in range(ROUNDS):
        path = _store(tmp_path, round_no)
        keys = {(f"w{w}-r{round_no}", t) for w in range(WRITERS) for t in range(1, TRIALS + 1)}
        if before == "empty file":
            path.touch()
        elif before == "old schema":
            _old_store(path, f"old-r{round_no}")
            keys |= {(f"old-r{round_no}", 1), (f"old-r{round_no}", 2)}
        expected[path] = keys
    start, opened = _fork.Barrier(WRITERS), _fork.Barrier(WRITERS)
    made = _fork.Value("i", 0)
    writers_done = _fork.Event()
    writers = [
        _fork.Process(target=_writer, args=(tmp_path, n, start, opened, made))
        for n in range(WRITERS)
    ]
    # an empty file is no store: made in place, it is not one until made, so
    # there the reader and the merge wait for that; elsewhere they read at once
    gate = made if before == "empty file" else None
    others = [
        _fork.Process(target=f, args=(tmp_path, writers_done, gate)) for f in (_reader, _merger)
    ]
    began = time.monotonic()
    for process in (*others, *writers):
        process.start()
    try:
        for process in writers:
            process.join(timeout=max(1, DEADLINE_S - (time.monotonic() - began)))
    finally:
        writers_done.set()
        for process in others:
            process.join(timeout=DEADLINE_S)
        for process in (*writers, *others):
            if process.is_alive():
                process.kill()
    elapsed = time.monotonic() - began

    reports = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("report-*.json")}
    assert len(reports) == WRITERS + 2, f"a process died: {sorted(reports)}"
    errors = {name: r["errors"] for name, r in sorted(reports.items()) if r["errors"]}
    causes = sorted(errors.items(), key=lambda item: "BrokenBarrierError" in item[1][0])
    assert not errors, "\n".join(f"{n}: {len(e)} errors, first {e[0]}" for n, e in causes)
    assert reports["report-reader.json"]["count"] > 0, "the reader never read a store"
    assert reports["report-merger.json"]["count"] > 0, "the merge never ran"

    for path, keys in expected.items():
        rows = _keys(path)
        assert len(rows) == len(set(rows)) and set(rows) == keys, path.name
        with Store(path, read_only=True) as store:
            assert {r["status"] for r in store.runs()} == {"done"}
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for name, table in TABLES.items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({name})")}
            assert {c.name for c in table.columns} <= have, (path.name, name)
        db.close()
    merged = tmp_path / "merged.sqlite"
    merge_stores(merged, list(expected))  # the last rounds, written after the merger's last pass
    rows = _keys(merged)
    assert len(rows) == len(set(rows)), "a trial merged twice"
    assert set(rows) == {(run, trial) for keys in expected.values() for run, trial in keys}
    assert not list(tmp_path.glob(".*")), "a draft store was left behind"
    counts = {n: r["count"] for n, r in reports.items() if "writer" not in n}
    print(f"{before}: {WRITERS}x{ROUNDS} rounds in {elapsed:.1f} s, {counts}")
