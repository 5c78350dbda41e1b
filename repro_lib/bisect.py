"""Finding where a flaky failure starts (or stops) in an ordered list of candidates.

:func:`run_search` is the Bayesian culprit search (:mod:`repro_lib.culprit`) over
commits (each built by the user's hook, :mod:`repro_lib.commits`) or released
versions (their images as a sweep runs them): every probe is one sweep cell of a
fixed number of reset cycles of the candidate's image, every cycle of every probe
feeds the posterior, and the search stops at a stated posterior or when its tries
are spent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import docker
import numpy as np

from . import commits, locks
from .builders import backend_class
from .builders.engine import EngineBackend, refuse_unowned_engine
from .config import Paths
from .culprit import (
    CandidateRow,
    CulpritSearch,
    Direction,
    ProbeRow,
    SearchRecord,
    expected_information,
)
from .errors import InfraError, UsageError
from .plan import Plan, resolve_version, validate_plan, with_allow_prune
from .records import Outcome, TrialRecord
from .store import Store
from .sweep import run_sweep

# the culprit search ------------------------------------------------------------
#
# The search (culprit.CulpritSearch) runs over the candidates that can be probed
# (every released version; a commit once its image is built):
# an unbuildable commit is left out of the model, like `git bisect skip`, so it is
# never probed, never good and never bad, and holds no posterior. Every probe is
# one sweep cell of the candidate's image with a fixed number of reset cycles; its
# complete cycles feed the model. The search's state goes to the store after every
# build and every probe, and a resume rebuilds it from the store: the probes'
# trials, counted again by their sweep ids.

#: a probe's sweep id: ``<search id>-p<probe>``, so a resume finds a probe in flight
PROBE_ID = "{search_id}-p{probe:03d}"

ProbeResult = tuple[list[int], int]  # failures per complete reset cycle, tries recorded


def new_search_id() -> str:
    return f"b{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def probe_sweep_id(search_id: str, probe: int) -> str:
    return PROBE_ID.format(search_id=search_id, probe=probe)


def cycle_failures(records: list[TrialRecord], tries_per_cycle: int) -> list[int]:
    """Missing-layer failures of each complete reset cycle, in trial order.

    A cycle is complete when all its ``tries_per_cycle`` tries counted (``ok`` or
    ``missing_layer``); a cycle cut short by a stop, a kill or a build error saw
    fewer positions and is left out, as in ``stats.complete_cycles``.
    """
    cycles: dict[int, list[TrialRecord]] = {}
    for r in sorted(records, key=lambda r: r.trial):
        key = r.cycle if r.cycle is not None else r.trial - r.since_reset + 1
        cycles.setdefault(key, []).append(r)
    counted = (Outcome.OK, Outcome.MISSING_LAYER)
    return [
        sum(r.outcome is Outcome.MISSING_LAYER for r in tries)
        for tries in cycles.values()
        if len(tries) == tries_per_cycle and all(r.outcome in counted for r in tries)
    ]


def _model(record: SearchRecord) -> tuple[CulpritSearch, list[int]]:
    """The model over the probe-able candidates with every probe recorded, and which
    list positions it covers.

    The newest candidate is never left out: it is the caller's known-bad (or fixed)
    end of the range, which the model takes as changed without a probe, so a search
    whose other candidates are all unbuildable names it (with :func:`caveat`).
    """
    last = len(record.candidates) - 1
    included = [
        c.position for c in record.candidates if c.build != "unbuildable" or c.position == last
    ]
    search = CulpritSearch(
        len(included),
        record.tries_per_cycle,
        record.direction,
        confidence=record.confidence,
        max_tries=record.max_tries,
    )
    for p in record.probes:
        search.record(
            included.index(p.position), [1] * p.failing_cycles + [0] * (p.cycles - p.failing_cycles)
        )
    return search, included


def restate(record: SearchRecord) -> SearchRecord:
    """The record with every candidate's counts and posterior recomputed from its probes."""
    search, included = _model(record)
    posterior = dict(zip(included, search.posterior(), strict=True))
    rows = []
    for c in record.candidates:
        mine = [p for p in record.probes if p.position == c.position]
        rows.append(
            replace(
                c,
                cycles=sum(p.cycles for p in mine),
                failing_cycles=sum(p.failing_cycles for p in mine),
                tries=sum(p.tries for p in mine),
                posterior=float(posterior.get(c.position, 0.0)),
            )
        )
    return replace(record, candidates=tuple(rows))


