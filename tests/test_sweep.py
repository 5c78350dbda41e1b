"""Sweeps: plan validation, scheduling over lanes, resume after a kill, early stopping, bisection."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time

import pytest

from repro_lib import lab
from repro_lib.bisect import run_search, version_range, version_record
from repro_lib.errors import InfraError, MissingRequirement, UsageError
from repro_lib.plan import Plan, load_plan, stop_rule, validate_plan
from repro_lib.records import Outcome, TrialRecord
from repro_lib.report_culprit import culprit_section
from repro_lib.store import Store
from repro_lib.sweep import run_sweep

from .conftest import ENGINE_ARGS, repro_lib_cmd, run_cli
from .factories import make_record

PLAN_ERRORS = [
    ({"versions": ["v0.9.0"], "colour": "red"}, "unknown plan key colour"),
    ({"versions": []}, "versions is an empty list"),
    ({"versions": "v0.9.0,v0.9.0"}, "more than once"),
    ({"versions": ["v0.9.0"], "reset_freq": [1, "x"]}, "not a valid int"),
    ({"versions": ["v0.9.0"], "reset_freq": [0]}, "at least 1"),
    ({"versions": ["v0.9.0"], "tries": 0}, "tries must be at least 1"),
    ({"versions": ["v0.9.0"], "lanes": -2}, "lanes must be at least 1"),
    ({"versions": ["v0.9.0"], "max_rate": 2}, "max_rate must be between"),
    ({"versions": ["v0.9.0"], "cache": ["s3"]}, "cache 's3'"),
    ({"versions": ["v0.9.0"], "mode": ["turbo"]}, "mode 'turbo'"),
    ({"versions": ["0.9"]}, "neither vX.Y.Z nor an image"),
    ({"backend": "engine", "cache_versions": ["v0.9.0"]}, "container backend only"),
    ({"backend": "podman"}, "unknown backend"),
    ({"backend": "engine", "mode": ["daemon"]}, "mode daemon applies"),
]


@pytest.mark.parametrize("raw,message", PLAN_ERRORS, ids=[m for _, m in PLAN_ERRORS])
def test_plan_validation_errors(raw, message):
    with pytest.raises(UsageError, match=message):
        validate_plan(raw)


def test_plan_cells_and_versions():
    plan = validate_plan(
        {
            "versions": "v0.8.3,v0.9.0,moby/buildkit:v0.9.1",
            "reset_freq": [1, 4],
            "cache": "registry,local",
            "cache_versions": ["v0.9.0"],
        }
    )
    cells = plan.cells()
    assert len(cells) == 3 * 1 * 2 * 2 * 1
    assert cells[0].image == "moby/buildkit:v0.8.3-rootless"
    assert cells[0].cache_image == "moby/buildkit:v0.9.0-rootless"
    assert {c.image for c in cells} == {
        "moby/buildkit:v0.8.3-rootless",
        "moby/buildkit:v0.9.0-rootless",
        "moby/buildkit:v0.9.1",
    }
    assert len({c.key() for c in cells}) == len(cells)
    assert "cache_version=v0.9.0" in cells[0].key()
    assert [c.index for c in cells] == list(range(len(cells)))


def test_plan_file(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(
        'versions = ["v0.9.0", "v0.9.1"]\nreset_freq = [1, 2]\ntries = 50\nuntil_confident = true\n'
    )
    plan = load_plan(path, tries=7)
    assert plan.tries == 7 and plan.until_confident and plan.reset_freq == [1, 2]
    path.write_text("versions = [v0.9.0")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_plan(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_plan(tmp_path / "none.toml")


def test_plan_sets_the_container_security_flags_for_every_cell(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(
        'versions = ["moby/buildkit:v0.9.0"]\ncap_add = "NET_ADMIN"\n'
        'cap_drop = ["MKNOD"]\nrootful_weak_isolation = true\n'
    )
    plan = load_plan(path)
    options = plan.batch_options(plan.cells()[0])
    options.validate()  # a single capability may be written as a plain string
    assert options.cap_add == ["NET_ADMIN"] and options.cap_drop == ["MKNOD"]
    assert options.rootful_weak_isolation is True
    path.write_text('versions = ["v0.9.0"]\ncap_add = ["NET ADMIN"]\n')
    plan = load_plan(path)
    with pytest.raises(UsageError, match="not a capability name"):
        plan.batch_options(plan.cells()[0]).validate()


def _records(outcomes: str) -> list[TrialRecord]:
    out = []
    for i, ch in enumerate(outcomes, start=1):
        outcome = {"o": Outcome.OK, "x": Outcome.MISSING_LAYER, "b": Outcome.BUILD_ERROR}[ch]
        out.append(make_record(i, outcome.value))
    return out


def test_early_stopping_on_known_sequences():
    rule = stop_rule(
        Plan(
            versions=["v"],
            reset_freq=[4],
            cache=["inline"],
            mode=["daemonless"],
            until_confident=True,
            max_rate=0.1,
        )
    )
    assert not rule(_records("oooo"))
    first_failure = rule(_records("ooox"))
    assert first_failure.stop and "fail" in first_failure.reason.lower()
    # build errors are not evidence: they neither stop a cell nor count as clean tries
    assert not rule(_records("b" * 40))
    clean = [n for n in range(1, 60) if rule(_records("o" * n)).stop]
    assert clean and clean[0] == 29  # K = 1: 0/29, exact 95% upper bound 0.098 < 0.10
    # K = 4: the clean bound counts complete reset cycles, so 29 cycles = 116 tries
    cycled = [
        make_record(i, "ok", reset_freq=4, since_reset=(i - 1) % 4 + 1) for i in range(1, 130)
    ]
    stops = [n for n in range(1, 130) if rule(cycled[:n]).stop]
    assert stops[0] == 116 and "29 complete reset cycles" in rule(cycled[:116]).reason
    assert not rule(cycled[:115]).stop  # 28 complete cycles and a partial one
    assert (
        stop_rule(Plan(versions=["v"], reset_freq=[4], cache=["inline"], mode=["daemonless"]))
        is None
    )


def _version_search(versions, good, bad, affected, *, k=2, cycles=3):
    """A version search whose fake probe fails every try of an affected version:
    (its candidates, the final record, the versions probed in order)."""
    candidates = version_range(versions, good, bad)
    record = version_record(candidates, search_id="v-test", backend="engine", tries_per_cycle=k)
    probed = []

    def probe(candidate, sweep_id):
        probed.append(candidate.ref)
        return [k if candidate.ref in affected else 0] * cycles, k * cycles

    final = run_search(
        record, prepare=lambda c: c, probe=probe, save=lambda r: None, say=lambda line: None
    )
    return candidates, final, probed


def test_bisect_logic_on_a_known_grid():
    versions = ["v0", "v1", "v2", "v3", "v4", "v5"]
    candidates, final, probed = _version_search(versions, "v0", "v5", {"v3", "v4", "v5"})
    assert candidates.versions == ["v1", "v2", "v3", "v4", "v5"]  # after --good, --bad in
    assert candidates.direction == "broke"
    assert final.status == "confident" and final.best.ref == "v3"
    assert final.boundary() == ("v2", "v3")
    assert all(c.build == "released" for c in final.candidates) and final.kind == "versions"
    assert len(probed) <= 5
    # the fix direction: affected first, good later in the list
    candidates, final, _ = _version_search(
        ["v8.0", "v8.1", "v9.0", "v9.1", "v9.2"], "v9.2", "v8.0", {"v8.0", "v8.1", "v9.0"}
    )
    assert candidates.versions == ["v8.1", "v9.0", "v9.1", "v9.2"]
    assert candidates.direction == "fixed"
    assert final.status == "confident" and final.best.ref == "v9.1"  # the first without it
    assert final.boundary() == ("v9.0", "v9.1")
    with pytest.raises(UsageError, match="--bad 'v9' is not in --versions"):
        version_range(versions, "v0", "v9")
    with pytest.raises(UsageError, match="must differ"):
        version_range(versions, "v2", "v2")


def test_a_newest_first_version_list_maps_to_the_same_search():
    # the same history listed newest first: --good v9.2 comes first, so along the list
    # the bug appears (broke) and the culprit is the first affected version in list order
    newest_first = ["v9.2", "v9.1", "v9.0", "v8.1", "v8.0"]
    candidates, final, _ = _version_search(newest_first, "v9.2", "v8.0", {"v8.0", "v8.1", "v9.0"})
    assert candidates.versions == ["v9.1", "v9.0", "v8.1", "v8.0"]
    assert candidates.direction == "broke"
    assert final.status == "confident" and final.boundary() == ("v9.1", "v9.0")
    # and a range whose culprit is its first candidate: the anchor stands before it
    candidates, final, _ = _version_search(newest_first[:3], "v9.1", "v9.2", {"v9.2"})
    assert candidates.versions == ["v9.1"] and candidates.direction == "fixed"
    assert final.boundary() == ("v9.2", "v9.1") and final.probes == ()  # one candidate


def test_a_version_candidate_runs_the_image_a_sweep_cell_would():
    candidates = version_range(
        ["v0.8.0", "v0.9.0", "reg.example/bk:x"], "v0.8.0", "reg.example/bk:x"
    )
    record = version_record(candidates, search_id="v", backend="container", tries_per_cycle=4)
    assert [c.image for c in record.candidates] == [
        "moby/buildkit:v0.9.0-rootless",
        "reg.example/bk:x",
    ]
    for c in record.candidates:  # the same image as a sweep of that version
        plan = validate_plan({"versions": [c.ref]})
        assert plan.cells()[0].image == c.image
    engine = version_record(candidates, search_id="v", backend="engine", tries_per_cycle=4)
    assert [c.image for c in engine.candidates] == ["v0.9.0", "reg.example/bk:x"]


def _sweep_rows(store):
    with contextlib.closing(sqlite3.connect(store)) as db:
        return db.execute(
            "SELECT run_id, trial, started_at, lane, outcome FROM trials ORDER BY run_id, trial"
        ).fetchall()


def test_two_lane_engine_sweep_covers_every_cell_once(
    docker_client, fixture_images, docker_cli, lab_home
):
    proc = run_cli(
        "sweep",
        *ENGINE_ARGS,
        "--reset-freq",
        "1,2,3",
        "--tries",
        "4",
        "--lanes",
        "2",
        "--json",
        home=lab_home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done"
    assert [c["cell"].split("/reset=")[1][0] for c in summary["cells"]] == ["1", "2", "3"]
    rows = _sweep_rows(lab_home / "data/raw/trials.sqlite")
    by_run: dict[str, list[int]] = {}
    for run_id, trial, _, _, outcome in rows:
        by_run.setdefault(run_id, []).append(trial)
        assert outcome == "ok"
    assert sorted(by_run) == [f"{summary['sweep_id']}-c{i:03d}" for i in range(3)]
    assert all(trials == [1, 2, 3, 4] for trials in by_run.values())
    assert {lane for *_, lane, _ in rows} == {0, 1}
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    assert not list((lab_home / "data/engines").glob("*/engine.json"))  # lane engines stopped


def test_sweep_resumes_after_sigkill_without_lost_or_duplicated_trials(
    docker_client, fixture_images, docker_cli, lab_home
):
    store = lab_home / "data/raw/trials.sqlite"
    env = dict(os.environ, REPRO_LIB_HOME=str(lab_home))
    proc = subprocess.Popen(
        repro_lib_cmd(
            "sweep", *ENGINE_ARGS, "--reset-freq", "2,3", "--tries", "12", "--lanes", "2"
        ),
        cwd=lab_home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while True:
        n = len(_sweep_rows(store)) if store.exists() else 0
        if n >= 6:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    before = _sweep_rows(store)
    assert 6 <= len(before) < 24
    with contextlib.closing(sqlite3.connect(store)) as db:
        (sweep_id,) = db.execute("SELECT sweep_id FROM sweeps").fetchone()
    # the killed run's registries and lane engines are reaped by cleanup
    cleaned = run_cli("clean", home=lab_home)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "2 lane engines" in cleaned.stdout  # the killed sweep's private engines are stopped
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}
    resumed = run_cli("sweep", "--resume", sweep_id, "--json", home=lab_home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _sweep_rows(store)
    assert len(after) == 24
    assert set(before) <= set(after)  # nothing recorded before the kill was rerun or changed
    assert not list((lab_home / "data/engines").glob("*/engine.json"))  # lane engines stopped
    for cell in (f"{sweep_id}-c000", f"{sweep_id}-c001"):
        assert [t for r, t, *_ in after if r == cell] == list(range(1, 13))
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def test_until_confident_stops_cells_early(docker_client, fixture_images, docker_cli, lab_home):
    env, args = _controlled(faulty="bad", clean="good")
    proc = run_cli(
        "sweep",
        *args,
        "--versions",
        "bad,good",
        "--tries",
        "60",
        "--until-confident",
        "--max-rate",
        "0.2",
        "--lanes",
        "1",
        "--json",
        home=lab_home,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # a missing layer was seen
    cells = {
        c["cell"].split("version=")[1].split("/")[0]: c
        for c in json.loads(proc.stdout.splitlines()[-1])["cells"]
    }
    assert cells["bad"]["tries"] == 1 and cells["bad"]["failures"] == 1 and cells["bad"]["stopped"]
    assert (
        # reset every 4 (the default): 14 complete clean cycles bound the rate below 0.2
        cells["good"]["failures"] == 0 and cells["good"]["tries"] == 56 and cells["good"]["stopped"]
    )
    assert "affected" in cells["bad"]["verdict"]


def test_bisect_through_the_engine_backend(docker_client, fixture_images, docker_cli, lab_home):
    env, args = _controlled(faulty="v3,v4,v5", clean="v0,v1,v2")
    search = ["--reset-freq", "2", "--cycles-per-probe", "2", "--search-id", "v-e2e"]
    argv = ["--good", "v0", "--bad", "v5", "--versions", "v0,v1,v2,v3,v4,v5", *search]
    proc = run_cli("bisect", *args, *argv, "--json", home=lab_home, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["kind"] == "versions" and result["status"] == "confident"
    assert result["first_affected"] == "v3"
    assert result["boundary"] == ["v2", "v3"]
    assert result["statement"].startswith("culprit: v3 (posterior ")
    assert "boundary: v2 | v3" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == result["statement"]
    assert sum(line.startswith("probe ") for line in proc.stderr.splitlines()) == len(
        result["probes"]
    )
    # each probe is a sweep of 2 cycles of 2 tries in the store, as in a commit search
    store = lab_home / "data/raw/trials.sqlite"
    with Store(store) as st:
        (record,) = st.searches("v-e2e")
        for probe in result["probes"]:
            assert len(st.trials(f"{probe['sweep_id']}-c000")) == 4
    assert record.statement() == result["statement"]
    # a finished search resumes to the same statement without running a probe
    resumed = run_cli("bisect", "--resume", "v-e2e", "--json", home=lab_home, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["probes"] == result["probes"]
    assert "boundary: v2 | v3" in resumed.stderr
    # and the report's Culprit section names the version
    text = "\n".join(culprit_section([record], lab_home))
    assert "names `v3` as the version that broke it" in text
    assert lab.leftovers(docker_client) == {"containers": [], "volumes": []}


def _controlled(*, faulty: str, clean: str) -> tuple[dict[str, str], list[str]]:
    """Environment and CLI arguments for the engine backend whose outcomes the test controls."""
    env = {
        "REPRO_LIB_BACKEND_MODULES": "tests.controlled_backend",
        "REPRO_LIB_FAULTY_VERSIONS": faulty,
        "REPRO_LIB_CLEAN_VERSIONS": clean,
        "PYTHONPATH": _repo_root(),
    }
    return env, [a if a != "engine" else "engine-dropping" for a in ENGINE_ARGS]


def _repo_root() -> str:
    return str(__import__("pathlib").Path(__file__).resolve().parents[1])


# how a sweep ends, whatever ran its cells ----------------------------------------


class _StandInExecutor:
    """Runs no build: ``run`` writes the records a host would have sent (``per_cell``
    trials of each cell, with a summary counting only ``summarised`` of them, as one
    host of several would), or raises ``fail`` from ``prepare`` or ``run``."""

    def __init__(self, *, per_cell=0, summarised=0, refuse=None, crash=None) -> None:
        self.per_cell, self.summarised = per_cell, summarised
        self.refuse, self.crash = refuse, crash

    def settle(self, run_ids):
        pass

    def gather(self, sweep_id, store, *, bundles=None):
        return 0

    def prepare(self, job):
        if self.refuse is not None:
            raise self.refuse

    def slots(self, job):
        return 1

    def run(self, job, progress):
        if self.crash is not None:
            raise self.crash
        with Store(job.store_path) as store:
            for cell in job.cells:
                run_id = cell.run_id(job.sweep_id)
                store.start_run(run_id, {}, sweep_id=job.sweep_id, cell=cell.key())
                for trial in range(1, self.per_cell + 1):
                    store.append(
                        make_record(trial, run_id=run_id, sweep_id=job.sweep_id, cell=cell.key())
                    )
                store.finish_run(run_id, "done", {"tries": self.summarised, "stopped": ""})

    def close(self):
        pass


def _sweep_with(monkeypatch, tmp_path, executor, sweep_id="s-stand-in"):
    monkeypatch.setattr("repro_lib.sweep.make_executor", lambda *a, **k: executor)
    plan = validate_plan({"backend": "engine", "reset_freq": [1, 2], "tries": 5})
    store = tmp_path / "s.sqlite"
    run = lambda: run_sweep(None, plan, sweep_id=sweep_id, store_path=store, progress=False)  # noqa: E731
    return run, store


def _sweep_status(store, sweep_id="s-stand-in"):
    with Store(store) as st:
        return st.sweep(sweep_id)["status"]


def test_a_complete_sweep_is_done_and_its_run_summaries_count_the_stored_trials(
    monkeypatch, tmp_path
):
    run, store = _sweep_with(monkeypatch, tmp_path, _StandInExecutor(per_cell=5, summarised=3))
    outcome = run()
    assert outcome.status == "done" and [c.tries for c in outcome.cells] == [5, 5]
    with Store(store) as st:
        for cell in outcome.cells:
            assert st.run(cell.run_id)["summary"]["tries"] == 5  # not the one host's 3


def test_a_sweep_that_ends_short_is_not_done_and_says_what_is_missing(monkeypatch, tmp_path):
    run, store = _sweep_with(monkeypatch, tmp_path, _StandInExecutor(per_cell=3, summarised=3))
    with pytest.raises(InfraError, match=r"4 planned trials \(c000 trials 4–5; c001 trials 4–5\)"):
        run()
    assert _sweep_status(store) == "incomplete"


@pytest.mark.parametrize(
    "executor,status",
    [
        (_StandInExecutor(refuse=MissingRequirement("host-a lacks image x")), "refused"),
        (_StandInExecutor(crash=RuntimeError("a bug")), "failed"),
        (_StandInExecutor(crash=InfraError("cell c000 failed on its worker")), "failed"),
        (_StandInExecutor(crash=KeyboardInterrupt()), "interrupted"),
    ],
    ids=["refused", "crashed", "cell-failed", "interrupted"],
)
def test_a_sweep_that_stops_says_how(monkeypatch, tmp_path, executor, status):
    run, store = _sweep_with(monkeypatch, tmp_path, executor)
    with pytest.raises((Exception, KeyboardInterrupt)):
        run()
    assert _sweep_status(store) == status
