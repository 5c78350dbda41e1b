"""Killing the runner: recorded trials survive, cleanup leaves nothing labelled."""

from __future__ import annotations

import contextlib
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
        with contextlib.closing(sqlite3.connect(store_path, timeout=5)) as db:
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


def test_killed_cache_registry_is_an_infra_error_and_stops_clearly(
    docker_client, fixture_images, docker_cli, lab_home
):
    from repro_lib.config import LAB_LABEL, ROLE_LABEL, lab_id

    store_path = lab_home / "data/raw/trials.sqlite"
    proc = _start(lab_home, "--tries", "100", "--reset-freq", "1")
    _wait_for_rows(proc, store_path, 3)
    (registry,) = docker_client.containers.list(
        filters={"label": [f"{ROLE_LABEL}=cache-registry", f"{LAB_LABEL}={lab_id()}"]}
    )
    registry.update(restart_policy={"Name": "no"})  # stays dead, so the batch must give up
    registry.kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert "cache registry container stopped" in last and len(last) < 600
    with Store(store_path) as store:
        (run,) = store.runs()
        records = store.trials(run["run_id"])
    outcomes = [r.outcome.value for r in records]
    assert outcomes[:3] == ["ok"] * 3
    first_error = outcomes.index("infra_error")  # never counted as ok or as a missing layer
    assert set(outcomes[first_error:]) == {"infra_error"}
    assert all(
        "cache" in r.detail or "registry" in r.detail
        for r in records
        if r.outcome.value == "infra_error"
    )
    assert [r.trial for r in records] == list(range(1, len(records) + 1))
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


@pytest.fixture
def private_engine(docker_client, fixture_images, lab_home):
    """A lab-started engine of this test's own, loaded with the fixture images."""
    from repro_lib import dockerd as private
    from repro_lib.config import Paths
    from repro_lib.errors import MissingRequirement

    paths = Paths(lab_home)
    name = f"t{os.getpid()}"
    try:
        started = private.start(paths, name)
    except MissingRequirement as exc:
        pytest.skip(exc.one_line())
    client = lab.connect(started.host)
    for ref in fixture_images.values():
        client.images.load(b"".join(docker_client.images.get(ref).save(named=True)))
    yield paths, name, started, client
    lab.sweep(client, include_live=True)
    client.close()
    private.stop(paths, name)
    private.remove_data(paths, name)


def test_engine_restart_mid_batch_is_ridden_out(private_engine, lab_home):
    from repro_lib import dockerd as private

    paths, name, started, client = private_engine
    store_path = lab_home / "data/raw/trials.sqlite"
    args = [a for a in ENGINE_ARGS if a != "--allow-prune"]  # the lab started this engine
    env = dict(os.environ, REPRO_LIB_HOME=str(lab_home))
    proc = subprocess.Popen(
        repro_lib_cmd(
            "reproduce", *args, "--engine-host", started.host, "--tries", "14", "--reset-freq", "2"
        ),
        cwd=lab_home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_rows(proc, store_path, 4)
    private.stop(paths, name)
    private.start(paths, name)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    with Store(store_path) as store:
        (run,) = store.runs()
        records = store.trials(run["run_id"])
    assert [r.trial for r in records] == list(range(1, 15))  # every try recorded, none lost
    outcomes = [r.outcome.value for r in records]
    assert outcomes.count("ok") >= 11 and set(outcomes) <= {"ok", "infra_error"}
    assert outcomes[-1] == "ok"  # it recovered
    assert lab.leftovers(client) == {"containers": [], "volumes": []}


def test_full_data_directory_stops_with_a_clear_message(
    docker_client, fixture_images, docker_cli, lab_home
):
    """A 1 MiB tmpfs as data/raw: the store fills up mid-batch."""
    raw = lab_home / "data/raw"
    raw.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(raw)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = _start(lab_home, "--tries", "400", "--reset-freq", "50")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err[-2000:]
        assert "cannot record trial" in err and "resume" in err
        recorded = _rows(raw / "trials.sqlite")
        assert recorded > 0
        with Store(raw / "trials.sqlite") as store:
            (run,) = store.runs()
            assert [r.trial for r in store.trials(run["run_id"])] == list(range(1, recorded + 1))
    finally:
        if subprocess.run(["umount", str(raw)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(raw)], check=False)
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_two_labs_do_not_see_or_clean_each_other(docker_client, lab_home):
    other_env = {"REPRO_LIB_LAB": "other-lab-" + os.urandom(3).hex()}
    dead_labels = lab.labels("r-other")
    dead_labels["repro-lib.lab"] = other_env["REPRO_LIB_LAB"]
    dead_labels["repro-lib.owner-pid"] = "999999999"  # a dead run of the other lab
    volume = docker_client.volumes.create(name="repro-lib-other-lab-test", labels=dead_labels)
    try:
        mine = run_cli("clean", "--all", home=lab_home)
        assert mine.returncode == 0
        docker_client.volumes.get(volume.name)  # untouched by this lab
        assert volume.name not in lab.leftovers(docker_client)["volumes"]
        theirs = run_cli("clean", home=lab_home, env=other_env)
        assert theirs.returncode == 0 and "1 volumes" in theirs.stdout
    finally:
        with contextlib.suppress(Exception):
            volume.remove(force=True)


def test_run_directories_are_private(docker_client, fixture_images, docker_cli, lab_home):
    proc = run_cli("reproduce", *ENGINE_ARGS, "--tries", "1", "--json", home=lab_home)
    assert proc.returncode == 0, proc.stderr
    run_id = __import__("json").loads(proc.stdout.splitlines()[-1])["run_id"]
    mode = (lab_home / "data/runs" / run_id).stat().st_mode & 0o777
    assert mode == 0o700