def _next_position(search: CulpritSearch, included: list[int], record: SearchRecord) -> int:
    """``search.next_probe()``, never an unbuildable candidate (the newest one stays in
    the model as the range's known end even when it cannot be built)."""
    gain = expected_information(
        search.cycles, search.failing_cycles, search.direction, search.priors
    )
    probeable = np.array([record.candidates[p].build != "unbuildable" for p in included])
    return included[int(np.argmax(np.where(probeable, gain, -np.inf)))]


def skipped_neighbours(record: SearchRecord) -> list[CandidateRow]:
    """The unbuildable candidates right before the best one: any of them may be the
    first changed commit, which no probe can tell (``git bisect``'s "could be any of")."""
    out: list[CandidateRow] = []
    for c in reversed(record.candidates[: record.best.position]):
        if c.build != "unbuildable":
            break
        out.insert(0, c)
    return out


def caveat(record: SearchRecord) -> str | None:
    """A line saying what the statement cannot separate, or None."""
    skipped = skipped_neighbours(record)
    if not skipped:
        return None
    names = ", ".join(f'{c.short} "{c.subject}"' if c.subject else c.short for c in skipped)
    return (
        f"note: the change may be in {names} right before {record.best.short}: "
        f"{'it' if len(skipped) == 1 else 'they'} could not be built, so no probe can tell"
    )


def run_search(
    record: SearchRecord,
    *,
    prepare: Callable[[CandidateRow], CandidateRow],
    probe: Callable[[CandidateRow, str], ProbeResult],
    save: Callable[[SearchRecord], None],
    say: Callable[[str], None],
    pending: int | None = None,
) -> SearchRecord:
    """Probe candidates until one's posterior reaches the confidence or the tries run out.

    Args:
        record: the search so far (no probes for a new search).
        prepare: makes a candidate's image when the search first wants to probe it
            and returns the row with its build state (``"unbuildable"`` leaves it out
            of the model); returns the row unchanged when the image is there.
        probe: runs one probe of a candidate under the given sweep id: failures per
            complete reset cycle and the tries it recorded.
        save: writes the record; called after every build and every probe.
        say: one progress line.
        pending: the list position of a probe that was in flight when the search
            stopped (its sweep id is the next probe's): it is finished first.
    """
    while True:
        record = restate(record)
        search, included = _model(record)
        if pending is None:
            if search.confident() or record.tries >= record.max_tries:
                record = replace(
                    record, status="confident" if search.confident() else "budget spent"
                )
                save(record)
                return record
            position = _next_position(search, included, record)
        else:
            position, pending = pending, None
        candidate = record.candidates[position]
        ready = prepare(candidate)
        if ready != candidate:
            record = _with_candidate(record, ready)
            save(restate(record))
            log = f"; log {ready.build_log}" if ready.build_log else ""
            say(f"build {ready.short}: {ready.build} ({ready.image}{log})")
            if ready.build == "unbuildable":
                continue
        number = len(record.probes) + 1
        sweep_id = probe_sweep_id(record.search_id, number)
        failures, tries = probe(ready, sweep_id)
        provisional = ProbeRow(
            number, position, ready.ref, sweep_id, len(failures),
            sum(1 for f in failures if f), tries, ready.ref, 0.0,
        )  # fmt: skip
        record = restate(replace(record, probes=(*record.probes, provisional)))
        best = record.best
        row = replace(provisional, best_ref=best.ref, best_posterior=best.posterior)
        record = replace(record, probes=(*record.probes[:-1], row))
        save(record)
        say(
            f"probe {number}: {ready.short} [{position + 1}/{len(record.candidates)}] "
            f"{row.failing_cycles}/{row.cycles} cycles failed ({tries} tries); "
            f"best {best.short} posterior {best.posterior:.2f}; {record.tries} tries so far"
        )


def _with_candidate(record: SearchRecord, row: CandidateRow) -> SearchRecord:
    rows = list(record.candidates)
    rows[row.position] = row
    return replace(record, candidates=tuple(rows))


# the search against a real engine ---------------------------------------------


def probe_plan(base: Plan, image: str, cycles_per_probe: int) -> Plan:
    """One cell of ``image``: ``cycles_per_probe`` reset cycles of the base plan's ``K``."""
    k = base.reset_freq[0]
    return Plan(
        **{
            **asdict(base),
            "versions": [image],
            "reset_freq": [k],
            "cache_versions": None,
            "tries": cycles_per_probe * k,
            "until_confident": False,
            "lanes": 1,
            "replicates": 1,
        }
    )


