"""Sweeps: a grid of cells (version × cache version × reset frequency × cache × mode),
resumable, with early stopping.

The sweep takes the cells of a :mod:`repro_lib.plan` and owns the store; an
executor (:mod:`repro_lib.executors`: local lanes, or a Dask cluster of Docker
hosts) runs them. Every cell is one
:func:`repro_lib.batch.run_batch` with a deterministic run id
(``<sweep id>-c<index>``), so resuming a sweep reruns exactly the trials its
cells are missing. Bisection over versions lives in :mod:`repro_lib.bisect`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import docker

from . import lab, stats
from .batch import BatchSummary
from .config import Paths
from .errors import InfraError, ReproError, UsageError
from .executors import SweepJob
from .executors.cluster import DaskExecutor
from .executors.lanes import LocalLanes
from .plan import (
    Cell,
    Plan,
    format_shard,
    plan_digest,
    shard_cells,
    stop_rule,
    validate_plan,
)
from .progress import SweepProgress
from .records import Outcome, TrialRecord, evidence
from .scenario import load_scenario
from .store import Store


def new_sweep_id() -> str:
    return f"s{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass
class CellResult:
    cell: str
    run_id: str
    tries: int
    failures: int
    build_errors: int
    infra_errors: int
    rate: float | None
    ci_low: float
    ci_high: float
    tries_to_verdict: int
    stopped: str
    verdict: str


@dataclass
class SweepOutcome:
    sweep_id: str
    cells: list[CellResult]
    status: str

    @property
    def failures(self) -> int:
        return sum(c.failures for c in self.cells)

    def table(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.cells]


def run_sweep(
    client: docker.DockerClient | None,
    plan: Plan,
    *,
    sweep_id: str | None = None,
    store_path: str | Path | None = None,
    paths: Paths | None = None,
    progress: bool = True,
    command: str = "",
    on_cell_done: Callable[[CellResult], None] | None = None,
    cluster: Any = None,
    shard: tuple[int, int] | None = None,
) -> SweepOutcome:
    """Run (or resume) every cell of ``plan``; trials already recorded are never rerun.

    Args:
        client: the engine of local lanes (unused with ``cluster``; may be None then).
        cluster: None for local lanes; ``"local"`` for a Dask ``LocalCluster`` of
            one worker per lane; a scheduler address (``tcp://…``, ``tls://…``) or a
            ``distributed.Client`` to run cells on a Dask cluster of Docker hosts.
        shard: ``(k, n)`` runs only the k-th of n parts of the cells (see
            :mod:`repro_lib.plan`); the run ids stay those of the whole plan, so the
            shards' stores merge back into one sweep when they share ``sweep_id``.

    Raises:
        ReproError: a usage or environment problem that stops the whole sweep.
    """
    paths = paths or Paths.from_env()
    store_path = Path(store_path or paths.store)
    sweep_id = sweep_id or new_sweep_id()
    cells = shard_cells(plan, shard)
    digest = plan_digest(plan)
    shard_text = format_shard(shard) if shard else None
    # shards of one sweep may run side by side on one machine: their registries,
    # lane engines and scratch directories must not share a label
    session_id = sweep_id if shard is None else f"{sweep_id}-s{shard[0]}of{shard[1]}"
    scenario = load_scenario(plan.batch.get("scenario"), base_image=plan.batch.get("base_image"))
    rule = stop_rule(plan)
    executor = make_executor(client, plan, cluster, paths=paths)
    bundles = paths.run_dir(session_id)
    started = False
    status = "refused"  # until every check passed and the cells were scheduled
    try:
        with Store(store_path) as store:
            recorded = store.sweep(sweep_id)
            if recorded is not None and plan_digest(recorded["plan"]) != digest:
                raise UsageError(
                    f"sweep {sweep_id} in {store_path} was recorded with another plan",
                    hint="pass a new --sweep-id, or --resume it to continue that plan",
                )
        # an earlier client's cells that still run must stop before anything is
        # counted; a live client's sweep is left alone, its status with it
        executor.settle([c.run_id(sweep_id) for c in cells])
        with Store(store_path) as store:
            store.start_sweep(
                sweep_id,
                {**plan.as_dict(), "command": command, "plan_digest": digest, "shard": shard_text},
            )
            started = True
            store.set_sweep_status(sweep_id, "running")
            executor.gather(sweep_id, store, bundles=bundles)
            done_before = {c.index: store.trials(c.run_id(sweep_id)) for c in cells}
        images = sorted({c.image for c in cells} | {c.cache_image for c in cells if c.cache_image})
        job = SweepJob(
            plan=plan,
            sweep_id=sweep_id,
            cells=[c for c in cells if _needs_work(c, done_before[c.index], plan, rule)],
            prior=done_before,
            rule=rule,
            store_path=store_path,
            paths=paths,
            command=command,
            images=(images if plan.backend == "container" else [])
            + [plan.batch.get("registry_image", lab.DEFAULT_REGISTRY_IMAGE)]
            + scenario.base_images(),
            session_id=session_id,
            tags=(shard_text, digest),
        )
        executor.prepare(job)
        bar = SweepProgress(
            total=sum(plan.tries for _ in cells),
            done=sum(_finished(c, done_before[c.index], plan, rule) for c in cells),
            lanes=executor.slots(job),
            label=sweep_id,
            enabled=progress,
        )
        status = "failed"
        try:
            executor.run(job, bar)
        finally:
            bar.close()
        with Store(store_path) as store:
            # what hosts recorded but never sent (a cell of a dead client) counts too
            executor.gather(sweep_id, store, bundles=bundles)
            short = _reconcile(store, sweep_id, cells, plan, rule)
        status = "incomplete" if short else "done"
        if short:
            raise InfraError(
                f"sweep {sweep_id} ended short: {_describe_short(short)} are not in {store_path}",
                hint=f"repro-lib sweep --resume {sweep_id} runs only those",
            )
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except ReproError:
        raise  # status says where it stopped: refused before the cells ran, else failed
    except BaseException:
        status = "failed"
        raise
    finally:
        try:
            if started:
                with Store(store_path) as store:
                    store.set_sweep_status(sweep_id, status)
        finally:
            executor.close()
    outcome = summarize(store_path, sweep_id, plan, shard=shard)
    if on_cell_done:
        for c in outcome.cells:
            on_cell_done(c)
    return outcome


def _reconcile(
    store: Store, sweep_id: str, cells: list[Cell], plan: Plan, rule: Any
) -> dict[str, list[int]]:
    """Make each cell's ``runs`` summary count what ``trials`` holds (hosts and
    attempts each summarised only what they ran), mark the complete cells done, and
    return the trials the others still lack, by run id."""
    short: dict[str, list[int]] = {}
    for cell in cells:
        run_id = cell.run_id(sweep_id)
        records = store.trials(run_id)
        run = store.run(run_id)
        complete = not _needs_work(cell, records, plan, rule)
        if not complete:
            recorded = {r.trial for r in records}
            short[run_id] = [t for t in range(1, plan.tries + 1) if t not in recorded]
        if run is None or not records:
            continue
        old = run["summary"] or {}
        keep = {k: old[k] for k in ("stopped", "work_dir", "kept") if k in old}
        summary = json.loads(
            json.dumps(BatchSummary.from_records(run_id, records, **keep).as_dict(), default=str)
        )
        status = "done" if complete else run["status"]
        if summary != old or status != run["status"]:
            store.finish_run(run_id, status, summary)
    return short


def _describe_short(short: dict[str, list[int]]) -> str:
    """``8 planned trials (c000 trials 13–19, c002 trial 7)``, naming at most five cells."""
    parts = []
    for run_id, trials in list(short.items())[:5]:
        spans: list[list[int]] = []
        for t in trials:
            if spans and t == spans[-1][1] + 1:
                spans[-1][1] = t
            else:
                spans.append([t, t])
        text = ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in spans)
        parts.append(
            f"{run_id.rsplit('-', 1)[-1]} {'trial' if len(trials) == 1 else 'trials'} {text}"
        )
    if len(short) > 5:
        parts.append(f"and {len(short) - 5} more cells")
    return f"{sum(len(t) for t in short.values())} planned trials ({'; '.join(parts)})"


def make_executor(
    client: docker.DockerClient | None, plan: Plan, cluster: Any, *, paths: Paths
) -> Any:
    """Local lanes, or Dask when ``cluster`` names one.

    Raises:
        UsageError: no engine client for local lanes.
        MissingRequirement: Dask is not installed (``pip install 'repro-lib[cluster]'``).
    """
    if cluster is None:
        if client is None:
            raise UsageError("local lanes need a Docker engine client")
        return LocalLanes(client)
    return DaskExecutor.connect(cluster, lanes=plan.lanes, client=client, paths=paths)


def _finished(cell: Cell, records: list[TrialRecord], plan: Plan, rule: Any) -> int:
    return len(records) if _needs_work(cell, records, plan, rule) else plan.tries


def _needs_work(cell: Cell, records: list[TrialRecord], plan: Plan, rule: Any) -> bool:
    if len({r.trial for r in records}) >= plan.tries:
        return False
    return not (rule is not None and records and rule(records).stop)


def summarize(
    store_path: str | Path, sweep_id: str, plan: Plan, *, shard: tuple[int, int] | None = None
) -> SweepOutcome:
    """One row per cell (of ``shard`` only, when given): counts, rate, interval,
    tries to verdict, why it stopped."""
    rows = []
    with Store(store_path) as store:
        status = (store.sweep(sweep_id) or {}).get("status", "unknown")
        for cell in shard_cells(plan, shard):
            run_id = cell.run_id(sweep_id)
            records = store.trials(run_id)
            run = store.run(run_id) or {}
            k, n = evidence(records)
            frame = stats.records_frame(records)
            rate = stats.cycle_rate(frame, alpha=plan.alpha)
            stopped = ((run.get("summary") or {}).get("stopped")) or ""
            rows.append(
                CellResult(
                    cell=cell.key(),
                    run_id=run_id,
                    tries=len(records),
                    failures=k,
                    build_errors=sum(r.outcome is Outcome.BUILD_ERROR for r in records),
                    infra_errors=sum(r.outcome is Outcome.INFRA_ERROR for r in records),
                    rate=rate.p_hat if n else None,
                    ci_low=rate.ci_low,
                    ci_high=rate.ci_high,
                    tries_to_verdict=len(records),
                    stopped=stopped,
                    verdict=stats.verdict(
                        k,
                        n,
                        max_rate=plan.max_rate,
                        alpha=plan.alpha,
                        cycles=stats.complete_cycles(frame),
                    ),
                )
            )
    return SweepOutcome(sweep_id, rows, status)


def resume_plan(store_path: str | Path, sweep_id: str) -> tuple[Plan, str]:
    """The plan and command of a recorded sweep.

    Raises:
        UsageError: no such sweep in the store.
    """
    if not Path(store_path).exists():
        raise UsageError(f"no results store at {store_path}", hint="pass --store")
    with Store(store_path) as store:
        recorded = store.sweep(sweep_id)
    if recorded is None:
        raise UsageError(
            f"no sweep {sweep_id!r} in {store_path}", hint="check the id printed when it started"
        )
    data = dict(recorded["plan"])
    command = data.pop("command", "")
    batch = data.pop("batch", {})
    data = {k: v for k, v in data.items() if k in {f.name for f in fields(Plan)}}
    data.pop("batch", None)
    return validate_plan({**data, **batch}), command
