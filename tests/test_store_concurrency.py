"""One store, several writers at once: two batches and a report, none locked out.

Users run a second batch (or a report) while one is going, on the same
``data/raw/trials.sqlite``. The store is in WAL mode with a busy timeout, and an
old store is upgraded by whichever run gets there first.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time

import pandas as pd

from repro_lib import lab
from repro_lib.store import Store

from .conftest import ENGINE_ARGS, repro_lib_cmd

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