def _plan_from(data: dict) -> Plan:
    data = dict(data)
    batch = data.pop("batch", None) or {}
    known = {f.name for f in fields(Plan)} - {"batch"}
    return validate_plan({**{k: v for k, v in data.items() if k in known}, **batch})


def _recorded_trials(store_path: Path, sweep_id: str) -> list[TrialRecord]:
    with Store(store_path) as store:
        return store.trials(f"{sweep_id}-c000")  # the run id of a probe's one cell


@dataclass
class SearchSetup:
    """Where and how a culprit search runs its builds and probes."""

    client: docker.DockerClient
    plan: Plan  # the base plan of every probe (backend, batch options, reset_freq)
    cycles_per_probe: int
    build: str | None  # the build hook of a commit search (versions need none)
    store_path: Path
    paths: Paths
    cluster: str | None = None
    command: str = ""
    progress: bool = True

    def settings(self, **extra: object) -> dict:
        return {
            "plan": self.plan.as_dict(),
            "build": self.build,
            "cycles_per_probe": self.cycles_per_probe,
            "command": self.command,
            **extra,
        }

    def prepare(self, record: SearchRecord) -> Callable[[CandidateRow], CandidateRow]:
        """Makes a commit's image with the hook when needed; a released version's image
        is run as it is (a sweep pulls it, or refuses one that is missing offline)."""
        if record.kind == "versions":
            return lambda candidate: candidate
        search_id, repo = record.search_id, Path(record.repo or ".")

        def prepare(candidate: CandidateRow) -> CandidateRow:
            if candidate.build == "unbuildable":
                return candidate
            if candidate.image and commits.image_exists(self.client, candidate.image):
                return candidate
            log = self.paths.data / "bisect" / search_id / f"build-{candidate.short}.log"
            state, image = commits.build(
                self.client,
                repo,
                commits.Commit(candidate.ref, candidate.short, candidate.subject),
                self.build or "",
                log,
                timeout=self.plan.batch.get("build_timeout"),
            )
            if state == "unbuildable" and candidate.build in ("built", "cached"):
                # its probes are data: it cannot turn into a skipped commit now
                raise InfraError(
                    f"the image {image} of {candidate.short} is gone and rebuilding it "
                    f"failed (log {log})",
                    hint="rebuild it by hand, then resume the search",
                )
            kept = str(log.relative_to(self.paths.root)) if state != "cached" else None
            return replace(candidate, build=state, image=image, build_log=kept)

        return prepare

    def probe(self, candidate: CandidateRow, sweep_id: str) -> ProbeResult:
        plan = probe_plan(self.plan, candidate.image or candidate.ref, self.cycles_per_probe)
        run_sweep(
            self.client,
            plan,
            sweep_id=sweep_id,
            store_path=self.store_path,
            paths=self.paths,
            progress=self.progress,
            command=self.command,
            cluster=self.cluster,
        )
        records = _recorded_trials(self.store_path, sweep_id)
        return cycle_failures(records, plan.reset_freq[0]), len(records)


@dataclass(frozen=True)
class CommitRange:
    """The checked candidates of a commit search."""

    repo: Path  # the repository's top directory
    good: str
    bad: str
    direction: Direction
    all_commits: bool
    commits: list[commits.Commit]  # oldest first; the range's newer end included


def commit_range(
    repo: str | Path,
    good: str,
    bad: str,
    *,
    build: str,
    direction: Direction = "broke",
    all_commits: bool = False,
) -> CommitRange:
    """Check the hook, the repository and the refs, and list the candidates (no engine needed).

    For ``"broke"`` the candidates follow ``good`` up to ``bad``; for ``"fixed"``
    they follow ``bad`` (the older, affected end) up to ``good``.

    Raises:
        UsageError: the hook lacks ``{image}``; ``repo`` is no git repository or has
            uncommitted changes; a ref is not a commit there, both are one commit,
            or the older is no ancestor of the newer.
    """
    commits.check_hook(build)
    top = commits.check_repository(repo)
    start, end = (good, bad) if direction == "broke" else (bad, good)
    names = ("--good", "--bad") if direction == "broke" else ("--bad", "--good")
    listed = commits.list_commits(top, start, end, all_commits=all_commits, names=names)
    return CommitRange(top, good, bad, direction, all_commits, listed)


@dataclass(frozen=True)
class VersionRange:
    """The checked candidates of a version search."""

    good: str
    bad: str
    direction: Direction  # "fixed" when --bad comes first in the list
    versions: list[str]  # in list order: after the earlier anchor, up to the later one


