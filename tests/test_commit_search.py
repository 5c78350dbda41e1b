"""Culprit search over commits: candidates from git, bad input, the search loop, the store,
and a real search on a local repository of ten commits whose images a build hook tags.

The loop and the store are tested with a fake probe (no Docker); the end-to-end
test runs the real CLI on the engine backend, killed once and resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from repro_lib import commits
from repro_lib.bisect import (
    caveat,
    commit_range,
    cycle_failures,
    probe_sweep_id,
    restate,
    run_search,
    skipped_neighbours,
)
from repro_lib.culprit import CandidateRow, SearchRecord, simulate_cycles
from repro_lib.fixtures import BASE_FIXTURE
from repro_lib.store import Store

from .conftest import ENGINE_ARGS, repro_lib_cmd, run_cli
from .controlled_backend import DROP_PROBABILITY_LABEL
from .factories import make_record

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return proc.stdout.strip()


def commit_file(repo: Path, name: str, text: str, subject: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", subject)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


@pytest.fixture
def merged_repo(tmp_path):
    """main: c0 - c1 - M(merge of topic: t1 - t2) - c3; returns (repo, shas by name)."""
    repo = new_repo(tmp_path / "merged")
    shas = {"c0": commit_file(repo, "a", "0", "c0"), "c1": commit_file(repo, "a", "1", "c1")}
    git(repo, "checkout", "-q", "-b", "topic")
    shas["t1"] = commit_file(repo, "b", "1", "t1")
    shas["t2"] = commit_file(repo, "b", "2", "t2")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge topic", "topic")
    shas["M"] = git(repo, "rev-parse", "HEAD")
    shas["c3"] = commit_file(repo, "a", "3", "c3")
    git(repo, "tag", "v-good", shas["c0"])
    return repo, shas


HOOK = "docker build -t {image} ."


# candidates ------------------------------------------------------------------------


def test_first_parent_candidates_oldest_first_bad_in_good_out(merged_repo):
    repo, shas = merged_repo
    found = commit_range(repo, "v-good", "main", build=HOOK)
    assert [c.sha for c in found.commits] == [shas["c1"], shas["M"], shas["c3"]]
    assert [c.subject for c in found.commits] == ["c1", "merge topic", "c3"]
    assert found.commits[0].short == shas["c1"][: len(found.commits[0].short)]


def test_all_commits_include_the_merged_branch(merged_repo):
    repo, shas = merged_repo
    found = commit_range(repo, shas["c0"], "main", build=HOOK, all_commits=True)
    listed = [c.sha for c in found.commits]
    assert sorted(listed) == sorted(shas[n] for n in ("c1", "t1", "t2", "M", "c3"))
    assert listed.index(shas["t1"]) < listed.index(shas["t2"]) < listed.index(shas["M"])
    assert listed[-1] == shas["c3"]


def test_fixed_direction_runs_from_bad_to_good(merged_repo):
    repo, shas = merged_repo
    found = commit_range(repo, "main", shas["c1"], build=HOOK, direction="fixed")
    assert [c.sha for c in found.commits] == [shas["M"], shas["c3"]]


def test_image_name_is_a_valid_docker_reference(tmp_path):
    assert commits.image_name(tmp_path / "My Repo!", "ab" * 20) == (
        f"repro-lib-bisect/my-repo:{'ab' * 20}"
    )


def test_hook_placeholders_are_filled_and_other_braces_stay():
    commit = commits.Commit("f" * 40, "fffffff", "s")
    filled = commits.hook_command(
        "make IMG={image} REV={commit} S={short} X=${HOME}", commit, "i:t"
    )
    assert filled == f"make IMG=i:t REV={'f' * 40} S=fffffff X=${{HOME}}"


def test_worktrees_are_removed_after_a_build_and_after_a_kill(merged_repo, tmp_path):
    repo, shas = merged_repo
    with commits.worktree(repo, shas["c1"]) as tree:
        assert (tree / "a").read_text() == "1"
    assert commits.WORKTREE_PREFIX not in git(repo, "worktree", "list")
    # a worktree whose owner was killed: its process id is gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"{commits.WORKTREE_PREFIX}{dead.pid}-x" / "tree"
    git(repo, "worktree", "add", "--detach", "-q", str(left), shas["c1"])
    mine = tmp_path / f"{commits.WORKTREE_PREFIX}{os.getpid()}-y" / "tree"
    git(repo, "worktree", "add", "--detach", "-q", str(mine), shas["c1"])
    assert commits.remove_stale_worktrees(repo) == [str(left)]
    assert not left.parent.exists() and mine.exists()  # a live owner's stays


# bad input -------------------------------------------------------------------------


def _plain_dir(repo: Path) -> Path:
    (repo.parent / "plain").mkdir()
    return repo.parent / "plain"


def _dirty(repo: Path) -> Path:
    (repo / "a").write_text("edited")
    return repo


BAD_COMMIT_INPUTS = [
    ("ref-not-in-repo", lambda r, s: ["--good", "nope", "--bad", "main"], r"--good 'nope' is not"),
    ("good-equals-bad", lambda r, s: ["--good", "v-good", "--bad", s["c0"]], r"same commit"),
    ("hook-without-image", lambda r, s: ["--build", "make"], r"must tag .*\{image\}"),
    ("uncommitted", lambda r, s: ["--repo", str(_dirty(r))], r"uncommitted changes"),
    ("not-a-repo", lambda r, s: ["--repo", str(_plain_dir(r))], r"not a git repository"),
    ("not-ancestor", lambda r, s: ["--good", "main", "--bad", "v-good"], r"not an ancestor"),
    ("with-versions", lambda r, s: ["--versions", "v1,v2"], r"--repo.*commit mode"),
    ("tries-in-commit-mode", lambda r, s: ["--tries", "5"], r"--tries applies to --versions"),
    ("resume-with-settings", lambda r, s: ["--resume", "b1"], r"--resume takes"),
    ("no-build", lambda r, s: ["--build", None], r"needs --build"),
    ("search-id", lambda r, s: ["--search-id", "a b"], r"--search-id 'a b' is not a plain"),
]


@pytest.mark.parametrize("case", BAD_COMMIT_INPUTS, ids=[c[0] for c in BAD_COMMIT_INPUTS])
def test_bad_commit_input_is_one_line_and_exit_2(case, merged_repo, tmp_path):
    repo, shas = merged_repo
    _, extra, message = case
    args = {"--repo": str(repo), "--good": "v-good", "--bad": "main", "--build": HOOK}
    changes = extra(repo, shas)
    for name, value in zip(changes[::2], changes[1::2], strict=True):
        args[name] = value
    argv = [a for name, value in args.items() if value is not None for a in (name, value)]
    # an engine that is not there: every check must come before any engine contact
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    proc = run_cli("bisect", *argv, *ENGINE_ARGS, home=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("repro-lib: error:"), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "data").exists()
    assert git(repo, "worktree", "list").count("\n") == 0  # no worktree made


# the search loop with a fake probe -------------------------------------------------


def _record(n: int, *, k: int = 2, confidence: float = 0.95, max_tries: int = 2000):
    return restate(
        SearchRecord(
            search_id="b-test",
            kind="commits",
            repo="/r",
            good="g",
            bad="b",
            direction="broke",
            confidence=confidence,
            max_tries=max_tries,
            tries_per_cycle=k,
            status="running",
            candidates=tuple(
                CandidateRow(
                    i, f"sha{i}", f"s{i}", f"subject {i}", "not built", None, None, 0, 0, 0, 0.0
                )
                for i in range(n)
            ),  # fmt: skip
            probes=(),
        )
    )


class FakeLab:
    """Builds (some fail) and probes (candidates from ``culprit`` on fail often)."""

    def __init__(self, culprit: int, unbuildable=(), k: int = 2, cycles: int = 3, seed: int = 1):
        self.culprit, self.unbuildable, self.k, self.cycles = culprit, set(unbuildable), k, cycles
        self.rng = np.random.default_rng(seed)
        self.built: list[int] = []
        self.probed: list[tuple[int, str]] = []
        self.saved: list[SearchRecord] = []

    def prepare(self, c: CandidateRow) -> CandidateRow:
        if c.build != "not built":
            return c
        self.built.append(c.position)
        state = "unbuildable" if c.position in self.unbuildable else "built"
        return replace(c, build=state, image=f"img:{c.ref}", build_log=f"logs/{c.short}.log")

    def probe(self, c: CandidateRow, sweep_id: str):
        self.probed.append((c.position, sweep_id))
        rate = 0.5 if c.position >= self.culprit else 0.0
        failures = simulate_cycles(self.rng, rate, self.k, self.cycles)
        return [int(f) for f in failures], self.cycles * self.k

    def run(self, record: SearchRecord, **kwargs) -> SearchRecord:
        return run_search(
            record,
            prepare=self.prepare,
            probe=self.probe,
            save=self.saved.append,
            say=lambda line: None,
            **kwargs,
        )


def test_the_search_names_the_culprit_and_stops_at_the_confidence():
    fake = FakeLab(culprit=4)
    final = fake.run(_record(9))
    assert final.status == "confident" and final.best.position == 4
    assert final.best.posterior >= 0.95
    assert final.statement().startswith('culprit: s4 "subject 4" (posterior ')
    assert len(final.probes) == len(fake.probed)
    assert [p.sweep_id for p in final.probes] == [
        probe_sweep_id("b-test", i) for i in range(1, len(final.probes) + 1)
    ]
    assert sorted(set(fake.built)) == sorted(fake.built)  # each built once, lazily
    assert len(fake.built) < 9
    # saved after every build and every probe
    assert len(fake.saved) >= len(fake.built) + len(final.probes)


def test_an_unbuildable_commit_is_never_probed_nor_given_a_posterior():
    fake = FakeLab(culprit=4, unbuildable={3})
    final = fake.run(_record(9))
    assert 3 in fake.built
    assert 3 not in {position for position, _ in fake.probed}
    row = final.candidates[3]
    assert row.build == "unbuildable" and row.posterior == 0.0 and row.build_log
    assert final.best.position == 4 and final.status == "confident"
    assert abs(sum(c.posterior for c in final.candidates) - 1) < 1e-9
    # the culprit cannot be told from the skipped commit right before it
    assert [c.position for c in skipped_neighbours(final)] == [3]
    assert "s3" in caveat(final) and "could not be built" in caveat(final)


def test_no_caveat_when_the_skipped_commit_is_not_next_to_the_culprit():
    fake = FakeLab(culprit=5, unbuildable={2})
    final = fake.run(_record(9))
    assert final.best.position == 5 and caveat(final) is None


def test_the_try_budget_stops_the_search():
    fake = FakeLab(culprit=4)
    final = fake.run(_record(9, max_tries=12))
    assert final.status == "budget spent" and final.tries == 12
    assert final.statement().startswith("best candidate so far: ")


def test_when_only_the_bad_end_is_left_it_is_named_with_the_skipped_ones():
    fake = FakeLab(culprit=1, unbuildable={0, 1})
    final = fake.run(_record(3))
    assert final.best.position == 2 and final.probes == ()
    assert 's0 "subject 0", s1 "subject 1" right before s2' in caveat(
        final
    )  # git bisect: "the first bad commit could be any of"


@pytest.mark.parametrize("n, culprit", [(3, 2), (2, 1)])
def test_an_unbuildable_bad_end_stays_in_the_model_but_is_never_probed(n, culprit):
    fake = FakeLab(culprit=culprit, unbuildable={n - 1})
    final = fake.run(_record(n, max_tries=60))
    assert n - 1 in fake.built and n - 1 not in {position for position, _ in fake.probed}
    # clean cycles alone cannot rule out a barely flaky bad side (prior odds 19:1 at
    # most), so without a probe of the bad end the search names it but spends its tries
    assert final.best.position == culprit and final.status == "budget spent"


def test_a_pending_probe_is_finished_first_under_the_next_sweep_id():
    fake = FakeLab(culprit=4)
    fake.run(_record(9, max_tries=6), pending=7)  # one probe's worth of tries
    assert fake.probed == [(7, probe_sweep_id("b-test", 1))]


def test_cycle_failures_count_complete_cycles_only():
    outcomes = ["ok", "missing_layer", "missing_layer", "missing_layer", "ok", "build_error", "ok"]
    records = [
        make_record(i, o, reset_freq=2, since_reset=(i - 1) % 2 + 1)
        for i, o in enumerate(outcomes, start=1)
    ]
    # cycles (1,2) (3,4) complete; (5,6) has a build error; (7,) is cut short
    assert cycle_failures(records, 2) == [1, 2]


# the store ---------------------------------------------------------------------------


def test_a_search_round_trips_through_the_store_and_resumes_where_it_stopped(tmp_path):
    store_path = tmp_path / "trials.sqlite"
    fake = FakeLab(culprit=4, unbuildable={3})
    first = fake.run(_record(9, max_tries=18))  # three probes, then the budget
    with Store(store_path) as store:
        for saved in fake.saved:
            store.save_search(saved, {"build": HOOK})
        (back,) = store.searches("b-test")
        assert store.searches() == [back]
        assert store.search_settings("b-test") == {"build": HOOK}
    assert back == first
    # resumed with a larger budget: the recorded probes stand, none is rerun
    more = FakeLab(culprit=4, unbuildable={3}, seed=2)
    final = more.run(replace(back, max_tries=2000, status="running"))
    assert final.probes[: len(first.probes)] == first.probes
    assert len(more.probed) == len(final.probes) - len(first.probes)
    assert not set(more.built) & {c.position for c in first.candidates if c.build != "not built"}
    with Store(store_path) as store:
        store.save_search(final)
        (again,) = store.searches("b-test")
        assert store.search_settings("b-test") == {"build": HOOK}  # kept from the first save
    assert again == final and again.best.position == 4


# the real thing: ten commits, a build hook, the engine backend ------------------------

#: the 6th commit breaks it; the 5th does not build, so the search must skip it and
#: say that the change may be there
CULPRIT, BROKEN = 6, 5
RESET, CYCLES = 2, 3
SEARCH_ID = "e2e-culprit"


def _ten_commit_repo(path: Path) -> tuple[Path, list[str]]:
    repo = new_repo(path)
    shas = []
    for n in range(1, 11):
        dockerfile = f"FROM {BASE_FIXTURE}\nCOPY drop-probability /\n"
        if n == BROKEN:
            dockerfile += "COPY no-such-file /\n"
        (repo / "Dockerfile").write_text(dockerfile)
        (repo / "drop-probability").write_text("0.5\n" if n >= CULPRIT else "0\n")
        (repo / "change").write_text(f"{n}\n")
        git(repo, "add", "Dockerfile", "drop-probability", "change")
        git(repo, "commit", "-q", "-m", f"commit {n}")
        shas.append(git(repo, "rev-parse", "HEAD"))
    return repo, shas


def _rows(store: Path, sql: str) -> list[tuple]:
    if not store.exists():
        return []
    with contextlib.closing(sqlite3.connect(store)) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


def _journal(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_a_real_search_over_ten_commits_killed_and_resumed(
    docker_client, fixture_images, docker_cli, lab_home
):
    repo, shas = _ten_commit_repo(lab_home / "project")
    trials_journal, builds_journal = lab_home / "trials.journal", lab_home / "builds.journal"
    hook = (
        f"echo {{short}} >> {builds_journal} && DOCKER_BUILDKIT=0 {docker_cli} build -q "
        f"--label {DROP_PROBABILITY_LABEL}=$(cat drop-probability) -t {{image}} ."
    )
    engine = [a if a != "engine" else "engine-dropping" for a in ENGINE_ARGS]
    env = {
        "REPRO_LIB_BACKEND_MODULES": "tests.controlled_backend",
        "REPRO_LIB_BUILD_JOURNAL": str(trials_journal),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    store = lab_home / "data/raw/trials.sqlite"
    images = [commits.image_name(repo, sha) for sha in shas]
    try:
        argv = [
            "bisect", "--repo", str(repo), "--good", shas[0], "--bad", "main",
            "--build", hook, "--reset-freq", str(RESET), "--cycles-per-probe", str(CYCLES),
            # a fixed id fixes the run ids, so the drops drawn per run and trial too
            "--search-id", SEARCH_ID, *engine,
        ]  # fmt: skip
        proc = subprocess.Popen(
            repro_lib_cmd(*argv),
            cwd=lab_home,
            env={**os.environ, "REPRO_LIB_HOME": str(lab_home), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # killed once the first probe is recorded and the second has recorded a trial,
        # so the resume must finish a probe in flight
        in_flight = "SELECT trial FROM trials WHERE run_id LIKE '%-p002-c000'"
        deadline = time.monotonic() + 120
        while not (_rows(store, "SELECT probe FROM culprit_probes") and _rows(store, in_flight)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        _, first_err = proc.communicate()
        trials_at_kill = set(_rows(store, "SELECT run_id, trial FROM trials"))
        built_at_kill = {
            r[0] for r in _rows(store, "SELECT short FROM culprit WHERE build = 'built'")
        }
        journal_at_kill = len(_journal(trials_journal))
        builds_at_kill = len(_journal(builds_journal))
        assert _rows(store, "SELECT search_id FROM culprit_searches") == [(SEARCH_ID,)]
        assert run_cli("clean", home=lab_home).returncode == 0  # what the kill left running

        resumed = run_cli("bisect", "--resume", SEARCH_ID, "--json", home=lab_home, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "finishing probe 2 of" in resumed.stderr
        record = json.loads(resumed.stdout.splitlines()[-1])
        print(first_err + resumed.stderr)  # the progress lines, for the report

        # the search names the 6th commit (the 1st is --good, not a candidate)
        assert record["status"] == "confident"
        best = max(record["candidates"], key=lambda c: c["posterior"])
        assert best["ref"] == shas[CULPRIT - 1] and best["posterior"] >= 0.95
        assert record["statement"].startswith(f'culprit: {best["short"]} "commit {CULPRIT}"')
        assert resumed.stdout.strip().splitlines()[-1].startswith("{")
        assert resumed.stderr.strip().splitlines()[-1] == record["statement"]
        # the broken commit is skipped, its log kept
        broken = record["candidates"][BROKEN - 2]
        assert broken["build"] == "unbuildable" and broken["posterior"] == 0.0
        assert "no-such-file" in (lab_home / broken["build_log"]).read_text()
        assert all(p["position"] != BROKEN - 2 for p in record["probes"])
        assert f'may be in {broken["short"]} "commit {BROKEN}" right before' in resumed.stderr

        # nothing lost: every probe's trials are in the store under its sweep id
        stored = set(_rows(store, "SELECT run_id, trial FROM trials"))
        assert trials_at_kill <= stored
        for probe in record["probes"]:
            run_trials = {t for r, t in stored if r == f"{probe['sweep_id']}-c000"}
            assert run_trials == set(range(1, RESET * CYCLES + 1))
            assert probe["tries"] == RESET * CYCLES
            # the kill cut probe 2's cycle short, and its resume started a fresh state:
            # that cycle's tries are kept but not counted as a cycle (a partial cycle)
            assert probe["cycles"] == (CYCLES if probe["probe"] != 2 else CYCLES - 1)
        assert sum(p["tries"] for p in record["probes"]) == len(stored)
        # nothing rerun: no trial recorded before the kill was built again after it
        after_kill = {
            tuple(line.split()[:2]) for line in _journal(trials_journal)[journal_at_kill:]
        }
        assert not {(r, str(t)) for r, t in trials_at_kill} & after_kill
        # and no image built before the kill was built again
        assert not built_at_kill & set(_journal(builds_journal)[builds_at_kill:])
        assert _rows(store, "SELECT count(*) FROM sweeps")[0][0] == len(record["probes"])
        assert commits.WORKTREE_PREFIX not in git(repo, "worktree", "list")
    finally:
        for image in images:
            with contextlib.suppress(Exception):
                docker_client.images.remove(image, force=True)


def test_probes_run_on_a_local_dask_cluster(docker_client, fixture_images, docker_cli, lab_home):
    pytest.importorskip("distributed", reason="needs repro-lib[cluster] (Dask distributed)")
    repo = new_repo(lab_home / "small")
    shas = [
        commit_file(repo, "Dockerfile", f"FROM {BASE_FIXTURE}\nENV N={n}\n", f"commit {n}")
        for n in (1, 2, 3)
    ]
    hook = f"DOCKER_BUILDKIT=0 {docker_cli} build -q -t {{image}} ."
    try:
        proc = run_cli(
            "bisect", "--repo", str(repo), "--good", shas[0], "--bad", shas[2], "--build", hook,
            "--reset-freq", "1", "--cycles-per-probe", "2", "--max-tries", "2",
            "--cluster", "local", *ENGINE_ARGS, "--json",
            home=lab_home,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        record = json.loads(proc.stdout.splitlines()[-1])
        assert record["status"] == "budget spent" and len(record["probes"]) == 1
        (probe,) = record["probes"]
        hosts = _rows(
            lab_home / "data/raw/trials.sqlite",
            f"SELECT host FROM trials WHERE run_id = '{probe['sweep_id']}-c000'",
        )
        assert len(hosts) == 2 and all(h[0].endswith("-w0") for h in hosts)  # a Dask worker's
    finally:
        for sha in shas:
            with contextlib.suppress(Exception):
                docker_client.images.remove(commits.image_name(repo, sha), force=True)
