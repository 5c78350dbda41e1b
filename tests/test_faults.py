"""Killing the runner: recorded trials survive, cleanup leaves nothing labelled."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from repro_lib import lab
from repro_lib.store import Store

from .conftest import ENGINE_ARGS, repro_lib_cmd, run_cli


def _rows(store_path) -> int:
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(store_path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _start(lab_home, *args):
    env = dict(os.environ, REPRO_LIB_HOME=str(lab_home))
    return subprocess.Popen(
        repro_lib_cmd("reproduce", *ENGINE_ARGS, *args),
        cwd=lab_home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(proc, store_path, n, timeout=120):
    deadline = time.monotonic() + timeout
    while _rows(store_path) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trials recorded in time"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_removes_everything_and_keeps_recorded_trials(
    docker_client, fixture_images, docker_cli, lab_home, sig
):
    store_path = lab_home / "data/raw/trials.sqlite"
    proc = _start(lab_home, "--tries", "200", "--reset-freq", "3")
    _wait_for_rows(proc, store_path, 3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    with Store(store_path) as store:
        (run,) = store.runs()
        assert run["status"] == "interrupted"
        records = store.trials(run["run_id"])
    assert len(records) >= 3
    assert [r.trial for r in records] == list(range(1, len(records) + 1))
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    assert not list((lab_home / "data/runs").rglob("outputs/*.tar"))


def test_sigkill_keeps_the_store_and_clean_removes_the_leftovers(
    docker_client, fixture_images, docker_cli, lab_home
):
    store_path = lab_home / "data/raw/trials.sqlite"
    proc = _start(lab_home, "--tries", "200", "--reset-freq", "2")
    _wait_for_rows(proc, store_path, 4)
    proc.kill()
    proc.communicate(timeout=60)
    recorded = _rows(store_path)
    assert recorded >= 4
    with Store(store_path) as store:
        (run,) = store.runs()
        records = store.trials(run["run_id"])
    assert [r.trial for r in records] == list(range(1, recorded + 1))
    assert all(r.outcome.value == "ok" for r in records)
    # the dead run left its registries behind; clean reaps them because their owner is gone
    assert lab.leftovers(docker_client, run["run_id"])["containers"]
    done = run_cli("clean", home=lab_home)
    assert done.returncode == 0, done.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    assert not (lab_home / "data/runs" / run["run_id"] / "owner.json").exists()
    assert (lab_home / "data/runs" / run["run_id"] / "logs").is_dir()  # evidence stays


def test_clean_never_touches_a_live_run(docker_client, fixture_images, docker_cli, lab_home):
    store_path = lab_home / "data/raw/trials.sqlite"
    proc = _start(lab_home, "--tries", "200", "--reset-freq", "2")
    try:
        _wait_for_rows(proc, store_path, 2)
        before = _rows(store_path)
        done = run_cli("clean", home=lab_home)
        assert done.returncode == 0
        assert "live runs" in done.stdout
        _wait_for_rows(proc, store_path, before + 3)  # it keeps going
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    with Store(store_path) as store:
        (run,) = store.runs()
        assert not [r for r in store.trials(run["run_id"]) if r.outcome.value != "ok"]
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
