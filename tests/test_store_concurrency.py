"""One store, several writers at once: two batches and a report, none locked out.

Users run a second batch (or a report) while one is going, on the same
``data/raw/trials.sqlite``. The store is in WAL mode with a busy timeout, a new
store appears complete, and an old store is upgraded by whichever run gets
there first while the others wait. (Many processes at once: test_store_stress.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import threading
import time

import pandas as pd
import pytest

from repro_lib import lab
from repro_lib import store as store_module
from repro_lib.errors import UsageError
from repro_lib.store import TABLES, Column, Store, Table, filesystem_type

from .conftest import ENGINE_ARGS, repro_lib_cmd
from .factories import make_record

NEW_COLUMN = "security"


def _old_store(path) -> None:
    """A store as the previous version wrote it: every table, no ``security`` column yet."""
    Store(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"ALTER TABLE trials DROP COLUMN {NEW_COLUMN}")
    db.close()


def test_an_old_store_upgraded_by_two_openers_at_once(tmp_path):
    path = tmp_path / "trials.sqlite"
    _old_store(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the other run is upgrading right now
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(path).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    opener = threading.Thread(target=open_store)
    opener.start()
    time.sleep(0.5)  # it saw the column missing and now waits for the write lock
    assert opener.is_alive()
    other.execute(f"ALTER TABLE trials ADD COLUMN {NEW_COLUMN} TEXT")
    other.execute("COMMIT")
    opener.join(timeout=30)
    assert not errors, errors
    with Store(path) as store:
        assert NEW_COLUMN in store.dataframe().columns


def test_an_opener_waits_while_another_process_writes_a_store_not_yet_in_wal(tmp_path):
    """Switching to WAL needs the file to itself; while another process holds the
    write lock (e.g. its own switch), SQLite fails at once instead of waiting."""
    path = tmp_path / "made-beforehand.sqlite"
    path.touch()  # an empty file: the store is made in place
    ctx = multiprocessing.get_context("fork")
    go, result = ctx.Event(), ctx.Queue()

    def opener() -> None:
        go.wait(timeout=30)
        began = time.monotonic()
        try:
            Store(path).close()
            result.put((time.monotonic() - began, ""))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result.put((time.monotonic() - began, f"{type(exc).__name__}: {exc}"))

    # forked before this process opens the file: SQLite's locks must not cross a fork
    process = ctx.Process(target=opener)
    process.start()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    go.set()
    time.sleep(0.5)
    writer.execute("COMMIT")
    writer.close()
    took, error = result.get(timeout=40)
    process.join(timeout=10)
    assert error == ""
    assert took >= 0.4  # it waited for the writer instead of failing
    with Store(path) as store:
        store.append(make_record(1))
        assert len(store.dataframe()) == 1


def test_a_new_store_appears_complete(tmp_path):
    path = tmp_path / "new.sqlite"
    Store(path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.sqlite"]  # no draft left
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == set(
        TABLES
    )
    db.close()


def test_without_hard_links_a_store_is_made_in_place(tmp_path, monkeypatch):
    def no_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")  # e.g. FAT, some FUSE

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "in-place.sqlite"
    with Store(path) as store:
        store.append(make_record(1))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
        "in-place.sqlite"
    ]
    with Store(path, read_only=True) as store:
        assert len(store.dataframe()) == 1


def test_an_added_column_is_filled_in_older_rows(tmp_path, monkeypatch):
    """The upgrade of a column is declared with it: here, derived from another column."""
    path = tmp_path / "old.sqlite"
    with Store(path) as store:
        store.append(make_record(1, reset_index=3))
    trials = TABLES["trials"]
    next_index = Column("next_index", "INTEGER", backfill="reset_index + 1")
    monkeypatch.setitem(TABLES, "trials", Table((*trials.columns, next_index), trials.constraints))
    with Store(path) as store:
        assert store.dataframe()["next_index"].tolist() == [4]


def _mounts(tmp_path, monkeypatch, *lines: str) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("".join(f"{line}\n" for line in lines))
    monkeypatch.setattr(store_module, "MOUNTS", mounts)


def test_the_filesystem_of_a_path_is_its_nearest_mount(tmp_path, monkeypatch):
    _mounts(
        tmp_path,
        monkeypatch,
        "/dev/vda / ext4 rw 0 0",
        "server:/export /mnt/my\\040share nfs4 rw 0 0",  # a space in the mount point
        "tmpfs /mnt/my\\040share/scratch tmpfs rw 0 0",
        "server:/other /mnt/over nfs rw 0 0",
        "/dev/vdb /mnt/over ext4 rw 0 0",  # mounted later on the same point: hides the nfs
    )
    assert filesystem_type("/mnt/my share/data/s.sqlite") == "nfs4"
    assert filesystem_type("/mnt/my share/scratch/s.sqlite") == "tmpfs"
    assert filesystem_type("/mnt/my sharepoint/s.sqlite") == "ext4"
    assert filesystem_type("/mnt/over/s.sqlite") == "ext4"
    monkeypatch.setattr(store_module, "MOUNTS", tmp_path / "absent")
    assert filesystem_type("/mnt/over/s.sqlite") is None  # not Linux: nothing to tell


def test_a_store_on_nfs_is_refused_for_writing_and_read_as_it_is(tmp_path, monkeypatch):
    shipped = tmp_path / "nfs/shipped.sqlite"
    with Store(shipped) as store:
        store.append(make_record(1))
    _mounts(
        tmp_path, monkeypatch, "/dev/vda / ext4 rw 0 0", f"server:/x {tmp_path}/nfs nfs4 rw 0 0"
    )
    with pytest.raises(UsageError) as refused:
        Store(tmp_path / "nfs/new/trials.sqlite")
    line = refused.value.one_line()
    assert "network filesystem (nfs4)" in line and "--store on a local disk" in line
    assert "\n" not in line
    assert not (tmp_path / "nfs/new").exists()  # nothing made there
    with pytest.raises(UsageError):
        Store(shipped)
    with Store(shipped, read_only=True) as store:  # analysing a store kept on NFS is fine
        assert len(store.dataframe()) == 1


def test_two_batches_and_a_report_on_one_store(docker_client, fixture_images, docker_cli, lab_home):
    """Every row of both runs lands, and the report reads the store meanwhile.

    Both runs reset (prune) the same engine: their reset cycles take turns on the
    engine's lock, so no cycle sees the other run's prune, and no outcome may be a
    missing layer.
    """
    import os

    store = lab_home / "data/raw/trials.sqlite"
    store.parent.mkdir(parents=True)
    _old_store(store)  # both batches also upgrade it at the same moment
    env = dict(os.environ, REPRO_LIB_HOME=str(lab_home))
    tries = 12

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            repro_lib_cmd(*args),
            cwd=lab_home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    batch = ("reproduce", *ENGINE_ARGS, "--tries", str(tries), "--reset-freq", "3", "--json")
    runs = [start(*batch), start(*batch)]
    deadline = time.monotonic() + 300
    while _rows(store) < 2:  # the report starts while both are writing
        assert all(p.poll() is None for p in runs), [p.communicate() for p in runs]
        assert time.monotonic() < deadline, "no trial recorded"
        time.sleep(0.1)
    report = start("report", "--out", str(lab_home / "report"))
    results = [p.communicate(timeout=600) for p in (*runs, report)]
    codes = [p.returncode for p in (*runs, report)]
    for _, err in results:
        assert "database is locked" not in err, err[-3000:]
    assert codes == [0, 0, 0], [err[-2000:] for _, err in results]
    run_ids = [json.loads(out.strip().splitlines()[-1])["run_id"] for out, _ in results[:2]]
    assert (lab_home / "report/report.md").is_file()
    with Store(store) as st:
        df = st.dataframe()
        assert {r: len(st.trials(r)) for r in run_ids} == {r: tries for r in run_ids}
        assert {st.run(r)["status"] for r in run_ids} == {"done"}
    assert len(df) == 2 * tries
    assert "missing_layer" not in set(df["outcome"])
    assert set(df["outcome"]) == {"ok"}
    # the reset cycles of the two runs never overlap in time
    df["start"] = pd.to_datetime(df["started_at"])
    df["end"] = df["start"] + pd.to_timedelta(df["duration_s"], unit="s")
    cycles = df.groupby(["run_id", "reset_index"]).agg(start=("start", "min"), end=("end", "max"))
    a, b = (cycles.loc[r] for r in run_ids)
    for _, one in a.iterrows():
        assert ((b["end"] <= one["start"]) | (b["start"] >= one["end"])).all(), (one, b)
    assert (df["security"] == "{}").all()  # the upgraded column is filled in
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def _rows(path) -> int:
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    finally:
        db.close()
