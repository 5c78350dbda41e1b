"""A real engine-backend sweep split into 3 shards, one store each, merged back.

The commands are read from ``examples/github-actions.yml``: each matrix job's
``repro-lib sweep … --shard K/3 --sweep-id ID --store stores/shard-K.sqlite``,
then the final job's ``repro-lib merge`` and ``repro-lib report --sweep ID``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time

import pytest

from repro_lib import lab
from repro_lib.fixtures import BASE_FIXTURE, REGISTRY_FIXTURE
from repro_lib.plan import partition, plan_digest, validate_plan

from . import workflow
from .conftest import ENGINE_ARGS, repro_lib_cmd, run_cli

SWEEP_ID = "gh-1234-1"
RESETS = "1,2,3,4,5,6"
TRIES = 2


def _shard_sweep(k: int) -> list[str]:
    (call,) = [
        c
        for c in workflow.job_calls("shard", {"matrix.shard": str(k), "SWEEP_ID": SWEEP_ID})
        if c[0] == "sweep"
    ]
    return call


def test_the_workflow_sweeps_the_plan_this_test_checks():
    sweep = _shard_sweep(1)
    assert sweep[sweep.index("--reset-freq") + 1] == RESETS
    assert sweep[sweep.index("--tries") + 1] == str(TRIES)
    assert all(a in sweep for a in ENGINE_ARGS)


def _rows(store, sql):
    with contextlib.closing(sqlite3.connect(store)) as db:
        return db.execute(sql).fetchall()


def _cells(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["sweep_id"] == SWEEP_ID and summary["status"] == "done"
    return [c["run_id"] for c in summary["cells"]]


def _unsharded_plan():
    return validate_plan(
        {
            "backend": "engine",
            "reset_freq": RESETS,
            "tries": TRIES,
            "lanes": 1,
            "offline": True,
            "base_image": BASE_FIXTURE,
            "registry_image": REGISTRY_FIXTURE,
        }
    )


def test_three_shards_merge_back_into_the_unsharded_plan(
    docker_client, fixture_images, docker_cli, lab_home
):
    stores = [lab_home / f"stores/shard-{k}.sqlite" for k in (1, 2, 3)]
    expected = [[c.run_id(SWEEP_ID) for c in part] for part in partition(_unsharded_plan(), 3)]

    # shard 1 is killed after its first trial and resumed: --resume finds its shard
    env = dict(os.environ, REPRO_LIB_HOME=str(lab_home))
    proc = subprocess.Popen(
        repro_lib_cmd(*_shard_sweep(1)),
        cwd=lab_home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not (stores[0].exists() and _rows(stores[0], "SELECT count(*) FROM trials")[0][0]):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    assert run_cli("clean", home=lab_home).returncode == 0
    resumed = run_cli(
        "sweep", "--resume", SWEEP_ID, "--store", str(stores[0]), "--json", home=lab_home
    )
    assert _cells(resumed) == expected[0]

    for k in (2, 3):
        proc = run_cli(*_shard_sweep(k), home=lab_home)
        assert _cells(proc) == expected[k - 1]  # a shard's summary lists only its cells
    for k, store in enumerate(stores, start=1):
        runs = _rows(store, "SELECT run_id, shard FROM runs ORDER BY run_id")
        assert runs == [(r, f"{k}/3") for r in expected[k - 1]]

    final = {c[0]: c for c in workflow.job_calls("merge", {"SWEEP_ID": SWEEP_ID})}
    merge = workflow.expand_globs(final["merge"], lab_home)
    assert merge[2:] == [str(s.relative_to(lab_home)) for s in stores]
    merged = lab_home / merge[1]
    proc = run_cli(*merge, home=lab_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(f"{6 * TRIES} trials added")
    before = merged.read_bytes()
    again = run_cli(*merge, home=lab_home)
    assert again.returncode == 0 and merged.read_bytes() == before

    # cell by cell, the merged store is the unsharded plan: same cells, same planned tries
    plan = _unsharded_plan()
    cells = {c.run_id(SWEEP_ID): c.key() for c in plan.cells()}
    runs = _rows(merged, "SELECT run_id, cell, sweep_id, plan_digest FROM runs ORDER BY run_id")
    assert {r: cell for r, cell, *_ in runs} == cells
    assert {(s, d) for *_, s, d in runs} == {(SWEEP_ID, plan_digest(plan))}
    trials = _rows(merged, "SELECT run_id, trial, outcome FROM trials ORDER BY run_id, trial")
    assert [(r, t) for r, t, _ in trials] == [(r, t) for r in cells for t in range(1, TRIES + 1)]
    assert {o for *_, o in trials} == {"ok"}
    assert _rows(merged, "SELECT sweep_id, status FROM sweeps") == [(SWEEP_ID, "done")]
    assert sorted(_rows(merged, "SELECT DISTINCT source FROM provenance")) == [
        (s,) for s in merge[2:]
    ]

    report = final["report"]
    out = lab_home / report[report.index("--out") + 1]
    proc = run_cli(*report, home=lab_home)
    assert proc.returncode == 0, proc.stderr
    table = [
        line for line in (out / "report.md").read_text().splitlines() if line.startswith("| `")
    ]
    listed = [line.split("`")[1] for line in table]
    assert sorted(listed) == sorted(cells.values())  # every cell once
    assert all(line.split("|")[2].strip() == str(TRIES) for line in table)

    # the same sweep id with another plan is refused before anything runs
    other = run_cli(*[a if a != str(TRIES) else "3" for a in _shard_sweep(1)], home=lab_home)
    assert other.returncode == 2 and "recorded with another plan" in other.stderr
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


@pytest.mark.parametrize("value", ["4/3", "0/2", "x"])
def test_a_bad_shard_is_exit_2_and_one_line(tmp_path, value):
    proc = run_cli("sweep", "--backend", "engine", "--shard", value, home=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--shard" in proc.stderr
    assert not (tmp_path / "data/raw/trials.sqlite").exists()