def version_range(versions: list[str], good: str, bad: str) -> VersionRange:
    """The versions strictly after the earlier of ``good``/``bad`` in ``versions`` up to
    and including the later one.

    The direction follows the list: ``good`` first looks for the first affected
    version (``"broke"``); ``bad`` first, for the first version without the bug
    (``"fixed"``), whichever way the list is sorted.

    Raises:
        UsageError: good or bad not in the list, equal, or a version listed twice.
    """
    if good not in versions or bad not in versions:
        missing = good if good not in versions else bad
        raise UsageError(
            f"{'--good' if missing == good else '--bad'} {missing!r} is not in --versions",
            hint="--good and --bad must both be in --versions",
        )
    if good == bad:
        raise UsageError("--good and --bad must differ")
    twice = sorted({v for v in versions if versions.count(v) > 1})
    if twice:
        raise UsageError(f"version {twice[0]} is in --versions more than once")
    i_good, i_bad = versions.index(good), versions.index(bad)
    lo, hi = sorted((i_good, i_bad))
    return VersionRange(
        good, bad, "broke" if i_good < i_bad else "fixed", versions[lo + 1 : hi + 1]
    )


def version_image(version: str, backend: str) -> str:
    """The image a sweep cell of ``version`` runs (as ``Plan.cells`` resolves it)."""
    return resolve_version(version) if backend == "container" else version


def version_record(
    candidates: VersionRange,
    *,
    search_id: str,
    backend: str,
    tries_per_cycle: int,
    confidence: float = 0.95,
    max_tries: int = 2000,
) -> SearchRecord:
    """A new search over released versions: nothing to build, each its own image."""
    return restate(
        SearchRecord(
            search_id=search_id,
            kind="versions",
            repo=None,
            good=candidates.good,
            bad=candidates.bad,
            direction=candidates.direction,
            confidence=confidence,
            max_tries=max_tries,
            tries_per_cycle=tries_per_cycle,
            status="running",
            candidates=tuple(
                CandidateRow(i, v, v, "", "released", version_image(v, backend), None, 0, 0, 0, 0.0)
                for i, v in enumerate(candidates.versions)
            ),
            probes=(),
        )
    )


def _refuse_early(setup: SearchSetup) -> None:
    """Refuse before anything is recorded or built what the first probe would refuse."""
    if setup.cluster is None and issubclass(backend_class(setup.plan.backend), EngineBackend):
        refuse_unowned_engine(setup.client, allow_prune=bool(setup.plan.batch.get("allow_prune")))


def _refuse_taken_id(store: Store, search_id: str) -> None:
    if store.searches(search_id):
        raise UsageError(
            f"search {search_id} is already in {store.path}",
            hint=f"repro-lib bisect --resume {search_id} continues it; or pass a new id",
        )


def _start(
    setup: SearchSetup, record: SearchRecord, settings: dict, intro: str, say: Callable[[str], None]
) -> SearchRecord:
    with _running(setup.store_path, record.search_id):
        # under the lock: two starts may have picked the same --search-id
        with Store(setup.store_path) as store:
            _refuse_taken_id(store, record.search_id)
            store.save_search(record, settings)
        return _announce_and_drive(setup, record, intro, say)


def _running(store_path: Path, search_id: str):
    """One process at a time drives a search (a second would run its next probe again)."""
    return locks.held(store_path, f"search-{search_id}", what=f"culprit search {search_id}")


def _announce_and_drive(
    setup: SearchSetup, record: SearchRecord, intro: str, say: Callable[[str], None]
) -> SearchRecord:
    first, last = record.candidates[0], record.candidates[-1]
    noun = "commit" if record.kind == "commits" else "version"
    say(
        f"search {record.search_id}: {len(record.candidates)} {noun}s {first.short}..{last.short}"
        f"{intro}, looking for the {noun} that {record.direction} it; resume with: "
        f"repro-lib bisect --resume {record.search_id}"
    )
    return _drive(setup, record, say=say)


def start_commit_search(
    setup: SearchSetup,
    candidates: CommitRange,
    *,
    confidence: float = 0.95,
    max_tries: int = 2000,
    say: Callable[[str], None] = print,
    search_id: str | None = None,
) -> SearchRecord:
    """Record a new search over ``candidates`` and run it to the end.

    Raises:
        UsageError: ``search_id`` is taken in the store.
    """
    _refuse_early(setup)
    search_id = search_id or new_search_id()
    commits.remove_stale_worktrees(candidates.repo)
    record = SearchRecord(
        search_id=search_id,
        kind="commits",
        repo=str(candidates.repo),
        good=candidates.good,
        bad=candidates.bad,
        direction=candidates.direction,
        confidence=confidence,
        max_tries=max_tries,
        tries_per_cycle=setup.plan.reset_freq[0],
        status="running",
        candidates=tuple(
            CandidateRow(i, c.sha, c.short, c.subject, "not built", None, None, 0, 0, 0, 0.0)
            for i, c in enumerate(candidates.commits)
        ),
        probes=(),
    )
    intro = f" ({'every commit' if candidates.all_commits else 'first parent'})"
    settings = setup.settings(all_commits=candidates.all_commits)
    return _start(setup, restate(record), settings, intro, say)


