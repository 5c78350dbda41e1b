"""Driving a culprit search: one process at a time (the lock beside the store), and what a resume may change."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from repro_lib import bisect, locks
from repro_lib.errors import UsageError

HOLD = """
import sys, time
from repro_lib import locks
with locks.held(sys.argv[1], "search-s1", what="culprit search s1"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    store = tmp_path / "trials.sqlite"
    store.touch()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield store, proc
    proc.kill()
    proc.wait()


def test_a_second_process_is_refused_with_the_holders_pid(holder):
    store, proc = holder
    with (
        pytest.raises(
            UsageError, match=rf"culprit search s1 is running in another process \(pid {proc.pid}\)"
        ),
        locks.held(store, "search-s1", what="culprit search s1"),
    ):
        pass


def test_other_searches_are_not_held_up(holder):
    store, _ = holder
    with locks.held(store, "search-s2", what="culprit search s2") as path:
        assert path.exists()


def test_a_killed_holder_leaves_the_lock_free(holder):
    store, proc = holder
    proc.kill()
    proc.wait()
    assert locks.lock_path(store, "search-s1").exists()  # a kill leaves the file...
    with locks.held(store, "search-s1", what="culprit search s1"):
        pass  # ...but not the lock
    assert not locks.lock_path(store, "search-s1").exists()


def test_release_removes_the_file_and_the_lock_can_be_taken_again(tmp_path):
    store = tmp_path / "trials.sqlite"
    for _ in range(2):
        with locks.held(store, "search-x", what="x") as path:
            assert path.read_text() == str(__import__("os").getpid())
        assert not path.exists()


def test_resuming_a_search_another_process_drives_is_refused(holder):
    store, proc = holder
    started = time.monotonic()
    with pytest.raises(UsageError, match="running in another process"):
        bisect.resume_search("s1", client=None, store_path=store, paths=None, say=print)
    assert time.monotonic() - started < 5  # refused at once, not after waiting


def test_resume_takes_this_machines_allow_prune(tmp_path, monkeypatch):
    # a search started without --allow-prune stops at its first probe on an engine the
    # lab did not start; its resume must be able to give that permission
    from dataclasses import replace

    from repro_lib.store import Store
    from tests.test_report_culprit import SHORT, search

    store = tmp_path / "trials.sqlite"
    record = replace(search(SHORT, search_id="s-prune"), kind="versions", repo=None)
    plan = {"versions": ["v0"], "reset_freq": [2], "tries": 6, "backend": "engine"}
    with Store(store) as st:
        st.save_search(record, {"plan": plan, "cycles_per_probe": 3, "command": ""})
    seen = []
    monkeypatch.setattr(bisect, "_drive", lambda setup, rec, **kw: seen.append(setup.plan) or rec)
    for allow in (False, True):
        bisect.resume_search(
            "s-prune", client=None, store_path=store, paths=None, say=print, allow_prune=allow
        )
    assert [bool(p.batch.get("allow_prune")) for p in seen] == [False, True]


class _Engine:
    """An engine the lab did not start (no lab label), counting what is asked of it."""

    def __init__(self) -> None:
        self.asked = 0

    def info(self) -> dict:
        self.asked += 1
        return {"Labels": ["owner=someone-else"], "KernelVersion": "6.1", "NCPU": 2}

    def version(self) -> dict:
        return {"Version": "20.10.24"}


def test_an_unprunable_engine_is_refused_before_the_search_is_recorded(tmp_path):
    from repro_lib.errors import PruneRefused
    from repro_lib.plan import validate_plan
    from repro_lib.store import Store

    store = tmp_path / "trials.sqlite"
    plan = validate_plan({"versions": ["v0"], "reset_freq": [2], "tries": 6, "backend": "engine"})
    engine = _Engine()
    setup = bisect.SearchSetup(
        client=engine, plan=plan, cycles_per_probe=3, build=None, store_path=store, paths=None
    )
    candidates = bisect.version_range(["v0", "v1", "v2"], "v0", "v2")
    with pytest.raises(PruneRefused, match="not started by the lab"):
        bisect.start_version_search(setup, candidates, search_id="s-early", say=print)
    assert engine.asked == 1
    assert not store.exists() or Store(store).searches() == []


def test_a_taken_search_id_is_refused_and_the_recorded_search_kept(tmp_path, monkeypatch):
    from dataclasses import replace

    from repro_lib.plan import validate_plan
    from repro_lib.store import Store
    from tests.test_report_culprit import SHORT, search

    store = tmp_path / "trials.sqlite"
    kept = replace(search(SHORT, search_id="s-taken"), kind="versions", repo=None)
    with Store(store) as st:
        st.save_search(kept)
    plan = validate_plan(
        {"versions": ["v0"], "reset_freq": [2], "tries": 6, "backend": "container"}
    )
    setup = bisect.SearchSetup(
        client=None, plan=plan, cycles_per_probe=3, build=None, store_path=store, paths=None
    )
    monkeypatch.setattr(bisect, "_drive", lambda *a, **k: pytest.fail("a taken id was driven"))
    candidates = bisect.version_range(["v0", "v1", "v2"], "v0", "v2")
    with pytest.raises(UsageError, match="search s-taken is already in"):
        bisect.start_version_search(setup, candidates, search_id="s-taken", say=print)
    with Store(store) as st:
        assert st.searches("s-taken") == [kept]
