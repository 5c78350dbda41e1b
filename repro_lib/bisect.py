"""Bisection over an ordered list of versions: each probe is an early-stopping sweep cell."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker

from .config import Paths
from .errors import UsageError
from .plan import Plan
from .sweep import run_sweep


@dataclass
class Probe:
    version: str
    affected: bool | None  # None: inconclusive within the try budget
    failures: int
    tries: int
    statement: str


@dataclass
class BisectResult:
    boundary: tuple[str, str] | None  # (last of one kind, first of the other) in list order
    first_affected: str | None
    probes: list[Probe]
    sweep_ids: list[str]


def bisect_versions(
    versions: list[str],
    good: str,
    bad: str,
    probe: Callable[[str], Probe],
) -> BisectResult:
    """Binary search for the boundary between ``good`` and ``bad`` in an ordered list.

    ``probe(version)`` runs trials until its verdict is decisive (early stopping)
    and says whether the version is affected. ``first_affected`` is the affected
    version next to the boundary.

    Raises:
        UsageError: good/bad not in the list, equal, or a probe stays inconclusive.
    """
    if good not in versions or bad not in versions:
        raise UsageError("--good and --bad must both be in --versions")
    if good == bad:
        raise UsageError("--good and --bad must differ")
    lo, hi = versions.index(good), versions.index(bad)
    step = 1 if hi > lo else -1
    probes: list[Probe] = []
    # invariant: versions[lo] behaves like good, versions[hi] like bad
    while abs(hi - lo) > 1:
        mid = (lo + hi) // 2 if step == 1 else (lo + hi + 1) // 2
        result = probe(versions[mid])
        probes.append(result)
        if result.affected is None:
            raise UsageError(
                f"probe of {versions[mid]} stayed inconclusive: {result.statement}",
                hint="raise --tries or --max-rate",
            )
        if result.affected:
            hi = mid
        else:
            lo = mid
    pair = (versions[lo], versions[hi]) if step == 1 else (versions[hi], versions[lo])
    return BisectResult(boundary=pair, first_affected=versions[hi], probes=probes, sweep_ids=[])


def probe_with_sweep(
    client: docker.DockerClient,
    base: Plan,
    *,
    store_path: str | Path | None,
    paths: Paths | None,
    progress: bool,
    sweep_ids: list[str],
) -> Callable[[str], Probe]:
    """A probe that runs one early-stopping cell of ``base`` for a version."""

    def probe(version: str) -> Probe:
        plan = Plan(**{**asdict(base), "versions": [version], "until_confident": True, "lanes": 1})
        outcome = run_sweep(client, plan, store_path=store_path, paths=paths, progress=progress)
        sweep_ids.append(outcome.sweep_id)
        (cell,) = outcome.cells
        counted = cell.tries - cell.build_errors - cell.infra_errors
        if cell.failures:
            affected: bool | None = True
        elif cell.verdict.startswith("no failure seen"):
            # stats.verdict: the bound counts complete reset cycles (CLEAN_BOUND_ASSUMES)
            affected = False
        else:
            affected = None
        return Probe(version, affected, cell.failures, counted, cell.verdict)

    return probe
