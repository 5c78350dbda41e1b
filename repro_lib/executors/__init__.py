"""Executors: how a sweep's cells get run. Cells go in, trial records come out.

A sweep (:mod:`repro_lib.sweep`) takes a plan's cells (:mod:`repro_lib.plan`)
and owns the store; an executor runs cells and hands back every record. Two implementations share the small
:class:`Executor` interface:

* :class:`~repro_lib.executors.lanes.LocalLanes` - threads on this machine's
  engine, one BuildKit state per lane, the registries shared;
* :class:`~repro_lib.executors.cluster.DaskExecutor` - Dask distributed, one
  worker per Docker host, lanes as worker resources; records stream back to
  the client, which is the store's only writer.

Both run a cell with :func:`run_cell`, so a cell means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import docker

from ..batch import run_batch
from ..records import TrialRecord

if TYPE_CHECKING:
    from ..batch import BatchSummary, LabSession
    from ..config import Paths
    from ..plan import Cell, Plan
    from ..progress import SweepProgress
    from ..store import Store

StopRule = Callable[[list[Any]], Any]


@dataclass
class SweepJob:
    """What an executor needs: the plan, the cells with work left, what is recorded."""

    plan: Plan
    sweep_id: str
    cells: list[Cell]
    prior: dict[int, list[TrialRecord]]
    rule: StopRule | None
    store_path: Path
    paths: Paths
    command: str = ""
    images: list[str] = field(default_factory=list)  # every image a host needs
    session_id: str = ""  # labels the registries and scratch (shards of one sweep differ)
    tags: tuple[str | None, str] = (None, "")  # (shard, plan digest) recorded on each run

    def __post_init__(self) -> None:
        self.session_id = self.session_id or self.sweep_id


class Executor(Protocol):
    name: str

    def slots(self, job: SweepJob) -> int:
        """How many cells can run at once (one progress line each)."""

    def prepare(self, job: SweepJob) -> None:
        """Check every host before anything is scheduled (images, engines).

        Raises:
            MissingRequirement: a host lacks an image the plan needs (offline).
            InfraError: a host cannot be reached.
        """

    def settle(self, run_ids: list[str]) -> None:
        """Before anything is gathered or scheduled: stop, and wait for, cells of these
        runs that an earlier client (now dead) left running on their hosts, so a
        resume never runs beside them.

        Raises:
            UsageError: a live client runs some of them now.
        """

    def gather(self, sweep_id: str, store: Store, *, bundles: Path | None = None) -> int:
        """Copy records that hosts kept but the store lacks (after a client crash),
        and their failures' evidence bundles into ``bundles/<run id>/``."""

    def run(self, job: SweepJob, progress: SweepProgress) -> None:
        """Run every cell of ``job``; each record reaches the store exactly once.

        Raises:
            KeyboardInterrupt: interrupted; recorded trials are kept.
            ReproError: a problem that stops the whole sweep.
        """

    def close(self) -> None: ...


class CellReporter(Protocol):
    """Where a running cell reports: a progress line locally, a stream from a worker."""

    def started(self, cell: str, done: int, total: int) -> None: ...

    def record(self, record: TrialRecord) -> None: ...

    def skipped(self, n: int) -> None: ...


def run_cell(
    session: LabSession,
    plan: Plan,
    store: Store,
    cell: Cell,
    sweep_id: str,
    *,
    lane: int,
    client: docker.DockerClient,
    rule: StopRule | None,
    prior: list[Any],
    reporter: CellReporter,
    stop_requested: Callable[[], bool],
    command: str = "",
    attempt: int = 1,
    tags: tuple[str | None, str] = (None, ""),
) -> BatchSummary:
    """One cell as one batch, stopping early when ``rule`` is decisive.

    ``prior`` holds what earlier attempts recorded (objects with ``outcome``);
    the stop rule judges them together with this attempt's records.

    Raises:
        KeyboardInterrupt: ``stop_requested()`` turned true (the sweep is stopping).
    """
    run_id = cell.run_id(sweep_id)
    decision: dict[str, str] = {}

    def should_stop(records: list[TrialRecord]) -> bool:
        if stop_requested():
            decision["reason"] = "interrupted"
            return True
        if rule is None:
            return False
        verdict = rule(list(prior) + list(records))
        if verdict.stop:
            decision["reason"] = verdict.reason
        return verdict.stop

    def tag(_phase: str = "") -> None:
        # the runs row exists once run_batch has started the run
        store.tag_run(run_id, shard=tags[0], plan_digest=tags[1] or None)

    reporter.started(cell.key(), len(prior), plan.tries)
    try:
        summary = run_batch(
            session,
            plan.batch_options(cell, command),
            store,
            run_id=run_id,
            lane=lane,
            sweep_id=sweep_id,
            cell=cell.key(),
            should_stop=should_stop,
            interrupted=stop_requested,
            client=client,
            on_record=reporter.record,
            on_phase=tag,
            attempt=attempt,
        )
    finally:
        with contextlib.suppress(Exception):  # the store may be what failed
            tag()
    if decision.get("reason") and decision["reason"] != "interrupted":
        store.finish_run(run_id, "done", {**summary.as_dict(), "stopped": decision["reason"]})
        reporter.skipped(plan.tries - len(store.trial_numbers(run_id)))
    if stop_requested():
        raise KeyboardInterrupt("sweep stopped")
    return summary