def start_version_search(
    setup: SearchSetup,
    candidates: VersionRange,
    *,
    confidence: float = 0.95,
    max_tries: int = 2000,
    say: Callable[[str], None] = print,
    search_id: str | None = None,
) -> SearchRecord:
    """Record a new search over released versions and run it to the end.

    Raises:
        UsageError: ``search_id`` is taken in the store.
    """
    _refuse_early(setup)
    record = version_record(
        candidates,
        search_id=search_id or new_search_id(),
        backend=setup.plan.backend,
        tries_per_cycle=setup.plan.reset_freq[0],
        confidence=confidence,
        max_tries=max_tries,
    )
    settings = setup.settings(versions=candidates.versions)
    return _start(
        setup,
        record,
        settings,
        f" (after {candidates.good if candidates.direction == 'broke' else candidates.bad})",
        say,
    )


def resume_search(
    search_id: str,
    *,
    client: docker.DockerClient,
    store_path: Path,
    paths: Paths,
    cluster: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    allow_prune: bool = False,
) -> SearchRecord:
    """Continue a recorded search: recount its probes from their trials, finish a probe
    that was in flight, and go on; nothing recorded is run again.

    ``allow_prune`` is this machine's permission to prune an engine the lab did not
    start (engine backend), like ``--allow-prune``: not a setting of the search.

    Raises:
        UsageError: no such search in the store.
    """
    if not Path(store_path).exists():
        raise UsageError(f"no results store at {store_path}", hint="pass --store")
    with _running(Path(store_path), search_id):
        return _resume(
            search_id, client, Path(store_path), paths, cluster, progress, say, allow_prune
        )


def _resume(
    search_id: str,
    client: docker.DockerClient,
    store_path: Path,
    paths: Paths,
    cluster: str | None,
    progress: bool,
    say: Callable[[str], None],
    allow_prune: bool,
) -> SearchRecord:
    with Store(store_path) as store:
        found = store.searches(search_id)
        settings = store.search_settings(search_id)
    if not found or settings is None:
        raise UsageError(
            f"no culprit search {search_id!r} in {store_path}",
            hint="check the id printed when it started",
        )
    (record,) = found
    setup = SearchSetup(
        client=client,
        plan=with_allow_prune(_plan_from(settings["plan"]), allow_prune),
        cycles_per_probe=int(settings["cycles_per_probe"]),
        build=settings.get("build"),
        store_path=Path(store_path),
        paths=paths,
        cluster=cluster,
        command=settings.get("command", ""),
        progress=progress,
    )
    probes = []
    for p in record.probes:
        records = _recorded_trials(setup.store_path, p.sweep_id)
        failures = cycle_failures(records, record.tries_per_cycle)
        probes.append(
            replace(p, cycles=len(failures), failing_cycles=sum(1 for f in failures if f),
                    tries=len(records))
        )  # fmt: skip
    record = restate(replace(record, probes=tuple(probes), status="running"))
    pending = None
    with Store(store_path) as store:
        in_flight = store.sweep(probe_sweep_id(search_id, len(probes) + 1))
    if in_flight is not None:
        image = in_flight["plan"]["versions"][0]
        pending = next(c.position for c in record.candidates if c.image == image)
    say(
        f"search {search_id}: resuming after {len(probes)} probes ({record.tries} tries)"
        + (f"; finishing probe {len(probes) + 1} of {record.candidates[pending].short}"
           if pending is not None else "")
    )  # fmt: skip
    if record.kind == "commits":
        commits.remove_stale_worktrees(Path(record.repo or "."))
    return _drive(setup, record, say=say, pending=pending)


def _drive(
    setup: SearchSetup,
    record: SearchRecord,
    *,
    say: Callable[[str], None],
    pending: int | None = None,
) -> SearchRecord:
    def save(current: SearchRecord) -> None:
        with Store(setup.store_path) as store:
            store.save_search(current)

    return run_search(
        record,
        prepare=setup.prepare(record),
        probe=setup.probe,
        save=save,
        say=say,
        pending=pending,
    )
