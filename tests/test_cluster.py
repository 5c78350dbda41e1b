"""Sweeps on a Dask cluster: a real scheduler and two real workers on 127.0.0.1,
each worker on its own private Docker engine standing in for a host."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repro_lib import dockerd, lab
from repro_lib.config import Paths, lab_id
from repro_lib.fixtures import BASE_FIXTURE, REGISTRY_FIXTURE

from .conftest import BUILDKIT_AFFECTED, CONTAINER_ARGS, ENGINE_ARGS, has_image, run_cli

pytest.importorskip("distributed", reason="needs repro-lib[cluster] (Dask distributed)")

REPO_ROOT = str(Path(__file__).resolve().parents[1])
DASK = str(Path(sys.executable).parent / "dask")
HOSTS = ("host-a", "host-b")


@dataclass
class Host:
    name: str
    engine: dockerd.PrivateEngine
    home: Path
    worker: subprocess.Popen | None = None

    def client(self):
        return lab.connect(self.engine.host)


@dataclass
class Cluster:
    address: str
    hosts: dict[str, Host]
    scheduler: subprocess.Popen
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, host: Host, *, extra_env: dict[str, str] | None = None) -> None:
        env = dict(
            os.environ,
            DOCKER_HOST=host.engine.host,
            REPRO_LIB_HOST=host.name,
            REPRO_LIB_HOME=str(host.home),
            REPRO_LIB_BACKEND_MODULES="tests.controlled_backend",
            PYTHONPATH=REPO_ROOT,
            **(extra_env or {}),
        )
        log = (self.logs / f"worker-{host.name}.log").open("ab")
        host.worker = subprocess.Popen(
            [DASK, "worker", self.address, "--nthreads", "1", "--resources", "lanes=1"]
            + ["--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", host.name],
            env=env,
            cwd=host.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(host.worker)

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=60)


@pytest.fixture(scope="module")
def host_engines(docker_client, fixture_images, docker_cli, tmp_path_factory):
    """Two private engines, each loaded with the fixture images, standing in for two hosts."""
    root = tmp_path_factory.mktemp("hosts")
    paths = Paths(root)
    blobs = [
        b"".join(docker_client.images.get(image).save(named=True))
        for image in (BASE_FIXTURE, REGISTRY_FIXTURE)
    ]
    hosts: dict[str, Host] = {}
    try:
        for name in HOSTS:
            engine = dockerd.start(paths, f"{lab_id()}-{name}")
            with contextlib.closing(lab.connect(engine.host)) as client:
                for blob in blobs:
                    client.images.load(blob)
            home = root / name
            home.mkdir()
            hosts[name] = Host(name, engine, home)
        yield hosts, paths
    finally:
        for host in hosts.values():
            with contextlib.suppress(Exception), contextlib.closing(host.client()) as client:
                lab.sweep(client, include_live=True)
            dockerd.stop(paths, host.engine.name)
            dockerd.remove_data(paths, host.engine.name)


@pytest.fixture
def cluster(host_engines, tmp_path):
    hosts, _ = host_engines
    port = lab.free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = (tmp_path / "scheduler.log").open("ab")
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    c = Cluster(address, hosts, scheduler, tmp_path, [scheduler])
    try:
        lab.wait_until(
            lambda: not lab.port_is_free(port), timeout=30, interval=0.2, what="dask scheduler"
        )
        yield c
    finally:
        for proc in reversed(c.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for host in hosts.values():
            host.worker = None


def _rows(store: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(store, timeout=30)) as db:
        try:
            return db.execute(
                "SELECT run_id, trial, host, attempt, outcome, started_at FROM trials"
                " ORDER BY run_id, trial"
            ).fetchall()
        except sqlite3.OperationalError as exc:  # polled while its writer creates it
            if "no such table" in str(exc):
                return []
            raise


def _controlled_engine_args() -> list[str]:
    return [a if a != "engine" else "engine-dropping" for a in ENGINE_ARGS]


CONTROLLED_ENV = {
    "REPRO_LIB_BACKEND_MODULES": "tests.controlled_backend",
    "PYTHONPATH": REPO_ROOT,
}


def test_engine_sweep_runs_on_both_hosts_and_records_every_trial_once(cluster, tmp_path):
    for host in cluster.hosts.values():
        cluster.start_worker(host, extra_env={"REPRO_LIB_DROP_TRIALS": "2"})
    cluster.wait_for_workers(2)
    store = tmp_path / "client.sqlite"
    proc = run_cli(
        "sweep",
        *_controlled_engine_args(),
        "--reset-freq",
        "1,2,3,4",
        "--tries",
        "3",
        "--cluster",
        cluster.address,
        "--store",
        str(store),
        "--json",
        home=tmp_path,
        env={**CONTROLLED_ENV, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    # exit 1: every cell's trial 2 lost repro.txt (the controlled backend drops it)
    assert proc.returncode == 1, proc.stderr[-3000:]
    cells = json.loads(proc.stdout.splitlines()[-1])["cells"]
    rows = _rows(store)
    assert len(rows) == 12
    assert len({(r[0], r[1]) for r in rows}) == 12
    assert {r[2] for r in rows} == set(HOSTS)  # both hosts ran cells
    assert {r[3] for r in rows} == {1}
    # the per-cell numbers are what `repro-lib report` computes from the store
    out = tmp_path / "report"
    report = run_cli("report", "--store", str(store), "--out", str(out), home=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    for c in cells:
        assert c["failures"] == 1 and c["tries"] == 3
        line = next(ln for ln in text.splitlines() if f"`{c['cell']}`" in ln)
        # tries | reset cycles (3 tries at reset every K) | failures
        cycles = -(-3 // int(re.search(r"reset=(\d+)", c["cell"]).group(1)))
        assert re.search(rf"\|\s*3\s*\|\s*{cycles}\s*\|\s*1\s*\|", line), line
    hosts_line = next(ln for ln in text.splitlines() if ln.startswith("| Docker hosts"))
    assert "host-a (" in hosts_line and "host-b (" in hosts_line
    # each failure's evidence bundle came to the client with its record
    for c in cells:
        shown = run_cli("evidence", c["run_id"], "2", "--store", str(store), home=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "not on this machine" not in shown.stdout and "What trial 2 lost" in shown.stdout
        (bundle,) = (tmp_path / "data/runs").glob(f"*/{c['run_id']}/evidence/trial-0002")
        assert (bundle / "build.log").is_file() and (bundle / "output.tar").is_file()
    for host in cluster.hosts.values():
        with contextlib.closing(host.client()) as client:
            assert lab.leftovers(client) == {"containers": [], "volumes": []}
        assert list((host.home / "data/raw").glob("worker-*.sqlite"))  # each kept its own copy


def test_killed_worker_loses_and_duplicates_nothing(cluster, tmp_path):
    for host in cluster.hosts.values():
        cluster.start_worker(host)
    cluster.wait_for_workers(2)
    store = tmp_path / "client.sqlite"
    env = dict(os.environ, REPRO_LIB_HOME=str(tmp_path), **CONTROLLED_ENV)
    proc = subprocess.Popen(
        [sys.executable, "-m", "repro_lib", "sweep", *_controlled_engine_args()]
        + ["--reset-freq", "1,2,3,4", "--tries", "8", "--cluster", cluster.address]
        + ["--store", str(store), "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = cluster.hosts["host-a"]
    deadline = time.monotonic() + 240
    while True:
        rows = _rows(store) if store.exists() else []
        if any(r[2] == victim.name for r in rows):
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "host-a recorded nothing"
        time.sleep(0.05)
    os.killpg(victim.worker.pid, signal.SIGKILL)
    victim.worker.wait()
    before = _rows(store)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    after = _rows(store)
    assert len(after) == 32 and len({(r[0], r[1]) for r in after}) == 32
    assert set(before) <= set(after)  # what was recorded before the kill stands unchanged
    assert len(before) < 32
    survivors = [r for r in after if r not in before]
    assert survivors and {r[2] for r in survivors} == {"host-b"}  # the sweep finished on host-b
    assert max(r[3] for r in after) == 2  # host-a's cell was rerun as attempt 2
    # (run_id, cycle) names one reset cycle: one host and attempt, tries 1..k from its
    # first trial on; (run_id, reset_index) restarts with the attempt and does not
    with contextlib.closing(sqlite3.connect(store)) as db:
        cycles = db.execute(
            "SELECT run_id, cycle, group_concat(trial), group_concat(since_reset),"
            " count(DISTINCT host || attempt) FROM"
            " (SELECT * FROM trials ORDER BY trial) GROUP BY run_id, cycle"
        ).fetchall()
        rerun = db.execute(
            "SELECT run_id FROM trials GROUP BY run_id HAVING count(DISTINCT attempt) > 1"
        ).fetchall()
    for run_id, cycle, trials, positions, owners in cycles:
        trials = [int(t) for t in trials.split(",")]
        assert owners == 1 and trials[0] == cycle, (run_id, cycle, trials)
        assert [int(p) for p in positions.split(",")] == list(range(1, len(trials) + 1))
    assert rerun  # a cell whose reset_index 0 names two cycles, one per attempt
    # host-a's worker died with its registries running; clean removes them
    clean = run_cli("clean", home=victim.home, env={"DOCKER_HOST": victim.engine.host})
    assert clean.returncode == 0, clean.stderr
    for host in cluster.hosts.values():
        with contextlib.closing(host.client()) as client:
            assert lab.leftovers(client) == {"containers": [], "volumes": []}


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path):
    address = f"tcp://127.0.0.1:{lab.free_port()}"
    proc = run_cli(
        "sweep", *ENGINE_ARGS, "--tries", "1", "--cluster", address, home=tmp_path, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], proc.stderr


def test_worker_lacking_an_image_offline_names_host_and_image(cluster, tmp_path):
    present_on_b = "repro-lib-test/only-on-b:1"
    with contextlib.closing(cluster.hosts["host-b"].client()) as client:
        client.images.get(BASE_FIXTURE).tag(present_on_b)
    try:
        for host in cluster.hosts.values():
            cluster.start_worker(host)
        cluster.wait_for_workers(2)
        proc = run_cli(
            "sweep",
            *[a if a != BASE_FIXTURE else present_on_b for a in ENGINE_ARGS],
            "--tries",
            "1",
            "--cluster",
            cluster.address,
            "--store",
            str(tmp_path / "s.sqlite"),
            "--sweep-id",
            "lacking",
            home=tmp_path,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "host-a" in lines[0] and present_on_b in lines[0], lines[0]
        assert not _rows(tmp_path / "s.sqlite")  # nothing scheduled
        assert _status(tmp_path / "s.sqlite", "lacking") == "refused"  # not `running`
        report = run_cli(
            "report", "--store", str(tmp_path / "s.sqlite"), "--sweep", "lacking", home=tmp_path
        )
        assert report.returncode == 0, report.stderr
        text = (tmp_path / "reports/lacking/report.md").read_text()
        assert "Sweep `lacking`: **refused**" in text
    finally:
        with contextlib.closing(cluster.hosts["host-b"].client()) as client:
            client.images.remove(present_on_b)


def test_resume_gathers_what_workers_kept_after_the_client_died(cluster, tmp_path):
    for host in cluster.hosts.values():
        cluster.start_worker(host)
    cluster.wait_for_workers(2)
    store = tmp_path / "client.sqlite"
    env = dict(os.environ, REPRO_LIB_HOME=str(tmp_path), **CONTROLLED_ENV)
    args = _controlled_engine_args() + ["--reset-freq", "1,2", "--tries", "6"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "repro_lib", "sweep", *args, "--cluster", cluster.address]
        + ["--store", str(store)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (store.exists() and len(_rows(store)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    with contextlib.closing(sqlite3.connect(store)) as db:
        (sweep_id,) = db.execute("SELECT sweep_id FROM sweeps").fetchone()
    time.sleep(5)  # cells already running finish into the workers' own stores
    kept = {  # the hosts' own stores also hold the module's earlier sweeps
        (r[0], r[1]): r
        for h in cluster.hosts.values()
        for p in (h.home / "data/raw").glob("worker-*.sqlite")
        for r in _rows(p)
        if r[0].startswith(f"{sweep_id}-")
    }
    assert set(kept) - {(r[0], r[1]) for r in _rows(store)}  # the client missed some
    resumed = run_cli(
        "sweep",
        "--resume",
        sweep_id,
        "--cluster",
        cluster.address,
        "--store",
        str(store),
        "--json",
        home=tmp_path,
        env=CONTROLLED_ENV,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(store)
    assert len(rows) == 12 and len({(r[0], r[1]) for r in rows}) == 12
    by_key = {(r[0], r[1]): r for r in rows}
    # what only the workers had was gathered, not run again
    assert all(by_key[key] == row for key, row in kept.items() if row[3] == 1)


def test_container_backend_sweep_on_two_hosts(cluster, docker_client, tmp_path):
    if not has_image(docker_client, BUILDKIT_AFFECTED):
        pytest.skip(f"needs the BuildKit image {BUILDKIT_AFFECTED} locally (cannot be pulled here)")
    blob = b"".join(docker_client.images.get(BUILDKIT_AFFECTED).save(named=True))
    for host in cluster.hosts.values():
        with contextlib.closing(host.client()) as client:
            client.images.load(blob)
        cluster.start_worker(host)
    cluster.wait_for_workers(2)
    store = tmp_path / "client.sqlite"
    proc = run_cli(
        "sweep",
        *CONTAINER_ARGS,
        "--versions",
        BUILDKIT_AFFECTED,
        "--reset-freq",
        "1,4",
        "--tries",
        "4",
        "--cluster",
        cluster.address,
        "--store",
        str(store),
        home=tmp_path,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    rows = _rows(store)
    assert len(rows) == 8 and {r[2] for r in rows} == set(HOSTS)


def test_local_cluster_engine_sweep(docker_client, fixture_images, docker_cli, lab_home):
    proc = run_cli(
        "sweep",
        *ENGINE_ARGS,
        "--reset-freq",
        "1,2",
        "--tries",
        "2",
        "--lanes",
        "2",
        "--cluster",
        "local",
        "--json",
        home=lab_home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(lab_home / "data/raw/trials.sqlite")
    assert len(rows) == 4 and len({r[2] for r in rows}) == 2  # two local workers
    assert not list((lab_home / "data/engines").glob("*/engine.json"))  # their engines stopped
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


# a client that dies mid-cell ----------------------------------------------------

ORPHAN_TRIES = 60  # as in the issue; more than a dead client's cell runs before it stops


def _journal(tmp_path: Path, host: str) -> Path:
    return tmp_path / f"builds-{host}.txt"


def _builds(tmp_path: Path, sweep_id: str) -> Counter:
    """How often each (run_id, trial) of the sweep was built, over every host."""
    builds: Counter = Counter()
    for host in HOSTS:
        path = _journal(tmp_path, host)
        for line in path.read_text().splitlines() if path.exists() else []:
            run_id, trial, _ = line.split()
            if run_id.startswith(f"{sweep_id}-"):
                builds[(run_id, int(trial))] += 1
    return builds


def _start_journaled_workers(cluster: Cluster, tmp_path: Path, *, delay: float = 0) -> None:
    for host in cluster.hosts.values():
        env = {"REPRO_LIB_BUILD_JOURNAL": str(_journal(tmp_path, host.name))}
        if delay:
            env["REPRO_LIB_BUILD_DELAY"] = str(delay)
        cluster.start_worker(host, extra_env=env)
    cluster.wait_for_workers(2)


def _start_sweep(cluster: Cluster, tmp_path: Path, store: Path, sweep_id: str, tries: int):
    env = dict(os.environ, REPRO_LIB_HOME=str(tmp_path), **CONTROLLED_ENV)
    return subprocess.Popen(
        [sys.executable, "-m", "repro_lib", "sweep", *_controlled_engine_args()]
        + ["--reset-freq", "4", "--tries", str(tries), "--sweep-id", sweep_id]
        + ["--cluster", cluster.address, "--store", str(store)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_after(proc: subprocess.Popen, store: Path, n: int) -> list[tuple]:
    """kill -9 the client once its store holds ``n`` trials; returns them."""
    deadline = time.monotonic() + 240
    while not (store.exists() and len(_rows(store)) >= n):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep recorded too little"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return _rows(store)


def _only_lanes_on(cluster: Cluster, host: str) -> None:
    """Leave the lanes resource on ``host`` alone, so the next cell must run there."""
    from distributed import Client

    async def no_lanes(dask_worker):
        await dask_worker.set_resources(lanes=0)

    with Client(cluster.address, timeout=30) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        others = [a for a, w in workers.items() if w["name"] != host]
        client.run(no_lanes, workers=others)


def _resume(cluster: Cluster, tmp_path: Path, store: Path, sweep_id: str):
    return run_cli(
        "sweep",
        "--resume",
        sweep_id,
        "--cluster",
        cluster.address,
        "--store",
        str(store),
        "--json",
        home=tmp_path,
        env=CONTROLLED_ENV,
    )


def _status(store: Path, sweep_id: str) -> str:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT status FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()[0]


def _summary_tries(store: Path, run_id: str) -> int:
    with contextlib.closing(sqlite3.connect(store)) as db:
        (summary,) = db.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return json.loads(summary)["tries"]


@pytest.mark.parametrize("where", ["same-host", "other-host"])
def test_resume_right_after_the_client_died_records_every_trial_once(cluster, tmp_path, where):
    """kill -9 of the client mid-cell, then --resume at once: every trial once, `done`.

    The dead client's cell keeps running on its worker; the resumed cell is forced
    onto that same host (it would wait for the orphan, then skip what the orphan
    recorded) or onto the other one (it would run beside the orphan).
    """
    _start_journaled_workers(cluster, tmp_path)
    store, sweep_id = tmp_path / "client.sqlite", f"orphan-{where}"
    run_id = f"{sweep_id}-c000"
    before = _kill_after(_start_sweep(cluster, tmp_path, store, sweep_id, ORPHAN_TRIES), store, 6)
    (orphan_host,) = {r[2] for r in before}
    target = orphan_host if where == "same-host" else next(h for h in HOSTS if h != orphan_host)
    _only_lanes_on(cluster, target)
    resumed = _resume(cluster, tmp_path, store, sweep_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(store)
    assert sorted(r[1] for r in rows) == list(range(1, ORPHAN_TRIES + 1))
    builds = _builds(tmp_path, sweep_id)
    assert set(builds) == {(run_id, t) for t in range(1, ORPHAN_TRIES + 1)}
    assert set(builds.values()) == {1}, [k for k, n in builds.items() if n > 1]  # none twice
    assert set(before) <= set(rows)
    resumed_rows = [r for r in rows if r[3] > 1]  # the resume's attempt continues the count
    assert resumed_rows and {r[2] for r in resumed_rows} == {target}
    assert _status(store, sweep_id) == "done"
    assert _summary_tries(store, run_id) == ORPHAN_TRIES  # the runs summary matches trials


def test_cells_of_a_dead_client_stop_by_themselves(cluster, tmp_path):
    from repro_lib.executors.cluster import LEASE_TIMEOUT

    # tries of at least 0.5 s: 60 of them outlast the lease, however fast the engine
    _start_journaled_workers(cluster, tmp_path, delay=0.5)
    store, sweep_id, tries = tmp_path / "client.sqlite", "orphan-alone", 60
    _kill_after(_start_sweep(cluster, tmp_path, store, sweep_id, tries), store, 3)
    killed = time.monotonic()
    built, stable_since = 0, time.monotonic()
    while time.monotonic() - stable_since < 8:  # no build for a while: the cell stopped
        now = sum(_builds(tmp_path, sweep_id).values())
        if now != built:
            built, stable_since = now, time.monotonic()
        assert time.monotonic() - killed < LEASE_TIMEOUT + 60, "the orphaned cell kept running"
        time.sleep(0.5)
    assert built < tries, (
        f"the orphaned cell ran all {tries} tries; it should stop within {LEASE_TIMEOUT} s"
    )
    resumed = _resume(cluster, tmp_path, store, sweep_id)  # no orphan left to wait for
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(_rows(store)) == tries and set(_builds(tmp_path, sweep_id).values()) == {1}


def test_a_bundle_over_the_cap_names_what_stayed_on_the_host(tmp_path, monkeypatch):
    from repro_lib.executors.cluster import bundles

    bundle = tmp_path / "evidence/trial-0002"
    bundle.mkdir(parents=True)
    (bundle / "what-was-lost.md").write_text("# What trial 2 lost\n")
    (bundle / "output.tar").write_bytes(b"x" * 5000)
    monkeypatch.setattr(bundles, "BUNDLE_CAP", 1000)
    data = bundles.pack_bundle(bundle, "host-a")
    run_dir = tmp_path / "client"
    bundles.unpack_bundle(data, run_dir, "evidence/trial-0002")
    copy = run_dir / "evidence/trial-0002"
    assert (copy / "what-was-lost.md").read_text() == "# What trial 2 lost\n"
    assert not (copy / "output.tar").exists()
    omitted = (copy / "omitted.txt").read_text()
    assert f"output.tar (5000 bytes): on host host-a at {bundle / 'output.tar'}" in omitted
    with pytest.raises(OSError, match="leaves its run directory"):
        bundles.unpack_bundle(data, run_dir, "../../elsewhere")


def test_the_done_list_reads_back_whole_across_chunks_and_writes_only_the_last(monkeypatch):
    """The list a rerun reads: every entry in order, whoever wrote it, while an
    append rewrites no more than the chunk it lands in."""
    import logging

    from distributed import Client, LocalCluster, Variable

    from repro_lib.executors.cluster import done as done_module
    from repro_lib.executors.cluster.done import Done, DoneList
    from repro_lib.records import Outcome

    monkeypatch.setattr(done_module, "CHUNK", 3)
    sent: list[tuple[str, object]] = []
    real_set = Variable.set

    def counting_set(variable, value, **kwargs):
        sent.append((variable.name, value))
        return real_set(variable, value, **kwargs)

    monkeypatch.setattr(Variable, "set", counting_set)
    entries = [Done(t, Outcome.MISSING_LAYER if t == 5 else Outcome.OK) for t in range(1, 9)]
    with (
        LocalCluster(
            n_workers=0, processes=False, dashboard_address=None, silence_logs=logging.ERROR
        ) as local,
        Client(local) as client,
    ):
        seeded = DoneList("t-c000-done", client=client)  # the client's prior records
        seeded.extend(entries[:4])
        rerun = DoneList("t-c000-done", client=client)
        assert rerun.read() == entries[:4]
        sent.clear()
        for entry in entries[4:]:  # the rerun's tries, one at a time
            rerun.extend([entry])
        chunks = [value for name, value in sent if not name.endswith("-chunks")]
        assert len(chunks) == 4 and max(len(c) for c in chunks) <= 3  # one chunk per try
        assert [value for name, value in sent if name.endswith("-chunks")] == [3]
        assert DoneList("t-c000-done", client=client).read() == entries
        rerun.delete()
        variables = local.scheduler.extensions["variables"].variables
        lab.wait_until(
            lambda: not [n for n in variables if n.startswith("t-c000-done")],
            timeout=10,
            interval=0.05,
            what="the done list's removal",
        )
